"""threadlib.process.multicore's exit status: the supervisor runs in a child
process of its own (it forks its workers), and the test reads its status
and log lines."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from tests import REPO_ROOT
from tests.waiting import wait_until

PROGRAM = r"""
import logging, os, sys
from threadlib.process import multicore
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
mode, workers = sys.argv[1], int(sys.argv[2])

def main(index, shutdown):
    if mode == "cannot-start":
        raise multicore.WorkerStartError("cannot listen on 192.0.2.1:80: Address already in use")
    if mode == "crash":
        raise RuntimeError("a fault in the worker")
    if mode == "one-cannot-start" and index == 1:
        raise multicore.WorkerStartError("worker 1 cannot start")
    if mode == "report":
        os.write(1, f"started {index} {os.getpid()}\n".encode())
    yield from shutdown.wait()

print("status", multicore.serve(main, workers, restart_limit=3), flush=True)
"""


def supervise(mode, workers):
    r = subprocess.run([sys.executable, "-c", PROGRAM, mode, str(workers)], cwd=str(REPO_ROOT),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1]), r.stderr


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_that_cannot_start_make_serve_return_1_with_the_reason_once(workers):
    """However many workers fail alike (the supervisor may stop the later
    ones before they fail), the reason is one line and none is restarted."""
    status, log = supervise("cannot-start", workers)
    assert status == 1
    assert log.splitlines() == ["ERROR cannot listen on 192.0.2.1:80: Address already in use"]


def test_one_worker_that_cannot_start_stops_the_others():
    status, log = supervise("one-cannot-start", 3)
    assert status == 1
    assert [line for line in log.splitlines() if line.startswith("ERROR")] == ["ERROR worker 1 cannot start"]


def test_workers_crashing_past_the_restart_limit_make_serve_return_1():
    status, log = supervise("crash", 2)
    assert status == 1
    assert log.count("restarting") == 3 and "restart limit reached, stopping" in log


def test_a_worker_killed_from_outside_is_restarted_with_its_index():
    """A worker that dies (here: SIGKILL) is replaced by a new process
    running the same worker index; a stop afterwards is still a clean
    exit (status 0)."""
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, "report", "2"], cwd=str(REPO_ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def started() -> dict:
        return dict(tuple(map(int, line.split()[1:])) for line in lines if line.startswith("started"))

    try:
        first = wait_until(lambda: len(started()) == 2 and started(), what="both workers started")
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: started().get(0) != first[0], what="worker 0 restarted")
        replacement = started()[0]
        assert replacement != first[0] and started()[1] == first[1]   # only the dead one replaced
        os.kill(replacement, 0)                                       # and it is alive
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=30)
    log = proc.stderr.read()
    proc.stderr.close()
    assert proc.returncode == 0, log
    assert lines[-1] == "status 0\n"
    assert "WARNING worker 0 exited (-9); restarting" in log.splitlines()
