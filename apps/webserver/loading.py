"""Finding the application that ``--wsgi`` or ``--asgi`` names.

``MODULE:NAME`` is imported with the current directory on the import path
(as ``python -m`` has it), ``NAME`` may be dotted, and every way it can be
wrong is one line naming what was wrong, so the command line can print it
and exit 2 before any port is opened. It only finds; it never runs the
application.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


class AppNotFound(ValueError):
    """The application could not be found (the message says why, in one line)."""


def load_app(spec: str, kind: str, default_name: str | None = None) -> Any:
    """The callable ``spec`` (``MODULE:NAME``) names; ``kind`` ("WSGI",
    "ASGI") is for the messages. Without ``:NAME``, ``default_name`` if
    given, else ``AppNotFound``."""
    module_name, sep, name = spec.partition(":")
    if not sep and default_name is not None:
        name = default_name
    if not module_name or not name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppNotFound(f"{spec!r} is not MODULE:NAME")
    if not all(part.isidentifier() for part in name.split(".")):
        raise AppNotFound(f"{spec!r}: {name!r} is not a name")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        first_line = (str(exc).splitlines() or [""])[0]
        raise AppNotFound(f"module {module_name!r} does not import: {type(exc).__name__}: {first_line}") from None
    app: Any = module
    for part in name.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise AppNotFound(f"module {module_name!r} has no {name!r}") from None
    if not callable(app):
        raise AppNotFound(f"{spec!r} names an object of type {type(app).__name__}, not a callable {kind} application")
    return app
