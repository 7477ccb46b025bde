"""Mutation testing of the core: how many small breaks of the code the tests
catch.  For each chosen module, cosmic-ray makes every mutant its operators
can make (a flipped comparison, a changed constant, a removed `not`...),
runs that module's tests against each, and this script prints a table per
module (killed / survived / timeout / equivalent) and every surviving
mutant with its diff, which is a claim the tests do not hold the code to.

It must never touch the working tree: the tracked files (as they are now,
committed or not) are copied to a scratch directory and mutated there, and
the sessions (sqlite) are kept only in the directory --keep names.  Runs
are long (one test run per mutant): run one module at a time on a shared
machine.

    python -m bench.mutation --list
    python -m bench.mutation threadlib/sync.py
    python -m bench.mutation threadlib/sync.py --keep /tmp/mut   # keep the session
    python -m bench.mutation threadlib/sync.py --keep /tmp/mut --retest-survivors
    python -m bench.mutation iolib/tcp/checksum.py --tests tests/iolib/tcp/test_tcp_wire.py
    python -m bench.mutation --all            # hours; not on a shared machine

What is counted:
- killed: the tests failed (exit status not 0) within the timeout;
- timeout: the tests ran past the timeout (default: three times the
  unmutated run, at least 10 s) and were stopped.  cosmic-ray counts these as killed;
  here they are a column of their own, since a hang proves less than a
  failing assertion;
- survived: the tests passed.  A survivor listed in docs/testing.md's table
  of equivalent mutants (same module, operator and mutated line) is counted
  as equivalent instead and not printed;
- not run: mutants inside annotations.  Every kernel module has
  `from __future__ import annotations`, so annotations are strings that
  nothing evaluates (mypy --strict checks them, in tests/threadlib/
  test_typing.py); a `X | None` turned into `X + None` there cannot change
  behaviour, and there are hundreds of them.
The score is killed / (killed + timeout + survived): timeouts and survivors
both count against it, equivalents do not.

Why cosmic-ray and not mutmut: mutmut 3 runs the tests from a mutants/
copy whose modules are rewritten into trampolines, which fights the
compiled kernel extension, the relative test imports and the tests that
start the programs in fresh interpreters (the trampolines need mutmut's
environment there too); cosmic-ray mutates one real source file at a time
and runs an ordinary test command, so every test (subprocesses included)
sees the mutant.  The hot path runs pure Python (THREADLIB_PURE=1) so
that mutants of the kernel's Python code are the code that runs.  The test
command leaves out the hypothesis and anyio pytest plugins unless the
chosen tests use them: loading them is most of pytest's start-up, paid
once per mutant.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import os
import pathlib
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable
EQUIVALENTS_DOC = ROOT / "docs" / "testing.md"


def _t(*names: str) -> list[str]:
    return [f"tests/threadlib/{name}.py" for name in names]


# module -> the tests meant to catch a break in it, the most direct first
# (pytest stops at the first failure, so a killed mutant costs one file).
def _tcp(*names: str) -> list[str]:
    return [f"tests/iolib/tcp/test_tcp_{name}.py" for name in names]


# Each iolib/tcp module gets the packet-level test files of its concern
# first, then the other quick ones (the whole stack runs under each, so a
# break in one module can show anywhere).  Left out: test_tcp_fuzz.py
# (hypothesis, seconds per run, a crash-finder that asserts no exact
# reply) and, except for the modules it is about, test_tcp_fragments.py
# (the slowest file).  A mutant then costs 2-4 s instead of ~10.
_TCP_QUICK = ("wire", "open", "close", "data", "retransmit", "recovery", "icmp", "offload", "twostack")
_TCP_FIRST: dict[str, tuple[str, ...]] = {
    "checksum": ("wire", "icmp", "offload", "fragments"),
    "connection": ("data", "close", "open", "retransmit", "recovery"),
    "fragments": ("fragments",),
    "handshake": ("open",),
    "ip": ("wire", "icmp", "fragments"),
    "newreno": ("retransmit", "recovery"),
    "options": ("open", "wire"),
    "output": ("data", "retransmit", "offload"),
    "rack": ("recovery", "retransmit"),
    "receive": ("data", "close"),
    "recovery": ("retransmit", "recovery"),
    "rtt": ("retransmit", "data"),
    "sack_recovery": ("recovery", "retransmit"),
    "segment": ("wire", "open", "data"),
    "seq": ("wire", "data"),
    "stack": ("open", "close", "icmp", "fragments"),
    "timers": ("retransmit", "data", "close"),
}
TARGETS: dict[str, list[str]] = {
    "threadlib/sync.py": _t("test_sync", "test_kernel", "test_groups", "test_scopes"),
    "threadlib/_kernel/waitqueue.py": _t("test_waitqueue", "test_sync", "test_kernel", "test_scopes"),
    "threadlib/_kernel/scopes.py": _t("test_scopes", "test_groups", "test_kernel", "test_interrupts"),
    "threadlib/_kernel/timers.py": _t("test_timers", "test_scopes", "test_kernel", "test_sim"),
    "threadlib/_kernel/groups.py": _t("test_groups", "test_kernel", "test_scopes", "test_interrupts"),
    "threadlib/_kernel/threads.py": _t("test_threads", "test_kernel", "test_groups", "test_contextvars",
                                       "test_introspect", "test_interrupts"),
    "threadlib/_kernel/scheduler.py": _t("test_kernel", "test_sync", "test_waitqueue", "test_timers",
                                         "test_scopes", "test_groups", "test_interrupts",
                                         "test_contextvars", "test_introspect"),
    "threadlib/_kernel/worker.py": _t("test_kernel", "test_sync", "test_scopes", "test_groups"),
    "threadlib/_kernel/clocks.py": _t("test_clocks", "test_sim", "test_scopes", "test_kernel"),
    "threadlib/_kernel/fdio.py": _t("test_fdio", "io/test_sockio", "test_kernel", "test_net_contract"),
    "threadlib/_kernel/pollers.py": _t("io/test_sockio", "test_kernel"),
    "threadlib/_kernel/blocking.py": _t("test_blocking", "test_kernel", "io/test_sockio", "test_contextvars"),
    "threadlib/io/sockio.py": _t("io/test_sockio", "test_net_contract", "test_fdio"),
}
for _path in sorted((ROOT / "iolib" / "tcp").glob("*.py")):
    if _path.stem in _TCP_FIRST:
        _first = _TCP_FIRST[_path.stem]
        TARGETS[str(_path.relative_to(ROOT))] = _tcp(*_first, *(n for n in _TCP_QUICK if n not in _first))


@dataclass
class Tally:
    """The outcome of one module's campaign."""

    module: str
    killed: int = 0
    timeout: int = 0
    survived: int = 0
    equivalent: int = 0
    incompetent: int = 0
    not_run: int = 0
    not_sampled: int = 0
    survivors: list[tuple[str, str, str]] = field(default_factory=list)  # (where, operator, diff)

    @property
    def score(self) -> str:
        scored = self.killed + self.timeout + self.survived
        return f"{100.0 * self.killed / scored:.1f}%" if scored else "n/a"

    def add(self, other: Tally) -> None:
        for name in ("killed", "timeout", "survived", "equivalent", "incompetent", "not_run", "not_sampled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


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


def test_command(tests: list[str]) -> str:
    """The pytest command run against each mutant."""
    plugins_off = []
    used = "\n".join((ROOT / t).read_text() for t in tests if (ROOT / t).is_file())
    if "hypothesis" not in used:
        plugins_off += ["-p", "no:hypothesispytest"]
    if "anyio" not in used and "trio" not in used:
        plugins_off += ["-p", "no:anyio"]
    return " ".join([PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *plugins_off, *tests])


def config_text(module: str, command: str, timeout: float) -> str:
    return (f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}\n'
            f'excluded-modules = []\ntest-command = "{command}"\n\n'
            f'[cosmic-ray.distributor]\nname = "local"\n')


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions (line, column) of every annotation in a module."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
        elif isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for expr in found:
            if expr is not None:
                spans.append(((expr.lineno, expr.col_offset),
                              (expr.end_lineno or expr.lineno, expr.end_col_offset or 0)))
    return spans


