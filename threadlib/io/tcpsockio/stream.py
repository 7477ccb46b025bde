"""Streams and listeners of the user-level stack: the ``threadlib.net``
``Stream`` and ``Listener`` contracts over ``iolib.tcp`` connections, plus
Mnet.TCP's extras (``read``, ``get``, ``really_read``, ``write``,
``write_without_interruption``, ``peers``).

Every call that may wait yields ``TcpWait`` to the network's worker and
retries once woken; ``close`` and ``write_without_interruption`` never
wait: what does not fit in the stack's send buffer is kept in a backlog and
handed to the stack as ACKs make room, so nothing written is lost.
"""

from __future__ import annotations

import collections
import os
import socket
import types
from typing import TYPE_CHECKING, Any

from iolib.tcp import errors as tcperr
from iolib.tcp.connection import SYN_RECEIVED, SYN_SENT

from ...calls import timeout as _timeout
from ...syscalls import Waits
from .errors import closed_error, translate

if TYPE_CHECKING:
    from ..._kernel import Thread
    from .worker import UserTcpWorker


def _check_buffer_range(buffer: Any, offset: int, length: int | None) -> memoryview:
    view = memoryview(buffer).cast("B")
    if view.readonly:
        raise TypeError("the buffer to read into must be writable (a bytearray, memoryview, ...)")
    if not 0 <= offset <= len(view):
        raise ValueError(f"offset {offset} is outside a buffer of {len(view)} bytes")
    if length is None:
        length = len(view) - offset
    if length < 0 or offset + length > len(view):
        raise ValueError(f"offset {offset} + length {length} is outside a buffer of {len(view)} bytes")
    return view[offset:offset + length]


