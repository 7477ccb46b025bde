"""Spawn bursts and CPython's cyclic GC: while many threads are live the
scheduler keeps them frozen (out of the collector's walks), gives them back
when the burst is over, and never touches a freeze the program made itself."""

import gc
import weakref

import pytest

import threadlib
from threadlib._kernel import gcbursts
from threadlib.lowlevel import Scheduler


class Node:
    """A weak-referenceable object that will sit in a reference cycle."""


@pytest.fixture
def unfrozen_gc():
    assert gc.isenabled() and gc.get_freeze_count() == 0, "another test left the GC disabled or frozen"
    yield
    assert gc.isenabled()


def burst(n, during=None):
    """Spawn n threads blocked on one Event; call during() while all are
    blocked; wake and join them all. What during() returned."""
    seen = {}

    def waiter(ev):
        yield from ev.wait()

    def main():
        ev = threadlib.Event()
        ts = []
        for _ in range(n):
            ts.append((yield from threadlib.spawn(waiter(ev))))
        yield from threadlib.sleep(0)
        seen["during"] = during() if during else None
        ev.set()
        yield from threadlib.join_all(ts)
        seen["after"] = gc.get_freeze_count()

    threadlib.run(main())
    return seen


def test_a_burst_is_frozen_while_it_lives_and_thawed_after(unfrozen_gc):
    seen = burst(gcbursts.STEP * 2 + 100, during=gc.get_freeze_count)
    assert seen["during"] >= gcbursts.STEP * 2  # at least a Thread per live thread
    assert seen["after"] == 0
    assert gc.get_freeze_count() == 0


def test_few_threads_freeze_nothing(unfrozen_gc):
    seen = burst(gcbursts.STEP // 2, during=gc.get_freeze_count)
    assert seen == {"during": 0, "after": 0}


def test_a_cycle_frozen_in_a_burst_is_collected_after_the_thaw(unfrozen_gc):
    # A cycle that becomes garbage while frozen is kept; the thaw gives it back.
    held = {}

    def make_cycle():
        node = Node()
        node.self = node
        held["node"] = node
        return weakref.ref(node)

    ref = make_cycle()

    def while_blocked():
        del held["node"]  # the cycle is garbage now, but frozen
        gc.collect()
        return ref() is not None

    seen = burst(gcbursts.STEP + 10, during=while_blocked)
    assert seen["during"] is True  # frozen: the collector did not see it
    gc.collect()
    assert ref() is None


def test_young_garbage_is_collected_before_a_freeze(unfrozen_gc):
    refs = []

    def before_freeze():
        node = Node()
        node.self = node
        refs.append(weakref.ref(node))

    def waiter(ev, i):
        if i == gcbursts.STEP - 10:
            before_freeze()  # garbage, in a cycle, just before the freeze
        yield from ev.wait()

    def main():
        ev = threadlib.Event()
        ts = []
        for i in range(gcbursts.STEP + 10):
            ts.append((yield from threadlib.spawn(waiter(ev, i))))
            if i == gcbursts.STEP - 10:
                yield from threadlib.sleep(0)  # let that thread make its cycle
        yield from threadlib.sleep(0)
        assert gc.get_freeze_count() > 0
        assert refs[0]() is None  # collected, not frozen
        ev.set()
        yield from threadlib.join_all(ts)

    threadlib.run(main())


def test_the_programs_own_freeze_is_left_alone(unfrozen_gc):
    keep = [Node() for _ in range(10)]
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        seen = burst(gcbursts.STEP * 2, during=gc.get_freeze_count)
        assert seen["during"] == mine  # nothing of the burst added
        assert gc.get_freeze_count() == mine  # and nothing thawed
    finally:
        gc.unfreeze()
    del keep


def test_a_disabled_gc_is_not_frozen(unfrozen_gc):
    gc.disable()
    try:
        seen = burst(gcbursts.STEP * 2, during=gc.get_freeze_count)
    finally:
        gc.enable()
    assert seen == {"during": 0, "after": 0}


def test_threads_that_outlive_close_are_thawed(unfrozen_gc):
    sched = Scheduler()
    ev = threadlib.Event()

    def stubborn():
        while True:
            try:
                yield from ev.wait()
            except threadlib.ThreadCancelled:
                continue  # refuses to end: close gives up on it

    for _ in range(gcbursts.STEP + 10):
        sched.spawn(stubborn())
    sched.run_while(lambda: len(ev._waiters) < gcbursts.STEP + 10)
    assert gc.get_freeze_count() > 0
    sched.close()
    assert sched.threads(), "the stubborn threads outlive close"
    assert gc.get_freeze_count() == 0  # close thawed them all the same