def _cells(row: str) -> list[str]:
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def equivalents(doc: pathlib.Path = EQUIVALENTS_DOC) -> set[tuple[str, int, str, str]]:
    """(module, line, operator, mutated line) of the mutants docs/testing.md
    lists as equivalent: rows of the table under the heading 'Equivalent
    mutants', `| module:line | operator | mutated line | why |`, code in
    backquotes.  The line number is part of the key (one text can be
    equivalent in one place and not in another); when the code moves, a
    row stops matching and its mutant shows as a survivor again, which
    errs on the safe side."""
    found: set[tuple[str, int, str, str]] = set()
    if not doc.is_file():
        return found
    in_section = False
    for line in doc.read_text().splitlines():
        if line.startswith("#"):
            in_section = "equivalent mutants" in line.lower()
            continue
        if in_section and line.startswith("| `"):
            cells = _cells(line)
            if len(cells) >= 3:
                module, line_number = cells[0].strip("`").rsplit(":", 1)
                found.add((module, int(line_number), cells[1].strip("`"), cells[2].strip("`").strip()))
    return found


def mutated_line(diff: str) -> str:
    """The line a mutant's diff puts in (stripped), the key of an
    equivalent; for a mutant that only removes (a decorator), "-" and the
    line it removes."""
    lines = diff.splitlines()
    added = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    if added:
        return added[0]
    removed = [line[1:].strip() for line in lines
               if line.startswith("-") and not line.startswith("---") and line[1:].strip()]
    return "-" + removed[0] if removed else ""


