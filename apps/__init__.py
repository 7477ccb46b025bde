"""threadlib's programs: the web server, the load generator, the proxy, the
echo server and the handler-style framework. From a checkout they run as
``python -m apps.NAME``; installed, they are the package ``threadlib.apps``
and the console scripts ``threadlib-NAME``."""

from __future__ import annotations

import os
import sys


def program_name(name: str) -> str:
    """How the user started program ``name``, for usage lines and errors:
    ``threadlib-NAME`` as a console script, ``python -m apps.NAME`` else."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv else ""
    return invoked if invoked.startswith("threadlib-") else f"python -m apps.{name}"


def summary(doc: str | None) -> str:
    """A module docstring's first paragraph, on one line."""
    return " ".join((doc or "").split("\n\n")[0].split())
