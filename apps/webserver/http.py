"""HTTP/1.1 wire format for the web server: reading requests with httptools
(llhttp) and building response bytes.

``RequestReader`` is the httptools protocol object of one connection: fed
whatever arrived, it appends one ``Request`` per complete request (so a
pipelined batch costs one feed) and enforces the limits on request-line
length, header bytes, header count and body size by raising ``HttpError``
with the status a client should get. Bodies are framed by llhttp, which
refuses the smuggling shapes (Content-Length with Transfer-Encoding,
duplicate or malformed Content-Length, obs-fold, a bad chunk) before any
callback sees them; this module adds what llhttp leaves to the server
(transfer codings other than chunked, chunked HTTP/1.0, Expect).
``StreamingRequestReader`` hands a request over as soon as its head is
complete and queues its body in pieces, for servers that run an
application on the request while its body is still arriving (WSGI). Responses are plain bytes built from
precomputed pieces; the Date line is rebuilt at most once a second.

This module never touches sockets or files, and never parses HTTP by hand
where llhttp can do it.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any, Callable

import httptools

import threadlib

SERVER_NAME = b"threadlib"

REASONS = {
    101: "Switching Protocols",
    200: "OK",
    206: "Partial Content",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}
STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason.encode()) for code, reason in REASONS.items()}

# Request headers the file server acts on; every other header is only
# counted and measured, never stored.
CONDITIONAL_HEADERS = frozenset((b"range", b"if-none-match", b"if-modified-since", b"if-range"))
# Request headers that frame or announce a body: checked, then summed up
# in one small int per request so a request without them costs nothing.
BODY_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"expect"))
_CHUNKED = 1
_HAS_LENGTH = 2  # a Content-Length above zero
_EXPECT_CONTINUE = 4
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpError(Exception):
    """A request the server refuses: ``status`` and a short reason for the
    client. ``close`` says whether the connection can be trusted afterwards."""

    def __init__(self, status: int, reason: str, close: bool = True, headers: bytes = b"") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.close = close
        self.headers = headers


class Limits:
    """Per-request limits; the defaults follow common production servers."""

    __slots__ = ("max_request_line", "max_header_bytes", "max_headers", "max_body")

    def __init__(
        self,
        max_request_line: int = 8192,
        max_header_bytes: int = 16384,
        max_headers: int = 100,
        max_body: int = 65536,
    ) -> None:
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body


class Request:
    """One complete request, as much of it as a static file server needs."""

    __slots__ = ("method", "target", "version", "keep_alive", "conditions", "error")

    def __init__(
        self, method: bytes, target: bytes, version: str, keep_alive: bool, conditions: dict | None, error: Any
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.keep_alive = keep_alive
        self.conditions = conditions  # lower-case name -> value, only CONDITIONAL_HEADERS
        self.error = error  # an HttpError to answer instead of serving, or None

    @property
    def request_line(self) -> str:
        return f"{self.method.decode('latin-1')} {self.target.decode('latin-1')} HTTP/{self.version}"


class RequestReader:
    """The httptools protocol for one connection.

    Feed it bytes with ``feed``; complete requests collect in
    ``self.complete``. ``in_message`` is true while a request has begun but
    not ended (the caller then applies the header-read deadline).
    ``continue_needed`` is true once a request that sent ``Expect:
    100-continue`` has its head complete and its body still to come: the
    caller sends ``CONTINUE`` before waiting for the body, and clears it.
    """

    __slots__ = (
        "parser", "complete", "in_message", "in_headers", "limits", "_url", "_header_count",
        "_header_bytes", "_hosts", "_conditions", "_body_bytes", "_pending_raw", "_raw_limit", "_body_flags",
        "continue_needed",
    )

    def __init__(self, limits: Limits) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.complete: list[Request] = []
        self.limits = limits
        self.continue_needed = False
        # on_message_begin is the one list of the per-request fields, so a
        # field added there starts right here too; no request has begun yet.
        self.on_message_begin()
        self.in_message = False
        self.in_headers = False
        # Raw bytes seen while one request's headers stay incomplete: the
        # guard against a header line that never ends (httptools keeps
        # concatenating it without calling back). One recv of slack.
        self._pending_raw = 0
        self._raw_limit = limits.max_request_line + limits.max_header_bytes + 65536

    # -- feeding ------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse ``data``; complete requests are appended to ``complete``.
        Raises HttpError for a request that must be refused (the requests
        completed before it stay in ``complete``)."""
        at_start = not self.in_message and not self.complete  # data begins with a request line
        upgrade_at = -1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            upgrade_at = upgrade.args[0]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HttpError):
                raise exc.__context__ from None
            raise HttpError(500, "internal error while reading the request") from exc
        except httptools.HttpParserInvalidMethodError:
            # Only a request line at the start of data can be named; one
            # further on (after pipelined requests or a body) is just bad.
            raise (_method_error(data) if at_start else HttpError(400, "malformed request line")) from None
        except httptools.HttpParserError as exc:
            raise _parse_error(exc) from None
        if upgrade_at >= 0:
            # An Upgrade request (h2c, websocket) is served as a plain
            # request. httptools stops for good at one, so what follows it
            # goes to a fresh parser, as the next request (fed outside the
            # except clause, so that its errors chain to nothing).
            self.parser = httptools.HttpRequestParser(self)
            rest = data[upgrade_at:]
            if rest:
                self.feed(rest)
            return
        if self.in_headers:
            self._pending_raw += len(data)
            if self._pending_raw > self._raw_limit:
                raise HttpError(431, "request header fields too large")
        else:
            self._pending_raw = 0

    # -- httptools callbacks (kept minimal: they run for every request) -------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.in_headers = True
        self._url = b""
        self._header_count = 0
        self._header_bytes = 0
        self._hosts = 0
        self._conditions: dict | None = None
        self._body_bytes = 0
        self._body_flags = 0

    def on_url(self, url: bytes) -> None:
        if self._url:
            # llhttp hands the target over in pieces when it spans reads.
            url = self._url + url
        if len(url) > self.limits.max_request_line:
            raise HttpError(414, f"request target longer than {self.limits.max_request_line} bytes")
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        limits = self.limits
        if self._header_count > limits.max_headers:
            raise HttpError(431, f"more than {limits.max_headers} header fields")
        if self._header_bytes > limits.max_header_bytes:
            raise HttpError(431, f"header fields larger than {limits.max_header_bytes} bytes in total")
        key = name.lower()
        if key == b"host":
            self._hosts += 1
        elif key in CONDITIONAL_HEADERS:
            if self._conditions is None:
                self._conditions = {}
            self._conditions[key] = value
        elif key in BODY_HEADERS and self.in_headers:  # (trailer fields frame nothing)
            self._body_header(key, value)

    def _body_header(self, key: bytes, value: bytes) -> None:
        # llhttp has already refused a duplicate or malformed Content-Length
        # and one next to Transfer-Encoding; what is left is the server's call.
        if key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise HttpError(400, "invalid Content-Length") from None
            if length > self.limits.max_body:
                raise HttpError(413, f"request body larger than {self.limits.max_body} bytes")
            if length:
                self._body_flags |= _HAS_LENGTH
        elif key == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                # gzip, deflate...: decoding them is not this server's job,
                # and passing them on would hand the application bytes it
                # cannot frame (RFC 9112 section 6.1: 501).
                raise HttpError(501, f"transfer coding {value.decode('latin-1')!r} is not implemented; "
                                     "only chunked is")
            self._body_flags |= _CHUNKED
        elif value.strip().lower() == b"100-continue":
            self._body_flags |= _EXPECT_CONTINUE
        else:
            raise HttpError(417, f"expectation {value.decode('latin-1')!r} is not supported; "
                                 "only 100-continue is")

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self._pending_raw = 0
        if self._body_flags:
            self._body_announced()

    def _body_announced(self) -> None:
        flags = self._body_flags
        if flags & _CHUNKED and self.parser.get_http_version() == "1.0":
            # RFC 9112 section 6.1: an HTTP/1.0 message with
            # Transfer-Encoding has faulty framing.
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if flags & _EXPECT_CONTINUE and flags & (_CHUNKED | _HAS_LENGTH):
            self.continue_needed = True

    def on_body(self, body: bytes) -> None:
        # A file server ignores bodies; it only bounds them (chunked ones
        # have no Content-Length to check up front).
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body:
            raise HttpError(413, f"request body larger than {self.limits.max_body} bytes")

    def on_message_complete(self) -> None:
        if self.continue_needed:
            self.continue_needed = False  # the body came without waiting for it
        parser = self.parser
        version = parser.get_http_version()
        error = None
        if version != "1.1":
            if version != "1.0":
                error = HttpError(505, f"HTTP/{version} is not supported; use HTTP/1.1 or HTTP/1.0")
        elif self._hosts != 1:
            error = HttpError(400, "missing Host header" if not self._hosts else "more than one Host header")
        self.complete.append(
            Request(parser.get_method(), self._url, version, parser.should_keep_alive(), self._conditions, error)
        )
        self.in_message = False


