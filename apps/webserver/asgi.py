"""An ASGI 3 server on threadlib: HTTP/1.1 (request bodies streamed to the
app, streaming responses), WebSockets (RFC 6455, the ``websocket`` scope,
framing in ``websocket.py``) and the lifespan protocol, for apps such as
Starlette's, run on threadlib.loop's asyncio loop.

The split: each connection is a threadlib thread that owns its stream (so
any ``threadlib.net.Network`` works: kernel sockets, the user-level TCP/IP
stack, TLS), parses with httptools and keeps the clocks (header, idle,
read and send timeouts), exactly as the static server's connections do.
Each request's app call is an asyncio task on the scheduler's
``ThreadlibEventLoop``, because ASGI frameworks need one (anyio, under
Starlette, asks for ``asyncio.current_task()``). The two meet in a
``_Exchange``. A response the socket takes at once is written by the
app's task itself (a stream's ``sendall`` makes its first attempt at the
call), so a small response costs no hand-off; otherwise the app's
``receive`` and ``send`` leave orders (read more body, finish this write)
and wait on asyncio futures, and the connection thread, parked on a
``WaitQueue`` the task wakes with a plain call, carries the orders out on
the stream and settles the futures. The thread reads only when the app
asks for body, so a client can never make the server hold more than one
read beyond what the app has taken.

A WebSocket is the same meeting with a reader added: after the 101, a
second thread reads and parses the client's frames (answering pings and
closes through the connection thread's queue of writes, so frames never
interleave) and queues messages for the app's ``receive``; it stops
reading while the app has 16 messages (or a maximum message's bytes)
waiting, so a client that sends faster than the app reads is held back
by TCP, not by the server's memory.

It must never let an app's failure reach another request or crash the
server (a raising app gets a 500 and one log line naming it), never send
a response the framing would make ambiguous (a body shorter than its
Content-Length closes the connection), and never read a response header
it did not validate.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import re
import ssl
import types
import urllib.parse
from typing import Any, Callable

import httptools

import threadlib
from threadlib import ThreadCancelled
from threadlib.io import sockio, tls
from threadlib.loop import ThreadlibEventLoop
from threadlib.lowlevel import WaitQueue

from .connections import ConnectionState, sweep_idle
from .loading import AppNotFound
from .loading import load_app as _load_app
from threadlib.net import Network, completed_at_call

from . import websocket
from .http import REASONS, Clock, HttpError, Limits, error_response

log = logging.getLogger("apps.webserver.asgi")

_CLOSE = b"Connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset((204, 304))
_LIFESPAN_MODES = ("auto", "on", "off")
_FORBIDDEN_IN_NAME = re.compile(rb"[\r\n: \t]")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\r\n]")
# Response headers the server reads or replaces; any other goes out as given.
_SERVER_OWNED = frozenset((b"content-length", b"transfer-encoding", b"connection", b"date", b"server"))
_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()) for status, reason in REASONS.items()}


class ClientDisconnected(OSError):
    """Raised by ``send`` once the client has gone (ASGI spec 2.4: a
    server-specific ``OSError``)."""


class LifespanFailed(Exception):
    """The app reported ``lifespan.startup.failed`` (or raised during
    startup with ``lifespan="on"``): the server does not start."""


def load_app(spec: str) -> Any:
    """The ASGI application named by ``MODULE:APP`` (ATTR may be dotted);
    ``AppNotFound`` (a ValueError, one line) when it cannot be found."""
    return _load_app(spec, "ASGI")


class _Request:
    """One request as parsed: its head, then its body pieces as they come."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "upgrade", "asks_upgrade",
                 "expects_continue", "body", "complete", "body_bytes")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.upgrade = False  # llhttp's verdict: Connection: upgrade and an Upgrade header
        self.asks_upgrade = False  # an Upgrade header at all (a WebSocket handshake to check)
        self.expects_continue = False
        self.body: collections.deque[bytes] = collections.deque()
        self.complete = False  # the whole body has been parsed
        self.body_bytes = 0


class _Parser:
    """The httptools protocol of one connection: complete request heads
    collect in ``heads``; each request's body pieces go to that request."""

    __slots__ = ("parser", "heads", "limits", "current", "_header_bytes", "in_head", "upgraded")

    def __init__(self, limits: Limits) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.heads: collections.deque[_Request] = collections.deque()
        self.limits = limits
        self.current: _Request | None = None
        self._header_bytes = 0
        self.in_head = False  # a request has begun but its head is not complete
        self.upgraded = b""  # what came after an Upgrade request's head

    def feed(self, data: bytes) -> None:
        """Parse ``data``; HttpError for a request that must be refused."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The bytes after an Upgrade head belong to another protocol:
            # kept for a WebSocket; any other upgrade is served as plain
            # HTTP and the connection closes.
            self.upgraded = data[upgrade.args[0]:]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HttpError):
                raise exc.__context__ from None
            raise HttpError(500, "internal error while reading the request") from exc
        except httptools.HttpParserError as exc:
            text = str(exc) or type(exc).__name__
            if "HTTP version" in text:
                raise HttpError(505, "unsupported HTTP version; use HTTP/1.1 or HTTP/1.0") from None
            raise HttpError(400, f"malformed request: {text}") from None

    def on_message_begin(self) -> None:
        self.current = _Request()
        self._header_bytes = 0
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        target = self.current.target + url
        if len(target) > self.limits.max_request_line:
            raise HttpError(414, f"request target longer than {self.limits.max_request_line} bytes")
        self.current.target = target

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        self._header_bytes += len(name) + len(value) + 4
        if len(request.headers) >= self.limits.max_headers:
            raise HttpError(431, f"more than {self.limits.max_headers} header fields")
        if self._header_bytes > self.limits.max_header_bytes:
            raise HttpError(431, f"header fields larger than {self.limits.max_header_bytes} bytes in total")
        name = name.lower()
        if name == b"expect":
            if value.lower() == b"100-continue":
                request.expects_continue = True
        elif name == b"upgrade":
            request.asks_upgrade = True
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        parser = self.parser
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        self.in_head = False
        if request.version not in ("1.1", "1.0"):
            raise HttpError(505, f"HTTP/{request.version} is not supported; use HTTP/1.1 or HTTP/1.0")
        self.heads.append(request)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body.append(body)
        self.current.body_bytes += len(body)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True


class _Connection:
    """What the requests of one connection share: its stream, parser and
    loop, the addresses every scope names, and the queue its thread parks
    on while an app's task runs (a thread waits for one exchange at a time)."""

    __slots__ = ("stream", "parser", "loop", "client", "server", "waiters")

    def __init__(self, stream: Any, parser: _Parser, loop: asyncio.AbstractEventLoop, peer: Any,
                 local: Any) -> None:
        self.stream = stream
        self.parser = parser
        self.loop = loop
        self.client = tuple(peer[:2]) if isinstance(peer, tuple) else None
        self.server = tuple(local[:2]) if isinstance(local, tuple) else None
        self.waiters = WaitQueue()


