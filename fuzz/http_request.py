"""Fuzz target: the web server's whole request path, from bytes on a
connection to the bytes it answers.

Input: the first byte picks the server and how the client's bytes arrive:
its low 7 bits the read size (0: in one read; n: in n-byte reads, so
request lines, headers, bodies and pipelined requests are split at every
place), its top bit a WSGI application instead of files (an echo app that
reads the body in uneven pieces, with a 4096-byte body limit), so request
bodies -- Content-Length, chunked, ``Expect: 100-continue``, too large,
malformed -- go through both the file server's reader and the streaming
one; the rest is what the client sends before its EOF. A ``WebServer`` (the public API, ``serve`` on an in-memory network
whose one connection is a ``fuzz.memory.ScriptedStream``) serves a small
document root made once per process: files of distinct sizes (one larger
than the in-memory body cache, so ``sendfile`` runs), an empty file,
directories with and without an index, a symlink out of the root.

Invariants: nothing escapes ``serve``; the server logs no failure; the
output is a sequence of well-formed HTTP/1.1 responses, one per access-log
line and in its order, each with a known status (never 500), a
Content-Length that frames its body (none after HEAD or a 304), a body that
is exactly the file or byte range its headers name, Content-Range
consistent with the file's size, Allow on a 405, Location on a 301; an
echoed 200 carries exactly the body the application read for that request;
a ``100 Continue`` only ever comes before a response's head; nothing
follows a ``Connection: close`` response, and nothing is written after the
server's half-close.

This module must never touch anything outside its own temporary directory.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import random
import re
import shutil
import tempfile
import types
from typing import Any

import threadlib
from threadlib.lowlevel import Scheduler, TimerWorker, VirtualClock
from apps.webserver.http import CONTINUE, REASONS, Limits
from apps.webserver.server import WebServer

from .memory import ScriptedStream, chunks_of

INSTRUMENT = ["apps.webserver"]

_SIZES = {"index.html": 61, "a.txt": 10, "big.bin": 3000, "sub/index.html": 33, "sub/x y.css": 17,
          "\u00fc.txt": 5, "empty.txt": 0}
_CACHE_MAX_BODY = 1024  # big.bin is larger: its body goes through sendfile


def _make_root() -> tuple[str, dict[int, bytes]]:
    root = tempfile.mkdtemp(prefix="threadlib-fuzz-http-")
    atexit.register(shutil.rmtree, root, True)
    rng = random.Random(14)
    by_size = {}
    for name, size in _SIZES.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        body = bytes(rng.randrange(32, 127) for _ in range(size))
        with open(path, "wb") as f:
            f.write(body)
        by_size[size] = body
    os.makedirs(os.path.join(root, "noindex"))
    os.symlink("/etc", os.path.join(root, "out"))
    os.symlink("a.txt", os.path.join(root, "alias.txt"))
    assert len(by_size) == len(_SIZES), "file sizes must be distinct: a response's size names its file"
    return root, by_size


ROOT, FILES_BY_SIZE = _make_root()


class _Failures(logging.Handler):
    """Collects every record the server logs: with an in-memory client that
    never fails, any record means the server hit something unexpected."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_failures = _Failures()
_log = logging.getLogger("apps.webserver")


class _OneConnectionNetwork:
    """A ``threadlib.net.Network`` whose listener accepts ``stream`` once,
    then waits until it is cancelled."""

    name = "fuzz"

    def __init__(self, stream: ScriptedStream) -> None:
        self.stream = stream

    @types.coroutine
    def listen(self, address: Any, backlog: int = 1024, reuse_port: bool = False, nodelay: bool = True,
               *, ssl: Any = None) -> Any:
        return _OneConnectionListener(self.stream)
        yield

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the fuzz network only accepts")

    def resolve(self, host: str, port: int) -> Any:
        raise NotImplementedError("the fuzz network only accepts")


