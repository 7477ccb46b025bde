"""HTTP static files: `wrk -t1 -cN -dDs` against apps.webserver serving the
sample site's 1 KiB and 100 KiB files, beside nginx, an asyncio+uvloop+
httptools server and a gevent+httptools server serving the same files.

Peers, all single-process, pinned to core 0 (wrk on core 1), keep-alive:
- nginx: worker_processes 1, sendfile on, access_log off, no open_file_cache
  (so it opens, fstats and closes the file per request).
- threadlib-sendfile / threadlib-aio: `python -m apps.webserver --io ...`
  with its defaults (bodies up to 64 KiB kept in memory and revalidated
  with one stat a second; larger ones through sendfile(2) or fileio AIO).
- threadlib-*-nocache: `--cache-max-body 0`, every body from the disk per
  request (open, fstat, sendfile or AIO reads, close), as nginx does.
- uvloop / gevent: httptools, a dict of precomputed responses for small
  files (as the threadlib server's cache), per-request open+read (uvloop has
  no sendfile for transports) or socket.sendfile (gevent) for large ones.
Reports requests/s and server CPU µs per request (schedstat over the
server's process group). Target: threadlib <= 1.2x nginx's CPU per request
on the 1 KiB file. Traffic goes to 127.0.0.1 only.

    python -m bench.http_files_bench [-d 3] [-c 100] [--only nginx,threadlib] [--json]
    python -m bench.http_files_bench --serve PEER PORT    # one Python peer in the foreground
"""
from __future__ import annotations

import os
import sys
from email.utils import formatdate
from pathlib import Path

from bench import harness as H, peers

SITE = H.ROOT / "apps" / "sample_site"
FILES = ("/bench/1k.txt", "/bench/100k.txt")
PEERS = ("nginx", "threadlib-sendfile", "threadlib-aio", "threadlib-sendfile-nocache", "threadlib-aio-nocache",
         "uvloop", "gevent")
TARGET_FACTOR = 1.2
SMALL = 65536


# ---------------------------------------------------------------- Python peers
class _Files:
    """What the uvloop and gevent peers know about the site: precomputed
    responses for small files, (path, head) for large ones."""

    def __init__(self) -> None:
        self.small: dict[bytes, bytes] = {}
        self.large: dict[bytes, tuple[str, bytes, int]] = {}
        for path in SITE.rglob("*"):
            if not path.is_file():
                continue
            target = b"/" + str(path.relative_to(SITE)).encode()
            st = path.stat()
            kind = b"text/plain" if path.suffix == ".txt" else b"application/octet-stream"
            head = (b"HTTP/1.1 200 OK\r\nServer: peer\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                    b"Last-Modified: %s\r\n\r\n" % (formatdate(usegmt=True).encode(), kind, st.st_size,
                                                     formatdate(st.st_mtime, usegmt=True).encode()))
            if st.st_size <= SMALL:
                self.small[target] = head + path.read_bytes()
            else:
                self.large[target] = (str(path), head, st.st_size)
        self.missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class _Requests:
    """httptools callbacks: the targets of the complete requests fed so far."""

    __slots__ = ("parser", "targets", "url")

    def __init__(self) -> None:
        import httptools
        self.parser = httptools.HttpRequestParser(self)
        self.targets: list[bytes] = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.targets.append(self.url)
        self.url = b""


