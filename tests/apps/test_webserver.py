"""apps.webserver as clients see it: real sockets, urllib, http.client, curl,
and the real program under SIGTERM. Servers run on a background OS thread
(BackgroundServer) unless the test is about the process itself."""

import email.utils
import http.client
import io
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

import threadlib
from iolib.aio import aio_unavailable_reason
from apps.webserver import SAMPLE_SITE, BackgroundServer, Limits, WebServer
from tests import REPO_ROOT
from threadlib.io import sockio

from ..waiting import wait_until
from . import kill_group

ROOT = str(REPO_ROOT)


# A fact about the machine (the kernel grants an AIO context), checked on
# its own: a failing import of threadlib.io.fileio is a failure, not a skip.
AIO_UNAVAILABLE = aio_unavailable_reason()

IO_MODES = ["sendfile", pytest.param("aio", marks=pytest.mark.skipif(AIO_UNAVAILABLE is not None,
                                                                     reason=str(AIO_UNAVAILABLE)))]


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_bytes(b"<h1>front page</h1>\n")
    (root / "small.txt").write_bytes(b"0123456789" * 100)
    (root / "big.bin").write_bytes(os.urandom(300 * 1024 + 17))
    (root / "sub" / "index.html").write_bytes(b"<p>sub index</p>\n")
    (root / "style.css").write_bytes(b"body { color: red }\n")
    (root / "with space.txt").write_bytes(b"spaced\n")
    (tmp_path / "secret.txt").write_bytes(b"outside the root\n")
    (root / "link_in").symlink_to(root / "small.txt")
    (root / "link_out").symlink_to(tmp_path / "secret.txt")
    (root / "dir_out").symlink_to(tmp_path)
    return root


def start(root, **options):
    srv = BackgroundServer(WebServer(str(root), **options))
    srv.start()
    return srv


@pytest.fixture
def serve(site):
    servers = []

    def run(**options):
        srv = start(options.pop("root", site), **options)
        servers.append(srv)
        return srv.address

    yield run
    for srv in servers:
        srv.stop()


class _KeepOpen(io.BufferedReader):
    def close(self):  # http.client closes its file after each body
        pass


