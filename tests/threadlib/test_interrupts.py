"""Ctrl-C and SIGTERM through cancellation, with real signals to a real
process (interrupt_program.py): one SIGINT runs every finally block,
waiting ones included, through the task group and the remaining threads,
before run() raises KeyboardInterrupt; a second one exits at once; SIGTERM
likewise when asked for. And in this process: what is installed, when,
and that it is put back."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

import threadlib
from tests import REPO_ROOT

PROGRAM = REPO_ROOT / "tests" / "threadlib" / "interrupt_program.py"


class Program:
    def __init__(self, mode, cleanup):
        self.proc = subprocess.Popen(
            [sys.executable, str(PROGRAM), mode, str(cleanup)], cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.lines = []
        self._partial = b""

    def read_until(self, wanted, limit=30.0):
        """Lines up to and including ``wanted`` (bounded: the program may hang)."""
        end = time.monotonic() + limit
        fd = self.proc.stdout.fileno()
        while wanted not in self.lines:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no {wanted!r} line within {limit} s; got {self.lines}")
            data = os.read(fd, 4096)
            if not data:
                raise AssertionError(f"no {wanted!r} line; got {self.lines}; stderr: {self.stderr()}")
            *complete, self._partial = (self._partial + data).split(b"\n")
            self.lines += [line.decode().strip() for line in complete]

    def finish(self, limit=30.0):
        """The exit status once the program has ended (bounded), the rest of
        its output read."""
        try:
            status = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {limit} s; output so far {self.lines}") from None
        rest = self._partial + self.proc.stdout.read()
        self.lines += [line.strip() for line in rest.decode().splitlines()]
        return status

    def stderr(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def program():
    started = []

    def start(mode, cleanup):
        p = Program(mode, cleanup)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


EVERY_CLEANUP = {"worker 0 cleanup done", "worker 1 cleanup done", "main cleanup done",
                 "server handshake done", "client handshake done"}


def test_ctrl_c_runs_every_finally_block_then_run_raises_keyboard_interrupt(program):
    p = program("sigint", 0.05)
    p.read_until("ready")
    p.proc.send_signal(signal.SIGINT)
    status = p.finish()
    stderr = p.stderr()
    assert EVERY_CLEANUP <= set(p.lines), p.lines
    # the group's workers ended before the main thread's own finally began
    assert p.lines.index("worker 0 cleanup done") < p.lines.index("main cleanup start")
    assert p.lines.index("worker 1 cleanup done") < p.lines.index("main cleanup start")
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    # an uncaught KeyboardInterrupt ends Python by SIGINT itself
    assert status == -signal.SIGINT


def test_a_second_ctrl_c_exits_at_once_without_the_rest_of_the_cleanup(program):
    p = program("sigint", 3600)  # the workers' cleanup would take an hour
    p.read_until("ready")
    p.proc.send_signal(signal.SIGINT)
    p.read_until("worker 1 cleanup start")
    p.proc.send_signal(signal.SIGINT)
    status = p.finish()
    assert status == -signal.SIGINT
    # the hour-long cleanups never finished (finally blocks that need no
    # wait, such as a handshake whose FIN is already there, may complete)
    assert not {"worker 0 cleanup done", "worker 1 cleanup done", "main cleanup done"} & set(p.lines), p.lines
    stderr = p.stderr()
    assert "KeyboardInterrupt" in stderr and "ignored" not in stderr, stderr


def test_sigterm_when_asked_cancels_like_ctrl_c_and_exits_143(program):
    p = program("sigterm", 0.05)
    p.read_until("ready")
    p.proc.send_signal(signal.SIGTERM)
    assert p.finish() == 128 + signal.SIGTERM
    assert EVERY_CLEANUP <= set(p.lines), p.lines


def test_ctrl_c_ends_the_idle_sleep_of_a_scheduler_without_a_poller(program):
    p = program("timers", 0.05)
    p.read_until("ready")
    p.proc.send_signal(signal.SIGINT)
    assert p.finish() == -signal.SIGINT
    assert {"worker 0 cleanup done", "worker 1 cleanup done", "main cleanup done"} <= set(p.lines)


# -- what is installed, in this process (no signal is sent) -----------------------------


@pytest.fixture
def default_sigint():
    """Python's default SIGINT handler, as in a terminal (a background
    shell may have left SIGINT ignored for the test run)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _handlers_during(run):
    seen = {}

    def main():
        seen["int"] = signal.getsignal(signal.SIGINT)
        seen["term"] = signal.getsignal(signal.SIGTERM)
        yield from threadlib.sleep(0)

    run(main())
    return seen


def test_run_takes_over_the_default_handlers_and_puts_them_back(default_sigint):
    term = signal.getsignal(signal.SIGTERM)
    seen = _handlers_during(threadlib.run)
    assert seen["int"] is not signal.default_int_handler and seen["term"] is term
    seen = _handlers_during(lambda m: threadlib.run(m, handle_sigterm=True))
    assert seen["int"] is not signal.default_int_handler and seen["term"] is not term
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is term
    assert signal.set_wakeup_fd(-1) == -1  # no wake-up fd left behind


def test_run_leaves_alone_a_handler_the_program_set_and_handle_sigint_false(default_sigint):
    def mine(signum, frame):
        pass

    seen = _handlers_during(lambda m: threadlib.run(m, handle_sigint=False))
    assert seen["int"] is signal.default_int_handler
    signal.signal(signal.SIGINT, mine)
    assert _handlers_during(threadlib.run)["int"] is mine
    assert signal.getsignal(signal.SIGINT) is mine


def test_a_scheduler_in_a_background_os_thread_installs_nothing(default_sigint):
    seen = {}

    def background():
        seen.update(_handlers_during(threadlib.run))

    t = threading.Thread(target=background)
    t.start()
    t.join(timeout=30)
    assert seen["int"] is signal.default_int_handler


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_is_bounded_even_when_a_finally_waits_on_a_socket_forever():
    """main returns; a background thread's finally then waits for data that
    never comes: run() still returns, after one second of its clock."""
    from threadlib.io import sockio
    from threadlib.lowlevel import Scheduler, VirtualClock

    def background(conn):
        try:
            yield from conn.recv(1)
        finally:
            yield from conn.recv(1)

    def main():
        a, b = sockio.socketpair()
        yield from threadlib.spawn(background(a))
        yield from threadlib.sleep(0)
        return threadlib.now(), (a, b)

    sched = Scheduler(clock=VirtualClock())
    started, pair = threadlib.run(main(), scheduler=sched)
    assert sched.clock.now() == started + 1.0
    for end in pair:
        end.close()
