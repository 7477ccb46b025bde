"""Wait queues: the Park/Unpark primitive every sync object is made of.

A ``WaitQueue`` is a FIFO of parked threads. ``yield queue.park`` (or
``yield from queue.parked``) waits in it; plain ``wake_one``/``wake_all``
calls, made by whichever thread holds the news, make waiters ready without
a system call. Locks, events, conditions, semaphores and queues in
``threadlib.sync`` are a few lines each on top of this.

``wake_one`` inlines ``Scheduler.resume`` (every lock and queue hand-off
passes here), so this module knows the Thread and Scheduler slots it sets;
it never waits itself and never reads the clock.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from ..syscalls import Park, Waits
from .threads import Thread

if TYPE_CHECKING:
    from .scheduler import Scheduler


class ParkOnce(tuple):  # type: ignore[type-arg]
    """An awaitable that yields one system call and returns None.

    ``yield from`` and ``await`` both accept it. It is a one-item tuple,
    so ``yield from`` iterates it in C: no generator frame (~200 bytes)
    and no Python call per wait."""

    __slots__ = ()

    def __new__(cls, syscall: Any) -> ParkOnce:
        return tuple.__new__(cls, (syscall,))

    if TYPE_CHECKING:  # for the type checker only: at run time tuple's own (C) __iter__
        def __iter__(self) -> Waits[None]: ...  # noqa: E704
        def __await__(self) -> Waits[None]: ...  # noqa: E704
    else:
        # ``await`` takes the same C iterator: a Python __await__ cost a
        # frame per wait, more than the generator this tuple replaces.
        __await__ = tuple.__iter__


class _Done(tuple):  # type: ignore[type-arg]
    """An awaitable that completes at once with None: an empty tuple, so
    ``yield from DONE`` is a C-level no-op."""

    __slots__ = ()

    if TYPE_CHECKING:  # as in ParkOnce
        def __iter__(self) -> Waits[None]: ...  # noqa: E704
        def __await__(self) -> Waits[None]: ...  # noqa: E704
    else:
        __await__ = tuple.__iter__


DONE = _Done()


class WaitQueue:
    """A FIFO of parked threads. ``yield queue.park`` waits in it; plain
    ``wake_one``/``wake_all`` calls (no yield) make waiters ready.

    Withdrawn waiters (cancelled, timed out) are not searched for and
    removed: they are skipped when popped, and the deque is compacted when
    they pile up, so cancelling any number of waiters stays O(1) each.
    """

    __slots__ = ("_waiters", "park", "parked", "_stale", "_sched")

    # Set by the first park (a queue lives in one scheduler) and read only
    # while threads wait here, so it is never read unset.
    _sched: Scheduler

    def __init__(self) -> None:
        self._waiters: collections.deque[Thread] = collections.deque()
        self.park = Park(self)
        # ``yield from queue.parked`` / ``await queue.parked``: park once,
        # return None. A tuple iterator instead of a generator frame keeps a
        # parked thread ~150 bytes smaller.
        self.parked = ParkOnce(self.park)
        self._stale = 0

    def has_waiters(self) -> bool:
        """Cheap and possibly stale-positive; wake_one tells for sure."""
        return bool(self._waiters)

    def __len__(self) -> int:
        return len(self._waiters) - self._stale

    def __bool__(self) -> bool:
        return len(self._waiters) > self._stale

    def __repr__(self) -> str:
        return f"<WaitQueue waiters={len(self)}>"

    def _withdrawn(self, thread: Thread) -> None:
        # ``thread`` still has ``_wait is park`` here (the scheduler clears
        # it after the withdrawal), so the compaction must leave it out by
        # name, or it would be kept and counted as live.
        self._stale += 1
        waiters = self._waiters
        if self._stale > 64 and self._stale * 2 > len(waiters):
            park = self.park
            seen: set[int] = {id(thread)}
            live: collections.deque[Thread] = collections.deque()
            for t in waiters:
                if t._wait is park and id(t) not in seen:
                    seen.add(id(t))
                    live.append(t)
            self._waiters = live
            self._stale = 0

    def wake_one(self, value: Any = None) -> Thread | None:
        """Make the longest-waiting thread ready with ``value``; return it."""
        waiters = self._waiters
        park = self.park
        while waiters:
            t = waiters.popleft()
            if t._wait is park:
                # Scheduler.resume, inlined: every lock and queue hand-off comes here.
                t._value = value
                t._wait = None
                sched = self._sched
                if t._scope is not None:
                    sched._disarm_timeout(t)
                sched._ready.append(t)
                return t
            self._stale -= 1
        return None

    def wake_all(self, value: Any = None) -> int:
        """Make every waiting thread ready with ``value``; return how many."""
        waiters = self._waiters
        self._waiters = collections.deque()
        self._stale = 0
        if not waiters:
            return 0
        park = self.park
        resume = self._sched.resume
        woken = 0
        for t in waiters:
            if t._wait is park:
                resume(t, value)
                woken += 1
        return woken

    def throw_one(self, exc: BaseException) -> Thread | None:
        """Wake the longest-waiting thread by raising ``exc`` at its wait."""
        waiters = self._waiters
        park = self.park
        while waiters:
            t = waiters.popleft()
            if t._wait is park:
                self._sched.throw(t, exc)
                return t
            self._stale -= 1
        return None
