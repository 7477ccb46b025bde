"""The seed runner: one scenario over many seeds in a pool of processes,
failures reported with the one command that reproduces them, and
shrinking of a failing seed's fault schedule.

A scenario is a function taking a fresh ``World`` (named on the command
line as ``MODULE:FUNCTION``). Each seed runs in a worker process of a pool
(``--jobs``); a worker runs seeds one after another, each in a world of
its own, closed after it. A seed fails when the scenario raises (an
exception of its own, ``sim.always``, ``Deadlock``, ``TimeLimitReached``,
``Livelock``) or when its liveness phase does not converge (a scenario
that returns a callable ``converged``: ``world.heal_all()``, then
``converged()`` must hold within ``--liveness`` simulated seconds).

Shrinking works on the world's fault schedule (``FaultSchedule``): a run
lists the ids of the faults that fired; the shrinker runs the seed again
allowing only subsets of them (delta debugging: drop chunks, halving the
chunk size when no chunk can go) while the seed still fails the same
way, and prints the smallest schedule found with the command that runs
it. Because every packet draws the same numbers whatever is decided, the
faults kept hit the same packet numbers as before.

The runner measures wall time for its report only: nothing it reads from
the wall clock reaches a simulation. It must never share a world, a
scenario's state or a random stream between two seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import multiprocessing
import shlex
import sys
import time
from typing import Any, Callable, Iterable, Sequence

from .world import InvariantFailed, World, run_scenario


@dataclasses.dataclass
class RunOptions:
    """How each seed is run (the same for every seed of a run, and in
    the command that reproduces one)."""

    shuffle: bool = False
    faults: tuple[str, ...] | None = None  # None: every fault the seed draws
    time_limit: float = 3600.0
    liveness: float = 60.0
    step_limit: int = 1_000_000

    def command(self, ref: str, seed: int | str, faults: Sequence[str] | None = None) -> str:
        """The shell command that runs ``ref`` with ``seed`` and these options
        (and ``faults`` in place of this run's, when given)."""
        words = ["python", "-m", "threadlib.sim", "run", ref, "--seeds", str(seed)]
        if self.shuffle:
            words.append("--shuffle")
        chosen = self.faults if faults is None else tuple(faults)
        if chosen is not None:
            words += ["--faults", ",".join(chosen) if chosen else "none"]
        if self.time_limit != 3600.0:
            words += ["--time-limit", repr(self.time_limit)]
        if self.liveness != 60.0:
            words += ["--liveness", repr(self.liveness)]
        if self.step_limit != 1_000_000:
            words += ["--step-limit", str(self.step_limit)]
        return " ".join(shlex.quote(w) for w in words)


@dataclasses.dataclass
class SeedResult:
    """One seed's outcome: ``error`` (None when it passed) and ``signature``
    (what "fails the same way" compares), the simulated seconds, trace
    events, wall seconds, the faults that fired, the trace hash and the
    ``sometimes`` tallies."""

    seed: int | str
    error: str | None
    signature: str | None
    sim_seconds: float
    events: int
    wall_seconds: float
    faults: list[str]
    trace_hash: str
    sometimes: dict[str, list[int]]

    @property
    def passed(self) -> bool:
        """Whether the seed passed."""
        return self.error is None


@dataclasses.dataclass
class RunSummary:
    """What a run of many seeds found."""

    ref: str
    options: RunOptions
    seeds_run: int = 0
    failures: list[SeedResult] = dataclasses.field(default_factory=list)
    sim_seconds: float = 0.0
    events: int = 0
    wall_seconds: float = 0.0
    #: message -> [times asked, times true, seeds where it was true]
    sometimes: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def never_reached(self) -> list[str]:
        """The ``sometimes`` messages that were never true in any seed."""
        return [m for m, (_asked, hits, _seeds) in self.sometimes.items() if not hits]

    def table(self) -> str:
        """The summary table."""
        ratio = self.sim_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0
        rate = self.events / self.wall_seconds if self.wall_seconds > 0 else 0.0
        head = f"{'seeds run':>9}  {'failed':>6}  {'simulated s':>11}  {'wall s':>8}  {'sim/wall':>9}  {'events/s':>10}"
        row = (f"{self.seeds_run:>9}  {len(self.failures):>6}  {self.sim_seconds:>11.1f}  {self.wall_seconds:>8.1f}  "
               f"{ratio:>8.1f}x  {rate:>10,.0f}")
        return head + "\n" + row


class ScenarioNotFound(ValueError):
    """``MODULE:FUNCTION`` does not name a callable scenario."""


def load_scenario(ref: str) -> Callable[[World], Any]:
    """The scenario function ``ref`` (``"package.module:function"``) names."""
    module_name, sep, name = ref.partition(":")
    if not sep or not module_name or not name:
        raise ScenarioNotFound(f"a scenario is MODULE:FUNCTION (e.g. apps.simscenarios:web_crash), got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ScenarioNotFound(f"{ref}: cannot import module {module_name!r}: {exc}") from None
    scenario: Any = module
    for part in name.split("."):
        scenario = getattr(scenario, part, None)
        if scenario is None:
            raise ScenarioNotFound(f"{ref}: module {module_name!r} has no {name!r}")
    if not callable(scenario):
        raise ScenarioNotFound(f"{ref}: {name!r} is not a function")
    found: Callable[[World], Any] = scenario
    return found


def parse_seeds(text: str) -> list[int]:
    """``"1-1000"``, ``"7"``, ``"1-5,9,20-22"`` as a list of seeds
    (``ValueError`` naming the bad part)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not a seed or a range of seeds (N or N-M)") from None
        if hi < lo:
            raise ValueError(f"--seeds: the range {part!r} is empty")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("--seeds: no seed given")
    return seeds


def _signature(exc: BaseException) -> str:
    if isinstance(exc, InvariantFailed):
        return f"InvariantFailed: {exc.message}"
    return type(exc).__name__


def run_seed(ref: str, seed: int | str, options: RunOptions) -> SeedResult:
    """Run scenario ``ref`` once with ``seed`` in this process, in a world
    of its own (closed after), and say how it went."""
    scenario = load_scenario(ref)
    world = World(seed, options.shuffle, time_limit=options.time_limit, faults=options.faults,
                  step_limit=options.step_limit)
    started = time.perf_counter()
    error = signature = None
    try:
        run_scenario(scenario, world, liveness=options.liveness)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        signature = _signature(exc)
    finally:
        world.close()
    wall = time.perf_counter() - started
    return SeedResult(seed, error, signature, world.now, world.event_count, wall, list(world.faults.fired),
                      world.trace_hash(), {m: list(t) for m, t in world.sometimes.items()})


def _run_one(job: tuple[str, int | str, RunOptions]) -> SeedResult:
    return run_seed(*job)


def _pool(jobs: int) -> Any:
    # spawn: every worker is a fresh interpreter, whatever the parent holds.
    return multiprocessing.get_context("spawn").Pool(jobs)


def run_seeds(ref: str, seeds: Iterable[int | str], options: RunOptions | None = None, *, jobs: int = 1,
              fail_fast: bool = False, progress: Callable[[RunSummary, int], None] | None = None) -> RunSummary:
    """Run ``ref`` once per seed in a pool of ``jobs`` fresh processes;
    ``fail_fast`` stops at the first failure. ``progress(summary, total)``
    is called after every seed."""
    options = options or RunOptions()
    load_scenario(ref)  # a bad name fails here, not once per seed
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive number of processes, got {jobs!r}")
    seeds = list(seeds)
    summary = RunSummary(ref, options)
    started = time.perf_counter()
    with _pool(min(jobs, len(seeds)) or 1) as pool:
        for result in pool.imap_unordered(_run_one, [(ref, s, options) for s in seeds]):
            summary.seeds_run += 1
            summary.sim_seconds += result.sim_seconds
            summary.events += result.events
            for message, (asked, hits) in result.sometimes.items():
                tally = summary.sometimes.setdefault(message, [0, 0, 0])
                tally[0] += asked
                tally[1] += hits
                tally[2] += 1 if hits else 0
            if not result.passed:
                summary.failures.append(result)
            summary.wall_seconds = time.perf_counter() - started
            if progress is not None:
                progress(summary, len(seeds))
            if fail_fast and summary.failures:
                pool.terminate()
                break
    summary.failures.sort(key=lambda r: (str(type(r.seed)), r.seed))
    summary.wall_seconds = time.perf_counter() - started
    return summary


@dataclasses.dataclass
class ShrinkResult:
    """The smallest fault schedule found that still fails like the seed."""

    seed: int | str
    original: list[str]
    faults: list[str]
    runs: int
    error: str | None


def shrink(ref: str, failing: SeedResult, options: RunOptions | None = None, *, budget: int = 200,
           log: Callable[[str], None] | None = None) -> ShrinkResult:
    """Remove faults from ``failing``'s schedule while the seed still fails
    with the same signature (at most ``budget`` runs, in a fresh process)."""
    options = options or RunOptions()
    if failing.passed:
        raise ValueError(f"seed {failing.seed} passed: there is nothing to shrink")
    current = list(failing.faults)
    error = failing.error
    runs = 0
    with _pool(1) as pool:

        def fails(faults: list[str]) -> SeedResult | None:
            nonlocal runs
            runs += 1
            trial = dataclasses.replace(options, faults=tuple(faults))
            result: SeedResult = pool.apply(run_seed, (ref, failing.seed, trial))
            return result if result.signature == failing.signature else None

        if current:
            result = fails([])
            if result is not None:
                current, error = [], result.error
        chunks = 2
        while current and runs < budget:
            size = max(1, len(current) // chunks)
            removed = False
            for start in range(0, len(current), size):
                if runs >= budget:
                    break
                rest = current[:start] + current[start + size:]
                result = fails(rest)
                if result is not None:
                    # What fired under the smaller schedule is itself a
                    # schedule that runs exactly the same.
                    current, error = result.faults, result.error
                    chunks = max(chunks - 1, 2)
                    removed = True
                    if log is not None:
                        log(f"  shrinking: {len(current)} faults left after {runs} runs")
                    break
            if not removed:
                if size == 1:
                    break
                chunks = min(len(current), chunks * 2)
    return ShrinkResult(failing.seed, list(failing.faults), current, runs, error)


def main(argv: list[str] | None = None) -> int:
    """``python -m threadlib.sim run MODULE:SCENARIO --seeds 1-1000 --jobs 2 [--shrink]``."""
    parser = argparse.ArgumentParser(prog="python -m threadlib.sim",
                                     description="Run a simulation scenario over many seeds.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a scenario once per seed")
    run.add_argument("scenario", metavar="MODULE:SCENARIO", help="a function taking a sim.World")
    run.add_argument("--seeds", default="1-100", help="seeds: N, N-M, or a comma-separated list of those")
    run.add_argument("--jobs", type=int, default=1, help="worker processes")
    run.add_argument("--shuffle", action="store_true", help="run ready threads in an order drawn from the seed")
    run.add_argument("--faults", help="allow only these faults (comma-separated ids, or 'none')")
    run.add_argument("--shrink", action="store_true", help="shrink the first failing seed's fault schedule")
    run.add_argument("--shrink-budget", type=int, default=200, help="at most this many runs while shrinking")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing seed")
    run.add_argument("--time-limit", type=float, default=3600.0, help="simulated seconds per world.run")
    run.add_argument("--liveness", type=float, default=60.0, help="simulated seconds the liveness phase may take")
    run.add_argument("--step-limit", type=int, default=1_000_000,
                     help="thread steps at one simulated instant before a livelock is reported")
    run.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        faults: tuple[str, ...] | None = None
        if args.faults is not None:
            faults = () if args.faults.strip() == "none" else tuple(f for f in args.faults.split(",") if f)
        options = RunOptions(args.shuffle, faults, args.time_limit, args.liveness, args.step_limit)
        World(0, time_limit=options.time_limit, faults=faults, step_limit=options.step_limit).close()
        if args.liveness < 0 or args.liveness != args.liveness or args.liveness == float("inf"):
            raise ValueError(f"--liveness must be a finite number of simulated seconds >= 0, got {args.liveness}")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        load_scenario(args.scenario)
    except ValueError as exc:
        parser.error(str(exc))
    tty = sys.stderr.isatty()
    step = max(1, len(seeds) // 10)

    def progress(summary: RunSummary, total: int) -> None:
        if args.quiet:
            return
        done = summary.seeds_run
        line = (f"{done}/{total} seeds, {len(summary.failures)} failed, {summary.sim_seconds:.1f} simulated s, "
                f"{summary.wall_seconds:.1f} wall s")
        if tty:
            sys.stderr.write("\r\x1b[K" + line)
            if done == total:
                sys.stderr.write("\n")
        elif done % step == 0 or done == total:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    summary = run_seeds(args.scenario, seeds, options, jobs=args.jobs, fail_fast=args.fail_fast, progress=progress)
    if tty and not args.quiet and summary.seeds_run < len(seeds):
        sys.stderr.write("\n")
    for failure in summary.failures[:10]:
        print(f"seed {failure.seed} FAILED: {failure.error}")
        print(f"  reproduce: {options.command(args.scenario, failure.seed)}")
    if len(summary.failures) > 10:
        print(f"... and {len(summary.failures) - 10} more failing seeds: "
              + ", ".join(str(f.seed) for f in summary.failures[10:]))
    for message in summary.never_reached:
        asked = summary.sometimes[message][0]
        print(f"sometimes never true: {message!r} (asked {asked} times)")
    print(summary.table())
    if summary.failures and args.shrink:
        failing = summary.failures[0]
        print(f"shrinking seed {failing.seed}: {len(failing.faults)} faults fired")
        result = shrink(args.scenario, failing, options, budget=args.shrink_budget, log=print)
        print(f"smallest fault schedule: {len(result.faults)} of {len(result.original)} faults "
              f"({result.runs} runs): {', '.join(result.faults) or '(no faults)'}")
        print(f"  still fails: {result.error}")
        print(f"  reproduce: {options.command(args.scenario, failing.seed, result.faults)}")
    return 1 if summary.failures else 0


__all__ = ["RunOptions", "SeedResult", "RunSummary", "ShrinkResult", "ScenarioNotFound", "load_scenario",
           "parse_seeds", "run_seed", "run_seeds", "shrink", "main"]
