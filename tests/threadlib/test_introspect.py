"""Seeing what the threads do: thread dumps (also on a signal, from a real
server process), the instrumentation hooks, the slow-step detector."""

import inspect
import io
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import threadlib
from threadlib.frontends import green
from threadlib.io import sockio
from threadlib.lowlevel import Instrument, Scheduler, SlowStepDetector, VirtualClock
from threadlib.process import signals

HERE = os.path.abspath(__file__)


def _line_of(func, text):
    """The line number of the first line of ``func`` containing ``text``."""
    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(lines) if text in line)


def park_on(ev):
    yield from ev.wait()


async def await_on(ev):
    await ev.wait()


def nap():
    yield from threadlib.sleep(1000)


def read_one(conn):
    yield from conn.recv(10)


def green_wait(ev):
    green.wrap(ev).wait()


def test_dump_groups_threads_by_wait_and_stack_with_counts_ids_and_frames():
    out = io.StringIO()

    def main():
        ev = threadlib.Event()
        parked = []
        for _ in range(12):
            parked.append((yield from threadlib.spawn(park_on(ev), name=None)))
        awaiting = yield from threadlib.spawn(await_on(ev))
        glet = yield from threadlib.spawn(green.thread(green_wait, ev), name="greeny")
        sleeper = yield from threadlib.spawn(nap())
        a, b = sockio.socketpair()
        reader = yield from threadlib.spawn(read_one(a), name="reader")
        yield from threadlib.sleep(0)
        me = yield from threadlib.current()
        text = threadlib.current_scheduler().dump(file=out)
        ev.set()
        yield from sleeper.cancel()
        yield from b.sendall(b"x")
        yield from threadlib.join_all(parked + [awaiting, glet, reader])
        a.close()
        b.close()
        return text, me, parked

    text, me, parked = threadlib.run(main())
    assert out.getvalue() == text
    assert text.startswith("threadlib thread dump: 17 live threads in 6 groups")
    blocks = text.split("\n\n")[1:]
    # the largest group first: the twelve generator threads parked on the Event
    assert blocks[0].startswith("12 threads waiting in Park(queue=<Event clear waiters=14>):")
    assert f"#{parked[0].id} 'park_on-{parked[0].id}'" in blocks[0]
    assert "and 2 more" in blocks[0]  # ten ids shown, the rest counted
    assert f'File "{HERE}", line {_line_of(park_on, "ev.wait()")}, in park_on' in blocks[0]
    assert "yield from ev.wait()" in blocks[0]  # the source line
    async_block = next(b for b in blocks if "in await_on" in b)
    assert async_block.startswith("1 thread waiting in Park(queue=<Event clear waiters=14>):")
    green_block = next(b for b in blocks if "'greeny'" in b)
    assert green_block.startswith("1 thread waiting in Park(queue=<Event clear waiters=14>):")
    assert f'line {_line_of(green_wait, "wait()")}, in green_wait' in green_block
    sleep_block = next(b for b in blocks if "in nap" in b)
    assert sleep_block.startswith("1 thread waiting in Sleep(seconds=1000):")
    read_block = next(b for b in blocks if "'reader'" in b)
    assert re.match(r"1 thread waiting in WaitRead\(fd=\d+\):", read_block)
    assert "in Stream.recv" in read_block  # down the yield-from chain into sockio
    running = next(b for b in blocks if b.startswith("1 thread running:"))
    assert f"#{me.id} 'main'" in running and "<locals>.main" in running
    if hasattr(threadlib.Thread, "parent"):  # a thread's parent, where the kernel records it
        assert f"(parent #{me.id})" in blocks[0]


def test_thread_stack_follows_the_yield_from_chain_to_the_innermost_frame():
    def inner(ev):
        yield from ev.wait()

    def outer(ev):
        yield from inner(ev)

    def main():
        ev = threadlib.Event()
        t = yield from threadlib.spawn(outer(ev))
        yield from threadlib.sleep(0)
        stack = t.stack()
        ev.set()
        yield from t.join()
        return stack, t.stack()

    stack, after = threadlib.run(main())
    assert [(f.name, f.lineno) for f in stack] == [
        ("test_thread_stack_follows_the_yield_from_chain_to_the_innermost_frame.<locals>.outer",
         _line_of(test_thread_stack_follows_the_yield_from_chain_to_the_innermost_frame, "yield from inner(ev)")),
        ("test_thread_stack_follows_the_yield_from_chain_to_the_innermost_frame.<locals>.inner",
         _line_of(test_thread_stack_follows_the_yield_from_chain_to_the_innermost_frame, "yield from ev.wait()")),
    ]
    assert stack[0].filename == HERE and stack[0].line == "yield from inner(ev)"
    assert after == []  # an ended thread has no frames


