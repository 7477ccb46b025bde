"""Echo benchmark: 100 connections, one 64-byte message in flight on each.

Every server runs as a subprocess pinned to core 0; the one load client
(bench/c/echo_load.c, built with gcc -O2 into bench/build/) runs pinned to
core 1 for a fixed duration. Reports messages/s and server CPU µs per
message (schedstat of the server's threads, before and after the load run).
The C epoll server is the limit; the Python servers are bench.peers' echo
handlers. Traffic goes to 127.0.0.1 only.

    python -m bench.echo [-d 3] [-c 100] [--size 64] [--only trio,threadlib] [--json]
    python -m bench.echo --serve PEER PORT      # one server in the foreground
"""
from __future__ import annotations

import sys

from bench import harness as H, peers

PEERS = ("c-epoll", "asyncio-streams", "asyncio-protocols", "uvloop-protocols", "threadlib-loop-protocols", "uvloop-streams",
         "threadlib-loop-streams", "gevent",
         "trio", "curio", "threadlib", "threadlib-pure", "threadlib-async", "threadlib-green",
         "threadlib-green-pure", "threadlib-uring")
ANCHORS = {"asyncio-streams": "12.0 µs", "uvloop-protocols": "6.5 µs", "c-epoll": "7.0 µs"}
TARGET = [("cpu_us", "<=", 8.0, " µs")]


def serve(peer: str, port: int) -> None:
    """In the server's child process: peer's echo server (bench.peers) on port."""
    server = peers.SERVERS[peer]
    server.serve(port, server.echo())


def server_argv(peer: str, port: int, tmp: str) -> list[str]:
    if peer == "c-epoll":
        return peers.c_server_argv("echo_server", port)
    return peers.child_argv("bench.echo", peer, port)


def load(loader: str, port: int, conns: int, duration: float, size: int) -> tuple[int, float]:
    out = H.run_load([loader, H.HOST, str(port), str(conns), str(duration), str(size)], timeout=duration + 30)
    f = dict(kv.split("=") for kv in out.split())
    if int(f["errors"]):
        raise RuntimeError(f"{f['errors']} connections failed: {out.strip()}")
    return int(f["messages"]), float(f["seconds"])


def measure(peer: str, conns: int, duration: float, size: int, warmup: float) -> dict:
    loader = str(H.build_c("echo_load"))
    with peers.running(peer, server_argv) as srv:
        return H.measure_load(srv, lambda secs: load(loader, srv.port, conns, secs, size), duration, warmup)


def run(duration: float = 3.0, conns: int = 100, size: int = 64, warmup: float = 0.5, only: str = "",
        save: bool = False, repeat: int = 1) -> list[str]:
    rows = H.peer_rows(PEERS, only, lambda peer: measure(peer, conns, duration, size, warmup), repeat,
                       ANCHORS, TARGET)
    cols = [("ops_s", "messages/s"), ("cpu_us", "server CPU µs/msg"), ("cpu_us_stat", "(utime+stime)"),
            ("busy", "server busy %"), ("load_busy", "load busy %")]
    title = f"echo: {conns} connections x one {size}-byte message in flight, {duration:g}s, C load client"
    return H.report("echo", title, rows, cols, save, {"duration": duration, "conns": conns, "size": size},
                    ref="asyncio-streams")


def main(argv: list[str]) -> None:
    p = H.load_args(__doc__, "measured seconds per server", "connections", "unmeasured load seconds first (0: none)",
                    seconds=float, warmup=0.5)
    p.add_argument("--size", type=int, default=64, help="message bytes")
    H.cli(argv, p, lambda a: run(a.duration, a.conns, a.size, a.warmup, a.only, a.json, a.repeat), serve=serve)


if __name__ == "__main__":
    main(sys.argv[1:])
