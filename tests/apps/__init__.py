"""Tests of the programs in apps/, run as real processes and real clients."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_group(proc: subprocess.Popen) -> None:
    """End a program started with ``start_new_session=True`` and every
    process it forked (``--workers N``), even when the test failed before
    asking it to stop: killing only the parent would leave its workers
    serving after the test."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
