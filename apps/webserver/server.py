"""The web server proper: a listener, an accept loop, and one thread per
connection that reads pipelined requests and writes their responses in order.

The per-request path is kept short on purpose: one recv per pipelined
batch, one httptools feed, one cached lookup (a ``stat`` at most once a
second per file), and one ``sendall`` of all the batch's headers and small
bodies; larger bodies follow with ``sendfile`` (``io="sendfile"``) or with
AIO reads through ``threadlib.io.fileio`` (``io="aio"``). Slow clients meet
three clocks: the header-read deadline, the keep-alive idle timeout and the
send timeout.

The server takes a *network* object (any ``threadlib.net.Network``:
``sockio.kernel`` by default, or the user-level stack's ``UserNetwork``)
and never names a socket module itself. With a TLS context it serves
HTTPS (``threadlib.io.tls``) on that network, alone or next to plain HTTP
on a second port; each connection's handshake runs in its own thread,
bounded by ``handshake_timeout``, and a failed one is logged once with the
peer and the reason. Given a WSGI application (``wsgi=app``) it serves that
instead of files: each connection is then a green thread running
``wsgi.serve_connection``, under the same limits, clocks and shutdown. It must
never let one connection's failure reach another, never send a response
out of order, and never drop a response in flight when asked to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import types
from typing import Any, Callable

import threadlib
from threadlib import ThreadCancelled
from threadlib.io import sockio, tls
from threadlib.net import Network

from .files import (
    FileCache,
    FileEntry,
    RangeNotSatisfiable,
    Redirect,
    byte_range,
    not_modified,
    range_applies,
)
from .connections import ConnectionState, sweep_idle
from .http import (
    CONTINUE,
    STATUS_LINES,
    Clock,
    HttpError,
    Limits,
    Request,
    RequestReader,
    error_response,
)

log = logging.getLogger("apps.webserver")

SAMPLE_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_site")
IO_MODES = ("sendfile", "aio")

_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE_10 = b"Connection: keep-alive\r\n"
_STATUS_200 = STATUS_LINES[200]
_STATUS_206 = STATUS_LINES[206]
_STATUS_304 = STATUS_LINES[304]
_GET = b"GET"
_HEAD = b"HEAD"
_AIO_CHUNK = 256 * 1024
_LINGER_SECONDS = 2.0
# After a stop, how long an idle keep-alive connection may still begin a
# request (answered with "Connection: close") before it is closed.  A client
# such as wrk sends its next request the moment a response ends; closing
# its connection at once would reset that request in flight, a failure the
# stop itself caused.  Long against a round trip, short against a shutdown.
_DRAIN_IDLE_GRACE = 1.0
_BATCH_BYTES = 256 * 1024  # responses of one pipelined batch held before sending
_LINGER_BYTES = 1 << 20
_O_READ = os.O_RDONLY | os.O_CLOEXEC


class _Abort(Exception):
    """The response cannot be completed (its headers are already out):
    the connection must close."""


class WebServer:
    """A static-file HTTP/1.1 server for one scheduler (one process), or
    with ``wsgi=app`` a server of that WSGI application (PEP 3333, one
    green thread per connection, ``root`` unused).

    ``yield from server.serve((host, port), shutdown)`` listens, serves
    until ``shutdown`` (a threadlib Event) is set, then stops accepting,
    closes idle keep-alive connections, lets responses in flight finish
    (up to ``drain_timeout``) and returns.
    """

    def __init__(
        self,
        root: str = SAMPLE_SITE,
        *,
        io: str = "sendfile",
        network: Network | None = None,
        limits: Limits | None = None,
        header_timeout: float = 10.0,
        keepalive_timeout: float = 15.0,
        send_timeout: float = 30.0,
        drain_timeout: float = 10.0,
        cache_validity: float = 1.0,
        cache_max_body: int = 65536,
        access_log: Any = None,
        tls_context: ssl.SSLContext | None = None,
        handshake_timeout: float = tls.DEFAULT_HANDSHAKE_TIMEOUT,
        wsgi: Callable[..., Any] | None = None,
        wsgi_multiprocess: bool = False,
    ) -> None:
        if io not in IO_MODES:
            raise ValueError(f"io must be one of {', '.join(IO_MODES)}, not {io!r}")
        self.io = io
        self._fileio = None
        if io == "aio":
            from threadlib.io import fileio  # noqa: F401  (deferred: only the aio path needs it)

            self._fileio = fileio
        self.network: Network = network if network is not None else sockio.kernel
        self.wsgi = wsgi  # the WSGI application served instead of files, or None
        self.wsgi_multiprocess = wsgi_multiprocess  # its environ's wsgi.multiprocess (--workers > 1)
        if limits is None:
            if wsgi is not None:
                from .wsgi import default_limits  # deferred: a file server needs no greenlets

                limits = default_limits()
            else:
                limits = Limits()
        self.limits = limits
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self.drain_timeout = drain_timeout
        self.cache = FileCache(root, validity=cache_validity, max_body=cache_max_body)
        self.cache_max_body = cache_max_body
        self.clock = Clock()
        self.access_log = access_log  # a writable text file, or None
        self.tls_context = tls_context  # HTTPS with this server-side context
        self.handshake_timeout = handshake_timeout
        self.handshake_failures = 0
        self.address: Any = None  # the first listener's (HTTPS unless tls_address is given)
        self.tls_address: Any = None  # the HTTPS listener's, when there is one
        self.requests = 0  # responses sent (or begun), all statuses
        self.connections = 0  # accepted so far
        # A dict as an ordered set: the sweeper and shutdown visit the
        # connections in the order they came, not in the order of their
        # addresses, so a simulated run closes them alike every time.
        self._open: dict[ConnectionState, None] = {}
        self._stopping = False
        self._grace_end = 0.0  # set by the stop: until when idle connections may begin a last request

    # -- life cycle -------------------------------------------------------------
    @types.coroutine
    def serve(
        self,
        address: tuple[str, int],
        shutdown: threadlib.Event | None = None,
        reuse_port: bool = False,
        ready: Callable[[Any], None] | None = None,
        tls_address: tuple[str, int] | None = None,
        backlog: int = 1024,
    ) -> Any:
        """Serve until ``shutdown`` is set. With a ``tls_context``,
        ``address`` serves HTTPS; or, given ``tls_address`` too, HTTP on
        ``address`` and HTTPS on ``tls_address``. ``ready(address)`` is
        called once every listener is open (``self.tls_address`` then
        holds the HTTPS one's). ``backlog`` is each listener's (on the
        user-level stack, its SYN backlog too)."""
        if tls_address is not None and self.tls_context is None:
            raise ValueError("tls_address needs a WebServer made with a tls_context")
        self.clock.bind(threadlib.current_scheduler())
        listeners = []
        try:
            if tls_address is None:
                listeners.append(self._secure((yield from self.network.listen(address, backlog, reuse_port=reuse_port))))
            else:
                listeners.append((yield from self.network.listen(address, backlog, reuse_port=reuse_port)))
                listeners.append(self._secure((yield from self.network.listen(tls_address, backlog, reuse_port=reuse_port))))
        except BaseException:
            for listener in listeners:
                listener.close()
            raise
        self.address = listeners[0].address
        if self.tls_context is not None:
            self.tls_address = listeners[-1].address
        if ready is not None:
            ready(self.address)
        acceptors = []
        for listener in listeners:
            acceptors.append((yield from threadlib.spawn(self._accept_loop(listener), name="http-accept")))
        sweeper = yield from threadlib.spawn(sweep_idle(self._open, self.keepalive_timeout, self.header_timeout),
                                             name="http-idle-sweeper")
        try:
            yield from (shutdown or threadlib.Event()).wait()
        finally:
            for acceptor in acceptors:
                yield from acceptor.cancel()
            yield from sweeper.cancel()
            for listener in listeners:
                listener.close()
            yield from self._drain()
            self._flush_log()

    def _secure(self, listener: Any) -> Any:
        """HTTPS on ``listener`` if this server has a TLS context. HTTP
        frames its own messages, so a client's close without close_notify
        is a normal end (``ragged_eof``), as for every HTTPS server."""
        if self.tls_context is None:
            return listener
        return tls.TlsListener(listener, self.tls_context, handshake_timeout=self.handshake_timeout,
                               ragged_eof=True)

    @types.coroutine
    def _accept_loop(self, listener: Any) -> Any:
        spawn = threadlib.spawn
        if self.wsgi is not None:
            yield from self._accept_loop_wsgi(listener)
        while True:
            conn, peer = yield from listener.accept()
            state = ConnectionState()
            self._open[state] = None
            self.connections += 1
            state.thread = yield from spawn(self._connection(conn, peer, state))

    @types.coroutine
    def _accept_loop_wsgi(self, listener: Any) -> Any:
        from threadlib.frontends import green

        from .wsgi import serve_connection

        spawn, thread = threadlib.spawn, green.thread
        while True:
            conn, peer = yield from listener.accept()
            state = ConnectionState()
            self._open[state] = None
            self.connections += 1
            state.thread = yield from spawn(thread(serve_connection, self, conn, peer, state))

    @types.coroutine
    def _drain(self) -> Any:
        """Stop: idle connections get _DRAIN_IDLE_GRACE to begin one last
        request, then close; busy ones get drain_timeout.  Every response
        begun after the stop says "Connection: close", and its connection
        closes once it is sent (RFC 9112 §9.6)."""
        self._stopping = True
        self._grace_end = threadlib.now() + min(_DRAIN_IDLE_GRACE, self.drain_timeout)
        while self._grace_left() > 0 and any(s.waiting_idle for s in self._open):
            yield from threadlib.sleep(min(0.05, self._grace_left()))
        for state in list(self._open):
            if state.waiting_idle:
                yield from state.thread.cancel()  # type: ignore[union-attr]
        busy = [s.thread for s in self._open if s.thread is not None and not s.thread.done]
        if not busy:
            return
        try:
            with threadlib.timeout(self.drain_timeout):
                for t in busy:
                    yield from t.wait()
        except TimeoutError:
            log.warning("%d connections still busy after %.1fs; closing them", len(self._open), self.drain_timeout)
            for t in busy:
                if not t.done:
                    yield from t.cancel()

    def _grace_left(self) -> float:
        """After the stop: the seconds left for a kept-alive connection to
        begin its last request (0 once the grace is over)."""
        return max(0.0, self._grace_end - threadlib.now())

    # -- one connection -------------------------------------------------------
    @types.coroutine
    def _connection(self, conn: Any, peer: Any, state: ConnectionState) -> Any:
        reader = RequestReader(self.limits)
        complete = reader.complete
        feed = reader.feed
        recv = conn.recv
        sendall = conn.sendall
        send_timeout = self.send_timeout
        monotonic = threadlib.current_scheduler().clock.now  # the scheduler's clock, bound once per connection
        deadline = None
        try:
            if isinstance(conn, tls.TlsStream):
                try:
                    yield from conn.do_handshake()
                except (OSError, TimeoutError) as exc:
                    # A bad client (plain HTTP, garbage, a stall, a refused
                    # certificate): one line, then this connection closes.
                    self.handshake_failures += 1
                    log.info("TLS handshake with %s failed: %s", _peer_text(peer), tls.describe_error(exc))
                    return
            while True:
                if reader.in_message:
                    # A request has begun: it must be complete by its deadline,
                    # however slowly its bytes trickle in.
                    now = threadlib.now()
                    if deadline is None:
                        deadline = now + self.header_timeout
                    if reader.continue_needed:
                        # The head asked for 100-continue: its body (read and
                        # dropped, within max_body) comes only after this.
                        reader.continue_needed = False
                        yield from sendall(CONTINUE, timeout=send_timeout)
                    try:
                        if now >= deadline:
                            raise TimeoutError
                        data = yield from recv(65536, timeout=deadline - now)
                    except TimeoutError:
                        yield from self._refuse(conn, peer, None, HttpError(408, "request not received in time"))
                        return
                elif self._stopping:
                    # A response begun before the stop went out without
                    # "Connection: close", so the client may have sent its
                    # next request already: closing now would reset it. The
                    # connection gets what is left of the idle grace to
                    # begin one (answered with "Connection: close").
                    left = self._grace_left()
                    if not left:
                        return
                    try:
                        data = yield from recv(65536, timeout=left)
                    except TimeoutError:
                        return
                else:
                    # Idle between requests: the sweeper closes the
                    # connection after keepalive_timeout (a per-wait timer
                    # would cost every request a heap push and pop).
                    state.idle_since = monotonic()
                    state.idle = True
                    data = yield from recv(65536)
                    state.idle = False
                if not data:
                    return
                error = None
                try:
                    feed(data)
                except HttpError as exc:
                    error = exc
                if complete:
                    deadline = None
                    state.served = True
                    data, keep_open = self._answer_from_memory(peer, complete)
                    if data is None:
                        keep_open = yield from self._answer(conn, peer, complete)
                    else:
                        yield from sendall(data, timeout=send_timeout)
                    if not keep_open:
                        return
                if error is not None:
                    yield from self._refuse(conn, peer, None, error)
                    return
        except (ConnectionError, TimeoutError, _Abort):
            pass  # the client went away, stalled, or a file changed mid-body
        except ThreadCancelled:
            raise
        except OSError as exc:
            log.info("connection from %s: %s", peer, exc)
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            conn.close()
            self._open.pop(state, None)

    @types.coroutine
    def _refuse(self, conn: Any, peer: Any, request: Any, error: HttpError) -> Any:
        self.clock.tick()
        data = error_response(self.clock, error, _CLOSE, request is not None and request.method == _HEAD)
        body_length = len(data) - data.index(b"\r\n\r\n") - 4
        self.requests += 1
        if self.access_log is not None:
            self._log(peer, request.request_line if request else "-", error.status, body_length)
            self._flush_log()
        try:
            yield from conn.sendall(data, timeout=self.send_timeout)
            conn.shutdown()
            # Lingering close: closing with unread input (a body we refused,
            # pipelined requests) would send a RST that can destroy the
            # response before the client reads it. Drain for a short while.
            with threadlib.timeout(_LINGER_SECONDS):
                drained = 0
                while drained < _LINGER_BYTES:
                    chunk = yield from conn.recv(65536)
                    if not chunk:
                        break
                    drained += len(chunk)
        except (OSError, TimeoutError):
            pass

    def _answer_from_memory(self, peer: Any, complete: list) -> tuple[bytes | None, bool]:
        """(all the batch's responses as one bytes, keep open?) when none
        needs file IO -- the common case, with no generator to create --
        else (None, False) and nothing is consumed."""
        now = self.clock.tick()
        if len(complete) == 1:
            request = complete[0]
            data, status, body_length, plan = self._respond(request, now)
            if plan is not None:
                return None, False
            complete.clear()
            self.requests += 1
            if self.access_log is not None:
                self._log(peer, request.request_line, status, body_length)
                self._flush_log()
            return data, request.keep_alive and request.error is None and not self._stopping
        answers = []
        total = 0
        for request in complete:
            answer = self._respond(request, now)
            total += len(answer[0])
            if answer[3] is not None or total > _BATCH_BYTES:
                return None, False  # the generator path sends it in slices
            answers.append(answer)
        out = []
        keep_open = True
        for request, (data, status, body_length, _) in zip(complete, answers):
            out.append(data)
            self.requests += 1
            if self.access_log is not None:
                self._log(peer, request.request_line, status, body_length)
            if not request.keep_alive or request.error is not None or self._stopping:
                keep_open = False
                break
        complete.clear()
        self._flush_log()
        return b"".join(out), keep_open

    @types.coroutine
    def _answer(self, conn: Any, peer: Any, complete: list) -> Any:
        """Respond to every complete request in order; False if the
        connection must close afterwards."""
        now = self.clock.tick()
        logging_on = self.access_log is not None
        out: list[bytes] = []
        pending = 0
        keep_open = True
        try:
            for request in complete:
                data, status, body_length, plan = self._respond(request, now)
                self.requests += 1
                if plan is None:
                    out.append(data)
                    pending += len(data)
                    if pending > _BATCH_BYTES:
                        # A long pipelined batch is answered in slices, so a
                        # 64 KiB read cannot make the server hold megabytes.
                        yield from self._flush(conn, out)
                        out = []
                        pending = 0
                else:
                    body_length = yield from self._send_body(conn, out, data, plan, request, now)
                    out = []
                if logging_on:
                    self._log(peer, request.request_line, status, body_length)
                if not request.keep_alive or request.error is not None or self._stopping:
                    keep_open = False
                    break
            if out:
                yield from conn.sendall(out[0] if len(out) == 1 else b"".join(out), timeout=self.send_timeout)
        finally:
            complete.clear()
            if logging_on:
                self._flush_log()
        return keep_open

    def _connection_header(self, request: Request) -> bytes:
        if request.keep_alive and not self._stopping and request.error is None:
            return _KEEP_ALIVE_10 if request.version == "1.0" else b""
        return _CLOSE

    def _respond(self, request: Request, now: float) -> tuple[bytes, int, int, Any]:
        """(bytes to send, status, body length, plan): plan is None when the
        bytes are the whole response, else (entry, first, count) of a body
        still to come from the file."""
        connection = self._connection_header(request)
        method = request.method
        error = request.error
        if error is None and method != _GET and method != _HEAD:
            error = HttpError(405, f"method {method.decode('latin-1')} not allowed; use GET or HEAD",
                              close=False, headers=b"Allow: GET, HEAD\r\n")
        if error is None:
            try:
                entry = self.cache.lookup(request.target, now)
            except HttpError as exc:
                error = exc
            except Redirect as moved:
                error = HttpError(301, "moved: the directory's address ends in '/'", close=False,
                                  headers=b"Location: %s\r\n" % moved.location)
        if error is not None:
            if error.close:
                connection = _CLOSE
            return self._error(error, connection, method == _HEAD)
        return self._respond_with(entry, request, connection, method == _HEAD)

    def _error(self, error: HttpError, connection: bytes, head_only: bool = False) -> tuple[bytes, int, int, None]:
        data = error_response(self.clock, error, connection, head_only)
        return data, error.status, 0 if head_only else len(data) - data.index(b"\r\n\r\n") - 4, None

    def _respond_with(self, entry: FileEntry, request: Request, connection: bytes, head_only: bool) -> tuple:
        date_block = self.clock.date_block
        conditions = request.conditions
        size = entry.size
        if conditions is None:
            status, first, count = 200, 0, size
            head = b"".join((_STATUS_200, date_block, entry.headers, connection, b"\r\n"))
        else:
            if not_modified(entry, conditions):
                head = b"".join((_STATUS_304, date_block, entry.not_modified_headers(), connection, b"\r\n"))
                return head, 304, 0, None
            status, first, count = 200, 0, size
            head = None
            spec = conditions.get(b"range")
            if spec is not None and not head_only and range_applies(entry, conditions):
                try:
                    span = byte_range(spec, size)
                except RangeNotSatisfiable:
                    error = HttpError(416, f"range {spec.decode('latin-1')} is outside the file's {size} bytes",
                                      close=False, headers=b"Content-Range: bytes */%d\r\n" % size)
                    return self._error(error, connection)
                if span is not None:
                    status, first, count = 206, span[0], span[1] - span[0] + 1
                    head = b"".join((_STATUS_206, date_block, entry.part_headers(*span), connection, b"\r\n"))
            if head is None:
                head = b"".join((_STATUS_200, date_block, entry.headers, connection, b"\r\n"))
        if head_only or count == 0:
            return head, status, 0, None
        body = entry.body
        if body is not None:
            return head + (body if count == size else body[first:first + count]), status, count, None
        return head, status, count, (entry, first, count)

    @types.coroutine
    def _flush(self, conn: Any, out: list) -> Any:
        yield from conn.sendall(out[0] if len(out) == 1 else b"".join(out), timeout=self.send_timeout)

    @types.coroutine
    def _flush_more(self, conn: Any, out: list) -> Any:
        """Like _flush, for headers a body will follow at once: on a kernel
        socket they go with MSG_MORE, so headers and the first body bytes
        leave in one segment instead of two (nginx's tcp_nopush)."""
        sock = getattr(conn, "socket", None)
        if not isinstance(sock, socket.socket):
            yield from self._flush(conn, out)
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        try:
            sent = sock.send(data, socket.MSG_MORE)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            yield from conn.sendall(memoryview(data)[sent:], timeout=self.send_timeout)

    @types.coroutine
    def _send_body(self, conn: Any, out: list, head: bytes, plan: tuple, request: Request, now: float) -> Any:
        """Send what is queued in ``out``, then ``head`` and the body of
        ``plan`` from the file; returns the body bytes sent."""
        entry, first, count = plan
        if self.io == "aio":
            return (yield from self._send_body_aio(conn, out, head, entry, first, count, request, now))
        try:
            fd = os.open(entry.path, _O_READ)
        except OSError:
            # Gone or unreadable since the lookup: answer for what is there now.
            return (yield from self._answer_again(conn, out, request, now))
        try:
            st = os.fstat(fd)
            if not entry.same_file(st):
                # Changed between the cached stat and the open: describe the
                # file actually open, so headers and body agree.
                entry = self.cache.replace(request.target, entry, st, now)
                head, _, length, plan = self._respond_with(entry, request, self._connection_header(request),
                                                           request.method == _HEAD)
                if plan is None:
                    out.append(head)
                    yield from self._flush(conn, out)
                    return length
                _, first, count = plan
            if entry.size <= self.cache_max_body:
                body = os.pread(fd, entry.size, 0)
                if len(body) == entry.size:
                    return (yield from self._send_read_body(conn, out, head, entry, body, first, count))
            out.append(head)
            yield from self._flush_more(conn, out)
            sent = yield from conn.sendfile(fd, first, count, timeout=self.send_timeout)
            if sent < count:
                raise _Abort()  # the file shrank under us; the framing is lost
            return sent
        finally:
            os.close(fd)

    @types.coroutine
    def _send_read_body(self, conn: Any, out: list, head: bytes, entry: FileEntry, body: bytes,
                        first: int, count: int) -> Any:
        """Keep a small file's whole ``body``, just read by either I/O path,
        on its cache entry (later requests are then answered from memory),
        and send the asked-for part with ``head`` after what is queued in
        ``out``; returns the body bytes sent."""
        entry.body = body
        out.append(head + body[first:first + count])
        yield from self._flush(conn, out)
        return count

    @types.coroutine
    def _answer_again(self, conn: Any, out: list, request: Request, now: float) -> Any:
        """The file vanished or changed between lookup and open: answer from
        a fresh lookup, or give up on the connection if it keeps changing."""
        self.cache.invalidate(request.target)
        data, _, length, plan = self._respond(request, now)
        if plan is not None:
            raise _Abort()
        out.append(data)
        yield from self._flush(conn, out)
        return length

    @types.coroutine
    def _send_body_aio(self, conn: Any, out: list, head: bytes, entry: FileEntry, first: int, count: int,
                       request: Request, now: float) -> Any:
        fileio = self._fileio
        try:
            f = yield from fileio.open(entry.path)
        except OSError:
            return (yield from self._answer_again(conn, out, request, now))
        try:
            if f.size != entry.size:
                return (yield from self._answer_again(conn, out, request, now))
            if entry.size <= self.cache_max_body:
                body = yield from f.pread(entry.size, 0)
                if len(body) < entry.size:
                    raise _Abort()  # the file shrank under us
                body = body[:entry.size]  # never more than asked for, whatever the reader returns
                return (yield from self._send_read_body(conn, out, head, entry, body, first, count))
            out.append(head)
            yield from self._flush_more(conn, out)
            offset, end = first, first + count
            while offset < end:
                # A view of the pooled AIO buffer: sent without a copy.
                want = min(_AIO_CHUNK, end - offset)
                view = yield from f.pread_view(want, offset)
                with view as chunk:
                    if not len(chunk):
                        raise _Abort()  # the file shrank under us
                    chunk = chunk[:want]
                    yield from conn.sendall(chunk, timeout=self.send_timeout)
                    offset += len(chunk)
            return count
        finally:
            yield from f.close()

    # -- access log -----------------------------------------------------------
    def _log(self, peer: Any, request_line: str, status: int, sent: int) -> None:
        host = peer[0] if isinstance(peer, tuple) else "-"
        self.access_log.write(f'{host} - - {self.clock.log_time} "{request_line}" {status} {sent}\n')

    def _flush_log(self) -> None:
        if self.access_log is not None:
            try:
                self.access_log.flush()
            except (OSError, ValueError):
                pass


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def user_network(queues: int = 1, **options: Any) -> Any:
    """The user-level TCP stack's network.  Without arguments it is the
    process's default network (from the TL_* environment); ``options``
    override ``open_network`` arguments of that environment (tun, netns,
    ...), and ``queues`` > 1 gives a multi-queue handle whose
    ``for_queue(i)`` is worker i's network."""
    from threadlib.io import (
        tcpsockio,  # deferred: only --stack user needs TUN and netlink
    )

    if queues > 1 or options:
        settings = tcpsockio.env_network_options()
        settings.update(options)
        return tcpsockio.open_network(queues=queues, **settings)
    return tcpsockio.network()


class BackgroundServer:
    """A WebServer on its own scheduler in a background OS thread, for
    embedding in a program that is not a threadlib thread (and for tests).

        with BackgroundServer(WebServer(root)) as address: ...

    ``stop()`` asks it to shut down exactly as SIGTERM would (finish what
    is in flight) and waits for the OS thread to end.
    """

    def __init__(self, server: WebServer, address: tuple[str, int] = ("127.0.0.1", 0),
                 tls_address: tuple[str, int] | None = None) -> None:
        self.server = server
        self.bind = address
        self.tls_bind = tls_address
        self.address: Any = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._wake_here, self._wake_there = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="webserver", daemon=True)

    def start(self) -> tuple[str, int]:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the web server did not start within 30 s")
        if self.error is not None:
            raise RuntimeError(f"the web server failed to start: {self.error!r}") from self.error
        return self.address

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._wake_here.send(b"x")
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the web server did not stop within {timeout} s")
        self._wake_here.close()

    def __enter__(self) -> tuple[str, int]:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        def ready(address: Any) -> None:
            self.address = address
            self._ready.set()

        @types.coroutine
        def main() -> Any:
            shutdown = threadlib.Event()
            wake = sockio.Stream(self._wake_there)

            @types.coroutine
            def wait_for_stop() -> Any:
                yield from wake.recv(1)
                shutdown.set()

            waiter = yield from threadlib.spawn(wait_for_stop())
            try:
                yield from self.server.serve(self.bind, shutdown, ready=ready, tls_address=self.tls_bind)
            finally:
                yield from waiter.cancel()
                wake.close()

        try:
            threadlib.run(main())
        except BaseException as exc:
            self.error = exc
            log.exception("background web server failed")
        finally:
            self._ready.set()