class _Exchange:
    """One request/response between the connection thread and the app's
    task. The app side (``receive``, ``send``) runs in the task; the
    thread side (``next_order``, ``settle``) in the connection thread."""

    def __init__(self, server: AsgiServer, link: _Connection, request: _Request) -> None:
        self.server = server
        self.conn = link.stream
        self.request = request
        self.loop = link.loop
        self.writing = False  # the connection thread is in a write (an order, or 100 Continue)
        self.head_only = request.method == b"HEAD"
        self.orders: collections.deque[tuple[Any, ...]] = collections.deque()
        # The connection thread, waiting for an order or the task's end. A
        # task that outlives its response may still wake it: it looks, finds
        # nothing of its current exchange to do, and parks again.
        self.thread_waiters = link.waiters
        self.app_waiter: asyncio.Future[None] | None = None  # receive's wait for body or the end
        self.read_ordered = False
        self.body_ended = False  # receive has returned more_body=False
        self.disconnected = False
        self.started = False  # http.response.start was sent by the app
        self.complete = False  # the last body message was sent
        self.pending_head: bytes | None = None  # held until the first body message
        self.chunked = False
        self.declared_length: int | None = None
        self.sent_length = 0
        self.keep_alive = request.keep_alive and not request.upgrade
        self.status = 0

    # -- the thread side ---------------------------------------------------------
    def wake_thread(self) -> None:
        # A plain call from the app's task: the thread is ready at once,
        # with no loop callback in between.
        self.thread_waiters.wake_one()

    def wake_app(self) -> None:
        waiter = self.app_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the app side: receive ---------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        request = self.request
        while True:
            if request.body:
                body = b"".join(request.body)
                request.body.clear()
                more = not request.complete
                self.body_ended = not more
                return {"type": "http.request", "body": body, "more_body": more}
            if request.complete and not self.body_ended:
                self.body_ended = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.disconnected or self.complete:
                return {"type": "http.disconnect"}
            if not request.complete and not self.read_ordered:
                self.read_ordered = True
                self.orders.append(("read",))
                self.wake_thread()
            # Wait for body, the response's end or the client's departure.
            self.app_waiter = self.loop.create_future()
            try:
                await self.app_waiter
            finally:
                self.app_waiter = None

    # -- the app side: send -------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if self.disconnected:
            raise ClientDisconnected("the client has closed the connection")
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.pending_head = self._head(message)
            self.started = True
            return
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("ASGI: http.response.body before http.response.start")
            if self.complete:
                raise RuntimeError("ASGI: http.response.body after the response's last body message")
            body = message.get("body", b"")
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"ASGI: http.response.body's body must be bytes, not {type(body).__name__}")
            more = bool(message.get("more_body", False))
            data = self._frame(bytes(body), more)
            if not more:
                self.complete = True
            if data:
                if not self.orders and not self.writing:
                    # The usual case: write from the task. The stream's
                    # sendall makes its first attempt at the call, so a
                    # response the socket takes at once costs no hand-off;
                    # what is left (a full buffer, TLS, the user-level
                    # stack) goes to the connection thread to finish.
                    try:
                        rest = self.conn.sendall(data, timeout=self.server.send_timeout)
                    except OSError as exc:
                        self.disconnected = True
                        self.wake_app()
                        raise ClientDisconnected(f"the client went away: {exc}") from None
                    if completed_at_call(rest):
                        if not more:
                            self.wake_app()
                        return
                    order: tuple[Any, ...] = ("finish", rest)
                else:
                    order = ("write", data)
                done = self.loop.create_future()
                self.orders.append(order + (done,))
                self.wake_thread()
                await done
            elif not more:
                self.wake_thread()
            if not more:
                self.wake_app()  # a receive waiting for the end returns http.disconnect
            return
        raise RuntimeError(f"ASGI: unexpected message type {kind!r} for an http scope")

    def _head(self, message: dict[str, Any]) -> bytes:
        status = message.get("status")
        if type(status) is not int or not 100 <= status <= 599:
            raise ValueError(f"ASGI: http.response.start status must be an int 100-599, not {status!r}")
        self.status = status
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "").encode())]
        seen_date = seen_server = False
        checked = _CHECKED_HEADERS
        for pair in message.get("headers", ()):
            try:
                known = checked.get(pair)
            except (TypeError, ValueError):  # a list, or a bytearray or writable memoryview in it: not a key
                known = None
            owned, line = known or _check_header(pair)
            if owned is None:
                lines.append(line)
            elif owned == b"content-length":
                self.declared_length = int(line[16:-2])
                lines.append(line)
            elif owned == b"connection":
                if b"close" in line.lower():
                    self.keep_alive = False
            elif owned == b"date":
                seen_date = True
                lines.append(line)
            elif owned == b"server":
                seen_server = True
                lines.append(line)
            # transfer-encoding: dropped, the server frames the body itself
        if not (seen_date and seen_server):
            clock = self.server.clock
            clock.tick()
            lines.insert(1, clock.date_block)
        bodyless = self.head_only or status in _NO_BODY_STATUSES or status < 200
        if self.declared_length is None and not bodyless:
            if self.request.version == "1.1":
                self.chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the close ends the body
        if self.server.stopping:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(_CLOSE)
        elif self.request.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _frame(self, body: bytes, more: bool) -> bytes:
        head, self.pending_head = self.pending_head, None
        pieces = [head] if head is not None else []
        if self.head_only or self.status in _NO_BODY_STATUSES:
            body = b""
        elif self.declared_length is not None:
            if self.sent_length + len(body) > self.declared_length:
                raise RuntimeError(f"ASGI: response body longer than its Content-Length "
                                   f"{self.declared_length}")
        self.sent_length += len(body)
        if self.chunked:
            if body:
                pieces.append(b"%x\r\n%s\r\n" % (len(body), body))
            if not more:
                pieces.append(b"0\r\n\r\n")
        elif body:
            pieces.append(body)
        return b"".join(pieces)

    @property
    def framing_intact(self) -> bool:
        """The response ended as its framing says (the connection may be reused)."""
        if not self.complete:
            return False
        if self.declared_length is not None and not self.head_only and self.status not in _NO_BODY_STATUSES:
            return self.sent_length == self.declared_length
        return True