class _OneConnectionListener:
    def __init__(self, stream: ScriptedStream) -> None:
        self.stream: ScriptedStream | None = stream
        self.closed = False
        self.address = stream.local_address

    @types.coroutine
    def accept(self, timeout: float | None = None) -> Any:
        stream, self.stream = self.stream, None
        if stream is None:
            yield from threadlib.Event().wait()  # no more clients; serve() cancels this
        return stream, stream.peer_address

    def close(self) -> None:
        self.closed = True


WSGI_MAX_BODY = 4096
_WSGI = 0x80  # the first byte's bit choosing the WSGI server


class EchoApp:
    """A WSGI application answering 200 with the body it read, read in
    uneven pieces (``read(n)``, ``readline``, ``read()``) to exercise
    ``wsgi.input``; ``bodies`` keeps every body it read, in order."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        parts = [stream.read(3), stream.readline(), stream.read(17), stream.readline(5), stream.read()]
        body = b"".join(parts)
        self.bodies.append(body)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-Echo", str(len(body)))])
        return [body]


def serve_one_connection(client_bytes: bytes, chunk_size: int,
                         app: EchoApp | None = None) -> tuple[ScriptedStream, WebServer, str]:
    """Serve one connection that sends ``client_bytes`` then EOF (with
    ``app``, a WSGI server of it); the stream (its ``written`` bytes), the
    server and the access log text."""
    stream = ScriptedStream(chunks_of(client_bytes, chunk_size))
    access_log = io.StringIO()
    if app is None:
        server = WebServer(ROOT, network=_OneConnectionNetwork(stream), access_log=access_log,
                           cache_max_body=_CACHE_MAX_BODY)
    else:
        server = WebServer(network=_OneConnectionNetwork(stream), access_log=access_log, wsgi=app,
                           limits=Limits(max_body=WSGI_MAX_BODY))

    @types.coroutine
    def main() -> Any:
        shutdown = threadlib.Event()
        serving = yield from threadlib.spawn(server.serve(("192.0.2.1", 80), shutdown))
        yield from stream.closed_event.wait()
        shutdown.set()
        yield from serving.join()

    # Timers only, on a virtual clock: the scripted client never makes the
    # server wait, and a run depends on nothing but its input.
    threadlib.run(main(), scheduler=Scheduler([TimerWorker()], clock=VirtualClock()), handle_sigint=False)
    return stream, server, access_log.getvalue()


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ([^\r\n]*)\Z")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ([^\r\n]*)\Z")
_CONTENT_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+)\Z")
_LOG_LINE = re.compile(r'(\S+) - - \[[^\]]*\] "(.*)" (\d{3}) (\d+)\Z')


def _log_entries(text: str) -> list[tuple[str, int, int]]:
    """(method, status, body bytes) per access-log line."""
    entries = []
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        assert m, f"malformed access-log line {line!r}"
        method = m.group(2).split(" ", 1)[0]
        entries.append((method, int(m.group(3)), int(m.group(4))))
    return entries


def check_responses(written: bytes, log_text: str,
                    echoed: list[bytes] | None = None) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Assert ``written`` is well-formed HTTP/1.1, one response per log
    line (and, from a WSGI echo app, each 200's body the next of
    ``echoed``); returns (status, headers, body) per response."""
    entries = _log_entries(log_text)
    responses = []
    pos = 0
    echoes = iter(echoed or ())
    for index, (method, logged_status, logged_length) in enumerate(entries):
        if written.startswith(CONTINUE, pos):
            pos += len(CONTINUE)  # an interim response: the final one follows
        end = written.find(b"\r\n\r\n", pos)
        assert end >= 0, f"response {index}: no end of headers in {written[pos:pos + 200]!r}"
        lines = written[pos:end].split(b"\r\n")
        m = _STATUS_LINE.match(lines[0])
        assert m, f"response {index}: bad status line {lines[0]!r}"
        status = int(m.group(1))
        assert status in REASONS and status != 500, f"response {index}: status {status}"
        assert status == logged_status, f"response {index}: sent {status}, logged {logged_status}"
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            h = _HEADER.match(line)
            assert h, f"response {index}: bad header line {line!r}"
            name = h.group(1).lower()
            assert name not in headers, f"response {index}: header {name!r} twice"
            headers[name] = h.group(2)
        assert b"content-length" in headers or status == 304, f"response {index}: no Content-Length"
        no_body = method == "HEAD" or status == 304
        length = 0 if no_body else int(headers[b"content-length"])
        assert length == logged_length, f"response {index}: {length} body bytes, logged {logged_length}"
        body = written[end + 4:end + 4 + length]
        assert len(body) == length, f"response {index}: body cut short ({len(body)} of {length})"
        pos = end + 4 + length
        _check_semantics(index, status, headers, body, no_body)
        if b"x-echo" in headers:
            read = next(echoes, None)
            assert read is not None, f"response {index}: an echo the application never made"
            assert int(headers[b"x-echo"]) == len(read) <= WSGI_MAX_BODY, f"response {index}: echo length"
            assert no_body or body == read, f"response {index}: the echo is not the body the app read"
        responses.append((status, headers, body))
        if headers.get(b"connection", b"").lower() == b"close":
            assert pos == len(written), f"response {index}: {len(written) - pos} bytes after Connection: close"
    if written.startswith(CONTINUE, pos):
        pos += len(CONTINUE)  # the client ended instead of sending the body it announced
    assert pos == len(written), f"{len(written) - pos} bytes after the last logged response: {written[pos:pos + 200]!r}"
    return responses