def serve_uvloop(port: int) -> None:
    import asyncio
    files = _Files()

    class Http(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.requests = transport, _Requests()

        def data_received(self, data):
            try:
                self.requests.parser.feed_data(data)
            except Exception:
                self.transport.close()
                return
            out = []
            for target in self.requests.targets:
                small = files.small.get(target)
                if small is not None:
                    out.append(small)
                elif target in files.large:
                    path, head, size = files.large[target]
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        out.append(head + os.pread(fd, size, 0))
                    finally:
                        os.close(fd)
                else:
                    out.append(files.missing)
            self.requests.targets.clear()
            self.transport.write(b"".join(out))

    peers.SERVERS["uvloop-protocols"].serve(port, Http)


def serve_gevent(port: int) -> None:
    files = _Files()

    def handle(sock, addr):
        requests = _Requests()
        try:
            while data := sock.recv(65536):
                requests.parser.feed_data(data)
                out = []
                for target in requests.targets:
                    small = files.small.get(target)
                    if small is not None:
                        out.append(small)
                    elif target in files.large:
                        path, head, size = files.large[target]
                        if out:
                            sock.sendall(b"".join(out))
                            out = []
                        sock.sendall(head)
                        with open(path, "rb") as f:
                            sock.sendfile(f)
                    else:
                        out.append(files.missing)
                requests.targets.clear()
                if out:
                    sock.sendall(b"".join(out))
        except Exception:
            pass
        finally:
            sock.close()

    peers.SERVERS["gevent"].serve(port, handle)


SERVE = {"uvloop": serve_uvloop, "gevent": serve_gevent}
NGINX_HTTP = ("sendfile on;", "tcp_nopush on;", "default_type application/octet-stream;",
              "types { text/plain txt; text/html html; }")


def serve(peer: str, port: int) -> None:
    """In the server's child process: the Python peer's file server on port."""
    SERVE[peer](port)


# ---------------------------------------------------------------- parent
def server_argv(peer: str, port: int, tmp: str) -> list[str]:
    if peer == "nginx":
        return peers.nginx_argv(tmp, port, f"root {SITE};", NGINX_HTTP, worker_connections=2048)
    if peer.startswith("threadlib"):
        io = peer.split("-")[1]
        if io == "aio":
            H.import_or_skip("threadlib.io.fileio")
        cache = ["--cache-max-body", "0"] if peer.endswith("-nocache") else []
        return [sys.executable, "-m", "apps.webserver", "--port", str(port), "--io", io, "--quiet", *cache]
    return peers.child_argv("bench.http_files_bench", peer, port)


def measure(peer: str, conns: int, duration: int, warmup: int) -> dict[str, dict]:
    """One server start per peer, both files measured against it."""
    H.require("wrk")
    results = {}
    with peers.running(peer, server_argv) as srv:
        for target in FILES:
            results[target] = H.measure_load(srv, lambda secs: H.wrk(srv.url(target), conns, secs), duration, warmup)
    return results


def run(duration: int = 3, conns: int = 100, warmup: int = 1, only: str = "", save: bool = False) -> list[str]:
    per_peer: dict[str, dict] = {}
    for peer in (p for p in PEERS if H.selected(p, only)):
        per_peer[peer] = H.safe(peer, lambda: {"files": measure(peer, conns, duration, warmup)})
    tables = []
    for target in FILES:
        rows = []
        for peer, res in per_peer.items():
            row = {"name": peer, **({"error": res["error"]} if "error" in res else res["files"][target])}
            rows.append(row)
        nginx = next((r for r in rows if r["name"] == "nginx" and "error" not in r), None)
        if nginx is not None and target == FILES[0]:
            for r in rows:
                if r["name"].startswith("threadlib"):
                    r["target"] = [("cpu_us", "<=", TARGET_FACTOR * nginx["cpu_us"], " µs (1.2x nginx)")]
        cols = [("ops_s", "requests/s"), ("cpu_us", "server CPU µs/req"), ("cpu_us_stat", "(utime+stime)")]
        title = f"HTTP static file {target} ({Path(SITE / target.lstrip('/')).stat().st_size} bytes), keep-alive: wrk -t1 -c{conns} -d{duration}s"
        tables.append(H.table(title, rows, cols, ref="nginx"))
    if save:
        H.save_json("http_files", {"peers": per_peer, "duration": duration, "conns": conns})
    return tables


def main(argv: list[str]) -> None:
    p = H.load_args(__doc__, "wrk seconds per server and file (the issue: 10)", "wrk connections",
                    "unmeasured wrk seconds first (0: none)")
    H.cli(argv, p, lambda a: run(a.duration, a.conns, a.warmup, a.only, a.json), serve=serve)


if __name__ == "__main__":
    main(sys.argv[1:])
