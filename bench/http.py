"""HTTP hello-world benchmark: keep-alive, `wrk -t1 -c100 -dNs`.

Every Python server parses requests with httptools and answers a fixed
13-byte body; nginx (worker_processes 1, access_log off, config and pid
file in a temp dir) serves a fixed `return 200`. Servers are pinned to core
0, wrk to core 1. Reports requests/s and server CPU µs per request
(schedstat summed over the server's process group, which for nginx is the
master and its worker). Traffic goes to 127.0.0.1 only.

    python -m bench.http [-d 3] [-c 100] [--only nginx,threadlib] [--json]
    python -m bench.http --serve PEER PORT      # one server in the foreground
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench import harness as H

HOST = H.HOST
PEERS = ("nginx", "asyncio-protocols", "uvloop-protocols", "gevent", "trio", "curio", "threadlib",
         "threadlib-async", "threadlib-green")
ANCHORS = {"nginx": "8.3 µs"}
TARGET = [("cpu_us", "<=", 8.5, " µs")]
BODY = b"Hello, World!"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Requests:
    """httptools callbacks: counts complete requests in what was fed so far."""

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


# ---------------------------------------------------------------- servers
def s_asyncio_protocols(port: int, loop: str = "asyncio") -> None:
    import asyncio
    if loop == "uvloop":
        import uvloop
        uvloop.install()

    class Http(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.requests = transport, Requests()

        def data_received(self, data):
            try:
                out, keep = self.requests.feed(data)
            except Exception:
                self.transport.close()
                return
            if out:
                self.transport.write(out)
            if not keep:
                self.transport.close()

    async def main():
        server = await asyncio.get_running_loop().create_server(Http, HOST, port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def s_uvloop_protocols(port: int) -> None:
    s_asyncio_protocols(port, "uvloop")


def s_gevent(port: int) -> None:
    from gevent.server import StreamServer

    def handle(sock, addr):
        requests = Requests()
        try:
            while data := sock.recv(65536):
                out, keep = requests.feed(data)
                if out:
                    sock.sendall(out)
                if not keep:
                    break
        except Exception:
            pass
        finally:
            sock.close()

    StreamServer((HOST, port), handle, backlog=1024).serve_forever()


def s_trio(port: int) -> None:
    import trio

    async def handle(stream):
        requests = Requests()
        try:
            while data := await stream.receive_some(65536):
                out, keep = requests.feed(data)
                if out:
                    await stream.send_all(out)
                if not keep:
                    break
        except Exception:
            pass
        finally:
            await stream.aclose()

    trio.run(lambda: trio.serve_tcp(handle, port, host=HOST, backlog=1024))


def s_curio(port: int) -> None:
    import curio

    async def handle(client, addr):
        requests = Requests()
        try:
            while data := await client.recv(65536):
                out, keep = requests.feed(data)
                if out:
                    await client.sendall(out)
                if not keep:
                    break
        except Exception:
            pass

    async def main():
        await curio.tcp_server(HOST, port, handle, backlog=1024)

    curio.run(main)


def s_threadlib(port: int) -> None:
    import threadlib
    from threadlib.io import sockio

    def handle(conn):
        requests = Requests()
        try:
            while True:
                data = yield from conn.recv(65536)
                if not data:
                    break
                out, keep = requests.feed(data)
                if out:
                    yield from conn.sendall(out)
                if not keep:
                    break
        except Exception:
            pass
        finally:
            conn.close()

    def main():
        listener = yield from sockio.listen((HOST, port))
        while True:
            conn, addr = yield from listener.accept()
            yield from threadlib.spawn(handle(conn))

    threadlib.run(main())


def s_threadlib_async(port: int) -> None:
    import threadlib
    from threadlib.io import sockio

    async def handle(conn):
        requests = Requests()
        try:
            while True:
                data = await conn.recv(65536)
                if not data:
                    break
                out, keep = requests.feed(data)
                if out:
                    await conn.sendall(out)
                if not keep:
                    break
        except Exception:
            pass
        finally:
            conn.close()

    async def main():
        listener = await sockio.listen((HOST, port))
        while True:
            conn, addr = await listener.accept()
            await threadlib.spawn(handle(conn))

    threadlib.run(main())


def s_threadlib_green(port: int) -> None:
    import threadlib.frontends.green as green

    def handle(conn):
        requests = Requests()
        try:
            while data := conn.recv(65536):
                out, keep = requests.feed(data)
                if out:
                    conn.sendall(out)
                if not keep:
                    break
        except Exception:
            pass
        finally:
            conn.close()

    def main():
        listener = green.listen((HOST, port))
        while True:
            conn, addr = listener.accept()
            green.spawn(handle, conn)

    green.run(main)


SERVERS = {name: globals()["s_" + name.replace("-", "_")] for name in PEERS if name != "nginx"}

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    server {{
        listen {host}:{port} backlog=1024;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


# ---------------------------------------------------------------- parent
def wrk(port: int, conns: int, duration: int) -> tuple[int, float]:
    out = H.run_load(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", f"http://{HOST}:{port}/"],
                     timeout=duration + 30)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output: {out.strip()[-200:]}")
    if "Non-2xx" in out or "Socket errors" in out:
        bad = re.findall(r"(Non-2xx.*|Socket errors.*)", out)
        raise RuntimeError("wrk: " + "; ".join(b.strip() for b in bad))
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    return int(m.group(1)), float(m.group(2)) * scale


def measure(peer: str, conns: int, duration: int, warmup: int) -> dict:
    if not shutil.which("wrk"):
        raise H.Skip("wrk not installed")
    port = H.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as d:
        if peer == "nginx":
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            if not Path(nginx).exists():
                raise H.Skip("nginx not installed")
            conf = Path(d) / "nginx.conf"
            conf.write_text(NGINX_CONF.format(d=d, host=HOST, port=port, body=BODY.decode()))
            argv = [nginx, "-p", d, "-e", f"{d}/error.log", "-c", str(conf)]
        else:
            if peer.startswith("threadlib"):
                H.import_or_skip("threadlib.frontends.green" if peer == "threadlib-green" else "threadlib")
            argv = [sys.executable, "-m", "bench.http", "--serve", peer, str(port)]
        with H.Server(peer, argv, port) as srv:
            if warmup:
                wrk(port, conns, warmup)
            return H.measure_server(srv, lambda: wrk(port, conns, duration))


def run(duration: int = 3, conns: int = 100, warmup: int = 1, only: str = "", save: bool = False,
        repeat: int = 1) -> list[str]:
    rows = []
    for peer in (p for p in PEERS if H.selected(p, only)):
        extra = {"anchor": ANCHORS.get(peer, "")}
        if peer.startswith("threadlib"):
            extra["target"] = TARGET
        rows.append(H.safe(peer, lambda: H.best_of(repeat, lambda: measure(peer, conns, duration, warmup)), **extra))
    cols = [("ops_s", "requests/s"), ("cpu_us", "server CPU µs/req"), ("cpu_us_stat", "(utime+stime)"),
            ("busy", "server busy %"), ("load_busy", "load busy %")]
    if save:
        H.save_json("http", {"rows": rows, "duration": duration, "conns": conns})
    title = f"HTTP hello world, keep-alive: wrk -t1 -c{conns} -d{duration}s (httptools in every Python server)"
    return [H.table(title, rows, cols, ref="asyncio-protocols")]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve"]:
        SERVERS[argv[1]](int(argv[2]))
        return
    p = H.arg_parser(__doc__)
    p.add_argument("-d", "--duration", type=int, default=3, help="wrk seconds per server (the issue: 10)")
    p.add_argument("-c", "--conns", type=int, default=100, help="wrk connections")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured wrk seconds first (0: none)")
    a = p.parse_args(argv)
    print(H.machine_line() + "\n")
    for t in run(a.duration, a.conns, a.warmup, a.only, a.json, a.repeat):
        print(t)


if __name__ == "__main__":
    main(sys.argv[1:])