# Response headers already checked, by their (name, value) pair, so that
# the few an app sends with every response are checked once: each maps to
# (its lower-cased name if the server reads or replaces it, else None;
# its header line). Emptied when full, so an app that varies its values
# costs a check each, as with no cache.
_CHECKED_HEADERS: dict[tuple[bytes, bytes], tuple[bytes | None, bytes]] = {}
_CHECKED_HEADERS_MAX = 1024


def _valid_header(pair: Any, what: str) -> tuple[bytes, bytes, bytes]:
    """An app's header ``pair`` as (name, value, lower-cased name), bytes;
    ValueError naming what is wrong with it (``what`` names the message)."""
    try:
        name, value = pair
        if type(name) is not bytes:
            name = bytes(name)
        if type(value) is not bytes:
            value = bytes(value)
    except (TypeError, ValueError):
        raise ValueError(f"ASGI: {what} header {pair!r} is not a (name, value) pair of bytes") from None
    if not name or _FORBIDDEN_IN_NAME.search(name) or _FORBIDDEN_IN_VALUE.search(value):
        raise ValueError(f"ASGI: {what} header {name!r}: {value!r} has a forbidden character")
    return name, value, name.lower()


def _check_header(pair: Any) -> tuple[bytes | None, bytes]:
    """One response header of ``http.response.start``, checked: (the
    lower-cased name if in ``_SERVER_OWNED``, else None; its line), and
    remembered. ValueError names what is wrong with it."""
    name, value, lower = _valid_header(pair, "response")
    owned = lower if lower in _SERVER_OWNED else None
    if owned == b"content-length" and not (value.isdigit() and len(value) < 20):
        raise ValueError(f"ASGI: response Content-Length {value!r} is not a number")
    known = (owned, b"%s: %s\r\n" % (name, value))
    if type(pair) is tuple and pair[0] is name and pair[1] is value:  # bytes: immutable, so a fair key
        if len(_CHECKED_HEADERS) >= _CHECKED_HEADERS_MAX:
            _CHECKED_HEADERS.clear()
        _CHECKED_HEADERS[pair] = known
    return known


def _header_lines(pairs: Any, owned: frozenset[bytes], what: str, drop_owned: bool = False) -> list[bytes]:
    """``pairs`` (an app's [name, value] headers) as validated header lines;
    ValueError for a malformed one. Names in ``owned`` are the server's to
    write: left out with ``drop_owned``, a ValueError otherwise."""
    lines = []
    for pair in pairs or ():
        name, value, lower = _valid_header(pair, what)
        if lower in owned:
            if drop_owned:
                continue
            raise ValueError(f"ASGI: {what} header {name.decode('latin-1')!r} is the server's to send")
        lines.append(b"%s: %s\r\n" % (name, value))
    return lines


_HANDSHAKE_HEADERS = frozenset((b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-protocol",
                                b"sec-websocket-extensions", b"content-length", b"transfer-encoding"))
_DENIAL_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"connection"))
# Messages the reader may queue ahead of the app before it stops reading
# (and TCP makes the client wait): a count, and the bytes of one message.
_WEBSOCKET_READ_AHEAD = 16


