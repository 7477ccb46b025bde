"""Load generators against nginx: `python -m apps.loadgen` beside `wrk -t1`
with the same connections and duration, both pinned to core 1, nginx
(worker_processes 1, access_log off, sendfile on) pinned to core 0 serving
the sample site's 1 KiB file.

Reports each client's requests/s, its own CPU µs per request (the load
process's user+system time, from getrusage of the finished child) and
nginx's CPU µs per request. Target: apps.loadgen >= 50% of wrk's
requests/s. When the client is the bottleneck its CPU per request says
why: the client core is saturated, and every request costs what the
Python per-request path costs. Traffic goes to 127.0.0.1 only.

    python -m bench.loadgen_bench [-d 3] [-c 100] [--json]
"""
from __future__ import annotations

import json
import resource
import sys

from bench import harness as H, http_files_bench as files, peers

TARGET_PATH = "/bench/1k.txt"
TARGET = [("ratio", ">=", 0.5, "x wrk")]


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_loadgen(url: str, conns: int, duration: int) -> tuple[int, float]:
    out = H.run_load([sys.executable, "-m", "apps.loadgen", url, "-c", str(conns), "-d", str(duration), "--json"],
                     timeout=duration + 60)
    summary = json.loads(out.strip().splitlines()[-1])
    if summary["errors"]:
        raise RuntimeError(f"loadgen errors: {summary['errors']}")
    return summary["requests"], summary["seconds"]


CLIENTS = {"wrk": H.wrk, "apps.loadgen": run_loadgen}


def measure(client: str, conns: int, duration: int, warmup: int) -> dict:
    H.require("wrk")
    with peers.running("nginx", files.server_argv) as srv:   # nginx as the file benchmark runs it
        url = srv.url(TARGET_PATH)
        if warmup:
            CLIENTS[client](url, conns, warmup)
        before = _children_cpu_s()
        row = H.measure_server(srv, lambda: CLIENTS[client](url, conns, duration))
        row["client_cpu_us"] = (_children_cpu_s() - before) * 1e6 / row["ops"]
        return row


def run(duration: int = 3, conns: int = 100, warmup: int = 1, only: str = "", save: bool = False) -> list[str]:
    rows = []
    for client in (c for c in CLIENTS if H.selected(c, only)):
        extra = {"target": TARGET} if client == "apps.loadgen" else {}
        rows.append(H.safe(client, lambda: measure(client, conns, duration, warmup), **extra))
    cols = [("ops_s", "requests/s"), ("client_cpu_us", "client CPU µs/req"), ("cpu_us", "nginx CPU µs/req")]
    title = f"Load generators against nginx ({TARGET_PATH}, keep-alive, -c{conns}, {duration}s, client on core 1)"
    return H.report("loadgen", title, rows, cols, save, {"duration": duration, "conns": conns}, ref="wrk")


def main(argv: list[str]) -> None:
    p = H.load_args(__doc__, "seconds per client (the issue: 10)", "connections, the same for both clients",
                    "unmeasured seconds first (0: none)")
    H.cli(argv, p, lambda a: run(a.duration, a.conns, a.warmup, a.only, a.json))


if __name__ == "__main__":
    main(sys.argv[1:])
