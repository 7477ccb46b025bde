"""Keeping CPython's cyclic GC off the threads of a spawn burst.

Each waiting thread is two GC-tracked objects (its Thread and its
generator). While a program spawns tens of thousands of threads, the
collector's full collections, which CPython starts each time the long-lived
heap has grown by a quarter, walk every one of them again and again: at 1M
threads that was about 40% of the CPU of a spawn. So the scheduler, each
time its live threads pass another ``STEP`` (first at ``STEP``), collects
the young generations and then ``gc.freeze()``s what is left: the frozen
objects are no longer walked by any collection, and are still freed by
reference counting as usual. When the live threads fall below a quarter of
the count at the last freeze (or half a step), or the scheduler closes, it
``gc.unfreeze()``s them, and the next full collection sees everything again.

The cost, and what it must never do: cyclic garbage among frozen objects
(made by any code of the process before a freeze) is kept until the thaw,
so memory can stay near the burst's peak that long; freeze and unfreeze are
O(1) list splices, and the first full collection after a thaw walks the
thawed objects once (a pause an unfrozen heap pays at every full
collection). It never freezes while the GC is disabled, and never starts
freezing while the process has frozen objects itself (a pre-fork server's
``gc.freeze()`` is not ours to undo). The permanent generation is one list
for the whole process, so a ``gc.freeze()`` the program makes in the middle
of a burst is undone by the burst's thaw, and one scheduler's thaw also
thaws a burst of another scheduler in another OS thread (its objects are
walked again, nothing is lost).
"""

from __future__ import annotations

import gc

# Live threads between freezes: large enough that a freeze (and the young
# collection before it) is rare, small enough that full collections never
# walk many unfrozen threads.
STEP = 10_000


def freeze(live: int, thaw_below: int) -> tuple[int, int]:
    """Freeze the heap at ``live`` threads if the GC is ours to tune.

    ``thaw_below`` is 0 unless this scheduler froze before. Returns the
    live count for the next freeze and the one below which to thaw (0: not
    frozen by us)."""
    next_at = live + STEP
    if not gc.isenabled() or (not thaw_below and gc.get_freeze_count()):
        return next_at, thaw_below
    # Young garbage cycles go now: once frozen they would wait for the thaw.
    gc.collect(1)
    gc.freeze()
    return next_at, max(thaw_below, STEP // 2, live // 4)


def thaw(live: int) -> tuple[int, int]:
    """Give the frozen objects back to the GC (the burst is over); the
    same pair as ``freeze`` returns."""
    gc.unfreeze()
    return live + STEP, 0
