"""WSGI on green threads (apps.webserver.wsgi) as clients see it: a real
Flask application and small raw WSGI applications, real sockets,
http.client and curl, and the real program (``--wsgi``) for uploads, worker
processes and SIGTERM."""

import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import types

import pytest

import threadlib
from apps.webserver import BackgroundServer, Limits, WebServer, serve_wsgi
from threadlib.frontends import green
from threadlib.io import sockio

from ..waiting import wait_until
from . import kill_group
from .flask_app import app as flask_app
from .test_webserver import ROOT, Client, _free_port, _refused, raw_exchange, status_of


@pytest.fixture
def serve_app():
    servers = []

    def run(app, **options):
        srv = BackgroundServer(WebServer(wsgi=app, **options))
        srv.start()
        servers.append(srv)
        return srv.address

    yield run
    for srv in servers:
        srv.stop()


def request(address, method, target, body=None, headers=None, **kwargs):
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {}, **kwargs)
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


# ------------------------------------------------------------------ Flask


def test_flask_routing_query_and_not_found(serve_app):
    address = serve_app(flask_app)
    status, headers, body = request(address, "GET", "/")
    assert (status, body) == (200, b"front page\n")
    assert headers["Content-Length"] == "11" and headers["Content-Type"] == "text/html; charset=utf-8"
    status, _, body = request(address, "GET", "/items/7?q=a%20b")
    assert status == 200 and json.loads(body) == {"number": 7, "q": "a b"}
    status, _, body = request(address, "GET", "/nowhere")
    assert status == 404 and b"Not Found" in body
    status, _, _ = request(address, "DELETE", "/")
    assert status == 405


