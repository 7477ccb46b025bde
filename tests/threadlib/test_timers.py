"""The timer worker through the scheduler's public calls: ``call_at`` and
``cancel_call`` run callbacks in time order (ties in the order made) and
never run a cancelled one, however many are cancelled; sleepers wake at
their time; a cancelled timer lets its argument go. On a VirtualClock,
so "at 2.0" means exactly that."""

import functools
import gc
import weakref

import pytest

import threadlib
from threadlib.lowlevel import Scheduler, TimerWorker, VirtualClock
from threadlib.sync import Event


class Token:
    """An argument whose life shows whether a timer still holds it."""


def test_callbacks_run_in_time_order_ties_in_the_order_made_at_their_time():
    sched = Scheduler(clock=VirtualClock())
    ran = []

    def note(name):
        ran.append((name, sched.now()))

    def main():
        for when, name in [(3.0, "c"), (1.0, "a1"), (2.0, "b"), (1.0, "a2"), (0.0, "now")]:
            sched.call_at(when, note, name)
        yield from threadlib.sleep(5)
        return ran

    assert sched.run(main()) == [("now", 0.0), ("a1", 1.0), ("a2", 1.0), ("b", 2.0), ("c", 3.0)]


def test_cancelled_timers_never_run_however_many_and_the_rest_all_do():
    sched = Scheduler(clock=VirtualClock())
    ran = []
    n = 3000
    kept = set(range(0, n, 7))

    def record(i, arg):
        assert arg is None
        ran.append(i)

    def main():
        # made without an argument (callback(None)), the common case
        handles = [sched.call_at(1.0 + i / 1000, functools.partial(record, i)) for i in range(n)]
        for i, handle in enumerate(handles):
            if i not in kept:
                sched.cancel_call(handle)
        sched.cancel_call(handles[1])  # twice: nothing more happens
        yield from threadlib.sleep(1.5)  # half of them are due
        assert ran == sorted(i for i in kept if 1.0 + i / 1000 <= 1.5)
        sched.cancel_call(handles[0])  # it has run: a no-op
        yield from threadlib.sleep(10)
        return ran

    assert sched.run(main()) == sorted(kept)


def test_a_cancelled_timer_lets_its_argument_go_at_once():
    sched = Scheduler(clock=VirtualClock())

    def main():
        arg = Token()
        handle = sched.call_at(100.0, print, arg)
        ref = weakref.ref(arg)
        del arg
        sched.cancel_call(handle)
        yield from threadlib.sleep(0)
        gc.collect()
        assert ref() is None
        return "freed"

    assert sched.run(main()) == "freed"


def test_sleepers_wake_at_their_time_in_order_and_a_cancelled_sleeper_not_at_all():
    sched = Scheduler(clock=VirtualClock())
    woke = []

    def sleeper(name, seconds):
        yield from threadlib.sleep(seconds)
        woke.append((name, threadlib.now()))

    def main():
        yield from threadlib.spawn(sleeper("late", 3))
        early = yield from threadlib.spawn(sleeper("early", 1))
        doomed = yield from threadlib.spawn(sleeper("doomed", 2))
        yield from threadlib.spawn(sleeper("zero", 0))
        yield from threadlib.sleep(0.5)
        yield from doomed.cancel()
        yield from early.join()
        yield from threadlib.sleep(10)
        return woke

    assert sched.run(main()) == [("zero", 0.0), ("early", 1.0), ("late", 3.0)]


def test_a_scheduler_with_only_timers_says_deadlock_only_when_no_timer_is_left():
    # The timer worker is busy while a timer is pending: a thread whose
    # only hope is a callback at 5.0 is not a deadlock.
    sched = Scheduler(workers=[TimerWorker()], clock=VirtualClock())

    def main():
        ev = Event()
        sched.call_at(5.0, lambda _: ev.set())
        yield from ev.wait()
        return threadlib.now()

    assert sched.run(main()) == 5.0


def test_a_cancelled_timer_neither_moves_virtual_time_nor_hides_a_deadlock():
    sched = Scheduler(clock=VirtualClock())

    def main():
        sched.cancel_call(sched.call_at(50.0, print))
        with pytest.raises(RuntimeError, match="deadlock"):
            yield from Event().wait()  # nobody will set it
        return threadlib.now()

    assert sched.run(main()) == 0.0


def test_a_callback_that_cancels_many_timers_does_not_make_another_due_one_run_twice():
    # Enough cancellations at once make the worker rebuild its heap, from
    # inside the callback the worker is running.
    sched = Scheduler(clock=VirtualClock())
    ran = []

    def main():
        later = [sched.call_at(50.0, ran.append, ("later", i)) for i in range(2000)]

        def canceller(_):
            for handle in later[:1500]:
                sched.cancel_call(handle)

        sched.call_at(1.0, canceller)
        sched.call_at(1.0, ran.append, "due with the canceller")
        yield from threadlib.sleep(100)
        return ran

    ran = sched.run(main())
    assert ran.count("due with the canceller") == 1
    assert sorted(x for x in ran if x != "due with the canceller") == [("later", i) for i in range(1500, 2000)]
