"""The timer worker: ``Sleep``, and the deadlines of everyone else.

One heap of timers serves sleeping threads, timeout scopes (the scheduler
arms one timer per waiting thread that has a deadline) and any callback a
worker or library schedules with ``sched.call_at``. It reads the time only
through the scheduler's clock and never blocks.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any, Callable

from ..syscalls import Sleep
from .threads import Thread
from .worker import Handler, Worker

if TYPE_CHECKING:
    from .scheduler import Scheduler

_WAKE_SLEEPER = object()  # marks heap entries of sleeping threads


class TimerWorker(Worker):
    """Sleep, and deadlines for everyone: a heap of timers.

    Entries are lists ``[when, seq, callback, arg]``; cancelling a timer
    blanks its callback and leaves the entry to be popped (lazy deletion),
    and the heap is rebuilt when dead entries outnumber live ones.
    """

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._dead = 0

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Serve ``Sleep``; the scheduler also arms every timeout here."""
        self._sched = sched
        return {Sleep: self._sleep}

    def call_at(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> list[Any]:
        """Run ``callback(arg)`` once the clock reaches ``when``; returns a
        handle for :meth:`cancel`."""
        entry = [when, next(self._seq), callback, arg]
        heapq.heappush(self._heap, entry)
        return entry

    def cancel(self, entry: list[Any]) -> None:
        """Drop a timer made by :meth:`call_at` (no-op if it has run)."""
        if entry[2] is not None:
            entry[2] = None
            entry[3] = None
            self._dead += 1
            heap = self._heap
            if self._dead > 1024 and self._dead * 2 > len(heap):
                # In place: expire() may be running the callback that
                # cancels, popping from this very list; a new list would
                # leave it popping (and running) entries the new one still has.
                heap[:] = [e for e in heap if e[2] is not None]
                heapq.heapify(heap)
                self._dead = 0

    def _sleep(self, thread: Thread, sc: Sleep) -> None:
        sched = self._sched
        sched.suspend(thread, sc)
        deadline = sched.clock.now() + sc.seconds
        heapq.heappush(self._heap, [deadline, next(self._seq), _WAKE_SLEEPER, thread, sc])

    # withdraw() stays the base no-op: a withdrawn sleeper's heap entry finds
    # the thread no longer in that Sleep when it fires, and does nothing.

    def next_deadline(self) -> float | None:
        """When the earliest live timer is due, or None."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def expire(self, now: float) -> None:
        """Wake the sleepers and run the callbacks due by ``now``, earliest first."""
        heap = self._heap
        pop = heapq.heappop
        resume = self._sched.resume
        while heap and heap[0][0] <= now:
            entry = pop(heap)
            callback = entry[2]
            if callback is _WAKE_SLEEPER:
                # Wake only if the thread still sleeps in the Sleep this
                # entry was made for (it may have been cancelled since).
                thread = entry[3]
                if thread._wait is entry[4]:
                    resume(thread)
            elif callback is None:
                self._dead -= 1
            else:
                callback(entry[3])

    def busy(self) -> bool:
        """Whether any timer is pending."""
        return self.next_deadline() is not None
