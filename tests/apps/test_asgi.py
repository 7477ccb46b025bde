"""The ASGI server (apps.webserver.asgi) serving Starlette and plain ASGI
apps over real sockets: httpx and raw-socket clients, curl, and the real
``python -m apps.webserver --asgi`` program under SIGTERM."""

from __future__ import annotations

import hashlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

import threadlib
from apps.webserver.asgi import AsgiServer, load_app
from tests import REPO_ROOT
from threadlib.io import sockio

from . import asgi_apps, kill_group

pytestmark = pytest.mark.timeout(60)
ROOT = str(REPO_ROOT)


class Background:
    """An AsgiServer under plain threadlib.run on an OS thread of its own."""

    def __init__(self, app, **options):
        self.server = AsgiServer(app, **options)
        self.ready = threading.Event()
        self.error = None
        self._here, self._there = socket.socketpair()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        def main():
            shutdown = threadlib.Event()
            wake = sockio.Stream(self._there)

            def wait_for_stop():
                yield from wake.recv(1)
                shutdown.set()

            waiter = yield from threadlib.spawn(wait_for_stop())
            try:
                yield from self.server.serve(("127.0.0.1", 0), shutdown, ready=lambda a: self.ready.set())
            finally:
                yield from waiter.cancel()
                wake.close()

        try:
            threadlib.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30), "the ASGI server did not start"
        if self.error is not None:
            raise self.error
        return f"http://127.0.0.1:{self.server.address[1]}"

    def __exit__(self, *exc):
        self._here.send(b"x")
        self.thread.join(30)
        assert not self.thread.is_alive()
        self._here.close()