def test_flask_form_and_json_bodies(serve_app):
    address = serve_app(flask_app)
    status, _, body = request(address, "POST", "/form", body="b=2&a=%C3%BC+x",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and json.loads(body) == [["a", "\u00fc x"], ["b", "2"]]
    document = {"list": [1, 2, 3], "text": "caf\u00e9"}
    status, _, body = request(address, "POST", "/json", body=json.dumps(document),
                              headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body) == {"got": document}
    # the same document as a chunked body, in pieces
    raw = json.dumps(document).encode()
    status, _, body = request(address, "POST", "/json", body=iter([raw[:5], raw[5:9], raw[9:]]),
                              headers={"Content-Type": "application/json"}, encode_chunked=True)
    assert status == 200 and json.loads(body) == {"got": document}


def test_keep_alive_and_pipelined_requests_with_bodies_answer_in_order(serve_app):
    address = serve_app(flask_app)
    client = Client(address)
    try:
        client.send(b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"
                    b"[1, 2]\n"
                    b"GET /items/3 HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [client.response() for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 200]
        assert json.loads(answers[0][2]) == {"got": [1, 2]}
        assert json.loads(answers[1][2]) == {"number": 3, "q": None}
        assert json.loads(answers[2][2]) == {"size": 5, "sha256": hashlib.sha256(b"abcde").hexdigest()}
        assert answers[3][2] == b"front page\n"
        # the connection stays open for more
        client.send(b"GET /items/4 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(client.response()[2]) == {"number": 4, "q": None}
    finally:
        client.close()


def test_streaming_response_leaves_before_the_app_finishes(serve_app):
    address = serve_app(flask_app)
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/stream/g1")
        r = conn.getresponse()
        assert r.status == 200 and r.headers["Transfer-Encoding"] == "chunked"
        # the first block arrives while the app waits for /release: not buffered
        assert r.readline() == b"first\n"
        assert request(address, "POST", "/release/g1")[2] == b"released\n"
        assert r.read() == b"second\n"
    finally:
        conn.close()


def test_file_wrapper_sends_the_file_byte_exact(serve_app, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    address = serve_app(flask_app)
    status, headers, body = request(address, "GET", f"/file?path={path}")
    assert status == 200 and headers["Content-Length"] == str(len(data)) and body == data

    def raw_app(environ, start_response):
        f = open(path, "rb")
        f.seek(10)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 4096)

    address = serve_app(raw_app)
    status, headers, body = request(address, "GET", "/")
    assert status == 200 and headers["Content-Length"] == str(len(data) - 10) and body == data[10:]


def test_an_exception_in_a_view_is_a_500_and_a_log_line_and_serving_goes_on(serve_app, caplog):
    address = serve_app(flask_app)
    with caplog.at_level(logging.ERROR, logger="apps.webserver"):
        status, _, body = request(address, "GET", "/boom")
    assert status == 500 and body.startswith(b"500 Internal Server Error")
    lines = [r.getMessage() for r in caplog.records if r.name == "apps.webserver"]
    assert any("<Flask 'tests.apps.flask_app'>" in m and "RuntimeError" in m and "the view failed on purpose" in m
               and "GET /boom" in m for m in lines), lines
    assert request(address, "GET", "/")[2] == b"front page\n"


def test_curl_posts_files_with_and_without_chunking(serve_app, tmp_path):
    data = os.urandom(2 * 1024 * 1024 + 3)  # large enough that curl sends Expect: 100-continue
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    address = serve_app(flask_app)
    url = f"http://{address[0]}:{address[1]}/upload"
    expected = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        out = subprocess.run(["curl", "-sS", "-v", "--data-binary", f"@{path}", *extra, url],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == expected
    assert b"Expect: 100-continue" in out.stderr and b"HTTP/1.1 100 Continue" in out.stderr


# ------------------------------------------------------------------ the protocol


def echo_app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def test_expect_100_continue_is_sent_when_the_app_reads_the_body(serve_app):
    address = serve_app(echo_app)
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        client = Client.__new__(Client)
        client.sock, client.file = s, s.makefile("rb")
        status, headers, body = client.response()
    assert (status, body) == (200, b"hello")


def test_an_app_that_ignores_the_body_gets_no_100_and_the_connection_closes(serve_app):
    def ignoring(environ, start_response):
        start_response("204 No Content", [])
        return []

    address = serve_app(ignoring)
    answer = raw_exchange(address, b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\n") and b"100 Continue" not in answer
    assert b"Connection: close\r\n" in answer and answer.endswith(b"\r\n\r\n")


def test_an_unread_body_is_drained_and_the_connection_kept(serve_app):
    def ignoring(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    address = serve_app(ignoring)
    client = Client(address)
    try:
        client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 100000
                    + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = client.response(), client.response()
        assert (first[0], first[2], second[0], second[2]) == (200, b"ok", 200, b"ok")
        assert "Connection" not in second[1]
    finally:
        client.close()
    # more than the drain bound: answered, then closed rather than read
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        try:
            s.sendall(b"z" * 2_000_000)
        except (ConnectionResetError, BrokenPipeError):
            pass  # it answered, read its drain bound and closed while these bytes were still going
        answer = b""
        while b"ok" not in answer:  # the answer came before the reset: it is still readable
            chunk = s.recv(65536)
            assert chunk, f"the connection ended after {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        s.settimeout(10)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while True:
                s.sendall(b"z" * 65536)  # until the server, gone, resets


@pytest.mark.parametrize("data, status", [
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: x\r\nExpect: coffee\r\nContent-Length: 1\r\n\r\nx", 417),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world", 413),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n", 413),
])
def test_smuggling_shapes_and_oversized_bodies_are_refused_and_closed(serve_app, data, status):
    calls = []

    def recording(environ, start_response):
        calls.append(environ["PATH_INFO"])
        environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"ok"]

    address = serve_app(recording, limits=Limits(max_body=10))
    answer = raw_exchange(address, data + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == status, answer
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close\r\n" in answer
    assert "/after" not in calls


# ------------------------------------------------------------------ PEP 3333 from the app's side


def test_write_callable_and_exc_info_before_the_head(serve_app):
    def writer(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one ")
        write(b"two ")
        return iter([b"three"])

    def recovering(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("late trouble")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"try later"]

    status, headers, body = request(serve_app(writer), "GET", "/")
    assert (status, headers["Transfer-Encoding"], body) == (200, "chunked", b"one two three")
    status, headers, body = request(serve_app(recovering), "GET", "/")
    assert (status, headers["Content-Length"], body) == (503, "9", b"try later")


def test_exc_info_after_the_head_closes_the_connection(serve_app, caplog):
    def late(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise ValueError("after the head")
        except ValueError:
            start_response("500 Oops", [], sys.exc_info())
        return [b"never"]

    address = serve_app(late)
    with caplog.at_level(logging.ERROR, logger="apps.webserver"):
        answer = raw_exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"7\r\npartial\r\n")
    assert any("ValueError: after the head" in r.getMessage() for r in caplog.records)


def _raises(environ, start_response):
    raise KeyError("missing")


def _not_iterable(environ, start_response):
    start_response("200 OK", [])
    return 42


def _twice(environ, start_response):
    start_response("200 OK", [])
    start_response("404 Not Found", [])
    return [b"x"]


_kept_writes = []


def _keeps_write(environ, start_response):
    if _kept_writes:
        _kept_writes[0](b"too late")
    _kept_writes.append(start_response("200 OK", [("Content-Length", "2")]))
    return [b"ok"]


def _str_body(environ, start_response):
    start_response("200 OK", [])
    return ["text, not bytes"]


def _bad_header(environ, start_response):
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: b")])
    return [b"x"]


def _hop_by_hop(environ, start_response):
    start_response("200 OK", [("Transfer-Encoding", "chunked")])
    return [b"x"]


def _short(environ, start_response):
    start_response("200 OK", [("Content-Length", "10")])
    return [b"abc"]


@pytest.mark.parametrize("app, mistake", [
    (_raises, "raised KeyError: 'missing'"),
    (_not_iterable, "returned int, not an iterable of bytes"),
    (_twice, "start_response() called a second time without exc_info"),
    (_str_body, "yielded str, not bytes"),
    (_bad_header, "cannot be sent"),
    (_hop_by_hop, "hop-by-hop header 'Transfer-Encoding'"),
])
def test_app_mistakes_are_a_500_and_a_log_line_naming_them(serve_app, caplog, app, mistake):
    address = serve_app(app)
    with caplog.at_level(logging.ERROR, logger="apps.webserver"):
        answer = raw_exchange(address, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and b"Connection: close" in answer
    messages = [r.getMessage() for r in caplog.records if r.name == "apps.webserver"]
    assert any(f"test_wsgi:{app.__name__}" in m and mistake in m and "GET /x" in m for m in messages), messages
    # the server keeps serving
    assert status_of(raw_exchange(address, b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")) == 500


def test_write_after_finishing_and_short_bodies(serve_app, caplog):
    _kept_writes.clear()
    address = serve_app(_keeps_write)
    with caplog.at_level(logging.ERROR, logger="apps.webserver"):
        assert request(address, "GET", "/")[2] == b"ok"
        answer = raw_exchange(address, b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 500
    assert any("write() called after its response was finished" in r.getMessage() for r in caplog.records)
    # fewer bytes than announced: the head went out, so the connection closes early
    with caplog.at_level(logging.ERROR, logger="apps.webserver"):
        answer = raw_exchange(serve_app(_short), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nabc")
    assert any("sent 3 body bytes of the 10" in r.getMessage() for r in caplog.records)


def test_environ(serve_app):
    seen = {}

    def recording(environ, start_response):
        seen.update(environ)
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return []

    address = serve_app(recording)
    answer = raw_exchange(address, b"POST /a%20b/c?x=1&y=%20 HTTP/1.0\r\nHost: h:1\r\nContent-Type: text/plain\r\n"
                                   b"Content-Length: 3\r\nCookie: a=1\r\nCookie: b=2\r\nX-Two: 1\r\nX-Two: 2\r\n"
                                   b"X_Spoof: 1\r\n\r\nabc")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 0\r\n" in answer
    assert seen["REQUEST_METHOD"] == "POST" and seen["SCRIPT_NAME"] == ""
    assert seen["PATH_INFO"] == "/a b/c" and seen["QUERY_STRING"] == "x=1&y=%20"
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.0" and seen["SERVER_PORT"] == str(address[1])
    assert seen["CONTENT_TYPE"] == "text/plain" and seen["CONTENT_LENGTH"] == "3" and seen["body"] == b"abc"
    assert seen["HTTP_HOST"] == "h:1" and seen["HTTP_COOKIE"] == "a=1; b=2" and seen["HTTP_X_TWO"] == "1,2"
    assert "HTTP_X_SPOOF" not in seen and "HTTP_CONTENT_LENGTH" not in seen
    assert seen["wsgi.version"] == (1, 0) and seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.input_terminated"] is True and seen["REMOTE_ADDR"] == "127.0.0.1"


def test_serve_wsgi_runs_on_a_scheduler_next_to_other_threads():
    def hello(environ, start_response):
        green.sleep(0.001)  # blocks this green thread, not the scheduler
        start_response("200 OK", [("Content-Length", "6")])
        return [b"hello\n"]

    got = []

    @types.coroutine
    def main():
        shutdown = threadlib.Event()
        ready = threadlib.Event()
        where = []
        server = yield from threadlib.spawn(serve_wsgi(hello, ("127.0.0.1", 0), shutdown,
                                                       ready=lambda a: (where.append(a), ready.set())))
        yield from ready.wait()
        conn = yield from sockio.connect(where[0])
        with conn:
            yield from conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while data := (yield from conn.recv(65536, timeout=10)):
                got.append(data)
        shutdown.set()
        yield from server.join()

    threadlib.run(main())
    answer = b"".join(got)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhello\n")


# ------------------------------------------------------------------ the program


def _start_wsgi_program(*args):
    proc = subprocess.Popen([sys.executable, "-m", "apps.webserver", "--wsgi", "tests.apps.flask_app:app", *args],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    line = proc.stdout.readline()
    if "serving WSGI app tests.apps.flask_app:app" not in line:
        kill_group(proc)
        raise AssertionError(f"no banner: {line}{proc.stdout.read()}")
    return proc


def _memory_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs a writable /proc/PID/clear_refs")
def test_program_streams_a_50_mib_upload_in_bounded_memory(tmp_path):
    port = _free_port()
    proc = _start_wsgi_program("--port", str(port), "--quiet")
    try:
        address = ("127.0.0.1", port)
        assert request(address, "GET", "/")[2] == b"front page\n"  # warm: Flask's first request imports
        block = os.urandom(1 << 20)
        total = 50 << 20
        expected = hashlib.sha256()
        for _ in range(50):
            expected.update(block)
        for chunked in (False, True):
            before = _memory_kib(proc.pid, "VmRSS")
            with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
                f.write("5")  # the peak (VmHWM) starts again from the current RSS
            body = (block for _ in range(50))
            headers = {"Content-Type": "application/octet-stream"}
            if not chunked:
                headers["Content-Length"] = str(total)
            status, _, answer = request(address, "PUT", "/upload", body=body, headers=headers,
                                        encode_chunked=chunked)
            assert status == 200 and json.loads(answer) == {"size": total, "sha256": expected.hexdigest()}
            growth = _memory_kib(proc.pid, "VmHWM") - before
            assert growth < 20 * 1024, f"the server's RSS grew by {growth} KiB for a 50 MiB upload"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        kill_group(proc)


def test_program_with_workers_finishes_a_response_in_flight_on_sigterm(tmp_path):
    port = _free_port()
    proc = _start_wsgi_program("--port", str(port), "--workers", "2")
    try:
        address = ("127.0.0.1", port)
        for n in range(10):
            assert json.loads(request(address, "GET", f"/items/{n}")[2]) == {"number": n, "q": None}
        flag = tmp_path / "go"
        conn = http.client.HTTPConnection(*address, timeout=10)
        conn.request("GET", f"/wait-for-file?path={flag}")
        r = conn.getresponse()
        assert r.readline() == b"begun\n"
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(port), what="refusing new connections after SIGTERM")
        flag.write_bytes(b"")
        assert r.read() == b"ended\n"
        conn.close()
        assert proc.wait(timeout=15) == 0
        assert "Traceback" not in proc.stdout.read()
    finally:
        kill_group(proc)


def test_program_refuses_an_app_that_does_not_import(tmp_path):
    (tmp_path / "broken_app.py").write_text("import no_such_module_here\n")
    (tmp_path / "not_app.py").write_text("app = 3\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for spec, message in [("broken_app:app", "module 'broken_app' does not import: ModuleNotFoundError"),
                          ("not_app:app", "'not_app:app' names an object of type int, not a callable WSGI application"),
                          ("not_app:other", "module 'not_app' has no 'other'"),
                          ("no/such:app", "is not MODULE:NAME")]:
        r = subprocess.run([sys.executable, "-m", "apps.webserver", "--wsgi", spec], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and r.stdout == "", (spec, r)
        assert len(r.stderr.splitlines()) == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------- the iterable's close()


class _ClosingBody:
    """A WSGI response iterable (not a list, not a generator) that records
    its close() and how many blocks were taken before it."""

    def __init__(self, name, closed, blocks, fail_at=None):
        self.name, self.closed, self.blocks, self.fail_at = name, closed, blocks, fail_at
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.taken == self.fail_at:
            raise RuntimeError(f"{self.name} fails mid-iteration")
        if self.taken == self.blocks:
            raise StopIteration
        self.taken += 1
        return b"x" * 65536

    def close(self):
        self.closed.append((self.name, self.taken))


def test_the_iterables_close_is_called_on_success_on_an_exception_and_when_the_client_is_gone(serve_app, caplog):
    # api.md: "the iterable's close() is always called" (PEP 3333): after a
    # whole body, after the iterable raised mid-body, and after the client
    # went away mid-body (a reset; the iterable would go on for ever).
    closed = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if path == "/whole":
            return _ClosingBody("whole", closed, 3)
        if path == "/fails":
            return _ClosingBody("fails", closed, 10, fail_at=2)
        return _ClosingBody("endless", closed, 10**9)

    address = serve_app(app)
    status, _, body = request(address, "GET", "/whole")
    assert status == 200 and body == b"x" * 3 * 65536
    wait_until(lambda: ("whole", 3) in closed, what="close() after a whole body")

    with caplog.at_level(logging.ERROR, logger="apps.webserver"):
        answer = raw_exchange(address, b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")  # the head had gone: the connection is cut
    assert any("fails mid-iteration" in str(r.exc_info[1]) or "fails mid-iteration" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    wait_until(lambda: ("fails", 2) in closed, what="close() after the iterable raised")

    s = socket.create_connection(address, timeout=10)
    s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    s.close()
    gone = wait_until(lambda: [c for c in closed if c[0] == "endless"], what="close() after the client left")
    assert 1 <= gone[0][1] < 10**9
    assert [name for name, _ in closed] == ["whole", "fails", "endless"]  # once each
