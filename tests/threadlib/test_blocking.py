"""The blocking pool (``threadlib.blocking``, ``BlockingPool``): results
and exceptions come back to the caller, a scheduler waits for a pending
call instead of calling it a deadlock, and a caller that gave up does not
get a late result. Real OS threads; every wait is bounded."""

import threading

import pytest

import threadlib
from threadlib.lowlevel import BlockingPool, Scheduler, TimerWorker


def test_results_and_exceptions_come_back_to_the_caller():
    def main():
        assert (yield from threadlib.blocking(sum, [1, 2, 3])) == 6
        with pytest.raises(ValueError, match="'x'"):
            yield from threadlib.blocking(int, "x")
        assert (yield from threadlib.blocking(divmod, 7, 2)) == (3, 1)
        return "ok"

    assert threadlib.run(main()) == "ok"


def test_a_pending_call_is_waited_for_not_called_a_deadlock():
    # Only the timers and the pool: while the call runs, nothing else
    # could wake the main thread, yet the pool will.
    sched = Scheduler(workers=[TimerWorker(), BlockingPool()])
    gate = threading.Event()

    def main():
        threading.Timer(0.05, gate.set).start()
        return (yield from threadlib.blocking(gate.wait, 30))

    assert sched.run(main()) is True


def test_a_caller_that_timed_out_gets_nothing_late_and_the_pool_serves_on():
    gate = threading.Event()
    ran = []

    def slow():
        gate.wait(30)
        ran.append("slow ended")
        return "late"

    def main():
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0.05):
                yield from threadlib.blocking(slow)
        gate.set()
        # the next call is served (by the same or another OS thread) and
        # gets its own result, not the late one
        assert (yield from threadlib.blocking(str, "next")) == "next"
        return "ok"

    assert threadlib.run(main()) == "ok"


def test_the_pool_is_busy_exactly_while_a_call_is_queued_or_running():
    pool = BlockingPool()
    sched = Scheduler(workers=[TimerWorker(), pool])
    gate = threading.Event()
    seen = []

    def main():
        seen.append(pool.busy())  # nothing asked yet
        t = yield from threadlib.spawn(threadlib.blocking(gate.wait, 30))
        yield from threadlib.sleep(0)
        seen.append(pool.busy())  # running
        gate.set()
        yield from t.join()
        seen.append(pool.busy())  # done
        assert (yield from threadlib.blocking(len, "abc")) == 3
        seen.append(pool.busy())
        return seen

    assert sched.run(main()) == [False, True, False, False]