class _WebSocket:
    """One WebSocket connection shared by three parties: the app's task
    (``receive``, ``send``), the connection thread (writes every frame,
    in order: it alone touches the socket's sending side) and the reader
    thread (reads and parses the client's frames, queues messages for the
    app, orders pongs and close answers)."""

    def __init__(self, server: AsgiServer, request: _Request, loop: asyncio.AbstractEventLoop, key: bytes,
                 offered: list[str]) -> None:
        self.server = server
        self.request = request
        self.loop = loop
        self.key = key
        self.offered = offered
        # (bytes, future settled once written or None, spawn the reader after?)
        self.orders: collections.deque[tuple[bytes, asyncio.Future[None] | None, bool]] = collections.deque()
        self.thread_waiters = WaitQueue()  # the connection thread, waiting for an order or the end
        self.app_waiter: asyncio.Future[None] | None = None
        self.reader_waiter: asyncio.Future[None] | None = None
        self.inbox: collections.deque[dict[str, Any]] = collections.deque()
        self.inbox_bytes = 0
        self.connect_delivered = False
        self.accepted = False  # the app sent websocket.accept (the 101 is ordered)
        self.refused = False  # an HTTP response went out instead of the 101
        self.denial: tuple[int, list[bytes]] | None = None  # websocket.http.response.start, until its body
        self.denial_body: list[bytes] = []
        self.close_sent = False  # a close frame is ordered: no data frame may follow it
        self.close_received = False  # the client's close frame arrived
        self.failed = False  # the client broke the protocol: close after our close frame, no waiting
        self.gone = False  # the TCP connection ended or failed: nothing can be written
        self.close_deadline: float | None = None
        self.disconnect: tuple[int, str] | None = None  # what the app's websocket.disconnect says

    @property
    def finished(self) -> bool:
        """Nothing more will be exchanged: the connection can be closed."""
        return self.gone or self.failed or (self.close_sent and self.close_received)

    # -- waking the three parties ---------------------------------------------------------
    def wake_thread(self) -> None:
        # A plain call from the app's task: the thread is ready at once,
        # with no loop callback in between.
        self.thread_waiters.wake_one()

    def wake_app(self) -> None:
        waiter = self.app_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake_reader(self) -> None:
        waiter = self.reader_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- events from the reader and the connection thread ---------------------------------------
    def order(self, data: bytes, done: asyncio.Future[None] | None = None, then_read: bool = False) -> None:
        self.orders.append((data, done, then_read))
        self.wake_thread()

    def close(self, code: int, reason: str = "") -> None:
        """Order a close frame, if the connection is open and has sent none."""
        if self.accepted and not self.close_sent and not self.gone:
            self.close_sent = True
            self.order(websocket.close_frame(code, reason))

    def received(self, message: websocket.Message) -> None:
        if self.close_sent:
            return  # after our close, data is discarded (RFC 6455 section 1.4)
        if message.text is not None:
            self.inbox.append({"type": "websocket.receive", "bytes": None, "text": message.text})
            self.inbox_bytes += len(message.text)
        else:
            assert message.data is not None
            self.inbox.append({"type": "websocket.receive", "bytes": message.data, "text": None})
            self.inbox_bytes += len(message.data)
        self.wake_app()

    def client_closed(self, event: websocket.Close) -> None:
        """The client's close frame: answered with its code (section 5.5.1)."""
        self.close_received = True
        if not self.close_sent:
            self.close_sent = True
            self.order(websocket.close_frame(event.code))  # 1005 (no code) is answered with none
        self.end(event.code, event.reason)

    def protocol_error(self, error: websocket.ProtocolError) -> None:
        """The client broke RFC 6455: our close frame names why, then the
        connection closes without waiting for an answer (section 7.1.7)."""
        self.close(error.code, error.reason)
        self.failed = True
        self.end(error.code, error.reason)

    def lost(self) -> None:
        """The TCP connection ended or failed under us."""
        self.gone = True
        self.end(websocket.ABNORMAL_CLOSURE, "")

    def end(self, code: int, reason: str) -> None:
        if self.disconnect is None:
            self.disconnect = (code, reason)
        self.wake_app()
        self.wake_thread()
        self.wake_reader()

    # -- the app side ----------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            if self.inbox:
                message = self.inbox.popleft()
                self.inbox_bytes -= len(message["text"] if message["bytes"] is None else message["bytes"])
                self.wake_reader()
                return message
            if self.disconnect is not None:
                code, reason = self.disconnect
                return {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.app_waiter = self.loop.create_future()
            try:
                await self.app_waiter
            finally:
                self.app_waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if self.refused:
            raise ClientDisconnected("the WebSocket handshake was refused")
        if not self.accepted:
            await self._before_accept(kind, message)
            return
        if kind == "websocket.send":
            text = message.get("text")
            data = message.get("bytes")
            if (text is None) == (data is None):
                raise ValueError("ASGI: websocket.send needs exactly one of 'bytes' and 'text'")
            if self.close_sent or self.gone:
                raise ClientDisconnected("the WebSocket is closed")
            if text is not None:
                if not isinstance(text, str):
                    raise TypeError(f"ASGI: websocket.send's text must be a str, not {type(text).__name__}")
                frame = websocket.encode_frame(websocket.TEXT, text.encode("utf-8"))
            else:
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise TypeError(f"ASGI: websocket.send's bytes must be bytes, not {type(data).__name__}")
                frame = websocket.encode_frame(websocket.BINARY, bytes(data))
            await self._write(frame)
            return
        if kind == "websocket.close":
            if self.close_sent or self.gone:
                raise ClientDisconnected("the WebSocket is closed")
            code = message.get("code", websocket.NORMAL_CLOSURE)
            reason = message.get("reason") or ""
            frame = websocket.close_frame(code, reason)  # ValueError names a bad code or reason
            self.close_sent = True
            await self._write(frame)
            return
        raise RuntimeError(f"ASGI: unexpected message type {kind!r} for an accepted websocket")

    async def _before_accept(self, kind: Any, message: dict[str, Any]) -> None:
        if kind == "websocket.accept":
            if self.denial is not None:
                raise RuntimeError("ASGI: websocket.accept after websocket.http.response.start")
            head = self._accept_head(message)
            self.accepted = True
            await self._write(head, then_read=True)
            return
        if kind == "websocket.close":
            # Closed before accepting: the handshake is refused with a 403 (ASGI spec).
            self.refused = True
            self.server.clock.tick()
            error = HttpError(403, "the application refused the WebSocket")
            await self._write(error_response(self.server.clock, error, _CLOSE))
            return
        if kind == "websocket.http.response.start":
            if self.denial is not None:
                raise RuntimeError("ASGI: websocket.http.response.start sent twice")
            status = message.get("status")
            if type(status) is not int or not 200 <= status <= 599:
                raise ValueError(f"ASGI: websocket.http.response.start status must be an int 200-599, not {status!r}")
            self.denial = (status, _header_lines(message.get("headers"), _DENIAL_HEADERS, "denial response",
                                                     drop_owned=True))
            return
        if kind == "websocket.http.response.body":
            if self.denial is None:
                raise RuntimeError("ASGI: websocket.http.response.body before websocket.http.response.start")
            body = message.get("body", b"")
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"ASGI: websocket.http.response.body's body must be bytes, "
                                f"not {type(body).__name__}")
            self.denial_body.append(bytes(body))
            if message.get("more_body", False):
                return
            status, lines = self.denial
            body = b"".join(self.denial_body)
            self.refused = True
            self.server.clock.tick()
            await self._write(b"".join((b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "").encode()),
                                        self.server.clock.date_block, *lines,
                                        b"Content-Length: %d\r\n" % len(body), _CLOSE, b"\r\n", body)))
            return
        raise RuntimeError(f"ASGI: {kind!r} before websocket.accept")

    def _accept_head(self, message: dict[str, Any]) -> bytes:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in self.offered:
            raise ValueError(f"ASGI: websocket.accept's subprotocol {subprotocol!r} was not offered by the client "
                             f"(it offered {self.offered!r})")
        lines = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
                 b"Sec-WebSocket-Accept: %s\r\n" % websocket.accept_key(self.key)]
        if subprotocol is not None:
            lines.append(b"Sec-WebSocket-Protocol: %s\r\n" % subprotocol.encode("ascii"))
        lines += _header_lines(message.get("headers"), _HANDSHAKE_HEADERS, "websocket.accept")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _write(self, data: bytes, then_read: bool = False) -> None:
        done = self.loop.create_future()
        self.order(data, done, then_read)
        await done


