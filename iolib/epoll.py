"""epoll registration and polling.

A thin, fast layer over ``select.epoll``: the scheduler idles in exactly one
``poll`` call and dispatches what it returns. This module never decides
what to wait for and never loops; ``poll`` with timeout 0 never blocks.
"""

from __future__ import annotations

import select

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLET = select.EPOLLET
EPOLLONESHOT = select.EPOLLONESHOT


class Epoll:
    """One epoll instance. ``poll(timeout)`` returns ``[(fd, events), ...]``;
    a negative timeout waits until an event, 0 never waits."""

    __slots__ = ("_ep", "poll", "register", "modify", "closed")

    def __init__(self, max_events: int = -1) -> None:
        self._ep = select.epoll()
        ep = self._ep
        self.register = ep.register
        self.modify = ep.modify
        self.closed = False
        if max_events == -1:
            # select's own default (FD_SETSIZE - 1 events a call): the bound
            # method itself, with no Python frame around every poll.
            self.poll = ep.poll
            return
        poll = ep.poll

        def poll_events(timeout: float = -1.0, _poll=poll, _max=max_events) -> list[tuple[int, int]]:
            return _poll(timeout, _max)

        self.poll = poll_events

    def unregister(self, fd: int) -> None:
        """Remove ``fd``; quietly, if it was closed already (the kernel
        dropped it then)."""
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        return self._ep.fileno()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._ep.close()
