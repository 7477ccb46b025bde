"""Echo benchmark: 100 connections, one 64-byte message in flight on each.

Every server runs as a subprocess pinned to core 0; the one load client
(bench/c/echo_load.c, built with gcc -O2 into bench/build/) runs pinned to
core 1 for a fixed duration. Reports messages/s and server CPU µs per
message (schedstat of the server's threads, before and after the load run).
The C epoll server is the limit. Traffic goes to 127.0.0.1 only.

    python -m bench.echo [-d 3] [-c 100] [--size 64] [--only trio,threadlib] [--json]
    python -m bench.echo --serve PEER PORT      # one server in the foreground
"""
from __future__ import annotations

import sys

from bench import harness as H

HOST = H.HOST
PEERS = ("c-epoll", "asyncio-streams", "asyncio-protocols", "uvloop-protocols", "uvloop-streams", "gevent",
         "trio", "curio", "threadlib", "threadlib-async", "threadlib-green")
ANCHORS = {"asyncio-streams": "12.0 µs", "uvloop-protocols": "6.5 µs", "c-epoll": "7.0 µs"}
TARGET = [("cpu_us", "<=", 8.0, " µs")]


# ---------------------------------------------------------------- servers
def s_asyncio_streams(port: int, loop: str = "asyncio") -> None:
    import asyncio
    if loop == "uvloop":
        import uvloop
        uvloop.install()

    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def s_asyncio_protocols(port: int, loop: str = "asyncio") -> None:
    import asyncio
    if loop == "uvloop":
        import uvloop
        uvloop.install()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await asyncio.get_running_loop().create_server(Echo, HOST, port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def s_uvloop_protocols(port: int) -> None:
    s_asyncio_protocols(port, "uvloop")


def s_uvloop_streams(port: int) -> None:
    s_asyncio_streams(port, "uvloop")


def s_gevent(port: int) -> None:
    from gevent.server import StreamServer

    def handle(sock, addr):
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except ConnectionError:
            pass
        finally:
            sock.close()

    StreamServer((HOST, port), handle, backlog=1024).serve_forever()


def s_trio(port: int) -> None:
    import trio

    async def handle(stream):
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    trio.run(lambda: trio.serve_tcp(handle, port, host=HOST, backlog=1024))


def s_curio(port: int) -> None:
    import curio

    async def handle(client, addr):
        try:
            while data := await client.recv(65536):
                await client.sendall(data)
        except ConnectionError:
            pass

    async def main():
        await curio.tcp_server(HOST, port, handle, backlog=1024)

    curio.run(main)


def s_threadlib(port: int) -> None:
    import threadlib
    from threadlib.io import sockio

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

    async def main():
        listener = await sockio.listen((HOST, port))
        while True:
            conn, addr = await listener.accept()
            await threadlib.spawn(handle(conn))

    threadlib.run(main())


def s_threadlib_green(port: int) -> None:
    import threadlib.frontends.green as green

    def handle(conn):
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except ConnectionError:
            pass
        finally:
            conn.close()

    def main():
        listener = green.listen((HOST, port))
        while True:
            conn, addr = listener.accept()
            green.spawn(handle, conn)

    green.run(main)


SERVERS = {name: globals()["s_" + name.replace("-", "_")] for name in PEERS if name != "c-epoll"}


# ---------------------------------------------------------------- parent
def server_argv(peer: str, port: int) -> list[str]:
    if peer == "c-epoll":
        return [str(H.build_c("echo_server")), str(port), HOST]
    if peer.startswith("threadlib"):
        H.import_or_skip("threadlib.frontends.green" if peer == "threadlib-green" else "threadlib")
    return [sys.executable, "-m", "bench.echo", "--serve", peer, str(port)]


def load(loader: str, port: int, conns: int, duration: float, size: int) -> tuple[int, float]:
    out = H.run_load([loader, HOST, str(port), str(conns), str(duration), str(size)], timeout=duration + 30)
    f = dict(kv.split("=") for kv in out.split())
    if int(f["errors"]):
        raise RuntimeError(f"{f['errors']} connections failed: {out.strip()}")
    return int(f["messages"]), float(f["seconds"])


def measure(peer: str, conns: int, duration: float, size: int, warmup: float) -> dict:
    loader = str(H.build_c("echo_load"))
    port = H.free_port()
    with H.Server(peer, server_argv(peer, port), port) as srv:
        if warmup:
            load(loader, port, conns, warmup, size)
        return H.measure_server(srv, lambda: load(loader, port, conns, duration, size))


def run(duration: float = 3.0, conns: int = 100, size: int = 64, warmup: float = 0.5, only: str = "",
        save: bool = False, repeat: int = 1) -> list[str]:
    rows = []
    for peer in (p for p in PEERS if H.selected(p, only)):
        extra = {"anchor": ANCHORS.get(peer, "")}
        if peer.startswith("threadlib"):
            extra["target"] = TARGET
        rows.append(H.safe(peer, lambda: H.best_of(repeat, lambda: measure(peer, conns, duration, size, warmup)),
                          **extra))
    cols = [("ops_s", "messages/s"), ("cpu_us", "server CPU µs/msg"), ("cpu_us_stat", "(utime+stime)"),
            ("busy", "server busy %"), ("load_busy", "load busy %")]
    title = f"echo: {conns} connections x one {size}-byte message in flight, {duration:g}s, C load client"
    if save:
        H.save_json("echo", {"rows": rows, "duration": duration, "conns": conns, "size": size})
    return [H.table(title, rows, cols, ref="asyncio-streams")]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--serve"]:
        SERVERS[argv[1]](int(argv[2]))
        return
    p = H.arg_parser(__doc__)
    p.add_argument("-d", "--duration", type=float, default=3.0, help="measured seconds per server")
    p.add_argument("-c", "--conns", type=int, default=100, help="connections")
    p.add_argument("--size", type=int, default=64, help="message bytes")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured load seconds first (0: none)")
    a = p.parse_args(argv)
    print(H.machine_line() + "\n")
    for t in run(a.duration, a.conns, a.size, a.warmup, a.only, a.json, a.repeat):
        print(t)


if __name__ == "__main__":
    main(sys.argv[1:])