def test_a_signal_dumps_the_threads_of_a_running_server_to_stderr():
    server = textwrap.dedent("""
        import signal, sys
        import threadlib
        from threadlib.io import sockio

        def handle(conn):
            with conn:
                while data := (yield from conn.recv(100)):
                    yield from conn.sendall(data)

        def main():
            listener = yield from sockio.listen(("127.0.0.1", 0))
            print("listening", listener.address[1], flush=True)
            while True:
                conn, _ = yield from listener.accept()
                yield from threadlib.spawn(handle(conn), name="conn")

        threadlib.run(main(), dump_on=signal.SIGUSR1)
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
    proc = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": repo})
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("listening"), banner
        port = int(banner.split()[1])
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for c in clients:  # every connection has its thread, waiting for data
            c.sendall(b"hi")
            assert c.recv(100) == b"hi"
        proc.send_signal(signal.SIGUSR1)
        dump = _read_until(proc.stderr.fileno(), "in Listener.accept", 1)  # the smallest group comes last
        assert "threadlib thread dump: 4 live threads in 2 groups" in dump
        # the three connection threads are one group (same stack), each with its fd
        assert "3 threads waiting in WaitRead:" in dump
        assert len(re.findall(r"#\d+ 'conn' \(parent #\d+\) \(fd=\d+\)", dump)) == 3
        assert re.search(r"1 thread waiting in WaitRead\(fd=\d+\):", dump) and "in Listener.accept" in dump
        # the server goes on serving after the dump, and a second signal dumps again
        clients[0].sendall(b"again")
        assert clients[0].recv(100) == b"again"
        proc.send_signal(signal.SIGUSR1)
        assert "threadlib thread dump: 4 live threads" in _read_until(proc.stderr.fileno(), "in Listener.accept", 1)
        assert proc.poll() is None
        for c in clients:
            c.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def _read_until(fd, marker, count, limit=30.0):
    """What the server writes to ``fd`` until ``marker`` has appeared
    ``count`` times and the line holding the last one is complete
    (bounded in time: the server may have died)."""
    text = ""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if text.count(marker) >= count and text.endswith("\n"):
            return text
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        text += chunk.decode()
    raise AssertionError(f"not {count} x {marker!r} in the server's stderr: {text!r}")


def test_the_dump_signal_and_wait_signal_share_the_wakeup_fd():
    out = io.StringIO()

    def main():
        me = os.getpid()

        def signal_later():
            yield from threadlib.sleep(0)
            os.kill(me, signal.SIGUSR1)  # caught: writes the dump
            os.kill(me, signal.SIGUSR2)  # then wakes the waiter below

        yield from threadlib.spawn(signal_later(), name="signaller")
        return (yield from signals.wait_signal(signal.SIGUSR2))

    sched = signals.scheduler()
    before = signal.getsignal(signal.SIGUSR1)
    sched.enable_dump_signal(signal.SIGUSR1, file=out)
    assert sched.run(main()) == signal.SIGUSR2
    # the dump came first (the signals are handled in order) and named the waiter
    assert "1 thread waiting in WaitSignal(signums=(" in out.getvalue()
    assert signal.getsignal(signal.SIGUSR1) is before  # restored when the scheduler ended


def test_enable_dump_signal_refuses_a_signal_python_cannot_catch():
    sched = Scheduler()
    with pytest.raises((ValueError, OSError)):
        sched.enable_dump_signal(signal.SIGKILL)
    sched.run(nap_briefly())


def nap_briefly():
    yield from threadlib.sleep(0)


class Recorder:
    """An instrument recording every hook call (all five defined)."""

    def __init__(self, watch=None):
        self.events = []
        self.watch = watch

    def _keep(self, thread):
        return self.watch is None or thread.name == self.watch

    def thread_spawned(self, thread):
        if self._keep(thread):
            self.events.append(("spawned", thread.name))

    def before_step(self, thread):
        if self._keep(thread):
            self.events.append(("before", thread.name))

    def after_step(self, thread):
        if self._keep(thread):
            self.events.append(("after", thread.name))

    def system_call(self, thread, syscall):
        if self._keep(thread):
            self.events.append(("call", type(syscall).__name__))

    def thread_finished(self, thread, value, exc):
        if self._keep(thread):
            self.events.append(("finished", value, type(exc).__name__ if exc else None))


def test_instruments_see_every_step_and_system_call_in_order():
    recorder = Recorder(watch="worker")

    def worker():
        yield from threadlib.sleep(1)
        yield from threadlib.sleep(0)
        return "done"

    def main():
        t = yield from threadlib.spawn(worker(), name="worker")
        return (yield from t.join())

    sched = Scheduler(clock=VirtualClock())
    sched.add_instrument(recorder)
    assert sched.run(main()) == "done"
    assert recorder.events == [
        ("spawned", "worker"),
        ("before", "worker"), ("after", "worker"), ("call", "Sleep"),
        ("before", "worker"), ("after", "worker"), ("call", "Yield"),
        ("before", "worker"), ("after", "worker"), ("finished", "done", None),
    ]


def test_an_instrument_counts_the_steps_and_waits_of_a_small_program():
    class Counts(Instrument):  # only what it overrides is called
        def __init__(self):
            self.steps = 0
            self.calls = {}
            self.failed = []

        def before_step(self, thread):
            self.steps += 1

        def system_call(self, thread, syscall):
            name = type(syscall).__name__
            self.calls[name] = self.calls.get(name, 0) + 1

        def thread_finished(self, thread, value, exc):
            if exc is not None:
                self.failed.append((thread.name, type(exc).__name__))

    def pinger(q, n):
        for i in range(n):
            yield from q.put(i)

    def failing():
        yield from threadlib.sleep(0.5)
        raise KeyError("x")

    def main():
        q = threadlib.Queue(maxsize=1)
        p = yield from threadlib.spawn(pinger(q, 3))
        bad = yield from threadlib.spawn(failing(), name="bad")
        items = []
        for _ in range(3):
            items.append((yield from q.get()))
        yield from p.join()
        with pytest.raises(KeyError):
            yield from bad.join()
        return items

    counts = Counts()
    sched = Scheduler(clock=VirtualClock())
    sched.add_instrument(counts)
    assert sched.run(main()) == [0, 1, 2]
    assert counts.failed == [("bad", "KeyError")]
    assert counts.calls["Spawn"] == 2 and counts.calls["Sleep"] == 1 and counts.calls["Join"] == 2
    assert counts.calls.get("Park", 0) >= 2  # the queue of one made someone wait
    assert counts.steps == sum(counts.calls.values()) + 3  # plus the three ends (main, pinger, bad)


def test_removing_the_last_instrument_and_a_failing_instrument(caplog):
    class Broken:
        def before_step(self, thread):
            raise RuntimeError("instrument bug")

    recorder = Recorder()

    def main():
        sched = threadlib.current_scheduler()
        sched.add_instrument(recorder)
        yield from threadlib.sleep(0)
        sched.remove_instrument(recorder)
        seen = len(recorder.events)
        yield from threadlib.sleep(0)
        yield from threadlib.sleep(0)
        with pytest.raises(ValueError, match="not installed"):
            sched.remove_instrument(recorder)
        sched.add_instrument(Broken())
        yield from threadlib.sleep(0)  # the broken hook runs, is logged and removed
        yield from threadlib.sleep(0)
        return seen, len(recorder.events)

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        seen, total = threadlib.run(main())
    assert seen == total > 0  # nothing recorded once removed
    failures = [r for r in caplog.records if "instrument bug" in (r.exc_text or "") or "failed in" in r.getMessage()]
    assert len(failures) == 1 and "before_step" in failures[0].getMessage()


def test_adding_the_same_instrument_twice_is_refused():
    sched = Scheduler()
    recorder = Recorder()
    sched.add_instrument(recorder)
    with pytest.raises(ValueError, match="already installed"):
        sched.add_instrument(recorder)


def blocks_the_scheduler():
    yield from threadlib.sleep(0)
    time.sleep(0.2)  # a real blocking call: every thread stalls
    yield from threadlib.sleep(0)


def behaves():
    for _ in range(20):
        yield from threadlib.sleep(0)


def test_the_slow_step_detector_names_the_thread_that_blocked_and_where(caplog):
    def main():
        detector = threadlib.current_scheduler().warn_slow_steps(0.1)
        slow = yield from threadlib.spawn(blocks_the_scheduler(), name="slowpoke")
        fine = yield from threadlib.spawn(behaves(), name="fine")
        yield from threadlib.join_all([slow, fine])
        return detector

    with caplog.at_level(logging.WARNING, logger="threadlib"):
        detector = threadlib.run(main())
    warnings = [r for r in caplog.records if "slow step" in r.getMessage()]
    # The blocked step took at least 0.2 s, so it is reported, once.  (How
    # long the other thread's steps took depends on the machine's load, so
    # whether they stayed under 0.1 s is not asserted here; the test below
    # checks that steps under the threshold are not reported.)
    slow = [r for r in warnings if "thread slowpoke" in r.getMessage()]
    assert len(slow) == 1 and slow[0].levelno == logging.WARNING
    message = slow[0].getMessage()
    assert "fine" not in message
    # where the step stopped: the next wait after the blocking call
    stop = _line_of(blocks_the_scheduler, "time.sleep(0.2)") + 1
    assert f"stopping at {HERE}:{stop} in blocks_the_scheduler" in message
    assert detector.slow_steps == len(warnings) and isinstance(detector, SlowStepDetector)


def _mixed_workload(trace, detector_threshold=None):
    """Threads that yield, sleep on the clock, hand items over a bounded
    queue, take turns on a mutex, wait on an event and time out; each step
    appends to ``trace``. Returns the installed detector (or None)."""
    def producer(q, n):
        for i in range(n):
            yield from q.put(i)
            trace.append(("put", i, threadlib.now()))
            yield from threadlib.sleep(0 if i % 2 else 0.5)
        q.close()

    def consumer(q, name):
        while True:
            try:
                item = yield from q.get()
            except threadlib.QueueClosed:
                return
            trace.append((name, item, threadlib.now()))
            yield from threadlib.sleep(0)

    def locker(m, name, ev):
        for i in range(3):
            yield from m.acquire()
            trace.append((name, "in", i, threadlib.now()))
            yield from threadlib.sleep(0.25)
            m.release()
        yield from ev.wait()
        trace.append((name, "woke", threadlib.now()))

    def impatient(ev):
        try:
            with threadlib.timeout(1.5):
                yield from ev.wait()
        except TimeoutError:
            trace.append(("impatient", "timed out", threadlib.now()))

    def main():
        detector = None
        if detector_threshold is not None:
            quiet = logging.getLogger("tests.slowsteps.quiet")
            quiet.propagate = False
            quiet.addHandler(logging.NullHandler())
            detector = threadlib.current_scheduler().warn_slow_steps(detector_threshold, quiet)
        q = threadlib.Queue(2)
        m = threadlib.Mutex()
        ev = threadlib.Event()
        threads = [(yield from threadlib.spawn(producer(q, 8)))]
        for name in ("c1", "c2"):
            threads.append((yield from threadlib.spawn(consumer(q, name))))
        for name in ("l1", "l2", "l3"):
            threads.append((yield from threadlib.spawn(locker(m, name, ev))))
        threads.append((yield from threadlib.spawn(impatient(ev))))
        yield from threadlib.sleep(3)
        ev.set()
        yield from threadlib.join_all(threads)
        return detector

    return threadlib.run(main(), scheduler=Scheduler(clock=VirtualClock()))


def test_the_slow_step_detector_changes_no_order():
    # design.md §13: the detector only measures; it never decides when
    # anything runs. The same program, with and without it (and with a
    # threshold so low that every step is reported), takes the same steps
    # in the same order at the same clock times.
    alone = []
    assert _mixed_workload(alone) is None
    assert len(alone) > 25 and {e[0] for e in alone} >= {"put", "c1", "c2", "l1", "l2", "l3", "impatient"}
    for threshold in (0.1, 1e-9):
        watched = []
        detector = _mixed_workload(watched, threshold)
        assert watched == alone, threshold
        if threshold < 0.1:
            assert detector.slow_steps > 30  # it did report, and reading frames changed nothing


def test_the_slow_step_detector_reports_no_step_under_its_threshold(caplog):
    def main():
        # 0.2 s of blocking against a 60 s threshold: only a hang could cross it.
        detector = threadlib.current_scheduler().warn_slow_steps(60)
        slow = yield from threadlib.spawn(blocks_the_scheduler(), name="slowpoke")
        fine = yield from threadlib.spawn(behaves(), name="fine")
        yield from threadlib.join_all([slow, fine])
        return detector

    with caplog.at_level(logging.WARNING, logger="threadlib"):
        detector = threadlib.run(main())
    assert [r for r in caplog.records if "slow step" in r.getMessage()] == []
    assert detector.slow_steps == 0


def test_the_slow_step_detector_takes_a_logger_and_refuses_a_bad_threshold(caplog):
    with pytest.raises(ValueError, match="threshold"):
        Scheduler().warn_slow_steps(0)
    with pytest.raises(ValueError, match="threshold"):
        SlowStepDetector("fast")
    logger = logging.getLogger("myapp.stalls")

    def main():
        yield from threadlib.spawn(blocks_the_scheduler(), name="slowpoke")

    sched = Scheduler()
    sched.warn_slow_steps(0.1, logger=logger)
    with caplog.at_level(logging.WARNING, logger="myapp.stalls"):
        sched.run(main())
    assert [r.name for r in caplog.records if "slow step" in r.getMessage()] == ["myapp.stalls"]
