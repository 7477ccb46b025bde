"""Mutation testing of the core: how many small breaks of the code the tests
catch.  For each chosen module, cosmic-ray makes every mutant its operators
can make (a flipped comparison, a changed constant, a removed `not`...),
runs that module's tests against each, and this script prints the score per
module (killed / (killed + survived)) and every surviving mutant with its
diff, which is a claim the tests do not hold the code to.

It must never touch the working tree: the tracked files (as they are now,
committed or not) are copied to a scratch directory and mutated there, and
the sessions (sqlite) are kept under bench/results/mutation/ only when
asked.  Runs are long (one test run per mutant): run one module at a time
on a shared machine.

    python -m bench.mutation --list
    python -m bench.mutation iolib/tcp/seq.py
    python -m bench.mutation iolib/tcp/checksum.py --tests tests/iolib/tcp/test_tcp_wire.py
    python -m bench.mutation --all            # hours; not on a shared machine

Why cosmic-ray and not mutmut: mutmut 3 runs the tests from a mutants/
copy whose modules are rewritten into trampolines, which fights the
compiled kernel extension, the relative test imports and the tests that
start the programs in fresh interpreters (the trampolines need mutmut's
environment there too); cosmic-ray mutates one real source file at a time
and runs an ordinary test command, so every test (subprocesses included)
sees the mutant.  The hot path runs pure Python (THREADLIB_PURE=1) so
that mutants of the kernel's Python code are the code that runs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# module -> the tests that are meant to catch a break in it.
KERNEL_TESTS = ["tests/threadlib/test_kernel.py", "tests/threadlib/test_sync.py",
                "tests/threadlib/test_scopes.py", "tests/threadlib/test_groups.py",
                "tests/threadlib/test_interrupts.py"]
TCP_TESTS = ["tests/iolib/tcp"]
TARGETS: dict[str, list[str]] = {
    "threadlib/_kernel/scheduler.py": KERNEL_TESTS,
    "threadlib/_kernel/waitqueue.py": KERNEL_TESTS,
    # the workers
    "threadlib/_kernel/worker.py": KERNEL_TESTS,
    "threadlib/_kernel/timers.py": KERNEL_TESTS,
    "threadlib/_kernel/pollers.py": KERNEL_TESTS + ["tests/threadlib/io/test_sockio.py"],
    "threadlib/_kernel/fdio.py": KERNEL_TESTS + ["tests/threadlib/io/test_sockio.py"],
    "threadlib/_kernel/blocking.py": KERNEL_TESTS + ["tests/threadlib/io/test_fileio.py"],
    "threadlib/sync.py": ["tests/threadlib/test_sync.py", "tests/threadlib/test_kernel.py"],
    "threadlib/io/sockio.py": ["tests/threadlib/io/test_sockio.py"],
}
for _path in sorted((ROOT / "iolib" / "tcp").glob("*.py")):
    if _path.name != "__init__.py":
        TARGETS[str(_path.relative_to(ROOT))] = TCP_TESTS


def scratch_copy(into: pathlib.Path) -> None:
    """The tracked files as they are in the working tree now."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def config_text(module: str, tests: list[str], timeout: float) -> str:
    command = " ".join([PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        *tests])
    return (f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}\n'
            f'excluded-modules = []\ntest-command = "{command}"\n\n'
            f'[cosmic-ray.distributor]\nname = "local"\n')


def run_module(module: str, timeout: float, keep: pathlib.Path | None,
               tests: list[str] | None = None) -> tuple[int, int, int]:
    """Mutate one module in a scratch copy; print and return (killed,
    survived, incompetent)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    if module not in TARGETS:
        raise SystemExit(f"unknown module {module!r}; see --list")
    with tempfile.TemporaryDirectory(prefix="threadlib-mutation-") as tmp:
        work = pathlib.Path(tmp)
        scratch_copy(work)
        (work / "mutation.toml").write_text(config_text(module, tests or TARGETS[module], timeout))
        env = dict(os.environ, THREADLIB_PURE="1", PYTHONPATH=str(work))
        cosmic = [PYTHON, "-m", "cosmic_ray.cli"]
        session = work / "session.sqlite"
        # The unmutated tests must pass, or every mutant would look killed.
        baseline = subprocess.run(cosmic + ["baseline", "mutation.toml"], cwd=work, env=env)
        if baseline.returncode != 0:
            raise SystemExit(f"{module}: the tests fail without any mutation; fix that first")
        subprocess.run(cosmic + ["init", "mutation.toml", str(session)], cwd=work, env=env, check=True)
        subprocess.run(cosmic + ["exec", "mutation.toml", str(session)], cwd=work, env=env, check=True)
        killed = survived = incompetent = 0
        survivors = []
        with use_db(str(session), WorkDB.Mode.open) as db:
            for item, result in db.completed_work_items:
                if result.test_outcome == TestOutcome.SURVIVED:
                    survived += 1
                    survivors.append((item, result))
                elif result.test_outcome == TestOutcome.INCOMPETENT:
                    incompetent += 1
                else:
                    killed += 1
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(session, keep / (module.replace("/", "_") + ".sqlite"))
    for item, result in sorted(survivors, key=lambda pair: pair[0].mutations[0].start_pos):
        spec = item.mutations[0]
        print(f"SURVIVED {spec.module_path}:{spec.start_pos[0]} {spec.operator_name}")
        print("    " + (result.diff or "").strip().replace("\n", "\n    "))
    scored = killed + survived
    score = f"{100.0 * killed / scored:.1f}%" if scored else "n/a"
    print(f"{module}: score {score} (killed {killed}, survived {survived}, "
          f"incompetent {incompetent})", flush=True)
    return killed, survived, incompetent


def main(argv: list[str] | None = None) -> int:
    """Command line: modules to mutate (or --all / --list)."""
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="paths such as iolib/tcp/seq.py")
    parser.add_argument("--all", action="store_true", help="every module in the list (long)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per test run (default 120)")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of the module's list "
                        "(a quicker, partial score)")
    parser.add_argument("--keep", type=pathlib.Path, help="directory to keep the sessions (sqlite) in")
    args = parser.parse_args(argv)
    if args.list:
        for module, tests in TARGETS.items():
            print(f"{module}: {' '.join(tests)}")
        return 0
    modules = list(TARGETS) if args.all else args.modules
    if not modules:
        parser.error("name a module (see --list) or pass --all")
    if not (args.timeout > 0):
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    totals = [0, 0, 0]
    for module in modules:
        for i, n in enumerate(run_module(module, args.timeout, args.keep, args.tests)):
            totals[i] += n
    if len(modules) > 1:
        scored = totals[0] + totals[1]
        print(f"all: score {100.0 * totals[0] / scored:.1f}% over {scored} mutants" if scored else "all: n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
