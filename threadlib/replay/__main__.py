"""``python -m threadlib.replay``: check a recording against a program.

    python -m threadlib.replay check run.tlrec                 # the program the log names
    python -m threadlib.replay check run.tlrec -- MODULE:FUNCTION [ARG...]
    python -m threadlib.replay info run.tlrec

``check`` replays the log against ``MODULE:FUNCTION(*ARGS)`` (by default
the entry point and arguments the recording stored: the apps' ``--record``
stores theirs) and exits 0 when the program did everything the recording
did, 1 with the divergence on one line when it did not, 2 when the log
is damaged or the program cannot be loaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from . import Divergence, LogError, describe, replay


def _load(entry: str) -> Any:
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{entry!r} is not MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attr!r}") from None


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    program: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, program = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m threadlib.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "info"])
    parser.add_argument("log", help="the recording (a .tlrec file)")
    args = parser.parse_args(argv)
    try:
        info = describe(args.log)
    except LogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "info":
        meta = info["meta"]
        print(f"{args.log}: {info['bytes']} bytes, entry {meta.get('entry')} {meta.get('args')}, "
              f"python {meta.get('python')}")
        for kind, count in sorted(info["records"].items()):
            print(f"  {kind:8} {count}")
        return 0
    if program:
        entry, entry_args = program[0], program[1:]
    else:
        entry, entry_args = info["meta"].get("entry"), info["meta"].get("args", [])
        if not entry:
            print("error: the recording names no entry point: give one after --, as MODULE:FUNCTION",
                  file=sys.stderr)
            return 2
    try:
        function = _load(entry)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = replay(args.log, function, *entry_args)
    except Divergence as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        return 1
    except LogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the program's own failure, as recorded: replayed faithfully
        print(f"ok: the program raised {type(exc).__name__}: {exc}, as in the recording")
        return 0
    print(f"ok: the program did what the recording did ({sum(info['records'].values())} records); "
          f"it returned {result!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
