"""WSGI (PEP 3333) on the web server core, one green thread per connection.

A ``WebServer`` made with ``wsgi=app`` hands each accepted connection to
``serve_connection``, run as a green thread (``threadlib.frontends.green``):
plain blocking code, so the application may block too -- on the request
body, on threadlib calls made through ``green.call``/``green.wrap`` --
without monkey-patching anything, while other connections go on. Requests
of one connection run in turn (their responses must leave in order), each
in a fresh copy of the connection's ``contextvars`` context.

The request body is never held whole: the head is handed over as soon as
it is complete (``StreamingRequestReader``) and ``wsgi.input`` receives and
parses the next piece only when the application asks for more, so what is
buffered is one receive at most. A body the application leaves unread is
drained (up to ``_DRAIN_BYTES``) or the connection closes. ``Expect:
100-continue`` is answered when the application first reads the body.

Responses: the head leaves with the first non-empty block (PEP 3333), framed
by the application's Content-Length, by one computed for a one-block body,
by chunked coding (HTTP/1.1) or by closing (HTTP/1.0). ``wsgi.file_wrapper``
around a regular file is sent with sendfile(2).

An application's mistakes (it raises, returns no iterable, calls
``start_response`` twice without ``exc_info``, writes after finishing, sends
bad headers or the wrong number of bytes) never reach another connection:
each gets one log line naming the mistake and a 500, or a closed connection
when the head has already gone. This module must never read a body the
application did not ask for beyond the drain bound, and never send a
response the client cannot frame.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import stat
import sys
import types
from typing import Any, Callable, Iterator
from urllib.parse import unquote_to_bytes

import threadlib
from threadlib import ThreadCancelled
from threadlib.frontends import green
from threadlib.io import tls

from .http import CONTINUE, STATUS_LINES, HttpError, Limits, RequestHead, StreamingRequestReader
from .loading import AppNotFound
from .loading import load_app as _load_app

log = logging.getLogger("apps.webserver")

WSGI_MAX_BODY = 1 << 30  # the default body limit with an application: bodies stream, so it costs no memory
_RECV_BYTES = 65536
_DRAIN_BYTES = 1 << 20  # an unread body beyond this closes the connection instead
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "trailers", "transfer-encoding", "upgrade"))
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_STATUS = re.compile(r"([1-9][0-9][0-9]) [^\r\n\x00]*\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE_10 = b"Connection: keep-alive\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_INTERNAL_ERROR = HttpError(500, "the application failed; the server's log says how", close=False)


class WsgiAppError(Exception):
    """The application broke PEP 3333 (raised into its code where it did,
    and named in the log line)."""


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file-like object in ``block_size``
    pieces; the server sends a regular file's wrapper with sendfile(2)
    instead of iterating it."""

    def __init__(self, filelike: Any, block_size: int = 65536) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read, size = self.filelike.read, self.block_size
        while block := read(size):
            yield block