class Client:
    """A raw connection that can read several (pipelined) responses."""

    def __init__(self, address, timeout=10):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = _KeepOpen(socket.SocketIO(self.sock, "rb"))

    def makefile(self, *args, **kwargs):
        return self.file

    def send(self, data):
        self.sock.sendall(data)

    def response(self, method="GET"):
        r = http.client.HTTPResponse(self, method=method)
        r.begin()
        body = r.read()
        return r.status, r.headers, body

    def at_eof(self, timeout=5):
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def get(address, target, headers=None, method="GET"):
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def raw_exchange(address, data, timeout=10):
    """Send data; everything the server answers until it closes."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response):
    return int(response.split(b" ", 2)[1])


# ---------------------------------------------------------------- content


def test_sample_site_is_the_default_root():
    with BackgroundServer(WebServer()) as address:
        base = f"http://{address[0]}:{address[1]}"
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            assert r.status == 200 and b"threadlib" in r.read()
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/no/such/page.html", timeout=10)
        assert missing.value.code == 404 and b"no such file" in missing.value.read()
        # urllib follows the directory redirect
        with urllib.request.urlopen(base + "/docs", timeout=10) as r:
            assert r.url.endswith("/docs/") and b"Options" in r.read()
        status, headers, body = get(address, "/threads.png")
        assert headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG\r\n\x1a\n")
        assert get(address, "/style.css")[1]["Content-Type"] == "text/css; charset=utf-8"
        for name, size in (("1k.txt", 1024), ("100k.txt", 100 * 1024)):
            body = get(address, f"/bench/{name}")[2]
            assert len(body) == size
            assert body == open(os.path.join(SAMPLE_SITE, "bench", name), "rb").read()


@pytest.mark.parametrize("io_mode", IO_MODES)
@pytest.mark.parametrize("cache_max_body", [65536, 0])
def test_files_are_byte_exact(serve, site, io_mode, cache_max_body):
    address = serve(io=io_mode, cache_max_body=cache_max_body)
    for name in ("small.txt", "big.bin", "with%20space.txt", "link_in"):
        on_disk = (site / name.replace("%20", " ")).read_bytes()
        for _ in range(2):  # the second time from the cache
            status, headers, body = get(address, "/" + name)
            assert status == 200
            assert body == on_disk
            assert int(headers["Content-Length"]) == len(on_disk)
    assert get(address, "/big.bin")[1]["Content-Type"] == "application/octet-stream"
    assert get(address, "/small.txt")[1]["Content-Type"] == "text/plain; charset=utf-8"


def test_head_sends_headers_only(serve, site):
    address = serve()
    c = Client(address)
    c.send(b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = c.response("HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == (site / "big.bin").stat().st_size
    # the next response parses cleanly: no body bytes were sent for HEAD
    assert c.response()[2] == (site / "small.txt").read_bytes()
    c.close()


def test_keep_alive_and_pipelining_answer_in_order(serve, site):
    address = serve()
    c = Client(address)
    requests = [
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=5-9\r\n\r\n",
        b"POST /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
        b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    c.send(b"".join(requests))
    small, big = (site / "small.txt").read_bytes(), (site / "big.bin").read_bytes()
    assert c.response()[::2] == (200, small)
    assert c.response()[::2] == (200, big)
    assert c.response()[0] == 404
    assert c.response()[::2] == (206, small[5:10])
    assert c.response()[0] == 405
    assert c.response()[::2] == (200, b"<h1>front page</h1>\n")
    # the connection is still usable, and closes when asked to
    c.send(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = c.response()
    assert status == 200 and headers["Connection"] == "close"
    assert c.at_eof()
    c.close()


def test_a_long_pipelined_batch_is_answered_completely_and_in_order(serve, site):
    (site / "sixty.bin").write_bytes(os.urandom(60000))
    address = serve()
    c = Client(address)
    targets = [b"/sixty.bin" if i % 3 else b"/small.txt" for i in range(300)]  # ~12 MB of answers
    c.send(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % t for t in targets))
    files = {b"/sixty.bin": (site / "sixty.bin").read_bytes(), b"/small.txt": (site / "small.txt").read_bytes()}
    for t in targets:
        assert c.response()[::2] == (200, files[t])
    c.close()


def test_http_1_0_closes_unless_keep_alive_is_asked(serve):
    address = serve()
    reply = raw_exchange(address, b"GET /small.txt HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in reply
    c = Client(address)
    c.send(b"GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = c.response()
    assert status == 200 and headers["Connection"] == "keep-alive"
    c.send(b"GET /small.txt HTTP/1.0\r\n\r\n")
    assert c.response()[0] == 200
    assert c.at_eof()
    c.close()


# ---------------------------------------------------------------- ranges and conditions

RANGE_CASES = [
    ("bytes=0-0", 206, (0, 1)),
    ("bytes=10-19", 206, (10, 20)),
    ("bytes=990-", 206, (990, 1000)),
    ("bytes=-7", 206, (993, 1000)),
    ("bytes=-5000", 206, (0, 1000)),
    ("bytes=995-2000", 206, (995, 1000)),
    ("bytes=1000-", 416, None),
    ("bytes=5000-6000", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=0-1,5-6", 200, (0, 1000)),  # multiple ranges: the whole file
    ("bytes=9-3", 200, (0, 1000)),  # invalid: ignored
    ("lines=1-2", 200, (0, 1000)),
    ("bytes=abc", 200, (0, 1000)),
]


@pytest.mark.parametrize("io_mode", IO_MODES)
def test_single_byte_ranges(serve, site, io_mode):
    address = serve(io=io_mode, cache_max_body=0)
    data = (site / "small.txt").read_bytes()
    for spec, want_status, span in RANGE_CASES:
        status, headers, body = get(address, "/small.txt", {"Range": spec})
        assert status == want_status, spec
        if status == 416:
            assert headers["Content-Range"] == "bytes */1000"
        else:
            assert body == data[span[0]:span[1]], spec
        if status == 206:
            assert headers["Content-Range"] == f"bytes {span[0]}-{span[1] - 1}/1000"
    big = (site / "big.bin").read_bytes()
    status, headers, body = get(address, "/big.bin", {"Range": "bytes=100000-250000"})
    assert status == 206 and body == big[100000:250001]


def test_if_range_and_head_ignore_range_when_stale(serve, site):
    address = serve()
    etag = get(address, "/small.txt")[1]["ETag"]
    assert get(address, "/small.txt", {"Range": "bytes=0-1", "If-Range": etag})[0] == 206
    assert get(address, "/small.txt", {"Range": "bytes=0-1", "If-Range": '"other"'})[0] == 200
    status, headers, _ = get(address, "/small.txt", {"Range": "bytes=0-1"}, method="HEAD")
    assert status == 200 and headers["Content-Length"] == "1000"


def test_conditional_requests_and_revalidation(serve, site):
    address = serve(cache_validity=0.0)
    status, headers, _ = get(address, "/small.txt")
    etag, last_modified = headers["ETag"], headers["Last-Modified"]
    assert status == 200 and etag.startswith('"')
    assert get(address, "/small.txt", {"If-None-Match": etag})[0] == 304
    assert get(address, "/small.txt", {"If-None-Match": f'"x", W/{etag}'})[0] == 304
    assert get(address, "/small.txt", {"If-None-Match": '"nope"'})[0] == 200
    assert get(address, "/small.txt", {"If-Modified-Since": last_modified})[0] == 304
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    assert get(address, "/small.txt", {"If-Modified-Since": later})[0] == 304
    earlier = email.utils.formatdate(time.time() - 10 * 86400, usegmt=True)
    os.utime(site / "small.txt", (time.time() - 86400, time.time() - 86400))
    status, headers, _ = get(address, "/small.txt", {"If-Modified-Since": earlier})
    assert status == 200
    # If-None-Match wins over If-Modified-Since
    assert get(address, "/small.txt", {"If-None-Match": '"nope"', "If-Modified-Since": later})[0] == 200
    # the file changes: new validator, new bytes
    (site / "small.txt").write_bytes(b"changed\n")
    status, headers, body = get(address, "/small.txt", {"If-None-Match": etag})
    assert status == 200 and body == b"changed\n" and headers["ETag"] != etag


def test_directories_redirect_and_index(serve):
    address = serve()
    status, headers, _ = get(address, "/sub")
    assert status == 301 and headers["Location"] == "/sub/"
    assert get(address, "/sub/") [::2] == (200, b"<p>sub index</p>\n")
    assert get(address, "/")[2] == b"<h1>front page</h1>\n"
    status, _, body = get(address, "/empty/")
    assert status == 403 and b"index.html" in body


# ---------------------------------------------------------------- refusals


TRAVERSALS = [
    b"/../secret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/sub/%2e%2e/%2e%2e/secret.txt",
    b"/..%2fsecret.txt",
    b"/sub/../../secret.txt",
    b"/link_out",
    b"/dir_out/secret.txt",
]


def test_path_traversal_is_refused(serve, site):
    address = serve()
    for target in TRAVERSALS:
        reply = raw_exchange(address, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(reply) == 403, target
        assert b"outside the root" not in reply
    assert status_of(raw_exchange(address, b"GET /%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 400
    # a symlink that stays inside the root is fine
    assert get(address, "/link_in")[2] == (site / "small.txt").read_bytes()
    # curl, which would normalise the path unless told not to
    out = subprocess.run(["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://{address[0]}:{address[1]}/../secret.txt"], capture_output=True, text=True, timeout=10)
    assert out.stdout == "403"


ERROR_CASES = [
    (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400, b"malformed"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, b"Host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"Host"),
    (b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400, b"'/'"),
    (b"GET /missing.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, b"no such file"),
    (b"DELETE /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, b"DELETE"),
    (b"BREW /small.txt HTTP/1.1\r\nHost: x\r\n\r\n", 405, b"BREW"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413, b"body"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, b"8192"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n", 431, b"header"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431, b"100"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless-Name" + b"n" * 120000, 431, b"large"),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, b"HTTP/2.0"),
    (b"GET / HTTP/1.7\r\nHost: x\r\n\r\n", 505, b"version"),
]


def test_every_refusal_has_its_status_and_a_short_reason(serve):
    address = serve()
    for request, want, reason in ERROR_CASES:
        reply = raw_exchange(address, request)
        assert status_of(reply) == want, (request[:60], reply[:200])
        head, _, body = reply.partition(b"\r\n\r\n")
        assert reason in body, (want, body)
        assert len(body) < 200
        assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == len(body)
    reply = raw_exchange(address, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert b"Allow: GET, HEAD\r\n" in reply
    # a refused upload still gets its answer when the body keeps coming
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n")
        # The 413 comes before the body: wait for it to be readable (unread).
        assert select.select([s], [], [], 30)[0], "no answer to the oversized request"
        s.sendall(b"u" * 200000)  # the body arrives, unread by the server
        s.shutdown(socket.SHUT_WR)
        # The server drains what it will not read and closes cleanly: the
        # answer is all there, then end of file (a reset would raise here).
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]
    # a chunked body past the limit is caught while it streams
    address2 = serve(limits=Limits(max_body=1000))
    chunked = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"z" * 1024 + b"\r\n0\r\n\r\n"
    assert status_of(raw_exchange(address2, chunked)) == 413


def test_curl_sees_ranges_head_and_errors(serve, site, tmp_path):
    address = serve()
    base = f"http://{address[0]}:{address[1]}"
    out = tmp_path / "got.bin"
    r = subprocess.run(["curl", "-sS", "-o", str(out), "-w", "%{http_code}", base + "/big.bin"],
                       capture_output=True, text=True, timeout=20)
    assert r.stdout == "200" and out.read_bytes() == (site / "big.bin").read_bytes()
    r = subprocess.run(["curl", "-sS", "-r", "100-199", "-o", str(out), "-w", "%{http_code}", base + "/big.bin"],
                       capture_output=True, text=True, timeout=20)
    assert r.stdout == "206" and out.read_bytes() == (site / "big.bin").read_bytes()[100:200]
    r = subprocess.run(["curl", "-sSI", base + "/style.css"], capture_output=True, text=True, timeout=20)
    assert "Content-Type: text/css; charset=utf-8" in r.stdout and "ETag:" in r.stdout
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", base + "/x"],
                       capture_output=True, text=True, timeout=20)
    assert r.stdout == "405"


# ---------------------------------------------------------------- slow and idle clients


def test_slow_client_is_cut_off_while_others_are_served(serve):
    address = serve(header_timeout=1.5, keepalive_timeout=10)
    outcome = {}
    # Sent one byte a second, the request line and headers would take 35 s:
    # a 408 before that is the header timeout at work.

    def slowloris():
        s = socket.create_connection(address, timeout=10)
        started = time.monotonic()
        try:
            for byte in b"GET /small.txt HTTP/1.1\r\nHost: x\r\n":
                s.send(bytes([byte]))
                s.settimeout(1.0)
                try:
                    reply = s.recv(4096)
                except socket.timeout:
                    continue
                outcome["reply"] = reply
                break
        except (BrokenPipeError, ConnectionResetError) as exc:
            outcome["reply"] = repr(exc)
        outcome["after"] = time.monotonic() - started
        s.close()

    slow = threading.Thread(target=slowloris)
    slow.start()
    served_meanwhile = 0
    while slow.is_alive() and served_meanwhile < 200:
        assert get(address, "/small.txt")[0] == 200
        if "reply" not in outcome:
            served_meanwhile += 1  # answered while the slow client held its connection
        time.sleep(0.02)  # pacing, not waiting for anything
    slow.join(30)
    assert not slow.is_alive()
    assert "reply" in outcome, "the slow client was never cut off"
    assert isinstance(outcome["reply"], bytes) and outcome["reply"].startswith(b"HTTP/1.1 408 ")
    # Not before the header timeout (its lower bound is exact; how much
    # later depends on the machine's load, so no upper bound but the 408).
    assert outcome["after"] >= 1.4
    assert served_meanwhile >= 1


def test_silent_new_connections_get_only_the_header_timeout(serve):
    # keep-alive an hour: closed at all within the 60 s hang guard, the
    # connection got the header timeout.
    address = serve(header_timeout=0.5, keepalive_timeout=3600)
    silent = socket.create_connection(address, timeout=60)
    t0 = time.monotonic()
    assert silent.recv(10) == b""
    assert time.monotonic() - t0 >= 0.4   # not before the timeout
    silent.close()


def test_idle_keep_alive_connections_are_closed(serve):
    address = serve(keepalive_timeout=0.5)
    c = Client(address)
    c.send(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.response()[0] == 200
    t0 = time.monotonic()
    assert c.at_eof(timeout=60)
    assert time.monotonic() - t0 >= 0.4   # not before the timeout
    c.close()


# ---------------------------------------------------------------- many clients


def _read_response(conn, buffer):
    """(status, body, rest) of one response from a threadlib Stream."""
    while b"\r\n\r\n" not in buffer:
        data = yield from conn.recv(65536, timeout=20)
        assert data, "server closed early"
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(rest) < length:
        data = yield from conn.recv(65536, timeout=20)
        assert data, "server closed mid-body"
        rest += data
    return int(head.split(b" ", 2)[1]), rest[:length], rest[length:]


@pytest.mark.parametrize("io_mode", IO_MODES)
def test_a_thousand_concurrent_keep_alive_clients_get_exact_bytes(serve, site, io_mode):
    (site / "mid.bin").write_bytes(os.urandom(20000))
    address = serve(io=io_mode, cache_max_body=4096)
    expected = {b"/small.txt": (site / "small.txt").read_bytes(), b"/mid.bin": (site / "mid.bin").read_bytes()}
    clients = 1000
    connected = threadlib.Event()
    count = [0]
    results = []

    def client(i):
        conn = yield from sockio.connect(address, timeout=20)
        count[0] += 1
        if count[0] == clients:
            connected.set()
        with conn:
            # every connection is open at once before any request is sent
            yield from connected.wait(timeout=30)
            buffer = b""
            for target in (b"/small.txt", b"/mid.bin", b"/small.txt") if i % 2 else (b"/mid.bin", b"/small.txt"):
                yield from conn.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
                status, body, buffer = yield from _read_response(conn, buffer)
                results.append(status == 200 and body == expected[target])

    def main():
        threads = []
        for i in range(clients):
            threads.append((yield from threadlib.spawn(client(i))))
        yield from threadlib.join_all(threads)

    threadlib.run(main())
    assert len(results) == 2500 and all(results)


# ---------------------------------------------------------------- the program


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_program(*args):
    proc = subprocess.Popen(start_new_session=True, args=[sys.executable, "-m", "apps.webserver", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        kill_group(proc)
        raise AssertionError(f"no banner: {line}{proc.stdout.read()}")
    return proc


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_program_finishes_responses_in_flight_on_sigterm(site, tmp_path):
    big = os.urandom(16 * 1024 * 1024)
    (site / "huge.bin").write_bytes(big)
    port = _free_port()
    log_path = tmp_path / "access.log"
    proc = _start_program("--root", str(site), "--port", str(port), "--access-log", str(log_path))
    try:
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got = s.recv(65536)
        proc.send_signal(signal.SIGTERM)
        # the idle keep-alive connection is closed; new ones are refused
        idle.settimeout(30)
        assert idle.recv(10) == b""
        wait_until(lambda: _refused(port), what="refusing new connections after SIGTERM")
        # the response in flight arrives complete
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and body == big
        assert proc.wait(timeout=15) == 0
        lines = log_path.read_text().splitlines()
        assert len(lines) == 2
        pattern = r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /huge\.bin HTTP/1\.1" 200 (\d+)$'
        assert int(re.match(pattern, lines[1]).group(1)) == len(big)
    finally:
        kill_group(proc)


@pytest.mark.skipif(AIO_UNAVAILABLE is not None, reason=str(AIO_UNAVAILABLE))
def test_program_with_two_workers_and_aio(site):
    port = _free_port()
    proc = _start_program("--root", str(site), "--port", str(port), "--workers", "2", "--io", "aio", "--quiet")
    try:
        for _ in range(20):
            assert get(("127.0.0.1", port), "/big.bin")[2] == (site / "big.bin").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        kill_group(proc)


def test_program_refuses_bad_options_before_serving(tmp_path):
    r = subprocess.run([sys.executable, "-m", "apps.webserver", "--root", str(tmp_path / "nope")], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is not a directory" in r.stderr
    r = subprocess.run([sys.executable, "-m", "apps.webserver", "--tun", "tl9"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--tun and --netns only apply to --stack user" in r.stderr
    r = subprocess.run([sys.executable, "-m", "apps.webserver", "--stack", "user", "--netns", "tl-no-such-ns"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no such network namespace" in r.stderr
    import importlib.util

    if importlib.util.find_spec("threadlib.io.tcpsockio") is None:
        r = subprocess.run([sys.executable, "-m", "apps.webserver", "--stack", "user", "--port", str(_free_port())],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "the user-level TCP stack is not available yet" in r.stderr


def _user_stack_usable():
    # Machine facts only: threadlib.io.tcpsockio is part of the project, and
    # failing to import it is a failure, not a reason to skip.
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


@pytest.mark.skipif(not _user_stack_usable(), reason="needs root and /dev/net/tun")
def test_program_serves_over_the_user_level_tcp_stack(site):
    # A TUN device and subnet of its own, so parallel runs do not collide.
    n = os.getpid() % 200 + 20
    env = dict(os.environ, TL_TUN=f"tlws{n}", TL_PEER=f"10.{n}.77.1/24", TL_ADDRESS=f"10.{n}.77.2/24",
               TL_PEER6="", TL_ADDRESS6="")
    proc = subprocess.Popen(start_new_session=True, args=[sys.executable, "-m", "apps.webserver", "--stack", "user", "--root", str(site),
                             "--port", "8080"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert f"http://10.{n}.77.2:8080/" in banner and "stack=user" in banner, banner
        address = (f"10.{n}.77.2", 8080)
        assert get(address, "/big.bin")[2] == (site / "big.bin").read_bytes()
        c = Client(address)
        c.send(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.response()[::2] == (200, (site / "small.txt").read_bytes())
        assert c.response()[0] == 404
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        kill_group(proc)


@pytest.mark.skipif(not _user_stack_usable(), reason="needs root and /dev/net/tun")
def test_program_with_two_workers_on_the_user_level_stack_uses_both_queues(site):
    from iolib.netns import temporary_netns

    expected = (site / "big.bin").read_bytes()
    with temporary_netns("tlwsmq") as ns:
        proc = subprocess.Popen(start_new_session=True, args=[sys.executable, "-m", "apps.webserver", "--stack", "user", "--workers", "2",
                                 "--tun", "tlwsmq0", "--netns", ns.name, "--root", str(site), "--port", "8080"],
                                cwd=ROOT, env=dict(os.environ, TL_PEER6="", TL_ADDRESS6=""),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            banner = proc.stdout.readline()
            assert "http://10.77.0.2:8080/" in banner and "stack=user, workers=2" in banner, banner
            device = ns.exec(["ip", "-d", "link", "show", "tlwsmq0"], capture_output=True, text=True).stdout
            assert "multi_queue numqueues 2" in device, device

            def fetch_all():
                # New connections from inside the namespace, each steered by
                # its own flow hash.  The banner comes from worker 0 only, but
                # a SYN for a worker not yet listening waits in its queue: a
                # stack starts reading its queue only once it listens.
                return [get(("10.77.0.2", 8080), "/big.bin") for _ in range(20)]

            for status, _, body in ns.run(fetch_all):
                assert status == 200 and body == expected
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            output = banner + proc.stdout.read()
            served = dict(re.findall(r"worker (\d) stopped after (\d+) requests", output))
            # 20 flows all hashed to one of two queues: odds 2**-19.
            assert set(served) == {"0", "1"} and all(int(n) > 0 for n in served.values()), output
            assert sum(int(n) for n in served.values()) == 20, output
            gone = ns.exec(["ip", "link", "show", "tlwsmq0"], capture_output=True, text=True)
            assert gone.returncode != 0 and "does not exist" in gone.stderr
        finally:
            kill_group(proc)


# ---------------------------------------------------------------- request bodies in the core


def test_bodies_keep_their_framing_and_the_connection(serve, site):
    # A file server answers 405 to POST/PUT, but reads their bodies (with
    # Content-Length or chunked) so the requests after them still parse.
    address = serve()
    client = Client(address)
    try:
        client.send(b"POST /small.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\nGET / HTTP/1.1"
                    b"PUT /small.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"4\r\nGET \r\n3;x=y\r\n/ H\r\n0\r\nTrailer-Field: 1\r\n\r\n"
                    b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second, third = client.response(), client.response(), client.response()
        assert (first[0], first[1]["Allow"], second[0]) == (405, "GET, HEAD", 405)
        assert third[0] == 200 and third[2] == (site / "small.txt").read_bytes()
    finally:
        client.close()


def test_expect_100_continue_gets_100_then_the_answer(serve):
    address = serve()
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"body")
        client = Client.__new__(Client)
        client.sock, client.file = s, s.makefile("rb")
        assert client.response()[0] == 405
    # a body sent at once gets no 100
    reply = raw_exchange(address, b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n"
                                  b"Connection: close\r\n\r\nbody")
    assert reply.startswith(b"HTTP/1.1 405 ") and b"100 Continue" not in reply


@pytest.mark.parametrize("data, status, reason", [
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"Content-Length"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, b"Transfer-Encoding"),
    (b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, b"Duplicate Content-Length"),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, b"Duplicate Content-Length"),
    (b"Content-Length: 5, 5\r\n\r\nhello", 400, b"Content-Length"),
    (b"Content-Length: +5\r\n\r\nhello", 400, b"Content-Length"),
    (b"Content-Length: 0x5\r\n\r\nhello", 400, b"Content-Length"),
    (b"Content-Length: 99999999999999999999999\r\n\r\n", 400, b"Content-Length"),
    (b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400, b"whitespace"),
    (b"Content-Length: 0\r\n 5\r\n\r\nhello", 400, b"whitespace"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"Transfer-Encoding"),
    (b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400, b"Transfer-Encoding"),
    (b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501, b"transfer coding 'xchunked'"),
    (b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, b"header"),
    (b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", 400, b"chunk"),
    (b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400, b"Chunk size overflow"),
    (b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, b"transfer coding 'gzip, chunked'"),
    (b"Expect: 100-continue-please\r\nContent-Length: 1\r\n\r\nx", 417, b"100-continue"),
])
def test_request_smuggling_shapes_are_refused_and_the_connection_closed(serve, data, status, reason):
    address = serve()
    # a GET follows: it must not be read as a request (the framing is lost)
    reply = raw_exchange(address, b"POST / HTTP/1.1\r\nHost: x\r\n" + data + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(reply) == status, reply
    assert reply.count(b"HTTP/1.1 ") == 1 and b"Connection: close\r\n" in reply
    assert reason in reply.partition(b"\r\n\r\n")[2], reply


def test_chunked_http_1_0_request_is_refused(serve):
    reply = raw_exchange(serve(), b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status_of(reply) == 400 and b"Transfer-Encoding in an HTTP/1.0 request" in reply