def _check_semantics(index: int, status: int, headers: dict[bytes, bytes], body: bytes, no_body: bool) -> None:
    if status == 405:
        assert headers.get(b"allow") == b"GET, HEAD", f"response {index}: 405 without Allow"
    if status == 301:
        assert headers.get(b"location", b"").endswith(b"/"), f"response {index}: 301 without a directory Location"
    if status == 416:
        m = re.fullmatch(rb"bytes \*/(\d+)", headers.get(b"content-range", b""))
        assert m and int(m.group(1)) in FILES_BY_SIZE, f"response {index}: 416 with {headers.get(b'content-range')!r}"
    if status == 200 and b"etag" in headers:
        size = int(headers[b"content-length"])
        assert size in FILES_BY_SIZE, f"response {index}: 200 of {size} bytes names no file"
        assert no_body or body == FILES_BY_SIZE[size], f"response {index}: 200 body is not the file"
    if status == 206:
        m = _CONTENT_RANGE.match(headers.get(b"content-range", b""))
        assert m, f"response {index}: 206 with {headers.get(b'content-range')!r}"
        first, last, size = (int(g) for g in m.groups())
        assert first <= last < size and size in FILES_BY_SIZE, f"response {index}: range {first}-{last}/{size}"
        assert int(headers[b"content-length"]) == last - first + 1, f"response {index}: 206 length"
        assert no_body or body == FILES_BY_SIZE[size][first:last + 1], f"response {index}: 206 body is not the range"
    if status == 304:
        assert b"etag" in headers and b"content-length" not in headers, f"response {index}: 304 headers"


def TestOneInput(data: bytes) -> None:
    """Serve ``data[1:]`` in ``data[0] & 0x7f``-byte reads (to the WSGI
    echo app if ``data[0] & 0x80``) and check the answer."""
    if not data:
        return
    _failures.records.clear()
    # Only for this call: a test process has other users of the logger.
    level, propagate = _log.level, _log.propagate
    _log.addHandler(_failures)
    _log.setLevel(logging.INFO)
    _log.propagate = False
    try:
        app = EchoApp() if data[0] & _WSGI else None
        stream, server, log_text = serve_one_connection(data[1:], data[0] & ~_WSGI, app)
    finally:
        _log.removeHandler(_failures)
        _log.setLevel(level)
        _log.propagate = propagate
    assert not _failures.records, f"the server logged: {_failures.records[0].getMessage()}"
    assert not stream.misuse, f"stream misuse: {stream.misuse}"
    assert stream.closed, "the connection was not closed"
    responses = check_responses(bytes(stream.written), log_text, app.bodies if app is not None else None)
    assert len(responses) == server.requests, f"{len(responses)} responses, {server.requests} counted"
