"""CPython's own asyncio tests against threadlib.loop: every test of the
selected ``test.test_asyncio`` classes (event loop, streams, servers,
sock_* methods, subprocesses, tasks, futures, sendfile, SSL, locks,
queues, task groups, timeouts; see ``asyncio_conformance.SUITES``) that
passes on the stock loop on this machine must pass on the threadlib loop,
except those listed with a reason in ``asyncio_conformance_exceptions.txt``.

Both runs happen in subprocesses side by side (``asyncio_conformance``),
each bounded in time."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import REPO_ROOT

HERE = pathlib.Path(__file__).parent
EXCEPTIONS = HERE / "asyncio_conformance_exceptions.txt"

pytestmark = pytest.mark.timeout(400)


def listed_exceptions() -> dict[str, str]:
    """test id -> the reason it cannot apply, from the exceptions file."""
    found = {}
    for line in EXCEPTIONS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            test_id, _, reason = line.partition("#")
            assert reason.strip(), f"{EXCEPTIONS.name}: {test_id.strip()} is listed without a reason"
            found[test_id.strip()] = reason.strip()
    return found


def test_the_threadlib_loop_passes_what_the_stock_loop_passes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    runs = {}
    for kind in ("stock", "threadlib"):
        out = tmp_path / f"{kind}.json"
        log = open(tmp_path / f"{kind}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "tests.threadlib.asyncio_conformance", kind, str(out)],
                                cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        runs[kind] = (proc, out, log)
    results = {}
    for kind, (proc, out, log) in runs.items():
        try:
            proc.wait(timeout=170)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        assert proc.returncode == 0, (tmp_path / f"{kind}.log").read_text()[-5000:]
        results[kind] = json.loads(out.read_text())
    stock, ours = results["stock"], results["threadlib"]
    assert ours.pop("loops created") > 500  # the loop under test really ran the tests
    stock.pop("loops created")
    assert set(stock) == set(ours)  # the same tests ran on both
    passed_stock = {t for t, outcome in stock.items() if outcome == "pass"}
    passed_ours = {t for t, outcome in ours.items() if outcome == "pass"}
    assert len(passed_stock) > 900
    exceptions = listed_exceptions()
    missing = sorted(passed_stock - passed_ours - set(exceptions))
    log = (tmp_path / "threadlib.log").read_text()
    assert not missing, f"pass on the stock loop, not on threadlib's: {missing}\n{log[-8000:]}"
    stale = sorted(t for t in exceptions if t in passed_ours)
    assert not stale, f"listed as unable to pass, yet they pass: {stale}"
    print(f"\nstock loop: {len(passed_stock)}/{len(stock)} passed; "
          f"threadlib loop: {len(passed_ours)}/{len(ours)} passed")
