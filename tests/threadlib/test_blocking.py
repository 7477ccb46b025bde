"""The blocking pool (``threadlib.blocking``, ``BlockingPool``): results
and exceptions come back to the caller, a scheduler waits for a pending
call instead of calling it a deadlock, and a caller that gave up does not
get a late result. Real OS threads; every wait is bounded."""

import threading
import time

import pytest

import threadlib
from threadlib.lowlevel import BlockingPool, Scheduler, TimerWorker


def test_results_and_exceptions_come_back_to_the_caller():
    def main():
        # bounded: a pool that never answers fails here rather than hangs
        with threadlib.timeout(5):
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


def test_the_default_pool_has_16_threads_at_most():
    assert BlockingPool().max_threads == 16  # as api.md documents
    assert BlockingPool(max_threads=3).max_threads == 3


def test_the_pools_os_threads_end_when_the_scheduler_ends():
    before = set(threading.enumerate())

    def main():
        threads = []
        for i in range(4):
            threads.append((yield from threadlib.spawn(threadlib.blocking(abs, -i))))
        return (yield from threadlib.join_all(threads))

    assert threadlib.run(main()) == [0, 1, 2, 3]
    started = [t for t in threading.enumerate() if t not in before and t.name == "threadlib-blocking"]
    deadline = time.monotonic() + 10  # bounded: only a hang would take this long
    for t in started:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not [t for t in started if t.is_alive()]


def test_a_call_still_running_does_not_keep_the_process_from_exiting():
    import subprocess
    import sys

    program = (
        "import threading, threadlib\n"
        "never = threading.Event()\n"
        "def main():\n"
        "    try:\n"
        "        with threadlib.timeout(0.05):\n"
        "            yield from threadlib.blocking(never.wait)\n"
        "    except TimeoutError:\n"
        "        print('gave up', flush=True)\n"
        "threadlib.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=15)
    assert (done.returncode, done.stdout) == (0, "gave up\n"), done.stderr


def test_a_call_that_waits_for_another_call_in_the_same_burst_gets_its_own_os_thread():
    # Two calls handed to the pool in one scheduler pass: the first waits
    # (bounded) for the second to set the event.  Each needs an OS thread
    # of its own; were the second queued behind the first, the first would
    # wait its whole bound and return False.
    handoff = threading.Event()

    def main():
        waiter = yield from threadlib.spawn(threadlib.blocking(handoff.wait, 10))
        setter = yield from threadlib.spawn(threadlib.blocking(handoff.set))
        return (yield from threadlib.join_all([waiter, setter]))

    assert threadlib.run(main()) == [True, None]


def test_calls_beyond_max_threads_queue_for_a_thread_and_all_complete():
    # max_threads=2 and five calls handed over in one burst: two OS threads
    # are started, no more, and every caller gets its own result.
    before = set(threading.enumerate())
    sched = Scheduler(workers=[TimerWorker(), BlockingPool(max_threads=2)])
    gate = threading.Event()

    def job(i):
        gate.wait(10)
        return i * 10

    def main():
        threads = []
        for i in range(5):
            threads.append((yield from threadlib.spawn(threadlib.blocking(job, i))))
        yield from threadlib.sleep(0)  # all five handed to the pool
        gate.set()
        results = yield from threadlib.join_all(threads)
        started = [t for t in threading.enumerate() if t not in before and t.name == "threadlib-blocking"]
        return results, len(started)

    assert sched.run(main()) == ([0, 10, 20, 30, 40], 2)


def test_a_call_that_ends_after_its_scheduler_writes_nothing_anywhere():
    # The caller gives up, the scheduler ends (closing the pool and its
    # eventfd), then the call ends: its OS thread must write its wake-up to
    # no fd at all (not stdout, not stdin, not a closed number) and end
    # quietly.
    import subprocess
    import sys

    program = (
        "import threading, threadlib\n"
        "gate = threading.Event()\n"
        "def main():\n"
        "    try:\n"
        "        with threadlib.timeout(0.05):\n"
        "            yield from threadlib.blocking(gate.wait, 30)\n"
        "    except TimeoutError:\n"
        "        print('gave up', flush=True)\n"
        "threadlib.run(main())\n"
        "pool = [t for t in threading.enumerate() if t.name == 'threadlib-blocking']\n"
        "gate.set()\n"
        "for t in pool:\n"
        "    t.join(10)\n"
        "print('ended', len(pool), sum(t.is_alive() for t in pool), flush=True)\n"
    )
    # stdin is the read end of a pipe: a wake-up written to fd 0 fails too
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=15, input=b"")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"gave up\nended 1 0\n", b"")


def test_the_pool_starts_an_os_thread_only_when_every_one_it_has_is_taken():
    # Calls one after another share one OS thread; a burst of three while
    # none is free needs three; a later single call finds one free.
    before = set(threading.enumerate())
    gate = threading.Event()

    def started():
        return len([t for t in threading.enumerate() if t not in before and t.name == "threadlib-blocking"])

    def main():
        counts = []
        for _ in range(2):
            assert (yield from threadlib.blocking(abs, -1)) == 1
        counts.append(started())
        burst = []
        for _ in range(3):
            burst.append((yield from threadlib.spawn(threadlib.blocking(gate.wait, 10))))
        yield from threadlib.sleep(0)  # all three handed to the pool in this pass
        gate.set()
        assert (yield from threadlib.join_all(burst)) == [True] * 3
        counts.append(started())
        assert (yield from threadlib.blocking(abs, -2)) == 2
        counts.append(started())
        return counts

    assert Scheduler(workers=[TimerWorker(), BlockingPool()]).run(main()) == [1, 3, 3]


def test_the_pools_eventfd_is_not_inherited_by_child_processes():
    import subprocess
    import sys

    def main():
        assert (yield from threadlib.blocking(abs, -1)) == 1  # the pool and its eventfd exist now
        listing = subprocess.run(["ls", "-l", "/proc/self/fd"], capture_output=True, text=True,
                                 close_fds=False, timeout=15)
        return listing.stdout

    assert "eventfd" not in threadlib.run(main())


def test_a_late_result_dropped_does_not_hold_back_the_next_callers_result():
    # Two calls end together: first the one whose caller gave up, then one
    # whose caller waits.  The late result is dropped and the waiting
    # caller still gets its own.
    gate = threading.Event()
    late_done = threading.Event()
    second_done = threading.Event()

    def late():
        gate.wait(30)
        late_done.set()
        return "late"

    def second():
        late_done.wait(30)
        second_done.set()
        return "second"

    def main():
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0.05):
                yield from threadlib.blocking(late)
        waiter = yield from threadlib.spawn(threadlib.blocking(second))
        yield from threadlib.sleep(0)  # handed to the pool
        gate.set()
        # hold the scheduler (not a thread of it) until both results are
        # queued, so that one wake-up delivers both
        second_done.wait(10)
        time.sleep(0.05)
        with threadlib.timeout(5):
            return (yield from waiter.join())

    assert threadlib.run(main()) == "second"
