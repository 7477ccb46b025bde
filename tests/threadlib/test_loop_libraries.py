"""Real asyncio libraries on threadlib.loop: the httpx async client, uvicorn
serving a Starlette app with threadlib's loop factory, aiohttp's server and
client, and redis.asyncio against a real redis-server. Each test makes a
real request/response round trip over loopback sockets and compares the
bytes exactly, and checks that the library ran on a ThreadlibEventLoop."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import socket
import subprocess
import threading

import aiohttp
import httpx
import pytest
import redis.asyncio as aredis
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import threadlib
import threadlib.loop as tloop

from ..waiting import wait_until

pytestmark = pytest.mark.timeout(60)

# Every byte value, so that no encoding step can pass unnoticed.
PAYLOAD = bytes(range(256)) * 64


def run_on_threadlib_loop(coro_fn, *args):
    with asyncio.Runner(loop_factory=tloop.new_event_loop) as runner:
        return runner.run(coro_fn(*args))


def on_threadlib_loop() -> bool:
    """True inside a callback of a ThreadlibEventLoop running its scheduler."""
    loop = asyncio.get_running_loop()
    return isinstance(loop, tloop.ThreadlibEventLoop) and threadlib.current_scheduler() is loop.scheduler


# -- httpx -------------------------------------------------------------------------


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = b"echo:" + body[::-1]
        self.send_response(201)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("X-Seen-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stdlib_server():
    """The standard library's HTTP server on a plain OS thread: a server
    that shares nothing with threadlib."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_httpx_async_client_round_trip(stdlib_server):
    host, port = stdlib_server

    async def main():
        async with httpx.AsyncClient() as client:
            first = await client.post(f"http://{host}:{port}/x", content=PAYLOAD)
            # A second request on the kept-alive connection.
            second = await client.post(f"http://{host}:{port}/y", content=b"abc")
        return on_threadlib_loop(), first, second

    on_loop, first, second = run_on_threadlib_loop(main)
    assert on_loop
    assert first.status_code == 201
    assert first.content == b"echo:" + PAYLOAD[::-1]
    assert first.headers["x-seen-length"] == str(len(PAYLOAD))
    assert second.content == b"echo:cba"


def test_httpx_from_a_thread_of_plain_threadlib_run(stdlib_server):
    """No asyncio.run anywhere: the scheduler of threadlib.run provides the
    loop. httpx (through anyio) asks for the current asyncio task, which a
    threadlib thread is not, so the request runs as a task through
    from_asyncio; the thread awaits it."""
    host, port = stdlib_server

    async def fetch():
        async with httpx.AsyncClient() as client:
            return await client.post(f"http://{host}:{port}/t", content=PAYLOAD)

    async def main():
        await asyncio.sleep(0.01)
        reply = await tloop.from_asyncio(fetch())
        return on_threadlib_loop(), reply

    on_loop, reply = threadlib.run(main())
    assert on_loop
    assert reply.status_code == 201
    assert reply.content == b"echo:" + PAYLOAD[::-1]


# -- uvicorn + Starlette ---------------------------------------------------------------


def _starlette_app() -> Starlette:
    async def loop_kind(request: Request) -> Response:
        return Response(type(asyncio.get_running_loop()).__qualname__.encode(), media_type="text/plain")

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body[::-1], media_type="application/octet-stream")

    return Starlette(routes=[Route("/loop", loop_kind), Route("/echo", echo, methods=["POST"])])


def _raw_exchange(address, request: bytes) -> bytes:
    """Send one request on a fresh connection and read until the server
    closes it."""
    with socket.create_connection(address, timeout=20) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_uvicorn_serves_starlette_with_the_threadlib_loop_factory():
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    config = uvicorn.Config(_starlette_app(), loop="threadlib.loop:new_event_loop", log_level="warning",
                            server_header=False, date_header=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, what="uvicorn started")
        loop_reply = _raw_exchange(address, b"GET /loop HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        body = b"\x00\xffhello\r\n"
        echo_reply = _raw_exchange(address, b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()
    assert not thread.is_alive()
    assert loop_reply == (b"HTTP/1.1 200 OK\r\ncontent-length: 18\r\ncontent-type: text/plain; charset=utf-8\r\n"
                          b"connection: close\r\n\r\nThreadlibEventLoop")
    assert echo_reply == (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ncontent-type: application/octet-stream\r\n"
                          b"connection: close\r\n\r\n" + body[::-1])


# -- aiohttp ---------------------------------------------------------------------------


def test_aiohttp_server_and_client():
    async def main():
        seen = []

        async def handle(request: web.Request) -> web.Response:
            seen.append(on_threadlib_loop())
            data = await request.read()
            return web.Response(body=data[::-1], headers={"X-Length": str(len(data))})

        app = web.Application()
        app.router.add_post("/reverse", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"http://127.0.0.1:{port}/reverse", data=PAYLOAD) as reply:
                    status, length, body = reply.status, reply.headers["X-Length"], await reply.read()
        finally:
            await runner.cleanup()
        return on_threadlib_loop(), seen, status, length, body

    on_loop, seen, status, length, body = run_on_threadlib_loop(main)
    assert on_loop and seen == [True]
    assert (status, length) == (200, str(len(PAYLOAD)))
    assert body == PAYLOAD[::-1]


# -- redis.asyncio against redis-server ----------------------------------------------------

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16) == b"+PONG\r\n"
    except OSError:
        return False


@pytest.fixture
def redis_port(tmp_path):
    """A redis-server of its own on a free loopback port, without
    persistence, stopped after the test."""
    port = _free_port()
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers_ping(port) or proc.poll() is not None, what="redis-server answering")
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {proc.stdout.read().decode(errors='replace')}")
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (setup.sh installs it)")
def test_redis_asyncio_round_trip(redis_port):
    async def main():
        client = aredis.Redis(host="127.0.0.1", port=redis_port)
        try:
            await client.set("blob", PAYLOAD)
            await client.rpush("list", b"a", b"\x00", b"c")
            async with client.pipeline(transaction=True) as pipe:
                pipe.get("blob").lrange("list", 0, -1).incrby("counter", 41).incr("counter")
                results = await pipe.execute()
        finally:
            await client.aclose()
        return on_threadlib_loop(), results

    on_loop, results = run_on_threadlib_loop(main)
    assert on_loop
    assert results == [PAYLOAD, [b"a", b"\x00", b"c"], 41, 42]
