"""The newer Pythons (3.12 and later) this machine has, and the venvs
``setup.sh`` makes for them (``.venv-py3.N``, the package built for that
Python plus the test extras).

Found the way ``setup.sh`` finds them: a ``python3.N`` on PATH that runs,
else pyenv's ``versions/3.N.*``. The tests that run ``threadlib.loop`` on
each of them use this list, so a Python that setup.sh missed fails its test
instead of being left out unnoticed."""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess

from tests import REPO_ROOT

MINORS = (12, 13, 14, 15)


def _runs(command: str) -> bool:
    try:
        return subprocess.run([command, "-V"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def interpreter(minor: int) -> str | None:
    """Python 3.``minor``'s interpreter on this machine, or None."""
    name = f"python3.{minor}"
    if shutil.which(name) and _runs(name):
        return name
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{root}/versions/3.{minor}.*/bin/{name}"))
    return found[-1] if found and _runs(found[-1]) else None


def newer_pythons() -> list[tuple[str, pathlib.Path]]:
    """[("3.N", the venv's python)] for every Python 3.12+ on this machine."""
    return [(f"3.{minor}", REPO_ROOT / f".venv-py3.{minor}" / "bin" / "python")
            for minor in MINORS if interpreter(minor)]