class WsgiInput:
    """``wsgi.input``: the request body, received and parsed as it is read.

    ``read``, ``readline``, ``readlines`` and iteration behave as on a
    binary file (``read(n)`` returns ``n`` bytes unless the body ends
    first). A body the client breaks raises HttpError (its ``status`` says
    what: 400 malformed, 413 too large, 408 too slow); a client that goes
    away raises ConnectionError.
    """

    __slots__ = ("_link", "_head", "_rest", "received")

    def __init__(self, link: _Link, head: RequestHead) -> None:
        self._link = link
        self._head = head
        self._rest = b""  # the unread end of a piece
        self.received = 0  # body bytes handed to the application

    def _next_piece(self) -> bytes:
        head = self._head
        body = head.body
        while not body:
            if head.body_done:
                return b""
            self._link.receive_body(head)
        piece = body.pop(0)
        self.received += len(piece)
        return piece

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if negative or None)."""
        if size is None or size < 0:
            parts = [self._rest]
            self._rest = b""
            while piece := self._next_piece():
                parts.append(piece)
            return b"".join(parts)
        parts = []
        need = size
        while need > 0:
            piece = self._rest or self._next_piece()
            if not piece:
                break
            if len(piece) > need:
                piece, self._rest = piece[:need], piece[need:]
            else:
                self._rest = b""
            parts.append(piece)
            need -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """One line, with its b"\\n" (at most ``size`` bytes if given)."""
        limit = -1 if size is None else size
        parts = []
        got = 0
        while limit < 0 or got < limit:
            piece = self._rest or self._next_piece()
            if not piece:
                break
            end = len(piece) if limit < 0 else min(len(piece), limit - got)
            newline = piece.find(b"\n", 0, end)
            cut = newline + 1 if newline >= 0 else end
            parts.append(piece[:cut])
            self._rest = piece[cut:]
            got += cut
            if newline >= 0:
                break
        return b"".join(parts)

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The remaining lines (stopping once ``hint`` bytes are read, if positive)."""
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class _Link:
    """One connection served by a WSGI application (its green thread's state)."""

    def __init__(self, server: Any, conn: Any, peer: Any, state: Any) -> None:
        self.server = server
        self.app = server.wsgi
        self.conn = conn
        self.peer = peer
        self.state = state
        self.reader = StreamingRequestReader(server.limits)
        self.later_error: HttpError | None = None  # refused after the requests already read
        self.broken = False  # a send or receive failed: nothing more can be said on this connection
        self.base_environ = _base_environ(server, conn, peer)

    # -- the connection's loop ------------------------------------------------
    def run(self) -> None:
        conn, server = self.conn, self.server
        try:
            if isinstance(conn, tls.TlsStream):
                try:
                    green.call(conn.do_handshake())
                except (OSError, TimeoutError) as exc:
                    server.handshake_failures += 1
                    log.info("TLS handshake with %s failed: %s", self.peer, tls.describe_error(exc))
                    return
            while True:
                head = self.next_head()
                if head is None or not _Exchange(self, head).run():
                    return
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stalled
        except ThreadCancelled:
            raise
        except OSError as exc:
            log.info("connection from %s: %s", self.peer, exc)
        except Exception:
            log.exception("connection from %s failed", self.peer)
        finally:
            conn.close()
            server._open.pop(self.state, None)

    def next_head(self) -> RequestHead | None:
        """The next request whose head is complete, or None once the
        connection is done (closed, refused, timed out, stopping)."""
        heads = self.reader.complete
        state, server = self.state, self.server
        deadline = None
        while not heads:
            if self.later_error is not None:
                self.refuse(None, self.later_error)
                return None
            if self.reader.in_message:
                now = threadlib.now()
                if deadline is None:
                    deadline = now + server.header_timeout
                try:
                    if now >= deadline:
                        raise TimeoutError
                    data = green.call(self.conn.recv(_RECV_BYTES, timeout=deadline - now))
                except TimeoutError:
                    self.refuse(None, HttpError(408, "request not received in time"))
                    return None
            elif server._stopping:
                # A response begun before the stop lacked "Connection:
                # close": the client gets what is left of the idle grace to
                # begin one more request, as in the file server's loop.
                left = server._grace_left()
                if not left:
                    return None
                try:
                    data = green.call(self.conn.recv(_RECV_BYTES, timeout=left))
                except TimeoutError:
                    return None
            else:
                # Idle between requests: the server's sweeper ends it after
                # keepalive_timeout, as for the file server.
                state.idle_since = threadlib.now()
                state.idle = True
                data = green.call(self.conn.recv(_RECV_BYTES))
                state.idle = False
            if not data:
                return None
            try:
                self.reader.feed(data)
            except HttpError as exc:
                self.place_error(exc, None)
        state.served = True
        head: RequestHead = heads.pop(0)  # type: ignore[assignment]
        return head

    def receive_body(self, head: RequestHead) -> None:
        """Receive and parse one more piece of ``head``'s body."""
        if head.body_error is not None:
            raise head.body_error
        if self.broken:
            raise ConnectionError("the connection already failed")
        if head.expect_continue:
            head.expect_continue = False
            self.sendall(CONTINUE)
        try:
            data = green.call(self.conn.recv(_RECV_BYTES, timeout=self.server.header_timeout))
        except TimeoutError:
            head.body_error = HttpError(408, f"no request body bytes for {self.server.header_timeout:g} s")
            raise head.body_error from None
        except OSError:
            self.broken = True
            raise
        if not data:
            self.broken = True
            raise ConnectionError("the client closed the connection before the end of its request body")
        try:
            self.reader.feed(data)
        except HttpError as exc:
            self.place_error(exc, head)
            if head.body_error is not None:
                raise

    def place_error(self, error: HttpError, current: RequestHead | None) -> None:
        """Give a parse error to the request it belongs to: the body being
        read (``current``'s), a queued request's body, or the next head."""
        queued = self.reader.complete
        if current is not None and not current.body_done:
            current.body_error = error
        elif queued and not queued[-1].body_done:  # type: ignore[attr-defined]
            queued[-1].body_error = error  # type: ignore[attr-defined]
        else:
            self.later_error = error  # answered after the requests read before it

    def sendall(self, data: bytes | memoryview) -> None:
        """Send ``data`` within the server's send_timeout."""
        try:
            green.call(self.conn.sendall(data, timeout=self.server.send_timeout))
        except (OSError, TimeoutError):
            self.broken = True
            raise

    def refuse(self, head: RequestHead | None, error: HttpError) -> None:
        """Answer ``error`` and close (lingering, as the file server does)."""
        if not self.broken:
            green.call(self.server._refuse(self.conn, self.peer, head, error))


