"""The peers: every runtime and server the benchmarks compare threadlib with,
in one place. A benchmark describes its workload (what a connection or a
thread does, and the load) and picks peers here by name.

For each peer this module knows:

- how its event loop or scheduler runs a top-level thread: run(RUNTIME, main)
  for the RUNTIMES asyncio, uvloop, gevent, trio, curio, threadlib (generator
  threads), threadlib-async (`async def` threads) and threadlib-green (the
  greenlet front end); NEEDS, the modules each one imports;
- how it serves connections on 127.0.0.1:PORT: SERVERS[NAME].serve(port,
  handle), handle being in that peer's own API (an asyncio.Protocol class, a
  (reader, writer) coroutine, a gevent (socket, address) function, ...);
- the connection handlers, in each server's API: echo() sends back what
  arrives; respond(new_session) feeds what arrives to a per-connection
  session (new_session(), whose feed(data) returns (bytes to send, keep the
  connection open?)) and sends its answer (the HTTP hello benchmark);
- the application servers (bench.app_servers): app_server_argv starts
  threadlib's `apps.webserver --wsgi/--asgi`, gunicorn with gevent
  workers, gevent's pywsgi or uvicorn (uvloop, httptools) on one
  application;
- how a benchmark runs one such server in a child process pinned to core 0:
  child_argv (`python -m BENCH --serve PEER PORT`, which the benchmark's
  main() hands to its serve() through harness.cli), nginx_argv and
  c_server_argv for the non-Python peers, and running(), which starts one
  of them on a free port (harness.Server).

The handlers are the benchmarks' measured code. Each is the loop its peer
has always been measured with (its own recv/send calls, a literal 65536-byte
read, no Python call per message that was not there before), so numbers
stay comparable with earlier runs: change one only on purpose, and say so
in bench/README.md.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from bench import harness as H

HOST = H.HOST
BACKLOG = 1024

# ---------------------------------------------------------------- runtimes
NEEDS = {"asyncio": (), "uvloop": ("uvloop",), "gevent": ("gevent",), "trio": ("trio",), "curio": ("curio",),
         "threadlib": ("threadlib",), "threadlib-async": ("threadlib",),
         "threadlib-green": ("threadlib.frontends.green",)}
RUNTIMES = tuple(NEEDS)
# asyncio code on threadlib's own loop: a runtime of the servers only (the
# switch and spawn benchmarks measure threads, which it has none of).
NEEDS["threadlib-loop"] = ("threadlib.loop",)


def run(runtime: str, main: Callable[[], Any]) -> Any:
    """Run main, a top-level thread, on runtime's event loop or scheduler; its result.

    main is a coroutine function for asyncio, uvloop, trio, curio and
    threadlib-async, a generator function for threadlib, and a plain
    function for threadlib-green and gevent (whose hub starts at the first
    blocking call)."""
    if runtime == "threadlib-loop":  # asyncio code on threadlib's own loop
        import asyncio

        import threadlib.loop
        with asyncio.Runner(loop_factory=threadlib.loop.new_event_loop) as runner:
            return runner.run(main())
    if runtime in ("asyncio", "uvloop"):
        import asyncio
        if runtime == "uvloop":
            import uvloop
            uvloop.install()
        return asyncio.run(main())
    if runtime in ("threadlib", "threadlib-async"):
        import threadlib
        return threadlib.run(main())
    if runtime == "threadlib-green":
        from threadlib.frontends import green
        return green.run(main)
    if runtime == "trio":
        import trio
        return trio.run(main)
    if runtime == "curio":
        import curio
        return curio.run(main)
    if runtime == "gevent":
        return main()
    raise ValueError(f"unknown runtime {runtime!r}")


# ---------------------------------------------------------------- servers
# The handlers below are alike in shape on purpose: each is one peer's own
# per-connection loop, in its own API (callbacks, await, yield from or
# blocking calls; its recv and send methods), the code that peer has always
# been measured with. One loop with recv and send passed in would add a
# Python call per message to what is measured. Only handlers that are the
# same to the letter are shared (Blocking: gevent and threadlib-green).
class Protocols:
    """asyncio's (or uvloop's) protocols: loop.create_server, an asyncio.Protocol class per connection."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime

    def serve(self, port: int, protocol: type) -> None:
        import asyncio

        async def main():
            server = await asyncio.get_running_loop().create_server(protocol, HOST, port, backlog=BACKLOG)
            await server.serve_forever()

        run(self.runtime, main)

    @staticmethod
    def echo() -> type:
        import asyncio

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

        return Echo

    @staticmethod
    def respond(new_session: Callable[[], Any]) -> type:
        import asyncio

        class Respond(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport, self.requests = transport, new_session()

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

        return Respond


class Streams:
    """asyncio's (or uvloop's) streams: asyncio.start_server, a (reader, writer) coroutine per connection."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime

    def serve(self, port: int, handle: Callable) -> None:
        import asyncio

        async def main():
            server = await asyncio.start_server(handle, HOST, port, backlog=BACKLOG)
            await server.serve_forever()

        run(self.runtime, main)

    @staticmethod
    def echo() -> Callable:
        async def handle(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        return handle


class Blocking:
    """Green threads on sockets with a blocking API: gevent and threadlib-green
    run the very same handlers, handle(sock) or handle(sock, address)."""

    @staticmethod
    def echo() -> Callable:
        def handle(sock, addr=None):
            try:
                while data := sock.recv(65536):
                    sock.sendall(data)
            except ConnectionError:
                pass
            finally:
                sock.close()

        return handle

    @staticmethod
    def respond(new_session: Callable[[], Any]) -> Callable:
        def handle(sock, addr=None):
            requests = new_session()
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

        return handle


class Gevent(Blocking):
    """gevent.server.StreamServer: handle(socket, address) in a greenlet per connection."""

    runtime = "gevent"

    def serve(self, port: int, handle: Callable) -> None:
        from gevent.server import StreamServer
        run(self.runtime, StreamServer((HOST, port), handle, backlog=BACKLOG).serve_forever)


class ThreadlibGreen(Blocking):
    """threadlib's greenlet front end: green.listen, handle(conn) in a green thread per connection."""

    runtime = "threadlib-green"

    def serve(self, port: int, handle: Callable) -> None:
        from threadlib.frontends import green

        def main():
            listener = green.listen((HOST, port))
            while True:
                conn, addr = listener.accept()
                green.spawn(handle, conn)

        run(self.runtime, main)


class Trio:
    """trio.serve_tcp: an async handle(stream) per connection."""

    runtime = "trio"

    def serve(self, port: int, handle: Callable) -> None:
        import trio
        run(self.runtime, lambda: trio.serve_tcp(handle, port, host=HOST, backlog=BACKLOG))

    @staticmethod
    def echo() -> Callable:
        import trio

        async def handle(stream):
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass

        return handle

    @staticmethod
    def respond(new_session: Callable[[], Any]) -> Callable:
        async def handle(stream):
            requests = new_session()
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

        return handle


class Curio:
    """curio.tcp_server: an async handle(client, address) per connection (curio closes the client)."""

    runtime = "curio"

    def serve(self, port: int, handle: Callable) -> None:
        import curio

        async def main():
            await curio.tcp_server(HOST, port, handle, backlog=BACKLOG)

        run(self.runtime, main)

    @staticmethod
    def echo() -> Callable:
        async def handle(client, addr):
            try:
                while data := await client.recv(65536):
                    await client.sendall(data)
            except ConnectionError:
                pass

        return handle

    @staticmethod
    def respond(new_session: Callable[[], Any]) -> Callable:
        async def handle(client, addr):
            requests = new_session()
            try:
                while data := await client.recv(65536):
                    out, keep = requests.feed(data)
                    if out:
                        await client.sendall(out)
                    if not keep:
                        break
            except Exception:
                pass

        return handle


class Threadlib:
    """threadlib with generator threads: sockio.listen, a thread handle(conn) per connection."""

    runtime = "threadlib"

    def serve(self, port: int, handle: Callable) -> None:
        run(self.runtime, lambda: self.main(port, handle))

    @staticmethod
    def main(port: int, handle: Callable) -> Any:
        """The server's main thread (a replay of a recording runs it again)."""
        import threadlib
        from threadlib.io import sockio

        listener = yield from sockio.listen((HOST, port))
        while True:
            conn, addr = yield from listener.accept()
            yield from threadlib.spawn(handle(conn))

    @staticmethod
    def echo() -> Callable:
        def handle(conn):
            try:
                while True:
                    data = yield from conn.recv(65536)
                    if not data:
                        break
                    yield from conn.sendall(data)
            except ConnectionError:
                pass
            finally:
                conn.close()

        return handle

    @staticmethod
    def respond(new_session: Callable[[], Any]) -> Callable:
        def handle(conn):
            requests = new_session()
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

        return handle


class ThreadlibRecording(Threadlib):
    """Threadlib's server with its run recorded (``threadlib.run(...,
    record=...)``) to the path in $THREADLIB_BENCH_RECORD: what recording
    costs, side by side (bench.replay_bench)."""

    def serve(self, port: int, handle: Callable) -> None:
        import threadlib

        threadlib.run(self.main(port, handle), record=os.environ["THREADLIB_BENCH_RECORD"])


class ThreadlibAsync:
    """threadlib with `async def` threads: the same sockio API, awaited.

    Line for line Threadlib with `await` for `yield from`, deliberately: the
    two flavours are measured apart, each with its own loop (a function is
    either a generator or a coroutine, so one body cannot serve both)."""

    runtime = "threadlib-async"

    def serve(self, port: int, handle: Callable) -> None:
        import threadlib
        from threadlib.io import sockio

        async def main():
            listener = await sockio.listen((HOST, port))
            while True:
                conn, addr = await listener.accept()
                await threadlib.spawn(handle(conn))

        run(self.runtime, main)

    @staticmethod
    def echo() -> Callable:
        async def handle(conn):
            try:
                while True:
                    data = await conn.recv(65536)
                    if not data:
                        break
                    await conn.sendall(data)
            except ConnectionError:
                pass
            finally:
                conn.close()

        return handle

    @staticmethod
    def respond(new_session: Callable[[], Any]) -> Callable:
        async def handle(conn):
            requests = new_session()
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

        return handle


# The servers, by the names the benchmarks' tables give them.
SERVERS = {
    "asyncio-streams": Streams("asyncio"),
    "asyncio-protocols": Protocols("asyncio"),
    "uvloop-protocols": Protocols("uvloop"),
    "threadlib-loop-protocols": Protocols("threadlib-loop"),
    "uvloop-streams": Streams("uvloop"),
    "threadlib-loop-streams": Streams("threadlib-loop"),
    "gevent": Gevent(),
    "trio": Trio(),
    "curio": Curio(),
    "threadlib": Threadlib(),
    "threadlib-async": ThreadlibAsync(),
    "threadlib-green": ThreadlibGreen(),
    # The same server on the pure-Python hot path (THREADLIB_PURE=1 in its
    # child): what the compiled one buys, side by side.
    "threadlib-pure": Threadlib(),
    "threadlib-green-pure": ThreadlibGreen(),
    # The same server on the io_uring worker (THREADLIB_IO=uring in its
    # child): completion-based recv and send, multishot accept.
    "threadlib-uring": Threadlib(),
    "threadlib-recording": ThreadlibRecording(),
}


# ---------------------------------------------------------------- application servers
# Whole servers that run a WSGI or an ASGI application (bench.app_servers):
# the peer is the server program itself, started with its own command
# line, one process (gunicorn: its master and one worker), no access log.
APP_SERVER_NEEDS = {
    "threadlib-wsgi": ("threadlib", "greenlet"),
    "gevent-pywsgi": ("gevent",),
    "gunicorn-gevent": ("gunicorn", "gevent"),
    "threadlib-asgi": ("threadlib", "httptools"),
    "uvicorn-uvloop-httptools": ("uvicorn", "uvloop", "httptools"),
}


def app_server_argv(peer: str, port: int, app: str, module: str) -> list[str]:
    """argv of app server ``peer`` serving the application ``app``
    (MODULE:NAME; WSGI for the -wsgi/gevent/gunicorn peers, ASGI for the
    others) on 127.0.0.1:PORT. gevent-pywsgi has no program of its own: it
    runs as `python -m MODULE --serve gevent-pywsgi PORT` (serve_pywsgi).
    Skip (a 'skipped' row) when a module that peer needs does not import."""
    for name in APP_SERVER_NEEDS[peer]:
        H.import_or_skip(name)
    py = sys.executable
    if peer == "threadlib-wsgi":
        return [py, "-m", "apps.webserver", "--wsgi", app, "--host", HOST, "--port", str(port), "--quiet"]
    if peer == "threadlib-asgi":
        return [py, "-m", "apps.webserver", "--asgi", app, "--host", HOST, "--port", str(port), "--quiet",
                "--lifespan", "off"]
    if peer == "gevent-pywsgi":
        return [py, "-m", module, "--serve", peer, str(port)]
    if peer == "gunicorn-gevent":
        return [py, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "1", "--bind", f"{HOST}:{port}",
                "--backlog", str(BACKLOG), "--worker-connections", "10000", "--log-level", "warning", app]
    if peer == "uvicorn-uvloop-httptools":
        return [py, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--loop", "uvloop", "--http",
                "httptools", "--lifespan", "off", "--no-access-log", "--log-level", "warning",
                "--backlog", str(BACKLOG)]
    raise ValueError(f"unknown application server {peer!r}")


def serve_pywsgi(port: int, app: Callable) -> None:
    """gevent's own WSGI server (gevent.pywsgi.WSGIServer) on 127.0.0.1:PORT, no access log.

    Its listener has TCP_NODELAY (accepted sockets inherit it): pywsgi
    sends a response's head and body in two writes, and with Nagle on the
    body waits for the client's delayed ACK, 40 ms a request, which would
    measure the client's ACK timer instead of the server."""
    import socket

    from gevent import pywsgi, socket as green_socket
    listener = green_socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((HOST, port))
    listener.listen(BACKLOG)
    pywsgi.WSGIServer(listener, app, log=None).serve_forever()


def needs(peer: str) -> tuple[str, ...]:
    """The modules peer (a runtime or a server name) imports."""
    return NEEDS[peer] if peer in NEEDS else NEEDS[SERVERS[peer].runtime]


# ---------------------------------------------------------------- processes
def child_argv(module: str, peer: str, port: int, *args: str) -> list[str]:
    """argv of `python -m MODULE --serve PEER PORT [ARGS]`: peer's server for
    the workload of benchmark MODULE, in a child process (harness.cli).
    Skip (a 'skipped' row) when a module that peer needs does not import."""
    for name in needs(peer):
        H.import_or_skip(name)
    env = ["env", "THREADLIB_PURE=1"] if peer.endswith("-pure") else []
    if peer.endswith("-uring"):
        env = ["env", "THREADLIB_IO=uring"]
    return [*env, sys.executable, "-m", module, "--serve", peer, str(port), *args]


def c_server_argv(name: str, port: int) -> list[str]:
    """bench/c/NAME.c, a C server taking PORT HOST, built with gcc -O2."""
    return [str(H.build_c(name)), str(port), HOST]


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
{http}    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    server {{
        listen {host}:{port} backlog=1024{listen};
        {server}
    }}
}}
"""


def nginx_argv(tmp: str, port: int, server: str, http: tuple[str, ...] = (),
               worker_connections: int = 1024, listen: str = "") -> list[str]:
    """nginx in the foreground, one worker process, access_log off, its
    config, pid file, logs and temp paths in tmp: `server` is what its server
    block holds besides `listen`, `http` more directives for the http block,
    `listen` more parameters of the listen directive (" ssl")."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise H.Skip("nginx not installed")
    conf = Path(tmp) / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=tmp, host=HOST, port=port, server=server, worker_connections=worker_connections,
                                      http="".join(f"    {line}\n" for line in http), listen=listen))
    return [nginx, "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)]


@contextlib.contextmanager
def running(peer: str, server_argv: Callable[[str, int, str], list[str]]) -> Iterator[H.Server]:
    """peer's server, server_argv(peer, port, tmp), on a free port with a
    temporary directory tmp: started, ready and pinned to core 0 on entry
    (harness.Server), stopped and tmp removed on exit."""
    port = H.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, \
            H.Server(peer, server_argv(peer, port, tmp), port) as srv:
        yield srv
