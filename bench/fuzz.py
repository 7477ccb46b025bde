"""Fuzzing for longer than CI does: each target of ``fuzz`` under atheris
for SECONDS (or until its first crash), reporting executions per second, the coverage libFuzzer
counts (``cov``: instrumented edges of the target's packages reached, and
``ft``: features, edges refined by hit counts), the corpus grown, and the
crashes found, with where their inputs were saved.

    python -m bench.fuzz [SECONDS=300] [--only tcp_input,...] [--jobs 1] [--keep DIR]

It is not a speed comparison (there are no peers): it never asserts, and
it never writes into the repository's corpus; found inputs stay in a
temporary directory (or ``--keep DIR``) for you to minimize
(``python -m fuzz.run TARGET -minimize_crash=1 -runs=1000 CRASH``) and
save under ``fuzz/crashers/TARGET/`` with the fix.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fuzz import TARGETS  # noqa: E402  (after the repository root is on the path)

_PROGRESS = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")


def run_target(target: str, seconds: int, work: Path) -> dict:
    """Fuzz ``target`` for ``seconds`` from a copy of its corpus in ``work``."""
    corpus = work / target / "corpus"
    artifacts = work / target / "crashes"
    shutil.copytree(ROOT / "fuzz" / "corpus" / target, corpus)
    artifacts.mkdir(parents=True)
    command = [sys.executable, "-m", "fuzz.run", target, f"-max_total_time={seconds}", "-timeout=10",
               "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    # A crash ends the target's run (libFuzzer's -fork mode, which would go
    # on, does not work with atheris's python -m entry point).
    dictionary = ROOT / "fuzz" / "dicts" / f"{target}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    command.append(str(corpus))
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True)
    wall = time.monotonic() - started
    log = done.stdout + done.stderr
    (work / target / "fuzz.log").write_text(log)
    progress = _PROGRESS.findall(log)
    cov, ft, corp = (int(v) for v in progress[-1]) if progress else (0, 0, 0)
    stats = {k: int(v) for k, v in _STAT.findall(log)}
    execs = stats.get("number_of_executed_units", 0)
    crashes = sorted(p.name for p in artifacts.iterdir())
    return {"target": target, "seconds": wall, "execs": execs, "execs_per_s": execs / wall if wall else 0.0,
            "cov": cov, "ft": ft, "corpus": corp, "crashes": crashes, "dir": work / target}


def main() -> None:
    """Run the targets and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("seconds", nargs="?", type=int, default=300)
    parser.add_argument("--only", default=",".join(TARGETS), help="targets, comma-separated")
    parser.add_argument("--keep", type=Path, help="keep corpora, crashes and logs here")
    args = parser.parse_args()
    targets = [t for t in args.only.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="threadlib-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'target':<14} {'seconds':>8} {'execs':>9} {'execs/s':>8} {'cov':>6} {'ft':>7} {'corpus':>7} crashes")
    for target in targets:
        r = run_target(target, args.seconds, work)
        print(f"{r['target']:<14} {r['seconds']:>8.1f} {r['execs']:>9} {r['execs_per_s']:>8.0f} {r['cov']:>6} "
              f"{r['ft']:>7} {r['corpus']:>7} {len(r['crashes'])}", flush=True)
        for name in r["crashes"]:
            print(f"    {r['dir'] / 'crashes' / name}")
    print(f"logs, grown corpora and crash inputs: {work}")


if __name__ == "__main__":
    main()