class _Exchange:
    """One request and its response."""

    __slots__ = ("link", "head", "status", "headers", "head_sent", "length", "chunked", "sent", "finished",
                 "close_after", "no_body", "input", "log_status")

    def __init__(self, link: _Link, head: RequestHead) -> None:
        self.link = link
        self.head = head
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.length: int | None = None  # the body's Content-Length, when the head gave one
        self.chunked = False
        self.sent = 0  # body bytes sent
        self.finished = False
        self.close_after = False
        self.no_body = head.method == b"HEAD"
        self.input = WsgiInput(link, head)
        self.log_status = 0

    def run(self) -> bool:
        """Serve the request; True if the connection may carry another."""
        link, head, server = self.link, self.head, self.link.server
        if head.error is not None:
            link.refuse(head, head.error)
            return False
        environ = self.environ()
        result: Any = None
        try:
            try:
                result = contextvars.copy_context().run(link.app, environ, self.start_response)
                self.respond(result)
            finally:
                self.finished = True
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            self.failed(exc)
            return False
        server.requests += 1
        if server.access_log is not None:
            server._log(link.peer, head.request_line, self.log_status, self.sent)
            server._flush_log()
        if self.close_after or head.body_error is not None or not head.keep_alive or server._stopping:
            return False
        return self.drain()

    # -- what the application calls ---------------------------------------------
    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        """PEP 3333's start_response."""
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise WsgiAppError("start_response() called a second time without exc_info")
        if type(status) is not str or not _STATUS.match(status) or not status.isascii():
            raise WsgiAppError(f"start_response(): bad status {status!r} (want e.g. '200 OK')")
        if type(headers) is not list:
            raise WsgiAppError(f"start_response(): headers must be a list of (name, value), not {type(headers).__name__}")
        for item in headers:
            if type(item) is not tuple or len(item) != 2 or type(item[0]) is not str or type(item[1]) is not str:
                raise WsgiAppError(f"start_response(): header {item!r} is not a (str, str) tuple")
            name, value = item
            if not _TOKEN.match(name) or _BAD_VALUE.search(value) or not _latin1(value):
                raise WsgiAppError(f"start_response(): header {name!r}: {value!r} cannot be sent")
            if name.lower() in _HOP_BY_HOP:
                raise WsgiAppError(f"start_response(): hop-by-hop header {name!r} is the server's to send")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's write() callable: send ``data`` now."""
        if self.finished:
            error = WsgiAppError("write() called after its response was finished")
            log.error("WSGI app %s: %s (request %r)", _app_name(self.link.app), error, self.head.request_line)
            raise error
        if self.status is None:
            raise WsgiAppError("write() called before start_response()")
        if type(data) is not bytes:
            raise WsgiAppError(f"write() takes bytes, not {type(data).__name__}")
        self.send(data)

    # -- the response -----------------------------------------------------------
    def respond(self, result: Any) -> None:
        try:
            if isinstance(result, (str, bytes)):
                raise TypeError
            blocks = iter(result)
        except TypeError:
            raise WsgiAppError(f"returned {type(result).__name__}, not an iterable of bytes") from None
        if (isinstance(result, FileWrapper) and self.status is not None and not self.head_sent
                and self.send_file(result)):
            return
        try:
            one_block = len(result) == 1  # type: ignore[arg-type]
        except TypeError:
            one_block = False
        for data in blocks:
            if type(data) is not bytes:
                raise WsgiAppError(f"yielded {type(data).__name__}, not bytes")
            if self.status is None:
                raise WsgiAppError("yielded a body before calling start_response()")
            if one_block and not self.head_sent:
                self.send_head(data, complete=True)
            elif data:
                self.send(data)
        if self.status is None:
            raise WsgiAppError("returned without calling start_response()")
        if not self.head_sent:
            self.send_head(b"", complete=True)
        elif self.chunked:
            self.link.sendall(_LAST_CHUNK)
        if self.length is not None and self.sent < self.length and not self.no_body:
            self.close_after = True
            raise WsgiAppError(f"sent {self.sent} body bytes of the {self.length} its Content-Length announced")

    def send(self, data: bytes) -> None:
        """Send one block of the body (the head first, with it)."""
        if not self.head_sent:
            self.send_head(data, complete=False)
            return
        if not data or self.no_body:
            return
        self.sent += len(data)
        if self.length is not None and self.sent > self.length:
            self.close_after = True
            raise WsgiAppError(f"sent more body bytes than the {self.length} its Content-Length announced")
        if self.chunked:
            self.link.sendall(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.link.sendall(data)

    def send_head(self, first: bytes, complete: bool) -> None:
        """Send the head, framing the body; ``first`` is its first block
        (the whole body if ``complete``)."""
        if not first and not complete:
            return  # PEP 3333: the head waits for the first non-empty block
        assert self.status is not None
        code = int(self.status[:3])
        if code < 200:
            raise WsgiAppError(f"status {self.status!r}: 1xx responses are the server's to send")
        head, server = self.head, self.link.server
        out = [b"HTTP/1.1 %b\r\n" % self.status.encode("ascii")]
        names = set()
        length: int | None = None
        for name, value in self.headers:
            lower = name.lower()
            names.add(lower)
            if lower == "content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise WsgiAppError(f"bad Content-Length {value!r}")
                length = int(value)
            out.append(b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        server.clock.tick()
        if "date" not in names and "server" not in names:
            out.insert(1, server.clock.date_block)
        body_allowed = code != 204 and code != 304
        if not body_allowed:
            self.no_body = True
        if length is None and body_allowed:
            if complete:
                out.append(b"Content-Length: %d\r\n" % len(first))
            elif head.method == b"HEAD":
                pass  # the length of a body never produced is unknown; HEAD may omit it
            elif head.version == "1.1":
                out.append(b"Transfer-Encoding: chunked\r\n")
                self.chunked = True
            else:
                self.close_after = True  # HTTP/1.0: the end of the body is the end of the connection
        self.length = length
        if (self.close_after or not head.keep_alive or server._stopping or head.body_error is not None
                or (head.expect_continue and not head.body_done)):
            # (a client still waiting to send its body after a 100 it will
            # not get cannot be read reliably: close)
            out.append(_CLOSE)
            self.close_after = True
        elif head.version == "1.0":
            out.append(_KEEP_ALIVE_10)
        out.append(b"\r\n")
        self.log_status = code
        self.head_sent = True
        if first and not self.no_body:
            if length is not None and len(first) > length:
                self.link.sendall(b"".join(out))
                self.close_after = True
                raise WsgiAppError(f"sent more body bytes than the {length} its Content-Length announced")
            out.append(b"%x\r\n%b\r\n" % (len(first), first) if self.chunked else first)
        self.sent = 0 if self.no_body else len(first)
        self.link.sendall(b"".join(out))

    def send_file(self, wrapper: FileWrapper) -> bool:
        """Send a regular file's wrapper with sendfile(2); False (nothing
        sent) if it wraps something else."""
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            st = os.fstat(fd)
            offset = filelike.tell() if hasattr(filelike, "tell") else 0
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(st.st_mode) or self.head.method == b"HEAD":
            return False
        available = max(0, st.st_size - offset)
        declared = next((v for n, v in self.headers if n.lower() == "content-length"), None)
        count = available
        if declared is None:
            self.headers = self.headers + [("Content-Length", str(available))]
        elif declared.isdigit():
            count = min(int(declared), available)
        self.send_head(b"", complete=True)  # framed by the Content-Length in the headers
        if count == 0 or self.no_body:
            return True
        sent = green.call(self.link.conn.sendfile(fd, offset, count, timeout=self.link.server.send_timeout))
        self.sent = sent
        if sent < count:
            self.close_after = True
            raise WsgiAppError(f"file_wrapper: the file gave {sent} of its {count} bytes (it shrank?)")
        if self.length is not None and sent < self.length:
            self.close_after = True
            raise WsgiAppError(f"sent {sent} body bytes of the {self.length} its Content-Length announced")
        return True

    def failed(self, exc: Exception) -> None:
        """Handle an exception from the application or the exchange (the
        connection then closes)."""
        link, head = self.link, self.head
        if link.broken:
            return  # the client went away or stalled mid-exchange: nobody to tell
        if exc is head.body_error:
            # wsgi.input found the body broken and the application let it
            # through: answer for the body, not the application.
            if not self.head_sent:
                link.refuse(head, exc)
            return
        name = _app_name(link.app)
        if isinstance(exc, WsgiAppError):
            log.error("WSGI app %s: %s (request %r)", name, exc, head.request_line)
        else:
            log.error("WSGI app %s raised %s: %s (request %r)", name, type(exc).__name__, exc, head.request_line,
                      exc_info=exc)
        if not self.head_sent:  # else only closing tells the client the body is not whole
            link.refuse(head, _INTERNAL_ERROR)

    def drain(self) -> bool:
        """Read and drop what the application left of the body; False if
        the connection must close instead."""
        head = self.head
        if head.body_done:
            head.body.clear()
            return True
        if head.expect_continue:
            return False  # the client waits for a 100 it will not get: close rather than guess
        dropped = 0
        try:
            while not head.body_done:
                self.link.receive_body(head)
                dropped += sum(len(piece) for piece in head.body)
                head.body.clear()
                if dropped > _DRAIN_BYTES:
                    return False
        except HttpError as exc:
            self.link.refuse(None, exc)
            return False
        return True

    def environ(self) -> dict[str, Any]:
        """The request's WSGI environ."""
        head = self.head
        environ = self.link.base_environ.copy()
        target = head.target
        if not target.startswith(b"/"):
            # absolute-form (a proxy's): keep the path; '*' (OPTIONS) as is
            match = re.match(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", target)
            if match:
                target = target[match.end():] or b"/"
        path, _, query = target.partition(b"?")
        path = path.partition(b"#")[0]
        query = query.partition(b"#")[0]
        environ["REQUEST_METHOD"] = head.method.decode("latin-1")
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["RAW_URI"] = environ["REQUEST_URI"] = head.target.decode("latin-1")
        environ["SERVER_PROTOCOL"] = f"HTTP/{head.version}"
        environ["wsgi.input"] = self.input
        for name, value in head.headers:
            key = name.upper().decode("latin-1")
            if "_" in key:
                continue  # X_Forwarded_For would pass for X-Forwarded-For: drop it, as nginx does
            key = key.replace("-", "_")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                environ[key] = value.decode("latin-1")
                continue
            key = "HTTP_" + key
            text = value.decode("latin-1")
            if key in environ:
                text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
            environ[key] = text
        return environ


def _base_environ(server: Any, conn: Any, peer: Any) -> dict[str, Any]:
    local = getattr(conn, "local_address", None) or server.address
    host, port = (local[0], local[1]) if isinstance(local, tuple) else (str(local), 0)
    remote_host, remote_port = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else (str(peer), 0)
    return {
        "SCRIPT_NAME": "",
        "SERVER_NAME": str(host),
        "SERVER_PORT": str(port),
        "REMOTE_ADDR": str(remote_host),
        "REMOTE_PORT": str(remote_port),
        "SERVER_SOFTWARE": "threadlib",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if isinstance(conn, tls.TlsStream) else "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,  # requests of other connections run meanwhile, in this process
        "wsgi.multiprocess": server.wsgi_multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,  # wsgi.input ends where the body does, chunked or not
        "wsgi.file_wrapper": FileWrapper,
    }


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _app_name(app: Any) -> str:
    if isinstance(app, (types.FunctionType, types.MethodType, type)):
        return f"{app.__module__}:{app.__qualname__}"
    return repr(app)  # an application object (Flask's says <Flask 'module'>)


def serve_connection(server: Any, conn: Any, peer: Any, state: Any) -> None:
    """Serve one accepted connection with ``server.wsgi`` (run as a green thread)."""
    _Link(server, conn, peer, state).run()


def default_limits() -> Limits:
    """The limits of a WebServer with an application: the file server's,
    with bodies up to WSGI_MAX_BODY."""
    return Limits(max_body=WSGI_MAX_BODY)


def load_app(spec: str) -> Callable[..., Any]:
    """The WSGI application named by ``MODULE:NAME`` (``MODULE`` alone
    means ``MODULE:app``); ``AppNotFound`` (a ValueError, one line) when
    it does not import, lacks the name or is not callable."""
    return _load_app(spec, "WSGI", default_name="app")  # type: ignore[no-any-return]


@types.coroutine
def serve_wsgi(app: Callable[..., Any], address: tuple[str, int] = ("127.0.0.1", 8080),
               shutdown: threadlib.Event | None = None, *, network: Any = None,
               ready: Callable[[Any], None] | None = None, **options: Any) -> Any:
    """Serve the WSGI application ``app`` on ``address`` until
    ``shutdown`` is set (``yield from``/``await`` it in a threadlib
    thread); ``options`` are WebServer's. Same as
    ``WebServer(wsgi=app, network=network, **options).serve(address, shutdown, ready=ready)``."""
    from .server import WebServer

    server = WebServer(wsgi=app, network=network, **options)
    yield from server.serve(address, shutdown, ready=ready)
