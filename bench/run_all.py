"""Run every benchmark with short defaults and print all tables.

    python -m bench                 # a few minutes: spawn 100k/1M/10M, switch 1M, echo 3s, http 3s
    python -m bench --quick         # about a minute and a half: smaller sizes, 1s loads
    python -m bench --only echo,http --json

Prints the machine line (date, kernel, CPU model, nproc) for the README.
"""
from __future__ import annotations

import argparse
import sys
import time

from bench import echo, harness as H, http, spawn, switch

BENCHES = ("spawn", "switch", "echo", "http")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run every benchmark with short defaults.")
    p.add_argument("--quick", action="store_true", help="smaller sizes and 1s loads")
    p.add_argument("--only", default="", help=f"comma-separated benchmarks of {','.join(BENCHES)}")
    p.add_argument("--peers", default="", help="comma-separated peer names (substring match)")
    p.add_argument("--repeat", type=int, default=1, help="runs per peer; tables keep the lowest CPU/op")
    p.add_argument("--json", action="store_true", help="also write results to bench/results/")
    a = p.parse_args(argv)
    todo = [b for b in BENCHES if not a.only or b in a.only.split(",")]
    q = a.quick
    jobs = {
        "spawn": lambda: spawn.run([100_000] if q else [100_000, 1_000_000], 1_000_000 if q else 10_000_000,
                                   a.peers, save=a.json, repeat=a.repeat),
        "switch": lambda: switch.run(200_000 if q else 1_000_000, 1, a.peers, save=a.json, repeat=a.repeat),
        "echo": lambda: echo.run(1.0 if q else 3.0, 100, 64, 0.3 if q else 0.5, a.peers, save=a.json, repeat=a.repeat),
        "http": lambda: http.run(1 if q else 3, 100, 0 if q else 1, a.peers, save=a.json, repeat=a.repeat),
    }
    t0, out = time.monotonic(), []
    for name in todo:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            out += jobs[name]()
        except Exception as e:  # one benchmark failing must not lose the others' tables
            out.append(f"### {name}\n\nfailed: {type(e).__name__}: {e}\n")
    print(f"Machine: {H.machine_line()}\n")
    print("\n".join(out))
    print(f"(total {time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
