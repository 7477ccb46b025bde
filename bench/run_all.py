"""Run every benchmark with short defaults and print all tables.

    python -m bench            # a few minutes: spawn 100k (+10M), switch 500k, echo 3s, http 3s, app servers 3s
    python -m bench --quick    # about a minute: spawn 100k (+1M), switch 200k, 1s loads
    python -m bench --full     # the issue's sizes: spawn 1M for all peers, switch 1M, 10s loads
    python -m bench --only echo,http --json

Prints the machine line (date, kernel, CPU model, nproc) for the README.
"""
from __future__ import annotations

import argparse
import sys
import time

from bench import app_servers, echo, harness as H, http, spawn, switch

BENCHES = ("spawn", "switch", "echo", "http", "app_servers")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run every benchmark with short defaults.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes and 1s loads")
    size.add_argument("--full", action="store_true", help="spawn 1M for every peer, switch 1M, 10s loads (slow)")
    p.add_argument("--only", default="", help=f"comma-separated benchmarks of {','.join(BENCHES)}")
    p.add_argument("--peers", default="", help="comma-separated peer names (substring match)")
    p.add_argument("--repeat", type=int, default=1, help="runs per peer; tables keep the lowest CPU/op")
    p.add_argument("--json", action="store_true", help="also write results to bench/results/")
    a = p.parse_args(argv)
    todo = [b for b in BENCHES if not a.only or b in a.only.split(",")]
    q, f = a.quick, a.full
    load_s = 1 if q else 10 if f else 3
    switches = 200_000 if q else 1_000_000 if f else 500_000
    jobs = {
        "spawn": lambda: spawn.run([100_000, 1_000_000] if f else [100_000], 1_000_000 if q else 10_000_000,
                                   a.peers, save=a.json, repeat=a.repeat),
        "switch": lambda: switch.run(switches, [1, 64], a.peers, save=a.json, repeat=a.repeat),
        "echo": lambda: echo.run(load_s, 100, 64, 0.3 if q else 0.5, a.peers, save=a.json, repeat=a.repeat),
        "http": lambda: http.run(load_s, 100, 0 if q else 1, a.peers, save=a.json, repeat=a.repeat),
        "app_servers": lambda: app_servers.run(load_s, 100, 0 if q else 1, a.peers, save=a.json, repeat=a.repeat),
    }
    t0 = time.monotonic()
    print(f"Machine: {H.machine_line()}\n", flush=True)
    for name in todo:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            tables = jobs[name]()
        except Exception as e:  # one benchmark failing must not lose the others' tables
            tables = [f"### {name}\n\nfailed: {type(e).__name__}: {e}\n"]
        print("\n".join(tables), flush=True)
    print(f"(total {time.monotonic() - t0:.0f}s)")


if __name__ == "__main__":
    main()