def source_digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_module(module: str, timeout: float | None, keep: pathlib.Path | None,
               tests: list[str] | None = None, retest_survivors: bool = False,
               sample: int | None = None) -> Tally:
    """Mutate one module in a scratch copy; print its survivors and return
    its tally.  With keep, the session is stored there and reused when the
    module has not changed (only mutants without a result are run, and
    with retest_survivors the survivors and timeouts are run again).  With
    sample, only that many mutants (a fixed pseudo-random choice, the same
    every time for the same module) are run: an estimate for a module too
    big to run whole."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    if module not in TARGETS and not tests:
        raise SystemExit(f"unknown module {module!r}; see --list, or name its tests with --tests")
    tests = tests or TARGETS[module]
    command = test_command(tests)
    stored = keep / (module.replace("/", "_") + ".sqlite") if keep else None
    digest = source_digest(ROOT / module)
    with tempfile.TemporaryDirectory(prefix="threadlib-mutation-") as tmp:
        work = pathlib.Path(tmp)
        scratch_copy(work)
        env = dict(os.environ, THREADLIB_PURE="1", PYTHONPATH=str(work))
        where = subprocess.run([PYTHON, "-c", "import threadlib; print(threadlib.__file__)"], cwd=work,
                               env=env, check=True, capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(work)):
            raise SystemExit(f"the scratch copy imports threadlib from {where}, not from {work}")
        # The unmutated tests must pass, or every mutant would look killed;
        # their time sets the default timeout.
        began = time.monotonic()
        baseline = subprocess.run(command.split(), cwd=work, env=env, capture_output=True, text=True)
        took = time.monotonic() - began
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:], baseline.stderr[-2000:])
            raise SystemExit(f"{module}: the tests fail without any mutation; fix that first")
        if timeout is None:
            timeout = max(10.0, 3 * took)
        print(f"{module}: unmutated tests pass in {took:.1f} s; timeout {timeout:.0f} s; "
              f"tests: {' '.join(tests)}", flush=True)
        (work / "mutation.toml").write_text(config_text(module, command, timeout))
        cosmic = [PYTHON, "-m", "cosmic_ray.cli"]
        session = work / "session.sqlite"
        reuse = (stored is not None and stored.is_file()
                 and stored.with_suffix(".digest").is_file()
                 and stored.with_suffix(".digest").read_text() == digest)
        if reuse:
            assert stored is not None
            shutil.copy2(stored, session)
            if retest_survivors:
                with sqlite3.connect(session) as db:
                    db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED' "
                               "OR (test_outcome = 'KILLED' AND output = 'timeout')")
        else:
            subprocess.run(cosmic + ["init", "mutation.toml", str(session)], cwd=work, env=env, check=True)
            spans = annotation_spans((ROOT / module).read_text())
            with use_db(str(session), WorkDB.Mode.open) as db:
                skipped = [item.job_id for item in db.work_items
                           if any(start <= tuple(item.mutations[0].start_pos) < end for start, end in spans)]
                db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                            output="annotation"))
                if sample is not None:
                    left = sorted((item for item in db.work_items if item.job_id not in set(skipped)),
                                  key=lambda item: (item.mutations[0].start_pos, item.mutations[0].operator_name,
                                                    item.mutations[0].occurrence))
                    chosen = set(id(item) for item in random.Random(module).sample(left, min(sample, len(left))))
                    db.set_multiple_results([item.job_id for item in left if id(item) not in chosen],
                                            WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not sampled"))
        with use_db(str(session), WorkDB.Mode.open) as db:
            total, pending = db.num_work_items, len(db.pending_work_items)
        print(f"{module}: {total} mutants, {pending} to run", flush=True)
        runner = subprocess.Popen(cosmic + ["exec", "mutation.toml", str(session)], cwd=work, env=env)
        try:
            while runner.poll() is None:
                try:
                    runner.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    with sqlite3.connect(session) as db:
                        done = db.execute("SELECT count(*) FROM work_results").fetchone()[0]
                    print(f"  {module}: {done}/{total} done", flush=True)
        finally:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(session, stored)
                stored.with_suffix(".digest").write_text(digest)
        if runner.returncode != 0:
            raise SystemExit(f"{module}: cosmic-ray exec failed ({runner.returncode})")
        tally = tally_session(module, session)
    return report(tally)


def tally_session(module: str, session: pathlib.Path) -> Tally:
    """Count the outcomes a session recorded (equivalents per docs/testing.md)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    tally = Tally(module)
    known = equivalents()
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            spec = item.mutations[0]
            if result.worker_outcome == WorkerOutcome.SKIPPED and result.output == "not sampled":
                tally.not_sampled += 1
            elif result.worker_outcome == WorkerOutcome.SKIPPED:
                tally.not_run += 1
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                tally.incompetent += 1
            elif result.test_outcome == TestOutcome.KILLED and result.output == "timeout":
                tally.timeout += 1
                print(f"TIMEOUT {module}:{spec.start_pos[0]} {spec.operator_name}")
            elif result.test_outcome == TestOutcome.KILLED:
                tally.killed += 1
            elif (module, spec.start_pos[0], spec.operator_name, mutated_line(result.diff or "")) in known:
                tally.equivalent += 1
            else:
                tally.survived += 1
                tally.survivors.append((f"{module}:{spec.start_pos[0]}", spec.operator_name,
                                        result.diff or ""))
    return tally


