"""Shared pytest fixtures.  Each fixture is self-contained; append new ones
below with a clear name rather than changing existing ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


# --- skips: reported at the end, and refused on CI beyond the allowed ones ---

# On the CI machine every test runs but this one: the kernel there has no
# sch_netem (tc netem), and the LossyLink test covers the same ground.
CI_ALLOWED_SKIPS = ("tests/threadlib/io/test_tcp_interop.py::test_netem_link_16_mib_each_way_is_byte_exact",)

_skipped: list[tuple[str, str]] = []


def _strict_skips() -> bool:
    """On CI (CI set, as CI services do) or when asked with
    THREADLIB_STRICT_SKIPS=1, a skip not in CI_ALLOWED_SKIPS fails the run."""
    return bool(os.environ.get("THREADLIB_STRICT_SKIPS") or os.environ.get("CI"))


def pytest_runtest_logreport(report):
    """Collect each skipped test and its reason."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print every skip with its reason, so that none goes unnoticed."""
    terminalreporter.section("skipped tests and why")
    if not _skipped:
        terminalreporter.write_line("no test was skipped")
    for nodeid, reason in _skipped:
        allowed = " (allowed on CI)" if nodeid in CI_ALLOWED_SKIPS else ""
        terminalreporter.write_line(f"{nodeid}: {reason}{allowed}")
    refused = [nodeid for nodeid, _ in _skipped if nodeid not in CI_ALLOWED_SKIPS]
    if refused and _strict_skips():
        terminalreporter.write_line(f"{len(refused)} skip(s) not allowed on CI: the run fails", red=True)


def pytest_sessionfinish(session, exitstatus):
    """With strict skips, a skip outside CI_ALLOWED_SKIPS fails the run."""
    if _strict_skips() and any(nodeid not in CI_ALLOWED_SKIPS for nodeid, _ in _skipped):
        if session.exitstatus == 0:
            session.exitstatus = 1


def pytest_configure(config):
    """threadlib's pytest plugin: registered by its entry point once the
    package is installed with this pyproject; from a checkout whose
    installed metadata predates it (or PYTHONPATH on another tree), here.
    Registering it under the entry point's name keeps the two from
    clashing and keeps -p no:threadlib working."""
    if not config.pluginmanager.has_plugin("threadlib") and not config.pluginmanager.is_blocked("threadlib"):
        from threadlib.testing import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "threadlib")


# --- fixtures for tests/test_aio.py -----------------------------------------

def _supports_o_direct(directory: str) -> bool:
    probe = os.path.join(directory, ".o_direct_probe")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


@pytest.fixture
def aio_direct_dir(tmp_path: Path) -> Path:
    """A fresh directory on a filesystem that accepts O_DIRECT (a real disk
    filesystem when one is reachable: /var/tmp, then the repo, then tmp_path)."""
    repo = Path(__file__).resolve().parent.parent
    for parent in ("/var/tmp", str(repo), str(tmp_path)):
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            continue
        directory = tempfile.mkdtemp(prefix="aio-test-", dir=parent)
        if _supports_o_direct(directory):
            try:
                yield Path(directory)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            return
        shutil.rmtree(directory, ignore_errors=True)
    pytest.skip("no writable filesystem here accepts O_DIRECT")


@pytest.fixture
def aio_ramfs_dir(tmp_path: Path) -> Path:
    """A freshly mounted ramfs (which refuses O_DIRECT), unmounted afterwards.
    tmpfs is no use for this since Linux 6.6 accepts O_DIRECT on tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a ramfs needs root")
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        # mount(8) is not the code under test: a machine that refuses it
        # (a container without CAP_SYS_ADMIN) is a fact about the machine.
        pytest.skip(f"this machine refuses to mount a ramfs: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


# --- fixtures for tests/test_packetio.py ------------------------------------

@pytest.fixture
def packetio_netns():
    """A fresh, uniquely named network namespace, deleted afterwards (even
    on failure).  Skips when not root or without /dev/net/tun."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces and TUN devices need root")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("/dev/net/tun is missing")
    from iolib.netns import NetNamespace

    ns = NetNamespace.create(prefix="tltest")
    try:
        yield ns
    finally:
        ns.delete()
