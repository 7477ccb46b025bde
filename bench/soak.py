"""Soak: millions of keep-alive requests through one apps.webserver worker,
watching its memory and its fds (issue 14 part 3).

The server (``python -m apps.webserver --quiet``, the sample site) runs
pinned to core 0; wrk, pinned to core 1, sends ``-n`` requests (default
5 million) in chunks of ``--chunk`` seconds with fresh connections each
chunk, until each fifth of the total is reached.  After every fifth the
table gets the server's RSS and open fds (once wrk's connections have
closed); the verdict compares the RSS after the last fifth with the RSS
after the first (the issue's bound: within 5 %) and the fds with the
baseline.  tests/apps/test_faults_under_load.py runs a bounded version of
this on every test run; this is the long one.  It reports; it never
asserts, and it sends traffic only to 127.0.0.1.

    python -m bench.soak [-n 5000000] [-c 20] [--chunk 10]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from bench import harness as H

PATH = "/index.html"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(pid: int, baseline: int, bound: float = 30.0) -> int:
    """The server's open fds once wrk's closed connections are gone (or
    after ``bound`` seconds, whatever it holds then)."""
    deadline = time.monotonic() + bound
    while True:
        n = _fds(pid)
        if n <= baseline or time.monotonic() >= deadline:
            return n
        time.sleep(0.01)


def soak(total: int, conns: int, chunk: int) -> list[dict]:
    """Run the soak; one row per fifth."""
    H.require("wrk")
    port = H.free_port()
    argv = H.pinned([sys.executable, "-m", "apps.webserver", "--quiet", "--port", str(port)], H.SERVER_CPU)
    server = subprocess.Popen(argv, cwd=H.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    rows = []
    try:
        line = server.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"the server did not start: {line}")
        baseline = _fds(server.pid)
        url = f"http://{H.HOST}:{port}{PATH}"
        done, seconds = 0, 0.0
        for fifth in range(1, 6):
            goal = total * fifth // 5
            while done < goal:
                n, s = H.wrk(url, conns, chunk)
                done += n
                seconds += s
            rows.append({"fifth": fifth, "requests": done, "seconds": seconds, "rss": _rss(server.pid),
                         "fds": _settled_fds(server.pid, baseline), "baseline": baseline})
            r = rows[-1]
            print(f"  fifth {fifth}: {done:,} requests in {seconds:.0f} s, RSS {r['rss'] / 2**20:.1f} MiB, "
                  f"fds {r['fds']} (baseline {baseline})", flush=True)
    finally:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait()
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("-n", "--requests", type=int, default=5_000_000, help="requests in all (default 5 million)")
    p.add_argument("-c", "--conns", type=int, default=20, help="wrk connections (default 20)")
    p.add_argument("--chunk", type=int, default=10, help="seconds per wrk run (default 10)")
    args = p.parse_args(argv)
    if args.requests < 5 or args.conns < 1 or args.chunk < 1:
        p.error("-n must be at least 5, -c and --chunk at least 1")
    print(H.machine_line())
    rows = soak(args.requests, args.conns, args.chunk)
    first, last = rows[0], rows[-1]
    growth = (last["rss"] - first["rss"]) / first["rss"]
    print(H.table(f"soak: {last['requests']:,} requests through one worker (wrk -c{args.conns})",
                  [{"name": f"fifth {r['fifth']}", "requests": r["requests"], "seconds": r["seconds"],
                    "rss_mib": r["rss"] / 2**20, "fds": r["fds"]} for r in rows],
                  [("requests", "requests"), ("seconds", "s"), ("rss_mib", "RSS MiB"), ("fds", "open fds")]))
    print(f"RSS last vs first fifth: {100 * growth:+.2f} % (bound: 5 %); open fds at the end {last['fds']}, "
          f"baseline {last['baseline']}: {'ok' if abs(growth) <= 0.05 and last['fds'] <= last['baseline'] else 'LEAK'}")


if __name__ == "__main__":
    main(sys.argv[1:])