def raw(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def without_date(response: bytes) -> bytes:
    return b"\r\n".join(line for line in response.split(b"\r\n") if not line.startswith(b"Date: "))


# -- Starlette ------------------------------------------------------------------------------


def test_starlette_routes_lifespan_state_and_the_loop(capsys):
    with Background(asgi_apps.app) as base, httpx.Client(base_url=base) as client:
        assert client.get("/hello", params={"name": "asgi"}).text == "hello, asgi"
        # State from the lifespan, and the app ran on threadlib's loop.
        assert client.get("/state").text == "started-by-lifespan _ProvidedLoop"
        assert client.get("/missing").status_code == 404
        info = client.get("/info/a%20b/%C3%A9?x=1&y=%20")
        assert info.text == "GET /info/a b/\u00e9 b'/info/a%20b/%C3%A9' b'x=1&y=%20' 1.1 http"
    assert capsys.readouterr().out == "lifespan startup\nlifespan shutdown\n"


def test_responses_byte_exact_on_the_wire():
    with Background(asgi_apps.app) as base:
        reply = raw(base, b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert without_date(reply) == (b"HTTP/1.1 200 OK\r\nServer: threadlib\r\ncontent-length: 12\r\n"
                                       b"content-type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
                                       b"hello, world")
        # A streamed response without a length is chunked, one chunk per message.
        reply = raw(base, b"GET /count?n=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert without_date(reply) == (b"HTTP/1.1 200 OK\r\nServer: threadlib\r\n"
                                       b"content-type: text/plain; charset=utf-8\r\n"
                                       b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                       b"7\r\nline 0\n\r\n7\r\nline 1\n\r\n7\r\nline 2\n\r\n0\r\n\r\n")
        # HTTP/1.0 gets no chunking: the close ends the body.
        reply = raw(base, b"GET /count?n=2 HTTP/1.0\r\n\r\n")
        assert reply.endswith(b"Connection: close\r\n\r\nline 0\nline 1\n")
        assert b"Transfer-Encoding" not in reply
        # HEAD: the head only.
        reply = raw(base, b"HEAD /info/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\n")


def test_request_bodies_stream_in_and_out():
    body = bytes(range(256)) * 8192  # 2 MiB, far more than one read
    with Background(asgi_apps.app) as base, httpx.Client(base_url=base) as client:
        digest = client.post("/digest", content=body)
        assert digest.text == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
        # Chunked upload (a generator: no length) echoed back as a stream.
        pieces = [bytes([i]) * (1000 + i) for i in range(50)]
        echoed = client.post("/echo", content=iter(pieces))
        assert echoed.headers["transfer-encoding"] == "chunked"
        assert echoed.content == b"".join(pieces)
        # Keep-alive held through all of it: one connection.
        assert client.post("/echo", content=body).content == body


def test_a_response_larger_than_the_socket_takes_arrives_whole_to_a_slow_reader():
    # The app's task writes what the socket takes at once and hands the
    # rest to the connection thread: with a 4 KiB receive buffer nearly
    # every piece waits, and the bytes must still arrive whole and in order,
    # twice on one keep-alive connection.
    with Background(asgi_apps.big_stream) as base:
        host, port = base.removeprefix("http://").split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        with sock:
            sock.connect((host, int(port)))
            expected = hashlib.sha256(asgi_apps.BIG_PIECE * 64).hexdigest()
            for _ in range(2):
                sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(1)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                digest, got = hashlib.sha256(), 0
                while got < length:
                    chunk = sock.recv(min(65536, length - got))
                    assert chunk, "the server closed mid-body"
                    digest.update(chunk)
                    got += len(chunk)
                assert digest.hexdigest() == expected


def test_pipelined_requests_are_answered_in_order():
    with Background(asgi_apps.app) as base:
        reply = raw(base, b"POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                          b"GET /hello?name=two HTTP/1.1\r\nHost: t\r\n\r\n"
                          b"GET /hello?name=three HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    first = reply.index(b"3 " + hashlib.sha256(b"abc").hexdigest().encode())
    assert first < reply.index(b"hello, two") < reply.index(b"hello, three")
    assert reply.count(b"HTTP/1.1 200 OK") == 3


def test_curl_expect_100_continue_upload(tmp_path):
    data = bytes(range(256)) * 4096
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    with Background(asgi_apps.app) as base:
        result = subprocess.run(["curl", "-sS", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}",
                                 base + "/digest"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


# -- bad apps and bad input --------------------------------------------------------------------


def test_a_raising_app_gets_a_500_and_a_log_line_naming_it(caplog):
    caplog.set_level(logging.INFO, logger="apps.webserver.asgi")
    with Background(asgi_apps.raises_before_start, app_name="tests.apps.asgi_apps:raises_before_start") as base:
        with httpx.Client(base_url=base) as client:
            first = client.get("/x")
            second = client.get("/y")  # the server goes on
    assert first.status_code == second.status_code == 500
    assert first.text == "500 Internal Server Error: the application failed\n"
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    assert "ASGI app tests.apps.asgi_apps:raises_before_start raised while serving GET /x" in failures[0].getMessage()
    assert isinstance(failures[0].exc_info[1], ValueError)
    # lifespan=auto: an app that raises on the lifespan scope just has no lifespan.
    assert any("does not support the lifespan protocol" in r.getMessage() for r in caplog.records)


def test_an_app_that_never_answers_or_sends_bad_headers_gets_a_500(caplog):
    with Background(asgi_apps.no_response, app_name="quiet") as base, httpx.Client(base_url=base) as client:
        assert client.get("/").status_code == 500
    assert any("ASGI app quiet returned without a response" in r.getMessage() for r in caplog.records)
    with Background(asgi_apps.bad_header, app_name="evil", lifespan="off") as base:
        reply = raw(base, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 500 ")
    assert b"Injected" not in reply


def test_app_given_content_length_over_several_messages():
    with Background(asgi_apps.fixed_length, lifespan="off") as base:
        reply = raw(base, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert without_date(reply) == (b"HTTP/1.1 200 OK\r\nServer: threadlib\r\ncontent-length: 9\r\n"
                                   b"content-type: text/plain\r\nConnection: close\r\n\r\nabcdefghi")


def test_malformed_requests_are_refused():
    with Background(asgi_apps.app) as base:
        assert raw(base, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert raw(base, b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n").startswith(b"HTTP/1.1 431 ")


def test_response_headers_of_every_shape_checked_alike_every_time(caplog):
    """Response headers are checked once per (name, value) and remembered:
    the second and third responses with the same headers go out as the
    first, pairs given as lists or bytearrays work, and a bad header or
    Content-Length is refused every time, never remembered."""
    good = [[b"x-list", b"1"], (bytearray(b"x-bytearray"), b"2"), (b"content-length", b"2"),
            (b"Transfer-Encoding", b"chunked"), (memoryview(bytearray(b"x-view")), b"4"), (b"x-tuple", b"3")]
    with Background(asgi_apps.header_shapes(good), lifespan="off") as base:
        for _ in range(3):
            reply = raw(base, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert without_date(reply) == (b"HTTP/1.1 200 OK\r\nServer: threadlib\r\nx-list: 1\r\n"
                                           b"x-bytearray: 2\r\ncontent-length: 2\r\nx-view: 4\r\nx-tuple: 3\r\n"
                                           b"Connection: close\r\n\r\nok")
    for bad, why in (((b"content-length", b" 2"), "Content-Length b' 2' is not a number"),
                     ((b"content-length", b"1_0"), "Content-Length b'1_0' is not a number"),
                     ((b"x-bad name", b"v"), "has a forbidden character"),
                     ((b"x-ok", b"v", b"extra"), "is not a (name, value) pair of bytes")):
        caplog.clear()
        with Background(asgi_apps.header_shapes([bad]), app_name="shapes", lifespan="off") as base:
            for _ in range(2):
                reply = raw(base, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert reply.startswith(b"HTTP/1.1 500 "), (bad, reply)
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 2 and all(why in str(r.exc_info[1]) for r in failures), (bad, failures)


def test_idle_silent_and_slow_connections_are_closed_on_their_clocks():
    """No timer per wait: the idle sweeper closes a kept-alive connection
    after keepalive_timeout and a silent new one after header_timeout,
    never before; a head that trickles in gets a 408; a request whose app
    takes longer than both timeouts is answered."""
    with Background(asgi_apps.sleepy, header_timeout=0.5, keepalive_timeout=1.0, lifespan="off") as base:
        host, port = base.removeprefix("http://").split(":")
        address = (host, int(port))
        silent = socket.create_connection(address, timeout=30)
        t0 = time.monotonic()
        assert silent.recv(10) == b""
        assert time.monotonic() - t0 >= 0.45
        silent.close()
        kept = socket.create_connection(address, timeout=30)
        kept.sendall(b"GET /?1.6 HTTP/1.1\r\nHost: t\r\n\r\n")  # the app outlasts both timeouts
        reply = b""
        while not reply.endswith(b"awake"):
            reply += kept.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        assert kept.recv(10) == b""
        assert time.monotonic() - t0 >= 0.95
        kept.close()
        slow = socket.create_connection(address, timeout=30)
        slow.sendall(b"GET / HTTP/1.1\r\n")
        t0 = time.monotonic()
        assert slow.recv(65536).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - t0 >= 0.45
        slow.close()


def test_a_failing_startup_stops_serve():
    server = AsgiServer(asgi_apps.failing_startup, app_name="db-app")

    def main():
        yield from server.serve(("127.0.0.1", 0))

    with pytest.raises(Exception, match="db-app failed its startup: .*the database is not there"):
        threadlib.run(main())
    assert server.address is None  # never listened


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:app", "module 'no_such_module_xyz' does not import: ModuleNotFoundError"),
    ("tests.apps.asgi_apps:nothing", "module 'tests.apps.asgi_apps' has no 'nothing'"),
    ("tests.apps.asgi_apps:not_callable", "names an object of type int, not a callable ASGI application"),
    ("tests.apps.asgi_apps", "is not MODULE:NAME"),
])
def test_load_app_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        load_app(spec)


# -- the program -------------------------------------------------------------------------------


def test_program_bad_module_is_one_line_and_status_2():
    result = subprocess.run([sys.executable, "-m", "apps.webserver", "--asgi", "no_such_module_xyz:app"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "--asgi no_such_module_xyz:app: module 'no_such_module_xyz' does not import" in result.stderr


def test_program_serves_starlette_and_runs_lifespan_shutdown_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "apps.webserver", "--asgi", "tests.apps.asgi_apps:app",
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline() == "lifespan startup\n"
        banner = proc.stdout.readline()
        assert banner.startswith("serving ASGI app tests.apps.asgi_apps:app on http://127.0.0.1:"), banner
        base = banner.split(" on ")[1].split("/ ")[0]
        with httpx.Client(base_url=base) as client:
            assert client.get("/state").text == "started-by-lifespan _ProvidedLoop"
            assert client.post("/echo", content=b"\x00\x01round trip\xff").content == b"\x00\x01round trip\xff"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        kill_group(proc)
    assert proc.returncode == 0
    assert "lifespan shutdown\n" in out


def test_program_exits_3_when_the_app_fails_its_startup():
    result = subprocess.run([sys.executable, "-m", "apps.webserver", "--asgi",
                             "tests.apps.asgi_apps:failing_startup", "--port", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "serving" not in result.stdout  # never listened
    assert result.stderr.count("\n") == 1
    assert "failed its startup: RuntimeError: the database is not there" in result.stderr
