"""The default poller: where a scheduler idles when its workers watch fds.

``EpollPoller`` keeps one epoll instance and one callback per fd, and runs
the callbacks of the fds that fired. The scheduler creates it when the first
fd is watched; a scheduler whose workers watch none (a simulated world on a
virtual clock) never opens an epoll. It never decides what to watch.
"""

from __future__ import annotations

from typing import Callable

from iolib.epoll import Epoll


class EpollPoller:
    """The ``Poller`` contract on one epoll instance."""

    # _fd and _callbacks are read by the compiled poll step (_speedups.poll),
    # which waits on the fd itself: -1 once closed.
    __slots__ = ("_epoll", "_callbacks", "modify", "_fd")

    def __init__(self) -> None:
        self._epoll = Epoll()
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self.modify = self._epoll.modify
        self._fd = self._epoll.fileno()

    def register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Add ``fd`` to the epoll set; ``callback(events)`` runs when it fires."""
        self._epoll.register(fd, events)
        self._callbacks[fd] = callback

    def unregister(self, fd: int) -> None:
        """Remove ``fd`` (quietly if it was never registered)."""
        if self._callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def poll(self, timeout: float) -> int:
        """One epoll_wait of up to ``timeout`` seconds (negative: no limit);
        run the callbacks of the fds that fired and return how many did."""
        events = self._epoll.poll(timeout)
        if events:
            callbacks = self._callbacks
            for fd, ev in events:
                cb = callbacks.get(fd)
                if cb is not None:
                    cb(ev)
        return len(events)

    def fileno(self) -> int:
        """The epoll instance's fd (to nest it in another poller)."""
        return self._epoll.fileno()

    def close(self) -> None:
        """Close the epoll instance."""
        self._fd = -1
        self._epoll.close()
