"""threadlib's test suite. The tree mirrors the packages: ``iolib/`` (with
``iolib/tcp/``, the stack's packet-level tests), ``threadlib/`` (kernel,
sync, contracts, exports; ``io/`` and ``frontends/`` below it) and
``apps/``. Every directory is a package, so helpers are imported by
relative import (``from .testkit import Harness``), not by path tricks."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
