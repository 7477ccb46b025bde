"""Clocks: the one place the runtime reads time.

The scheduler owns a clock; timers, deadlines, ``threadlib.now()`` and every
worker read only ``sched.clock.now()``, so swapping in a ``VirtualClock``
makes a run independent of wall time. A clock also knows how to idle for a
while when the scheduler has no poller to wait in (no worker watches fds).

A clock also gives the time of day (``wall()``, for an HTTP ``Date``
header or a log line): real time on a ``MonotonicClock``, a fixed epoch
plus the simulated time on a ``VirtualClock``, so that a simulated run
writes the same dates every time.

Nothing else in threadlib may call ``time.monotonic``, ``time.time`` or
``time.sleep`` on behalf of threads.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What a scheduler needs of its clock (``MonotonicClock`` and
    ``VirtualClock`` are the two kinds; a clock is any object of this shape)."""

    #: True if time moves only when the scheduler says so (``advance_to``).
    virtual: bool

    def now(self) -> float:
        """The current time, in seconds."""

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass; the scheduler has nothing to wait in."""

    def wall(self) -> float:
        """The time of day, in seconds since the Unix epoch."""

    def advance_to(self, when: float) -> None:
        """Jump to ``when``; called only on a virtual clock, when every thread waits."""


class MonotonicClock:
    """Real time: ``time.monotonic``. The scheduler waits in its poller."""

    virtual = False

    def __init__(self) -> None:
        self.now = time.monotonic

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass (the scheduler has nothing else to wait in)."""
        if seconds > 0:
            time.sleep(seconds)

    def wall(self) -> float:
        """The time of day: ``time.time()``."""
        return time.time()

    def advance_to(self, when: float) -> None:
        """Nothing: real time moves by itself (the scheduler moves only
        virtual clocks; this makes the class a ``Clock``)."""


#: The time of day at a virtual clock's 0.0: 2000-01-01T00:00:00Z.
VIRTUAL_EPOCH = 946684800.0


class VirtualClock:
    """Simulated time. It stands still while threads run and jumps to the
    next deadline when every thread waits, so a run with timers takes no
    wall time and is repeatable. Its time of day is ``epoch`` plus the
    simulated time (``epoch`` defaults to 2000-01-01T00:00:00Z)."""

    virtual = True

    def __init__(self, start: float = 0.0, epoch: float = VIRTUAL_EPOCH) -> None:
        self._now = start
        self.epoch = epoch

    def now(self) -> float:
        """The simulated time, in seconds."""
        return self._now

    def wall(self) -> float:
        """The simulated time of day: ``epoch`` plus ``now()``."""
        return self.epoch + self._now

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (never backwards)."""
        if when > self._now:
            self._now = when

    def idle(self, seconds: float) -> None:
        """Jump ``seconds`` ahead: idling costs no wall time."""
        if seconds > 0:
            self._now += seconds
