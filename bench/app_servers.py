"""WSGI and ASGI hello world on application servers: keep-alive, `wrk -t1 -c100 -dNs`.

Each server runs the same application (below: a 13-byte text/plain body
with its Content-Length), one process, no access log; pinned to core 0,
wrk to core 1, server CPU µs per request summed over the server's
process group (gunicorn: its master and its one worker), as bench.http.

- WSGI: `apps.webserver --wsgi` (a green thread per connection on
  threadlib) vs gunicorn with gevent workers (`gunicorn -k gevent -w 1`)
  and gevent's own `pywsgi.WSGIServer`. Issue 12's target: threadlib at
  most 0.8x the CPU per request of the better of the two.
- ASGI: `apps.webserver --asgi` (threadlib.loop) vs uvicorn with uvloop
  and httptools. Target: at most 1.0x uvicorn's CPU per request.

The `CPU vs best peer` column is threadlib's CPU µs/req over the lowest of
its peers' in the same table (the target's measure).

    python -m bench.app_servers [-d 3] [-c 100] [--only wsgi,uvicorn] [--json]
    python -m bench.app_servers --serve gevent-pywsgi PORT     # the one peer without a program
"""
from __future__ import annotations

import sys

from bench import harness as H, peers

WSGI_PEERS = ("gevent-pywsgi", "gunicorn-gevent", "threadlib-wsgi")
ASGI_PEERS = ("uvicorn-uvloop-httptools", "threadlib-asgi")
TARGETS = {"wsgi": 0.8, "asgi": 1.0}
BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
ASGI_START = {"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]}
ASGI_BODY = {"type": "http.response.body", "body": BODY}


def wsgi_hello(environ, start_response):
    """The WSGI application every WSGI peer serves."""
    start_response("200 OK", HEADERS)
    return [BODY]


async def asgi_hello(scope, receive, send):
    """The ASGI application every ASGI peer serves (lifespan is off)."""
    if scope["type"] == "http":
        await send(ASGI_START)
        await send(ASGI_BODY)


def serve(peer: str, port: int) -> None:
    """In the server's child process: the peer that has no program of its own."""
    if peer != "gevent-pywsgi":
        raise SystemExit(f"{peer} is started with its own program, not --serve")
    peers.serve_pywsgi(port, wsgi_hello)


def measure(peer: str, kind: str, conns: int, duration: int, warmup: int) -> dict:
    H.require("wrk")
    app = f"bench.app_servers:{kind}_hello"
    with peers.running(peer, lambda p, port, tmp: peers.app_server_argv(p, port, app, "bench.app_servers")) as srv:
        return H.measure_load(srv, lambda secs: H.wrk(srv.url(), conns, secs), duration, warmup)


def compare(rows: list[dict], kind: str) -> None:
    """threadlib's row gets its CPU µs/req over the best peer's, against the target."""
    best = min((r["cpu_us"] for r in rows if not r["name"].startswith("threadlib") and "error" not in r),
               default=None)
    for row in rows:
        if row["name"].startswith("threadlib"):
            row["target"] = [("cpu_vs_peers", "<=", TARGETS[kind], "x")]
            if best and "error" not in row:
                row["cpu_vs_peers"] = row["cpu_us"] / best


def run(duration: int = 3, conns: int = 100, warmup: int = 1, only: str = "", save: bool = False,
        repeat: int = 1) -> list[str]:
    cols = [("ops_s", "requests/s"), ("cpu_us", "server CPU µs/req"), ("cpu_us_stat", "(utime+stime)"),
            ("cpu_vs_peers", "CPU vs best peer"), ("busy", "server busy %"), ("load_busy", "load busy %")]
    tables = []
    for kind, names, ref in (("wsgi", WSGI_PEERS, "gunicorn-gevent"), ("asgi", ASGI_PEERS, "uvicorn-uvloop-httptools")):
        # `--only wsgi` or `--only asgi` picks a table; other words pick peers.
        words = [w for w in only.split(",") if w]
        if kind in words:
            pick = ""
        elif any(w in ("wsgi", "asgi") for w in words):
            continue
        else:
            pick = only
        rows = H.peer_rows(names, pick, lambda peer: measure(peer, kind, conns, duration, warmup), repeat)
        if not rows:
            continue
        compare(rows, kind)
        title = (f"{kind.upper()} hello world, keep-alive: wrk -t1 -c{conns} -d{duration}s "
                 f"(one server process; target: threadlib ≤ {TARGETS[kind]}x the best peer's CPU/req)")
        tables += H.report(f"app_servers-{kind}", title, rows, cols, save, {"duration": duration, "conns": conns},
                           ref=ref)
    return tables


def main(argv: list[str]) -> None:
    p = H.load_args(__doc__, "wrk seconds per server (the issue: 10)", "wrk connections",
                    "unmeasured wrk seconds first (0: none)")
    H.cli(argv, p, lambda a: run(a.duration, a.conns, a.warmup, a.only, a.json, a.repeat), serve=serve)


if __name__ == "__main__":
    main(sys.argv[1:])
