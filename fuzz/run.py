"""Run one fuzz target under atheris: ``python -m fuzz.run TARGET
[libFuzzer flags] [CORPUS_DIR ...]``.

The target's ``INSTRUMENT`` packages are imported under atheris's
instrumentation (their lines and branches guide the mutations); anything
else, the fuzzer's own harness included, runs uninstrumented. Every
libFuzzer flag works (``-max_total_time=N``, ``-timeout=S``,
``-artifact_prefix=DIR/``, ``-runs=N``, ...); a crash exits non-zero and
leaves the input in ``crash-<sha1>`` under the artifact prefix.

This module must never be imported by a test process: atheris installs
its hooks in the process that imports it.
"""

from __future__ import annotations

import importlib
import sys

from . import TARGETS


def main(argv: list[str]) -> None:
    """Fuzz ``argv[1]`` with the libFuzzer arguments after it."""
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags] [CORPUS_DIR ...]")
    import atheris  # only here: it hooks the interpreter it is imported into

    name = argv[1]
    with atheris.instrument_imports(include=_instrumented_packages(name)):
        target = importlib.import_module(f"fuzz.{name}")
    atheris.Setup([argv[0], *argv[2:]], target.TestOneInput)
    atheris.Fuzz()


def _instrumented_packages(name: str) -> list[str]:
    # Read from the module's source rather than by importing it, which
    # would import the code under test before the instrumentation is on.
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "INSTRUMENT" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"fuzz.{name} has no INSTRUMENT list")


if __name__ == "__main__":
    main(sys.argv)