def report(tally: Tally) -> Tally:
    """Print a module's survivors and score line."""
    module = tally.module
    for where_, operator, diff in sorted(tally.survivors, key=lambda s: int(s[0].rsplit(":", 1)[1])):
        print(f"SURVIVED {where_} {operator}")
        print("    " + diff.strip().replace("\n", "\n    "))
    print(f"{module}: score {tally.score} (killed {tally.killed}, timeout {tally.timeout}, "
          f"survived {tally.survived}, equivalent {tally.equivalent}, incompetent "
          f"{tally.incompetent}, not run {tally.not_run}, not sampled {tally.not_sampled})", flush=True)
    return tally


def table(tallies: list[Tally]) -> str:
    """The scores as a markdown table, dated."""
    rows = [f"Mutation scores of {datetime.date.today().isoformat()} "
            "(score = killed / (killed + timeout + survived))", "",
            "| module | killed | timeout | survived | equivalent | not run (annotations) "
            "| not sampled | score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tallies:
        rows.append(f"| `{t.module}` | {t.killed} | {t.timeout} | {t.survived} | {t.equivalent} "
                    f"| {t.not_run} | {t.not_sampled} | {t.score} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line: modules to mutate (or --all / --list)."""
    parser = argparse.ArgumentParser(prog="python -m bench.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="paths such as iolib/tcp/seq.py")
    parser.add_argument("--all", action="store_true", help="every module in the list (long)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument("--timeout", type=float, help="seconds per test run (default: three times "
                        "the unmutated run, at least 10; re-test the timeouts with a longer one to be "
                        "sure they hang)")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of the module's list")
    parser.add_argument("--keep", type=pathlib.Path, help="directory to keep the sessions (sqlite) in, "
                        "reused while the module is unchanged")
    parser.add_argument("--sample", type=int, help="run only this many mutants per module, a fixed "
                        "pseudo-random choice (an estimate for the big modules)")
    parser.add_argument("--report", action="store_true",
                        help="with --keep: run nothing, report the kept sessions of the modules named")
    parser.add_argument("--retest-survivors", action="store_true",
                        help="with --keep: run the survivors and timeouts of the kept session again")
    args = parser.parse_args(argv)
    # A kill (SIGTERM) ends the run through the finally blocks: the kept
    # session is saved with what was done, and the scratch copy removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.list:
        for module, tests in TARGETS.items():
            print(f"{module}: {' '.join(tests)}")
        return 0
    modules = list(TARGETS) if args.all else args.modules
    if not modules:
        parser.error("name a module (see --list) or pass --all")
    if args.timeout is not None and not (args.timeout > 0):
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.retest_survivors and args.keep is None:
        parser.error("--retest-survivors needs --keep (the session whose survivors to run again)")
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be a positive number of mutants, got {args.sample}")
    if args.report:
        if args.keep is None:
            parser.error("--report needs --keep (the directory of the sessions)")
        tallies = []
        for module in modules:
            stored = args.keep / (module.replace("/", "_") + ".sqlite")
            if not stored.is_file():
                parser.error(f"no kept session for {module} in {args.keep}")
            tallies.append(report(tally_session(module, stored)))
    else:
        tallies = [run_module(module, args.timeout, args.keep, args.tests, args.retest_survivors,
                              args.sample) for module in modules]
    if len(tallies) > 1:
        total = Tally("all")
        for t in tallies:
            total.add(t)
        tallies.append(total)
    print()
    print(table(tallies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
