"""CPython's own asyncio tests against threadlib.loop: every test of the
selected ``test.test_asyncio`` classes (event loop, streams, servers,
sock_* methods, subprocesses, tasks, futures, sendfile, SSL, locks,
queues, task groups, timeouts; see ``asyncio_conformance.SUITES``) that
passes on the stock loop on this machine must pass on the threadlib loop,
except those listed with a reason in ``asyncio_conformance_exceptions.txt``.

Both runs happen in subprocesses side by side (``asyncio_conformance``),
each bounded in time, on the venv's Python and on every newer Python the
machine has (``.venv-py3.N``, made by ``setup.sh``; ``tests/pythons.py``):
CPython's tests of each version against the loop on that version."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import REPO_ROOT
from tests.pythons import newer_pythons

HERE = pathlib.Path(__file__).parent
EXCEPTIONS = HERE / "asyncio_conformance_exceptions.txt"

pytestmark = pytest.mark.timeout(420)


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


PYTHONS = [(f"{sys.version_info.major}.{sys.version_info.minor}", pathlib.Path(sys.executable)), *newer_pythons()]


@pytest.fixture(scope="module")
def conformance_runs(tmp_path_factory):
    """Every Python's stock and threadlib runs, started together (they
    mostly wait on timeouts and peers: side by side they take the time of
    one). Yields {(version, kind): (process, out path, log path)}."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    base = tmp_path_factory.mktemp("conformance")
    runs = {}
    for version, python in PYTHONS:
        if not python.exists():
            continue  # its test fails, naming the missing venv
        for kind in ("stock", "threadlib"):
            out, log_path = base / f"{version}-{kind}.json", base / f"{version}-{kind}.log"
            with open(log_path, "w") as log:
                proc = subprocess.Popen([str(python), "-m", "tests.threadlib.asyncio_conformance", kind, str(out)],
                                        cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
            runs[version, kind] = (proc, out, log_path)
    try:
        yield runs
    finally:
        for proc, _, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.mark.parametrize("version, python", PYTHONS, ids=[version for version, _ in PYTHONS])
def test_the_threadlib_loop_passes_what_the_stock_loop_passes(conformance_runs, version, python):
    assert python.exists(), f"no venv for Python {version}: setup.sh makes {python.parent.parent.name}"
    results = {}
    for kind in ("stock", "threadlib"):
        proc, out, log_path = conformance_runs[version, kind]
        try:
            proc.wait(timeout=330)  # about 75 s on a quiet machine, all six side by side
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, log_path.read_text()[-5000:]
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
    log = conformance_runs[version, "threadlib"][2].read_text()
    assert not missing, f"pass on the stock loop, not on threadlib's: {missing}\n{log[-8000:]}"
    stale = sorted(t for t in exceptions if t in passed_ours)
    assert not stale, f"listed as unable to pass, yet they pass: {stale}"
    print(f"\nPython {version}: stock loop: {len(passed_stock)}/{len(stock)} passed; "
          f"threadlib loop: {len(passed_ours)}/{len(ours)} passed")