class AsgiServer:
    """Serves an ASGI 3 ``app`` on a threadlib scheduler whose threads have
    a ``threadlib.loop`` event loop (plain ``threadlib.run`` provides one).

    ``yield from server.serve((host, port), shutdown)`` runs the app's
    lifespan startup, listens, serves until ``shutdown`` (a threadlib
    Event) is set, lets requests in flight finish (up to
    ``drain_timeout``), then runs the lifespan shutdown.
    """

    def __init__(
        self,
        app: Any,
        *,
        app_name: str | None = None,
        network: Network | None = None,
        limits: Limits | None = None,
        header_timeout: float = 10.0,
        keepalive_timeout: float = 15.0,
        read_timeout: float = 30.0,
        send_timeout: float = 30.0,
        drain_timeout: float = 10.0,
        lifespan: str = "auto",
        root_path: str = "",
        tls_context: ssl.SSLContext | None = None,
        handshake_timeout: float = tls.DEFAULT_HANDSHAKE_TIMEOUT,
        websocket_max_message: int = 16 * 1024 * 1024,
        websocket_close_timeout: float = 5.0,
    ) -> None:
        if lifespan not in _LIFESPAN_MODES:
            raise ValueError(f"lifespan must be one of {', '.join(_LIFESPAN_MODES)}, not {lifespan!r}")
        self.app = app
        self.app_name = app_name or getattr(app, "__qualname__", None) or type(app).__qualname__
        self.network: Network = network if network is not None else sockio.kernel
        self.limits = limits or Limits()
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.read_timeout = read_timeout
        self.send_timeout = send_timeout
        self.drain_timeout = drain_timeout
        self.lifespan = lifespan
        self.root_path = root_path
        self.tls_context = tls_context
        self.handshake_timeout = handshake_timeout
        if websocket_max_message < 1:
            raise ValueError(f"websocket_max_message must be at least 1 byte, not {websocket_max_message}")
        self.websocket_max_message = websocket_max_message
        self.websocket_close_timeout = websocket_close_timeout
        self.clock = Clock()
        self.state: dict[str, Any] = {}  # the lifespan state, copied into each request's scope
        self.address: Any = None
        self.requests = 0
        self.connections = 0
        self.app_failures = 0
        self.stopping = False
        self._open: dict[ConnectionState, None] = {}
        self._clock_now: Callable[[], float] = threadlib.now  # bound to the scheduler's clock by serve
        self._websockets: set[_WebSocket] = set()

    # -- life cycle ----------------------------------------------------------------
    @types.coroutine
    def serve(self, address: tuple[str, int], shutdown: threadlib.Event | None = None,
              reuse_port: bool = False, ready: Callable[[Any], None] | None = None, backlog: int = 1024) -> Any:
        """Run the lifespan startup, then serve ``address`` until
        ``shutdown`` is set; ``ready(address)`` once listening. ``backlog``
        is the listener's."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if not isinstance(loop, ThreadlibEventLoop):
            raise RuntimeError("AsgiServer.serve runs in a threadlib thread with a threadlib.loop event loop "
                               f"(threadlib.run provides one once asyncio is imported), not with {loop!r}")
        sched = threadlib.current_scheduler()
        self._clock_now = sched.clock.now
        self.clock.bind(sched)
        lifespan = _Lifespan(self, loop)
        if self.lifespan != "off":
            yield from lifespan.startup()
        try:
            listener = yield from self.network.listen(address, backlog, reuse_port=reuse_port)
            if self.tls_context is not None:
                listener = tls.TlsListener(listener, self.tls_context, handshake_timeout=self.handshake_timeout,
                                           ragged_eof=True)
            self.address = listener.address
            if ready is not None:
                ready(self.address)
            acceptor = yield from threadlib.spawn(self._accept_loop(listener, loop), name="asgi-accept")
            sweeper = yield from threadlib.spawn(
                sweep_idle(self._open, self.keepalive_timeout, self.header_timeout), name="asgi-idle-sweeper")
            try:
                yield from (shutdown or threadlib.Event()).wait()
            finally:
                yield from acceptor.cancel()
                yield from sweeper.cancel()
                listener.close()
                yield from self._drain()
        finally:
            if lifespan.running:
                yield from lifespan.shutdown()

    @types.coroutine
    def _accept_loop(self, listener: Any, loop: asyncio.AbstractEventLoop) -> Any:
        while True:
            conn, peer = yield from listener.accept()
            self.connections += 1
            state = ConnectionState()
            self._open[state] = None
            state.thread = yield from threadlib.spawn(self._connection(conn, peer, listener.address, loop, state),
                                                      name="asgi-connection")

    @types.coroutine
    def _drain(self) -> Any:
        self.stopping = True
        for session in self._websockets:
            session.close(websocket.GOING_AWAY, "the server is shutting down")
        for state in list(self._open):
            if state.waiting_idle:
                yield from state.thread.cancel()  # type: ignore[union-attr]
        busy_threads = [s.thread for s in self._open if s.thread is not None and not s.thread.done]
        if not busy_threads:
            return
        try:
            with threadlib.timeout(self.drain_timeout):
                for thread in busy_threads:
                    yield from thread.wait()
        except TimeoutError:
            log.warning("%d connections still busy after %.1fs; closing them", len(busy_threads),
                        self.drain_timeout)
            for thread in busy_threads:
                if not thread.done:
                    yield from thread.cancel()

    # -- one connection ---------------------------------------------------------------
    @types.coroutine
    def _connection(self, conn: Any, peer: Any, local: Any, loop: asyncio.AbstractEventLoop,
                    state: ConnectionState) -> Any:
        parser = _Parser(self.limits)
        link = _Connection(conn, parser, loop, peer, local)
        try:
            if isinstance(conn, tls.TlsStream):
                try:
                    yield from conn.do_handshake()
                except (OSError, TimeoutError) as exc:
                    log.info("TLS handshake with %s failed: %s", peer, tls.describe_error(exc))
                    return
            while not self.stopping:
                if not parser.heads:
                    try:
                        request_began = yield from self._read_head(conn, parser, state)
                    except HttpError as error:
                        yield from self._refuse(conn, error)
                        return
                    if not request_began:
                        return
                request = parser.heads.popleft()
                state.served = True
                keep_open = yield from self._exchange(link, request)
                if not keep_open:
                    return
        except (ConnectionError, TimeoutError):
            pass
        except ThreadCancelled:
            raise
        except OSError as exc:
            log.info("connection from %s: %s", peer, exc)
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self._open.pop(state, None)
            conn.close()

    @types.coroutine
    def _read_head(self, conn: Any, parser: _Parser, state: ConnectionState) -> Any:
        """Read until a request head is complete: False if the client closed
        before beginning one; HttpError for a bad or late one. Idle before
        a request, the thread waits with no timer of its own: the sweeper
        cancels it after the keep-alive (or, before the first request, the
        header) timeout."""
        deadline = None
        while not parser.heads:
            if parser.in_head:
                now = threadlib.now()
                if deadline is None:
                    deadline = now + self.header_timeout
                if now >= deadline:
                    raise HttpError(408, "request not received in time")
                try:
                    data = yield from conn.recv(65536, timeout=deadline - now)
                except TimeoutError:
                    raise HttpError(408, "request not received in time") from None
                if not data:
                    return False
            else:
                state.idle_since = self._clock_now()
                state.idle = True
                data = yield from conn.recv(65536)
                state.idle = False
                if not data:
                    return False
            parser.feed(data)
        return True

    @types.coroutine
    def _refuse(self, conn: Any, error: HttpError) -> Any:
        self.clock.tick()
        try:
            yield from conn.sendall(error_response(self.clock, error, _CLOSE), timeout=self.send_timeout)
        except (OSError, TimeoutError):
            pass

    def _scope(self, request: _Request, link: _Connection, subprotocols: list[str] | None = None
               ) -> dict[str, Any]:
        parsed = httptools.parse_url(request.target)
        raw_path = parsed.path or b"/"
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "the request target is not ASCII") from None
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.version,
            "method": request.method.decode("ascii"),
            "scheme": "https" if self.tls_context is not None else "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "root_path": self.root_path,
            "headers": request.headers,
            "client": link.client,
            "server": link.server,
            "state": dict(self.state),
        }
        if subprotocols is not None:
            scope.update(type="websocket", scheme="wss" if self.tls_context is not None else "ws",
                         subprotocols=subprotocols, extensions={"websocket.http.response": {}})
            del scope["method"]
        return scope

    @types.coroutine
    def _exchange(self, link: _Connection, request: _Request) -> Any:
        """Serve one request with the app; True if the connection may carry
        the next one."""
        self.requests += 1
        conn = link.stream
        if request.asks_upgrade and websocket.wants_websocket(request.headers):
            return (yield from self._websocket(link, request))
        try:
            scope = self._scope(request, link)
        except HttpError as error:
            yield from self._refuse(conn, error)
            return False
        loop = link.loop
        parser = link.parser
        exchange = _Exchange(self, link, request)
        # No done callback: ``_call_app`` wakes this thread in its last step
        # (a task is only cancelled before its first step when the loop
        # shuts down, which ends this thread too).
        task = loop.create_task(self._call_app(scope, exchange), context=contextvars.copy_context())
        try:
            while True:
                if exchange.orders:
                    order = exchange.orders.popleft()
                    if order[0] == "read":
                        yield from self._read_body(conn, parser, exchange)
                    else:
                        yield from self._write(conn, exchange, order)
                elif task.done():
                    break
                else:
                    yield exchange.thread_waiters.park
        except ThreadCancelled:
            task.cancel()
            yield from _wait_cancelled(task)
            raise
        exchange.disconnected = exchange.disconnected or not exchange.complete
        exchange.wake_app()
        failure = task.exception() if not task.cancelled() else None  # retrieved: logged by _call_app
        if not exchange.started:
            if failure is None:
                log.error("ASGI app %s returned without a response to %s %s", self.app_name,
                          request.method.decode(), request.target.decode("latin-1"))
            error = HttpError(500, "the application failed")
            self.clock.tick()
            try:
                yield from conn.sendall(error_response(self.clock, error, _CLOSE, exchange.head_only),
                                        timeout=self.send_timeout)
            except (OSError, TimeoutError):
                pass
            return False
        return exchange.keep_alive and exchange.framing_intact and request.complete and not self.stopping

    async def _call_app(self, scope: dict[str, Any], exchange: _Exchange) -> None:
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except ClientDisconnected:
            pass
        except Exception:
            request = exchange.request
            if exchange.disconnected:
                # The app's own way of saying "the client left" (Starlette's
                # ClientDisconnect): not the app's failure.
                log.info("ASGI app %s stopped serving %s %s: the client went away", self.app_name,
                         request.method.decode(), request.target.decode("latin-1"))
                return
            self.app_failures += 1
            log.exception("ASGI app %s raised while serving %s %s", self.app_name, request.method.decode(),
                          request.target.decode("latin-1"))
            raise
        finally:
            # The task's own last step: the connection thread runs next with
            # the task already done (a done callback would cost a loop turn
            # more; it stays for a task cancelled before it ever ran).
            exchange.wake_thread()

    # -- WebSocket -----------------------------------------------------------------------
    @types.coroutine
    def _websocket(self, link: _Connection, request: _Request) -> Any:
        """Serve a WebSocket handshake and, once the app accepts, the
        connection: this thread writes, a reader thread reads. Always
        False (the connection is over when it returns)."""
        conn, parser, loop = link.stream, link.parser, link.loop
        try:
            key, offered = websocket.check_handshake(request.method, request.version, request.headers)
            if not request.upgrade:
                raise websocket.HandshakeError(400, "a WebSocket handshake needs 'Connection: Upgrade'")
            scope = self._scope(request, link, subprotocols=offered)
        except (websocket.HandshakeError, HttpError) as refused:
            status = refused.status
            headers = b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n" if status == 426 else b""
            yield from self._refuse(conn, HttpError(status, refused.reason, headers=headers))
            return False
        session = _WebSocket(self, request, loop, key, offered)
        task = loop.create_task(self._call_websocket_app(scope, session), context=contextvars.copy_context())
        task.add_done_callback(lambda done: self._websocket_app_ended(session, done))
        reader = None
        self._websockets.add(session)
        if self.stopping:
            session.close(websocket.GOING_AWAY, "the server is shutting down")
        try:
            while True:
                if session.orders:
                    data, done, then_read = session.orders.popleft()
                    written = yield from self._websocket_write(conn, session, data, done)
                    if written and then_read:
                        reader = yield from threadlib.spawn(self._websocket_read(conn, session, parser.upgraded),
                                                            name="asgi-websocket-reader")
                    continue
                if session.finished or session.refused or (task.done() and not session.accepted):
                    break
                if session.close_sent:
                    # Our close is out: the client has this long to answer it.
                    now = threadlib.now()
                    if session.close_deadline is None:
                        session.close_deadline = now + self.websocket_close_timeout
                    if now >= session.close_deadline:
                        break
                    try:
                        with threadlib.timeout(session.close_deadline - now):
                            yield session.thread_waiters.park
                    except TimeoutError:
                        break
                else:
                    yield session.thread_waiters.park
        except ThreadCancelled:
            task.cancel()
            if reader is not None:
                yield from reader.cancel()
            yield from _wait_cancelled(task)
            raise
        finally:
            self._websockets.discard(session)
        # Nothing more is written: a send that raced the end learns it now.
        session.gone = True
        while session.orders:
            done = session.orders.popleft()[1]
            if done is not None and not done.done():
                done.set_exception(ClientDisconnected("the WebSocket is closed"))
        if reader is not None and not reader.done:
            yield from reader.cancel()
        if not session.accepted and not session.refused:
            # The app ended before answering the handshake (its failure is logged by _call_websocket_app).
            if not task.cancelled() and task.exception() is None:
                log.error("ASGI app %s returned without accepting or refusing the WebSocket %s", self.app_name,
                          request.target.decode("latin-1"))
            yield from self._refuse(conn, HttpError(500, "the application failed"))
        session.end(websocket.ABNORMAL_CLOSURE, "")
        conn.close()  # the server closes the TCP connection first (RFC 6455 section 7.1.1)
        # The app learns of the end from receive (websocket.disconnect) or send (ClientDisconnected).
        try:
            yield from _wait_done(task)
        except ThreadCancelled:
            task.cancel()
            yield from _wait_cancelled(task)
            raise
        return False

    def _websocket_app_ended(self, session: _WebSocket, task: asyncio.Task[None]) -> None:
        """The app's task ended: an open connection is closed for it, 1011 if it raised."""
        failed = not task.cancelled() and task.exception() is not None
        session.close(websocket.INTERNAL_ERROR if failed else websocket.NORMAL_CLOSURE)
        session.wake_thread()

    async def _call_websocket_app(self, scope: dict[str, Any], session: _WebSocket) -> None:
        try:
            await self.app(scope, session.receive, session.send)
        except ClientDisconnected:
            pass
        except Exception:
            if session.disconnect is not None:
                # The app's own way of saying "the client left" (Starlette's WebSocketDisconnect
                # once the disconnect was received): not the app's failure.
                log.info("ASGI app %s stopped serving the WebSocket %s: the client went away", self.app_name,
                         session.request.target.decode("latin-1"))
                return
            self.app_failures += 1
            log.exception("ASGI app %s raised while serving the WebSocket %s", self.app_name,
                          session.request.target.decode("latin-1"))
            raise

    @types.coroutine
    def _websocket_write(self, conn: Any, session: _WebSocket, data: bytes,
                         done: asyncio.Future[None] | None) -> Any:
        """Write one order; False (and the connection lost) if the client is gone."""
        try:
            if session.gone:
                raise ConnectionResetError("the connection is closed")
            yield from conn.sendall(data, timeout=self.send_timeout)
        except (OSError, TimeoutError) as exc:
            session.lost()
            if done is not None and not done.done():
                done.set_exception(ClientDisconnected(f"the client went away: {exc}"))
            return False
        if done is not None and not done.done():
            done.set_result(None)
        return True

    @types.coroutine
    def _websocket_read(self, conn: Any, session: _WebSocket, already: bytes) -> Any:
        """The reader thread: the client's frames into events, until its
        close frame, a protocol error or the end of the connection. It
        stops reading while the app has messages enough waiting (the
        client then waits on TCP's window: backpressure)."""
        frames = websocket.FrameReader(self.websocket_max_message)
        data = already
        try:
            while True:
                if data:
                    frames.feed(data)
                while (event := frames.next_event()) is not None:
                    if isinstance(event, websocket.Message):
                        session.received(event)
                    elif isinstance(event, websocket.Ping):
                        if not session.close_sent:
                            session.order(websocket.encode_frame(websocket.PONG, event.payload))
                    elif isinstance(event, websocket.Close):
                        session.client_closed(event)
                        return
                while ((len(session.inbox) >= _WEBSOCKET_READ_AHEAD
                        or session.inbox_bytes >= self.websocket_max_message) and not session.close_sent):
                    session.reader_waiter = session.loop.create_future()
                    try:
                        yield session.reader_waiter
                    finally:
                        session.reader_waiter = None
                data = yield from conn.recv(65536)
                if not data:
                    session.lost()
                    return
        except websocket.ProtocolError as error:
            log.info("WebSocket client %s broke the protocol: %s", session.request.target.decode("latin-1"), error)
            session.protocol_error(error)
        except (OSError, TimeoutError):
            session.lost()

    @types.coroutine
    def _write(self, conn: Any, exchange: _Exchange, order: tuple[Any, ...]) -> Any:
        """Carry out a write order for the app: ``("write", data, done)``,
        or ``("finish", rest, done)`` where ``rest`` is what is left of a
        ``sendall`` the app's task began."""
        kind, what, done = order
        exchange.writing = True
        try:
            yield from (conn.sendall(what, timeout=self.send_timeout) if kind == "write" else what)
        except (OSError, TimeoutError) as exc:
            exchange.disconnected = True
            if not done.done():
                done.set_exception(ClientDisconnected(f"the client went away: {exc}"))
            exchange.wake_app()
            return
        finally:
            exchange.writing = False
        if not done.done():
            done.set_result(None)

    @types.coroutine
    def _read_body(self, conn: Any, parser: _Parser, exchange: _Exchange) -> Any:
        request = exchange.request
        try:
            if request.expects_continue and not exchange.started:
                request.expects_continue = False
                exchange.writing = True
                try:
                    yield from conn.sendall(_CONTINUE, timeout=self.send_timeout)
                finally:
                    exchange.writing = False
            while not request.body and not request.complete:
                data = yield from conn.recv(65536, timeout=self.read_timeout)
                if not data:
                    exchange.disconnected = True
                    break
                parser.feed(data)
        except (OSError, TimeoutError, HttpError):
            exchange.disconnected = True
        exchange.read_ordered = False
        exchange.wake_app()


