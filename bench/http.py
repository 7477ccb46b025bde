"""HTTP hello-world benchmark: keep-alive, `wrk -t1 -c100 -dNs`.

Every Python server (bench.peers' respond handlers) parses requests with
httptools (Requests, below) and answers a fixed 13-byte body; nginx
(worker_processes 1, access_log off, config and pid file in a temp dir)
serves a fixed `return 200`. Servers are pinned to core 0, wrk to core 1.
Reports requests/s and server CPU µs per request (schedstat summed over the
server's process group, which for nginx is the master and its worker).
Traffic goes to 127.0.0.1 only.

    python -m bench.http [-d 3] [-c 100] [--only nginx,threadlib] [--json]
    python -m bench.http --serve PEER PORT      # one server in the foreground
"""
from __future__ import annotations

import sys

from bench import harness as H, peers

PEERS = ("nginx", "asyncio-protocols", "uvloop-protocols", "threadlib-loop-protocols", "gevent", "trio", "curio", "threadlib", "threadlib-pure",
         "threadlib-async", "threadlib-green",
         "threadlib-green-pure", "threadlib-uring")
ANCHORS = {"nginx": "8.3 µs"}
TARGET = [("cpu_us", "<=", 8.5, " µs")]
BODY = b"Hello, World!"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
NGINX_SERVER = 'location / { default_type text/plain; return 200 "%s"; }' % BODY.decode()


class Requests:
    """httptools callbacks: counts complete requests in what was fed so far.
    One per connection: the session of peers' respond handlers."""

    __slots__ = ("parser", "done", "keep")

    def __init__(self):
        import httptools
        self.parser = httptools.HttpRequestParser(self)
        self.done, self.keep = 0, True

    def on_message_complete(self):
        self.done += 1
        self.keep = self.keep and self.parser.should_keep_alive()   # reset once feed_data returns

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(responses to send now, keep the connection open?); raises on a bad request."""
        self.parser.feed_data(data)
        n, self.done = self.done, 0
        return RESPONSE * n, self.keep


def serve(peer: str, port: int) -> None:
    """In the server's child process: peer's HTTP hello server (bench.peers) on port."""
    server = peers.SERVERS[peer]
    server.serve(port, server.respond(Requests))


def server_argv(peer: str, port: int, tmp: str) -> list[str]:
    if peer == "nginx":
        return peers.nginx_argv(tmp, port, NGINX_SERVER)
    return peers.child_argv("bench.http", peer, port)


def measure(peer: str, conns: int, duration: int, warmup: int) -> dict:
    H.require("wrk")
    with peers.running(peer, server_argv) as srv:
        return H.measure_load(srv, lambda secs: H.wrk(srv.url(), conns, secs), duration, warmup)


def run(duration: int = 3, conns: int = 100, warmup: int = 1, only: str = "", save: bool = False,
        repeat: int = 1) -> list[str]:
    rows = H.peer_rows(PEERS, only, lambda peer: measure(peer, conns, duration, warmup), repeat, ANCHORS, TARGET)
    cols = [("ops_s", "requests/s"), ("cpu_us", "server CPU µs/req"), ("cpu_us_stat", "(utime+stime)"),
            ("busy", "server busy %"), ("load_busy", "load busy %")]
    title = f"HTTP hello world, keep-alive: wrk -t1 -c{conns} -d{duration}s (httptools in every Python server)"
    return H.report("http", title, rows, cols, save, {"duration": duration, "conns": conns}, ref="asyncio-protocols")


def main(argv: list[str]) -> None:
    p = H.load_args(__doc__, "wrk seconds per server (the issue: 10)", "wrk connections",
                    "unmeasured wrk seconds first (0: none)")
    H.cli(argv, p, lambda a: run(a.duration, a.conns, a.warmup, a.only, a.json, a.repeat), serve=serve)


if __name__ == "__main__":
    main(sys.argv[1:])
