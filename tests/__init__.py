"""threadlib's test suite. The tree mirrors the packages: ``iolib/`` (with
``iolib/tcp/``, the stack's packet-level tests), ``threadlib/`` (kernel,
sync, contracts, exports; ``io/`` and ``frontends/`` below it) and
``apps/``. Every directory is a package, so helpers are imported by
relative import (``from .testkit import Harness``), not by path tricks."""

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_trace_program(path: str, pure: bool) -> list[str]:
    """The output lines of the trace program at ``path``, run in a child
    process with the compiled hot path or, with ``pure``, THREADLIB_PURE=1
    (the choice is made at import); the program must exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "THREADLIB_PURE"}
    if pure:
        env["THREADLIB_PURE"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()