class Stream:
    """A TCP connection on the user-level stack, with ``sockio.Stream``'s
    API plus Mnet.TCP's ``read``, ``get``, ``really_read``, ``write``,
    ``write_without_interruption`` and ``peers``.

    Reads return b"" at end of stream and raise ``ClosedByPeer`` after a
    reset; writes raise ``ClosedByPeer`` after a reset and
    ``BrokenPipeError`` after our own shutdown of the write side.
    """

    __slots__ = ("_net", "_stack", "_conn", "_readers", "_writers", "_connecters", "_backlog",
                 "_writable", "_closed", "_close_pending", "_shut_pending", "_wait_r", "_wait_w")

    def __init__(self, net: UserTcpWorker, conn: Any) -> None:
        self._net = net
        self._stack = net.stack
        self._conn = conn
        self._readers: list[Thread] = []
        self._writers: list[Thread] = []
        self._connecters: list[Thread] = []
        self._backlog: collections.deque[bytes] = collections.deque()  # written, not yet in the stack
        self._writable = True
        self._closed = False
        self._close_pending = False
        self._shut_pending = False
        self._wait_r = net.wait_class(self, "read")
        self._wait_w = net.wait_class(self, "write")
        net._sockets[conn] = self

    # -- introspection -----------------------------------------------------
    @property
    def connection(self) -> Any:
        """The iolib.tcp Connection (state, info(), ...)."""
        return self._conn

    @property
    def family(self) -> int:
        """socket.AF_INET or socket.AF_INET6."""
        return socket.AF_INET6 if len(self._conn.laddr) == 16 else socket.AF_INET

    @property
    def local_address(self) -> tuple[str, int]:
        """This end's ``(address, port)``."""
        local: tuple[str, int] = self._conn.local
        return local

    @property
    def peer_address(self) -> tuple[str, int]:
        """The other end's ``(address, port)``."""
        remote: tuple[str, int] = self._conn.remote
        return remote

    def peers(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """``(local, remote)``, each an ``(address, port)`` pair."""
        return self._conn.local, self._conn.remote

    @property
    def closed(self) -> bool:
        """Whether ``close`` (or ``abort``) was called."""
        return self._closed

    def fileno(self) -> int:
        """-1: there is no kernel fd, which code that asks learns as it would
        from a closed socket."""
        return -1

    def set_nodelay(self, on: bool = True) -> None:
        """Turn Nagle's algorithm off (``on``) or back on."""
        self._stack.set_options(self._conn, nodelay=bool(on))

    def __repr__(self) -> str:
        return f"<tcpsockio.Stream {self._conn.local}->{self._conn.remote} {self._conn.state}>"

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    # -- worker side -------------------------------------------------------
    def _waiters(self, what: str) -> list[Thread]:
        if what == "read":
            return self._readers
        if what == "write":
            return self._writers
        return self._connecters

    def _ready(self, what: str) -> bool:
        conn = self._conn
        if self._closed or conn.error is not None:
            return True
        if what == "read":
            return len(conn.rcvbuf) > 0
        if what == "write":
            return self._writable and not self._backlog
        return conn.state not in (SYN_SENT, SYN_RECEIVED)

    def _forget_waiters(self) -> None:
        self._readers.clear()
        self._writers.clear()
        self._connecters.clear()

    def _push_backlog(self, now: float) -> None:
        """Hand written-but-unsent bytes to the stack as space allows; then
        do the shutdown or close that waited for them."""
        backlog = self._backlog
        stack = self._stack
        try:
            while backlog:
                chunk = backlog[0]
                n = stack.send(now, self._conn, chunk)
                if n == len(chunk):
                    backlog.popleft()
                else:
                    if n:
                        backlog[0] = chunk[n:]
                    self._writable = False
                    return
        except OSError:
            backlog.clear()  # the connection failed: the writer learns it at its next call
        self._net.dirty = True
        if self._shut_pending:
            self._shut_pending = False
            self._do_shutdown(socket.SHUT_WR)
        if self._close_pending:
            self._close_pending = False
            self._do_close(now)

    # -- reading -------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise closed_error("stream")

    @types.coroutine
    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Waits[bytes]:
        """Up to ``max_bytes`` bytes; b'' once the peer has closed its side.

        Waits (TcpWait) only when nothing is buffered; on ``timeout``
        (TimeoutError) or cancellation nothing was consumed."""
        net = self._net
        stack = self._stack
        conn = self._conn
        while True:
            if self._closed:
                raise closed_error("stream")
            try:
                data: bytes | None = stack.recv(conn, max_bytes, net._clock_now())
            except tcperr.BadArgument:
                raise
            except OSError as exc:
                raise translate(exc) from None
            if data is not None:
                net.dirty = True
                return data
            if timeout is None:
                yield self._wait_r
            else:
                with _timeout(timeout):
                    yield self._wait_r

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> Waits[int]:
        """Read into ``buffer`` (up to ``nbytes``, or its length); 0 at end
        of stream. Waits like ``recv``."""
        view = memoryview(buffer).cast("B")
        if nbytes:
            if nbytes < 0 or nbytes > len(view):
                raise ValueError(f"nbytes {nbytes} is outside a buffer of {len(view)} bytes")
            view = view[:nbytes]
        if not len(view):
            return 0
        data = yield from self.recv(len(view), timeout)
        n = len(data)
        view[:n] = data
        return n

    @types.coroutine
    def recv_exactly(self, nbytes: int, timeout: float | None = None) -> Waits[bytes]:
        """Exactly ``nbytes`` bytes, or EOFError if the stream ends first.

        ``timeout`` bounds the whole read; after EOFError, TimeoutError or a
        cancellation the bytes read so far are consumed and lost."""
        parts = []
        got = 0
        with _timeout(timeout):
            while got < nbytes:
                data = yield from self.recv(nbytes - got)
                if not data:
                    raise EOFError(f"stream ended after {got} of {nbytes} bytes")
                parts.append(data)
                got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @types.coroutine
    def read(self, buffer: Any, offset: int = 0, length: int | None = None, timeout: float | None = None) -> Waits[int]:
        """Mnet's read: up to ``length`` bytes into ``buffer[offset:]``;
        the count, 0 at end of stream. Never loses bytes: it asks the
        stack for no more than fits. Waits like ``recv``."""
        view = _check_buffer_range(buffer, offset, length)
        if not len(view):
            return 0
        data = yield from self.recv(len(view), timeout)
        view[:len(data)] = data
        return len(data)

    @types.coroutine
    def get(self, timeout: float | None = None) -> Waits[bytes]:
        """Everything received so far (waiting for at least one byte), as
        the stack's own buffer copy, without a further copy; b'' at end of
        stream. Waits like ``recv``."""
        net = self._net
        while True:
            if self._closed:
                raise closed_error("stream")
            try:
                chunks = self._stack.recv_chunks(self._conn, net._clock_now())
            except OSError as exc:
                raise translate(exc) from None
            if chunks is not None:
                net.dirty = True
                if chunks == b"":
                    return b""
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            with _timeout(timeout):
                yield self._wait_r

    @types.coroutine
    def really_read(self, buffer: Any, offset: int = 0, length: int | None = None,
                    timeout: float | None = None) -> Waits[None]:
        """Fill ``buffer[offset:offset+length]`` completely, or raise
        EOFError (the stream ended first) or the connection's error.
        ``timeout`` bounds the whole read; after an interruption the part
        filled so far is consumed."""
        view = _check_buffer_range(buffer, offset, length)
        got = 0
        with _timeout(timeout):
            while got < len(view):
                data = yield from self.recv(len(view) - got)
                if not data:
                    raise EOFError(f"stream ended after {got} of {len(view)} bytes")
                view[got:got + len(data)] = data
                got += len(data)

    # -- writing -------------------------------------------------------------
    @types.coroutine
    def send(self, data: Any, timeout: float | None = None) -> Waits[int]:
        """Send some of ``data``; return how many bytes went (at least one
        unless ``data`` is empty). Waits (TcpWait) only while the send
        buffer is full; on ``timeout`` or cancellation nothing was sent."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send() needs a bytes-like object, got {type(data).__name__}")
        net = self._net
        while True:
            if self._closed:
                raise closed_error("stream")
            if not self._backlog:
                try:
                    n = self._stack.send(net._clock_now(), self._conn, data)
                except OSError as exc:
                    raise translate(exc) from None
                if n or not len(data):
                    net.dirty = True
                    return n
                self._writable = False
            with _timeout(timeout):
                yield self._wait_w

    @types.coroutine
    def sendall(self, data: Any, timeout: float | None = None) -> Waits[None]:
        """Send all of ``data``, waiting (TcpWait) for buffer space as
        needed. ``timeout`` bounds the whole call; after TimeoutError or a
        cancellation an unknown prefix of ``data`` is with the stack, and
        will be delivered."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"sendall() needs a bytes-like object, got {type(data).__name__}")
        view = memoryview(data).cast("B")
        total = len(view)
        sent = 0
        net = self._net
        stack = self._stack
        conn = self._conn
        with _timeout(timeout):
            while True:
                if self._closed:
                    raise closed_error("stream")
                if not self._backlog:
                    try:
                        n = stack.send(net._clock_now(), conn, view[sent:] if sent else view)
                    except OSError as exc:
                        raise translate(exc) from None
                    if n:
                        net.dirty = True
                        sent += n
                    if sent >= total:
                        return
                    self._writable = False
                yield self._wait_w

    write = sendall

    def write_without_interruption(self, data: Any) -> None:
        """Queue all of ``data`` without ever waiting (for ``finally``
        blocks and finalizers). What the send buffer cannot take now is
        kept here and handed to the stack as room appears. Raises the
        connection's error if it has already failed."""
        if self._closed:
            raise closed_error("stream")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_without_interruption() needs a bytes-like object, got {type(data).__name__}")
        n = 0
        if not self._backlog:
            try:
                n = self._stack.send(self._net._clock_now(), self._conn, data)
            except OSError as exc:
                raise translate(exc) from None
            self._net.dirty = True
        if n < len(data):
            self._backlog.append(bytes(memoryview(data).cast("B")[n:]))
            self._writable = False

    @types.coroutine
    def sendfile(self, file: Any, offset: int = 0, count: int | None = None,
                 timeout: float | None = None) -> Waits[int]:
        """Send ``count`` bytes (to end of file if None) of ``file`` (an
        object with ``fileno()`` or an fd) from ``offset``: read and send,
        there is no zero-copy path into a user-level stack. Returns the
        bytes sent (fewer only at end of file). Waits like ``sendall``;
        ``timeout`` bounds the whole call."""
        fd = file if isinstance(file, int) else file.fileno()
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        sent = 0
        with _timeout(timeout):
            while sent < count:
                chunk = os.pread(fd, min(count - sent, 1 << 18), offset + sent)
                if not chunk:
                    break  # the file is shorter than asked
                yield from self.sendall(chunk)
                sent += len(chunk)
        return sent

    # -- closing ---------------------------------------------------------------
    def shutdown(self, how: Any = socket.SHUT_WR) -> None:
        """Half-close, never waiting: ``socket.SHUT_WR``/"write" sends FIN
        (after anything still queued), ``SHUT_RD``/"read" discards further
        input, ``SHUT_RDWR``/"both" does both."""
        names = {"read": socket.SHUT_RD, "write": socket.SHUT_WR, "both": socket.SHUT_RDWR,
                 "read_write": socket.SHUT_RDWR, "r": socket.SHUT_RD, "w": socket.SHUT_WR,
                 "rw": socket.SHUT_RDWR}
        how = names.get(how, how)
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            raise ValueError(f"shutdown how must be socket.SHUT_RD/WR/RDWR or 'read'/'write'/'both', got {how!r}")
        self._check_open()
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self._do_shutdown(socket.SHUT_RD)
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            if self._backlog:
                self._shut_pending = True
            else:
                self._do_shutdown(socket.SHUT_WR)

    def _do_shutdown(self, how: int) -> None:
        try:
            self._stack.shutdown(self._net._clock_now(), self._conn, how)
        except OSError:
            pass  # already shut, or the connection is gone: the goal is met
        self._net.dirty = True

    def close(self) -> None:
        """Close now, never waiting: a graceful FIN after everything
        written (a RST if unread input remains, as the kernel does).
        Threads waiting on this stream get OSError(EBADF)."""
        if self._closed:
            return
        self._closed = True
        net = self._net
        if net.sched is not None:
            exc = closed_error("stream")
            net._throw(self._readers, exc)
            net._throw(self._writers, exc)
            net._throw(self._connecters, exc)
        if self._backlog and self._conn.error is None:
            self._close_pending = True  # the worker closes after the backlog
            return
        self._do_close(net._clock_now())

    def abort(self) -> None:
        """Reset the connection (RST) and close the stream."""
        self._backlog.clear()
        self._close_pending = False
        if not self._closed:
            self.close()
        try:
            self._stack.abort(self._net._clock_now(), self._conn)
        except OSError:
            pass
        self._net.dirty = True
        self._net._sockets.pop(self._conn, None)

    def _do_close(self, now: float) -> None:
        try:
            self._stack.close(now, self._conn)
        except OSError:
            pass
        self._net.dirty = True
        self._backlog.clear()
        self._net._sockets.pop(self._conn, None)


class Listener:
    """A listening endpoint on the user-level stack."""

    __slots__ = ("_net", "_stack", "_lst", "_readers", "_closed", "_nodelay", "_wait_a")

    def __init__(self, net: UserTcpWorker, lst: Any, nodelay: bool) -> None:
        self._net = net
        self._stack = net.stack
        self._lst = lst
        self._readers: list[Thread] = []
        self._closed = False
        self._nodelay = nodelay
        self._wait_a = net.wait_class(self, "accept")
        net._sockets[lst] = self

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; host is "::" when listening on every
        local address (IPv4 and IPv6)."""
        host, port = self._lst.local
        return (host if host is not None else "::", port)

    local_address = address

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def fileno(self) -> int:
        """-1: there is no kernel fd."""
        return -1

    def _waiters(self, what: str) -> list[Thread]:
        return self._readers

    def _ready(self, what: str) -> bool:
        return self._closed or bool(self._lst.queue)

    def _forget_waiters(self) -> None:
        self._readers.clear()

    @types.coroutine
    def accept(self, timeout: float | None = None) -> Waits[tuple[Stream, tuple[str, int]]]:
        """The next connection and its peer ``(address, port)``, waiting
        (TcpWait) while none is pending; on ``timeout`` (TimeoutError) or
        cancellation none was taken: pending ones stay queued."""
        net = self._net
        with _timeout(timeout):
            while True:
                if self._closed:
                    raise closed_error("listener")
                conn = self._stack.accept(self._lst)
                if conn is not None:
                    if self._nodelay:
                        self._stack.set_options(conn, nodelay=True)
                    return Stream(net, conn), conn.remote
                yield self._wait_a

    def close(self) -> None:
        """Stop listening (never waits); connections not yet accepted are
        reset. Threads waiting in accept get OSError(EBADF)."""
        if self._closed:
            return
        self._closed = True
        net = self._net
        if net.sched is not None:
            net._throw(self._readers, closed_error("listener"))
        try:
            self._stack.close(net._clock_now(), self._lst)
        except OSError:
            pass
        net.dirty = True
        net._sockets.pop(self._lst, None)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tcpsockio.Listener {self.address}>"
