"""threadlib.process.multicore's exit status: the supervisor runs in a child
process of its own (it forks its workers), and the test reads its status
and log lines."""

import subprocess
import sys

import pytest

from tests import REPO_ROOT

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