class RequestHead:
    """A request whose head is complete, for a server that answers while
    its body arrives: the body's pieces collect in ``body`` (bytes, in
    order) until ``body_done``. ``headers`` are the fields as sent, (name,
    value) bytes pairs; trailer fields are not among them."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "error", "expect_continue",
                 "chunked", "body", "body_done", "body_error")

    def __init__(self, method: bytes, target: bytes, version: str, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool, error: HttpError | None, expect_continue: bool, chunked: bool) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.error = error  # an HttpError to answer instead of serving, or None
        self.expect_continue = expect_continue  # the client waits for 100 Continue before its body
        self.chunked = chunked
        self.body: list[bytes] = []
        self.body_done = False
        self.body_error: HttpError | None = None  # the body broke its framing or limit: answer, then close

    @property
    def request_line(self) -> str:
        """The request line as an access log shows it."""
        return f"{self.method.decode('latin-1')} {self.target.decode('latin-1')} HTTP/{self.version}"


class StreamingRequestReader(RequestReader):
    """A RequestReader that appends a ``RequestHead`` to ``complete`` as
    soon as a request's head is complete, and its body pieces to that
    head's ``body`` as they are parsed (one feed's worth at most: the
    caller bounds what is buffered by feeding only when it wants more).

    A body too large for ``limits.max_body`` raises HttpError(413) from
    ``feed``; so does any framing error of the body, as for the head.
    """

    __slots__ = ("_fields", "_current")

    def feed(self, data: bytes) -> None:
        """As ``RequestReader.feed``; a method llhttp does not know is 501
        here (an application server has no fixed list of methods to allow)."""
        try:
            RequestReader.feed(self, data)
        except HttpError as exc:
            if exc.status != 405:
                raise
            raise HttpError(501, exc.reason.split(";")[0] + " is not implemented") from None

    def on_message_begin(self) -> None:
        RequestReader.on_message_begin(self)
        self._fields: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        RequestReader.on_header(self, name, value)
        if self.in_headers:
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        RequestReader.on_headers_complete(self)
        parser = self.parser
        version = parser.get_http_version()
        head = RequestHead(parser.get_method(), self._url, version, self._fields, parser.should_keep_alive(),
                           _version_or_host_error(version, self._hosts), self.continue_needed,
                           bool(self._body_flags & _CHUNKED))
        self.continue_needed = False  # the head carries it; the server sends 100 when the body is read
        self._current: RequestHead | None = head
        self.complete.append(head)  # type: ignore[arg-type]

    def on_body(self, body: bytes) -> None:
        RequestReader.on_body(self, body)
        if self._current is not None:
            self._current.body.append(body)

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.body_done = True
            self._current = None
        self.in_message = False


def _version_or_host_error(version: str, hosts: int) -> HttpError | None:
    if version != "1.1":
        if version != "1.0":
            return HttpError(505, f"HTTP/{version} is not supported; use HTTP/1.1 or HTTP/1.0")
    elif hosts != 1:
        return HttpError(400, "missing Host header" if not hosts else "more than one Host header")
    return None


def _method_error(data: bytes) -> HttpError:
    method = data.split(b" ", 1)[0]
    if method and len(method) <= 32 and method.isalpha() and method.isupper():
        return HttpError(405, f"method {method.decode()} not allowed; use GET or HEAD",
                         headers=b"Allow: GET, HEAD\r\n")
    return HttpError(400, "malformed request line")


def _parse_error(exc: Exception) -> HttpError:
    text = str(exc) or type(exc).__name__
    if "HTTP version" in text:
        return HttpError(505, "unsupported HTTP version; use HTTP/1.1 or HTTP/1.0")
    return HttpError(400, f"malformed request: {text}")


# ---------------------------------------------------------------------------
# Response pieces


class Clock:
    """The Date header and the access log's timestamp, rebuilt once a second."""

    __slots__ = ("second", "date_block", "log_time", "_wall")

    def __init__(self) -> None:
        self.second = -1
        self.date_block = b""
        self.log_time = ""
        self._wall: Callable[[], float] = threadlib.wall_time
        self.tick()

    def bind(self, sched: Any) -> None:
        """Read the time of day from ``sched``'s clock directly (a server
        calls this once it runs), rather than looking up the running
        scheduler at every tick."""
        self._wall = getattr(sched.clock, "wall", None) or threadlib.wall_time

    def tick(self) -> float:
        """The time of day through the scheduler's clock (the simulated date
        on a virtual one); refreshes the cached texts when the second changes."""
        now = self._wall()
        second = int(now)
        if second != self.second:
            self.second = second
            self.date_block = b"Server: %s\r\nDate: %s\r\n" % (SERVER_NAME, formatdate(second, usegmt=True).encode())
            self.log_time = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(second))
        return now


def error_response(clock: Clock, error: HttpError, connection: bytes, head_only: bool = False) -> bytes:
    """A complete short text/plain response for ``error``; ``connection``
    is the Connection header line to send (or b"")."""
    body = f"{error.status} {REASONS.get(error.status, 'Error')}: {error.reason}\n".encode()
    return b"".join((
        STATUS_LINES.get(error.status) or b"HTTP/1.1 %d Error\r\n" % error.status,
        clock.date_block,
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
        error.headers,
        connection,
        b"\r\n",
        b"" if head_only else body,
    ))