class _Lifespan:
    """The app's lifespan task: startup before listening, shutdown after
    the last connection."""

    def __init__(self, server: AsgiServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.answer: asyncio.Future[dict[str, Any]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.running = False

    async def _receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(message)

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.server.state}
        await self.server.app(scope, self._receive, self._send)

    @types.coroutine
    def _ask(self, message_type: str) -> Any:
        """Send ``message_type``; the app's answer, or None if the app
        ended (or raised) without answering."""
        self.answer = self.loop.create_future()
        self.inbox.put_nowait({"type": message_type})
        assert self.task is not None
        either = asyncio.ensure_future(asyncio.wait([self.answer, self.task],
                                                    return_when=asyncio.FIRST_COMPLETED))
        yield from _wait_done(either)
        return self.answer.result() if self.answer.done() else None

    @types.coroutine
    def startup(self) -> Any:
        server = self.server
        self.task = self.loop.create_task(self._main())
        # Its failure is reported here (startup) or in shutdown, never as
        # asyncio's "exception was never retrieved".
        self.task.add_done_callback(lambda task: task.cancelled() or task.exception())
        answer = yield from self._ask("lifespan.startup")
        kind = answer and answer.get("type")
        if kind == "lifespan.startup.complete":
            self.running = True
            return
        if kind == "lifespan.startup.failed":
            # Frameworks put a whole traceback in the message: its last line says what failed.
            lines = str(answer.get("message", "")).strip().splitlines()
            raise LifespanFailed(f"ASGI app {server.app_name} failed its startup: {lines[-1] if lines else '?'}")
        failure = self.task.exception() if self.task.done() and not self.task.cancelled() else None
        if server.lifespan == "on" or kind is not None:
            raise LifespanFailed(f"ASGI app {server.app_name} did not complete the lifespan startup"
                                 + (f": {failure!r}" if failure is not None else ""))
        # lifespan="auto": an app without lifespan support raises or returns.
        log.info("ASGI app %s does not support the lifespan protocol%s", server.app_name,
                 f" ({failure!r})" if failure is not None else "")

    @types.coroutine
    def shutdown(self) -> Any:
        self.running = False
        answer = yield from self._ask("lifespan.shutdown")
        kind = answer and answer.get("type")
        if kind == "lifespan.shutdown.failed":
            log.error("ASGI app %s failed its shutdown: %s", self.server.app_name, answer.get("message", ""))
        elif kind != "lifespan.shutdown.complete":
            log.error("ASGI app %s did not complete the lifespan shutdown", self.server.app_name)
        if self.task is not None and self.task.done() and not self.task.cancelled() and self.task.exception():
            log.error("ASGI app %s raised in its lifespan: %r", self.server.app_name, self.task.exception())


@types.coroutine
def _wait_done(fut: Any) -> Any:
    """Wait (in a threadlib thread) for an asyncio future to be done."""
    while not fut.done():
        yield fut


@types.coroutine
def _wait_cancelled(task: Any) -> Any:
    """Wait for a cancelled task to end, even if this thread is cancelled
    again meanwhile."""
    while not task.done():
        try:
            yield task
        except ThreadCancelled:
            task.cancel()
