"""Shared pytest fixtures.  Each fixture is self-contained; append new ones
below with a clear name rather than changing existing ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


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
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a ramfs (need root): {result.stderr.strip()}")
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
