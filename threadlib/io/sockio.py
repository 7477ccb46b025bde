"""Socket IO over the kernel's network stack, in threaded style.

Every call first tries the non-blocking operation and yields
``WaitRead``/``WaitWrite`` only on EAGAIN, so the common case costs one
system call and no trip through the scheduler. Errors are the standard
``OSError`` subclasses (ConnectionResetError, BrokenPipeError, ...).

Servers reach sockets through a *network* object. ``KernelNetwork`` (the
default, used by ``listen``/``connect`` below) is the kernel's TCP/IP; the
user-level stack (``tcpsockio``) and simulated networks offer the same
methods, so one server runs unchanged on each.

This module never blocks the process: name resolution goes to the
blocking pool, and every wait is a system call.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import types
from typing import TYPE_CHECKING, Any, Iterable, Mapping, overload

from ..calls import timeout as _timeout
from .._kernel import DONE, forget_fd
from .._kernel.compiled import sock_recv, sock_recv_into, sock_send
from .._kernel.compiled import speedups as _speedups
from .._kernel.uring import RECV_REQUEST_BYTES, AcceptState, RecvState, UringAccept, UringRecv, UringSend, socket_worker
from ..syscalls import Blocking, Sleep, WaitRead, WaitWrite, Waits
from .happy_eyeballs import DEFAULT_DELAY, HostTable, Resolver, connect_first, literal_family

if TYPE_CHECKING:
    from ssl import SSLContext

    from ..net import Call
    from .tls import TlsListener, TlsStream

log = logging.getLogger("threadlib.io.sockio")

__all__ = [
    "KernelNetwork",
    "kernel",
    "Stream",
    "Listener",
    "UringStream",
    "UringListener",
    "DatagramSocket",
    "listen",
    "connect",
    "udp",
    "unix_listen",
    "unix_connect",
]

# accept() errors that mean "out of a resource right now", not "this
# listener is broken": back off and retry instead of ending the server.
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Events after which no further edge comes: a read must be tried, not waited for.
_HANG_UP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
# accept() errors that concern only the one connection being accepted.
_ACCEPT_CONNECTION_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


# The socket layer: every call this module makes into the kernel's sockets
# goes through these five names or the socket objects they make, so that
# record/replay (threadlib.replay) can stand between the program and the
# network. The hot calls are socket.socket's own, or their compiled twins
# (no argument tuple, no GIL hand-off), which behave the same.
_recv, _recv_into, _send = sock_recv, sock_recv_into, sock_send
_new_socket = socket.socket
_sendfile = os.sendfile
_OWN_METHODS = ("recv", "recv_into", "send")


def _use_socket_layer(layer: tuple[Any, ...]) -> tuple[Any, ...]:
    """Install ``(recv, recv_into, send, new_socket, sendfile)`` as the
    socket layer; return the one it replaces (for threadlib.replay only:
    it is process-wide, one recording or replay at a time)."""
    global _recv, _recv_into, _send, _new_socket, _sendfile
    previous = (_recv, _recv_into, _send, _new_socket, _sendfile)
    _recv, _recv_into, _send, _new_socket, _sendfile = layer
    return previous


def _discard(sock: socket.socket) -> None:
    """Close a socket that never became a sockio object but may have been
    waited on (a failed connect): the IO worker must forget its fd first,
    or the next socket to get that fd number would wait on a dead record."""
    fd = sock.fileno()
    if fd >= 0:
        forget_fd(fd)
    sock.close()


class _SocketBase:
    __slots__ = ("_sock", "_fd", "_wait_read", "_wait_write")

    def __init__(self, sock: socket.socket) -> None:
        if not isinstance(sock, socket.socket) or any(
                getattr(type(sock), name) is not getattr(socket.socket, name) for name in _OWN_METHODS):
            raise TypeError(f"sockio needs a socket.socket whose recv/recv_into/send are socket.socket's own, "
                            f"got {type(sock).__name__} (for TLS use threadlib.io.tls)")
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        # Data-only system calls can be reused for every wait on this fd.
        self._wait_read = WaitRead(self._fd)
        self._wait_write = WaitWrite(self._fd)

    def fileno(self) -> int:
        """The socket's fd; -1 once closed."""
        return self._fd

    @property
    def socket(self) -> socket.socket:
        """The underlying (non-blocking) kernel socket."""
        return self._sock

    @property
    def family(self) -> int:
        """The address family: socket.AF_INET, AF_INET6 or AF_UNIX."""
        return self._sock.family

    @property
    def local_address(self) -> Any:
        """This end's address (getsockname)."""
        return self._sock.getsockname()

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        """``socket.getsockopt`` of the underlying socket."""
        return self._sock.getsockopt(level, option, buflen) if buflen else self._sock.getsockopt(level, option)

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        """``socket.setsockopt`` of the underlying socket."""
        self._sock.setsockopt(level, option, value)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._fd < 0

    def close(self) -> None:
        """Close now (never waits). Threads waiting on it get OSError(EBADF)."""
        fd = self._fd
        if fd >= 0:
            self._fd = -1
            forget_fd(fd)
            self._sock.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"


class Stream(_SocketBase):
    """A connected stream socket (TCP over IPv4/IPv6, or Unix).

    After a read that returned less than asked for, the kernel's receive
    queue was empty, and new data will raise a fresh edge-triggered event;
    so the next read waits first instead of paying for a recv that fails
    with EAGAIN (an exception, the most expensive part of a small echo).
    The IOWorker remembers edges that arrived while nobody waited, so the
    shortcut never misses data. It is not taken once a wait has reported a
    hang-up: EOF and errors are states that raise no further edge.
    """

    __slots__ = ("_drained", "_hung_up")

    def __new__(cls, sock: socket.socket) -> Any:
        # Made inside a scheduler whose ring can receive and send on
        # sockets: the completion-based kind (UringStream).
        if cls is Stream:
            worker = socket_worker()
            if worker is not None and worker.recv_send:
                return object.__new__(UringStream)
        return object.__new__(cls)

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._drained = False
        self._hung_up = False

    @property
    def peer_address(self) -> Any:
        """The other end's address (getpeername)."""
        return self._sock.getpeername()

    @types.coroutine
    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Waits[bytes]:
        """Up to ``max_bytes`` bytes; b'' once the peer has closed its side.

        Waits (WaitRead) only when nothing is buffered; on ``timeout``
        (TimeoutError) or cancellation nothing was consumed."""
        sock = self._sock
        while True:
            if self._drained:
                self._drained = False
            else:
                try:
                    data = _recv(sock, max_bytes)
                except BlockingIOError:
                    pass
                else:
                    self._drained = 0 < len(data) < max_bytes and not self._hung_up
                    return data
            if timeout is None:
                events = yield self._wait_read
            else:
                with _timeout(timeout):
                    events = yield self._wait_read
            if events and events & _HANG_UP:
                self._hung_up = True

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> Waits[int]:
        """Read into ``buffer`` (up to ``nbytes``, 0 for its size); the count,
        0 at end of stream. Waits like ``recv``."""
        # The same loop as recv, written out again on purpose: a shared
        # helper would cost every read a generator frame (the hot path).
        sock = self._sock
        while True:
            if self._drained:
                self._drained = False
            else:
                try:
                    n = _recv_into(sock, buffer, nbytes)
                except BlockingIOError:
                    pass
                else:
                    self._drained = 0 < n < (nbytes or len(buffer)) and not self._hung_up
                    return n
            if timeout is None:
                events = yield self._wait_read
            else:
                with _timeout(timeout):
                    events = yield self._wait_read
            if events and events & _HANG_UP:
                self._hung_up = True

    @types.coroutine
    def recv_exactly(self, nbytes: int, timeout: float | None = None) -> Waits[bytes]:
        """Exactly ``nbytes`` bytes, or EOFError if the stream ends first.

        ``timeout`` bounds the whole read; after EOFError, TimeoutError or a
        cancellation the bytes read so far are consumed and lost."""
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        with _timeout(timeout):
            while got < nbytes:
                n = yield from self.recv_into(view[got:])
                if n == 0:
                    raise EOFError(f"stream ended after {got} of {nbytes} bytes")
                got += n
        return bytes(buf)

    @types.coroutine
    def send(self, data: Any, timeout: float | None = None) -> Waits[int]:
        """Send some of ``data``; return how many bytes went.

        Waits (WaitWrite) only while the socket buffer is full; on
        ``timeout`` (TimeoutError) or cancellation nothing was sent."""
        sock = self._sock
        while True:
            try:
                return _send(sock, data)
            except BlockingIOError:
                pass
            with _timeout(timeout):
                yield self._wait_write

    def sendall(self, data: Any, timeout: float | None = None) -> Call[None]:
        """Send all of ``data``, waiting for buffer space as needed.

        The first send happens at the call: when the socket buffer takes
        everything (the usual case for a response), no generator is made
        and ``yield from``/``await`` completes at once. Otherwise the
        returned awaitable sends the rest, waiting (WaitWrite) for room.
        ``timeout`` bounds that rest; after TimeoutError or a cancellation
        an unknown prefix of ``data`` has been sent."""
        try:
            sent = _send(self._sock, data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return DONE
        return self._send_rest(data, sent, timeout)

    @types.coroutine
    def _send_rest(self, data: Any, sent: int, timeout: float | None) -> Waits[None]:
        sock = self._sock
        view = memoryview(data).cast("B")
        total = len(view)
        with _timeout(timeout):
            while sent < total:
                try:
                    sent += _send(sock, view[sent:])
                except BlockingIOError:
                    yield self._wait_write

    @types.coroutine
    def sendfile(self, file: Any, offset: int = 0, count: int | None = None,
                 timeout: float | None = None) -> Waits[int]:
        """Send ``count`` bytes (to end of file if None) of ``file`` (an
        object with ``fileno()`` or an fd) from ``offset`` with
        sendfile(2), zero-copy. Returns the bytes sent (fewer only at end
        of file). Waits for room like ``sendall``, with the same
        ``timeout`` and the same uncertainty after an interruption."""
        in_fd = file if isinstance(file, int) else file.fileno()
        if count is None:
            count = os.fstat(in_fd).st_size - offset
        sent = 0
        out_fd = self._fd
        with _timeout(timeout):
            while sent < count:
                try:
                    n = _sendfile(out_fd, in_fd, offset + sent, min(count - sent, 1 << 30))
                except BlockingIOError:
                    yield self._wait_write
                    continue
                if n == 0:
                    break  # the file is shorter than asked
                sent += n
        return sent

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Half-close: SHUT_WR sends FIN; SHUT_RD, SHUT_RDWR likewise."""
        try:
            self._sock.shutdown(how)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise

    def set_nodelay(self, on: bool = True) -> None:
        """Turn Nagle's algorithm off (``on``) or back on (TCP_NODELAY)."""
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(on))


class Listener(_SocketBase):
    """A listening stream socket."""

    __slots__ = ("_nodelay", "_backoff")

    def __new__(cls, sock: socket.socket, nodelay: bool = True) -> Any:
        # Made inside a scheduler whose ring has multishot accept: the
        # completion-based kind (UringListener).
        if cls is Listener:
            worker = socket_worker()
            if worker is not None and worker.multishot_accept:
                return object.__new__(UringListener)
        return object.__new__(cls)

    def __init__(self, sock: socket.socket, nodelay: bool = True) -> None:
        super().__init__(sock)
        self._nodelay = nodelay and sock.family in (socket.AF_INET, socket.AF_INET6)
        self._backoff = 0.0

    @property
    def address(self) -> Any:
        """The bound address, e.g. ``('127.0.0.1', 40123)``."""
        addr = self._sock.getsockname()
        return addr[:2] if isinstance(addr, tuple) else addr

    @types.coroutine
    def _accept_failed(self, exc: OSError) -> Waits[None]:
        """After a failed accept: skip a connection aborted before it was
        taken, back off (up to a second) from a resource shortage, raise
        anything else. The pending connection stays queued; with
        edge-triggered epoll no new event will come for it, hence the
        sleep before retrying."""
        if exc.errno in _ACCEPT_CONNECTION_ERRORS:
            return
        if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
            raise exc
        self._backoff = min(1.0, max(0.01, self._backoff * 2))
        log.warning("accept on %s: %s; retrying in %.2fs", self.address, exc.strerror, self._backoff)
        yield Sleep(self._backoff)

    @types.coroutine
    def accept(self, timeout: float | None = None) -> Waits[tuple[Stream, Any]]:
        """The next connection and its peer address.

        Waits (WaitRead) while none is pending. Running out of fds (EMFILE)
        or buffers makes accept back off (up to a second) and retry; it
        never ends the server. A connection that was aborted before it was
        accepted is skipped. On ``timeout`` (TimeoutError) or cancellation
        no connection was taken: pending ones stay queued.
        """
        sock = self._sock
        with _timeout(timeout):
            while True:
                try:
                    # The fd alone: the socket object is made below with the
                    # listener's family and type. CPython has it; typeshed
                    # does not declare it.
                    fd, addr = sock._accept()  # type: ignore[attr-defined]
                except BlockingIOError:
                    yield self._wait_read
                    continue
                except OSError as exc:
                    yield from self._accept_failed(exc)
                    continue
                self._backoff = 0.0
                conn = _new_socket(sock.family, sock.type, sock.proto, fileno=fd)
                if self._nodelay:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return Stream(conn), addr


class UringStream(Stream):
    """A ``Stream`` made inside a scheduler with an io_uring worker that
    can receive and send (``Stream(sock)`` gives one there): the first
    read that has to wait arms a multishot receive (IORING_RECV_MULTISHOT
    into the ring's provided buffers), which from then on takes every
    arrival as it comes, whether a thread waits or not, so later reads
    find the bytes with no system call; a kernel without it gets one
    IORING_OP_RECV (``UringRecv``) per read that waits. Either way the
    kernel waits for the data and copies it in one step, instead of a poll
    followed by a recv(2). The rest of a ``sendall`` that has to wait is
    an IORING_OP_SEND (``UringSend``). The first attempt of each call
    before the ring holds the stream's bytes is the plain non-blocking
    system call, which costs nothing when data is there.

    A thread cancelled (or timed out) while it waits loses nothing: what
    the ring takes goes to the next recv on this stream, before anything
    newer. Raw reads of its fd (a bare socket.recv) while the ring holds
    its bytes would reorder them; sockio's own calls never do, and
    ``splice`` copies such a stream through its recv. ``send`` and ``sendfile`` keep
    the readiness path: ``send``'s promise that a cancelled send sent
    nothing needs it."""

    __slots__ = ("_rx", "_recv_call")

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._rx = RecvState(self._fd)
        self._recv_call = UringRecv(self._rx, 0)

    @types.coroutine
    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Waits[bytes]:
        """Up to ``max_bytes`` bytes; b'' once the peer has closed its side.

        Tries recv(2) once; if nothing is buffered, waits in an io_uring
        recv request. On ``timeout`` (TimeoutError) or cancellation the
        request is cancelled and what it took is kept for the next recv."""
        rx = self._rx
        if rx.token or rx.leftover or rx.eof or rx.error is not None:  # rx.pending, inlined
            # What the ring received comes first (a multishot receive's
            # arrivals, or a cancelled request's): taken with no wait.
            taken = rx.take(max_bytes)
            if taken is not None:
                return taken
        else:
            if self._drained:
                self._drained = False
            else:
                try:
                    data = _recv(self._sock, max_bytes)
                except BlockingIOError:
                    pass
                else:
                    # After a short read the queue is empty: the next read
                    # goes straight to the ring (no edge to miss there).
                    self._drained = 0 < len(data) < max_bytes
                    return data
        call = self._recv_call
        while True:
            call.nbytes = max_bytes
            if timeout is None:
                yield call
            else:
                with _timeout(timeout):
                    yield call
            got = rx.leftover
            if got and len(got) <= max_bytes and not rx.token and type(got) is bytes:  # rx.take, inlined
                rx.leftover = b""
                # Short of what the request could take: the queue is empty,
                # so the next read goes straight to the ring (no EAGAIN).
                self._drained = len(got) < max_bytes and len(got) < RECV_REQUEST_BYTES
                return got
            taken = rx.take(max_bytes)
            if taken is not None:
                return taken

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> Waits[int]:
        """Read into ``buffer`` (up to ``nbytes``, 0 for its size); the count,
        0 at end of stream. Waits like ``recv`` (the ring's request reads
        into a buffer of its own, copied into ``buffer``: a cancelled
        request never writes into the caller's memory later)."""
        view = memoryview(buffer).cast("B")
        want = nbytes or len(view)
        if want > len(view):
            raise ValueError(f"nbytes {nbytes} is larger than the buffer ({len(view)} bytes)")
        rx = self._rx
        if rx.pending:
            data = rx.take(want)  # what the ring received first, with no wait
            if data is not None:
                view[:len(data)] = data
                return len(data)
        else:
            if self._drained:
                self._drained = False
            else:
                try:
                    n = _recv_into(self._sock, buffer, nbytes)
                except BlockingIOError:
                    pass
                else:
                    self._drained = 0 < n < want
                    return n
        call = self._recv_call
        while True:
            call.nbytes = want
            if timeout is None:
                yield call
            else:
                with _timeout(timeout):
                    yield call
            data = rx.take(want)
            if data is not None:
                view[:len(data)] = data
                self._drained = 0 < len(data) < min(want, RECV_REQUEST_BYTES) and not rx.pending
                return len(data)

    @types.coroutine
    def _send_rest(self, data: Any, sent: int, timeout: float | None) -> Waits[None]:
        sock = self._sock
        view = memoryview(data).cast("B")
        total = len(view)
        with _timeout(timeout):
            while sent < total:
                try:
                    sent += _send(sock, view[sent:])
                except BlockingIOError:
                    sent += yield UringSend(self._fd, view[sent:])


class UringListener(Listener):
    """A ``Listener`` made inside a scheduler whose io_uring worker has
    multishot accept (``Listener(sock)`` gives one there): one
    IORING_ACCEPT_MULTISHOT request takes connections off the kernel's
    queue as they come, and ``accept`` hands them out (``UringAccept``)
    without an accept(2) each. The request is armed at the first accept
    and pauses when 256 connections wait untaken. A cancelled accept
    takes nothing: the connections stay queued. The peer address costs
    one getpeername(2) (a multishot accept cannot return it)."""

    __slots__ = ("_accept_call",)

    def __init__(self, sock: socket.socket, nodelay: bool = True) -> None:
        super().__init__(sock, nodelay)
        self._accept_call = UringAccept(AcceptState(self._fd))

    @types.coroutine
    def accept(self, timeout: float | None = None) -> Waits[tuple[Stream, Any]]:
        """The next connection and its peer address; waits while none is
        pending. Errors as ``Listener.accept``: resource shortages back off
        and retry, connections aborted before they were taken are skipped."""
        sock = self._sock
        with _timeout(timeout):
            while True:
                try:
                    fd = yield from self._next_fd()
                except OSError as exc:
                    yield from self._accept_failed(exc)
                    continue
                self._backoff = 0.0
                conn = _new_socket(sock.family, sock.type, sock.proto, fileno=fd)
                try:
                    addr = conn.getpeername()
                except OSError:
                    conn.close()  # reset before it was taken: as ECONNABORTED
                    continue
                if self._nodelay:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return Stream(conn), addr


    @types.coroutine
    def _next_fd(self) -> Waits[int]:
        # The worker queues what its accept request delivered and resumes
        # this thread with None: a thread cancelled before it ran leaves
        # the connection queued for the next accept (none is lost).
        call = self._accept_call
        state = call.state
        while True:
            yield call
            if state.ready:
                return state.ready.popleft()
            if state.error is not None:
                exc, state.error = state.error, None
                raise exc


class DatagramSocket(_SocketBase):
    """A UDP socket (or a Unix datagram socket)."""

    __slots__ = ()

    @types.coroutine
    def recvfrom(self, max_bytes: int = 65536, timeout: float | None = None) -> Waits[tuple[bytes, Any]]:
        """One datagram and its sender, waiting (WaitRead) while none is
        queued; on ``timeout`` (TimeoutError) or cancellation none was taken."""
        sock = self._sock
        with _timeout(timeout):
            while True:
                try:
                    return sock.recvfrom(max_bytes)
                except BlockingIOError:
                    yield self._wait_read

    @types.coroutine
    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Waits[bytes]:
        """One datagram's data (``recvfrom`` without the sender)."""
        data, _ = yield from self.recvfrom(max_bytes, timeout)
        return data

    @types.coroutine
    def sendto(self, data: Any, address: Any, timeout: float | None = None) -> Waits[int]:
        """Send ``data`` as one datagram to ``address``; the byte count.
        Waits (WaitWrite) only while the send buffer is full."""
        sock = self._sock
        with _timeout(timeout):
            while True:
                try:
                    return sock.sendto(data, address)
                except BlockingIOError:
                    yield self._wait_write

    @types.coroutine
    def send(self, data: Any, timeout: float | None = None) -> Waits[int]:
        """Send to the connected peer (see ``connect``)."""
        sock = self._sock
        with _timeout(timeout):
            while True:
                try:
                    return sock.send(data)
                except BlockingIOError:
                    yield self._wait_write

    def connect(self, address: Any) -> None:
        """Fix the peer (UDP connect never waits)."""
        self._sock.connect(address)


# ---------------------------------------------------------------------------
# Addresses


@types.coroutine
def resolve(host: str, port: int, type: int = socket.SOCK_STREAM) -> Waits[list[tuple[int, Any]]]:
    """``[(family, sockaddr), ...]`` for ``host``; literals need no lookup,
    names are resolved on the blocking pool (getaddrinfo blocks). A lookup
    whose caller timed out or was cancelled runs on; its answer is dropped."""
    family = literal_family(host) if host else socket.AF_INET
    if family is not None:
        return [(family, (host or "0.0.0.0", port))]
    try:
        infos = yield Blocking(socket.getaddrinfo, (host, port, 0, type))
    except socket.gaierror as exc:
        # getaddrinfo's own message ("Name or service not known") does not
        # say which name: the caller's log line must.
        raise socket.gaierror(exc.errno, f"{host!r} does not resolve: {exc.strerror}") from None
    if not infos:
        raise OSError(errno.EHOSTUNREACH, f"no address for {host!r}")
    return [(fam, sockaddr) for fam, _, _, _, sockaddr in infos]


def resolve_with(resolver: Any, host: str, port: int) -> Call[list[tuple[int, Any]]]:
    """``resolver(host, port)``, or ``resolve`` when ``resolver`` is None or
    ``host`` is an IP literal or empty (never looked up): what every
    network's ``resolve`` method does with its own resolver."""
    if resolver is None or literal_family(host) is not None or not host:
        return resolve(host, port)
    result: Call[list[tuple[int, Any]]] = resolver(host, port)
    return result


# ---------------------------------------------------------------------------
# The kernel's network


class KernelNetwork:
    """The kernel's TCP/IP and Unix sockets, reached through sockio.

    Host names are resolved by ``resolver`` (``resolver(host, port)``
    giving ``[(family, sockaddr), ...]``; default: the module's
    ``resolve``, getaddrinfo on the blocking pool); ``hosts`` (a dict
    ``{"name": ["address", ...]}``) is consulted first, falling back to
    the resolver. IP literals are never looked up."""

    name = "kernel"

    def __init__(self, resolver: Resolver | None = None,
                 hosts: Mapping[str, str | Iterable[str]] | None = None) -> None:
        if hosts is not None:
            resolver = HostTable(hosts, fallback=resolver or resolve)
        self.resolver: Resolver | None = resolver

    def resolve(self, host: str, port: int) -> Call[list[tuple[int, Any]]]:
        """``[(family, sockaddr), ...]`` for ``host``, through this network's
        resolver (see the class; by default the module's ``resolve``)."""
        return resolve_with(self.resolver, host, port)

    @overload
    def listen(self, address: tuple[str, int], backlog: int = ..., reuse_port: bool = ..., nodelay: bool = ...,
               ssl: None = ...) -> Call[Listener]: ...
    @overload
    def listen(self, address: tuple[str, int], backlog: int = ..., reuse_port: bool = ..., nodelay: bool = ..., *,
               ssl: SSLContext) -> Call[TlsListener]: ...
    @overload
    def listen(self, address: tuple[str, int], backlog: int = ..., reuse_port: bool = ..., nodelay: bool = ...,
               ssl: SSLContext | None = ...) -> Call[Listener | TlsListener]: ...
    @types.coroutine
    def listen(
        self, address: tuple[str, int], backlog: int = 1024, reuse_port: bool = False, nodelay: bool = True,
        ssl: SSLContext | None = None,
    ) -> Waits[Any]:
        """A TCP listener bound to ``(host, port)``; port 0 picks a free one;
        ``reuse_port`` lets several processes share the port. Waits only to
        resolve a host name. With ``ssl`` (a server-side SSLContext) it is a
        ``tls.TlsListener``: accepted streams handshake lazily (see there)."""
        host, port = address[0], address[1]
        family, sockaddr = (yield from self.resolve(host, port))[0]
        if len(address) == 4 and family == socket.AF_INET6:
            sockaddr = tuple(address)
        sock = _new_socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            where = f"[{sockaddr[0]}]:{sockaddr[1]}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{sockaddr[1]}"
            raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from None
        except BaseException:
            sock.close()
            raise
        if ssl is not None:
            from .tls import TlsListener

            return TlsListener(Listener(sock, nodelay), ssl)
        return Listener(sock, nodelay)

    @overload
    def connect(self, address: tuple[str, int], timeout: float | None = ..., nodelay: bool = ..., local: Any = ...,
                happy_eyeballs_delay: float | None = ..., ssl: None = ..., server_hostname: None = ...) -> Call[Stream]: ...
    @overload
    def connect(self, address: tuple[str, int], timeout: float | None = ..., nodelay: bool = ..., local: Any = ...,
                happy_eyeballs_delay: float | None = ..., *, ssl: SSLContext, server_hostname: str | None = ...) -> Call[TlsStream]: ...
    @overload
    def connect(self, address: tuple[str, int], timeout: float | None = ..., nodelay: bool = ..., local: Any = ...,
                happy_eyeballs_delay: float | None = ..., ssl: SSLContext | None = ...,
                server_hostname: str | None = ...) -> Call[Stream | TlsStream]: ...
    @types.coroutine
    def connect(
        self, address: tuple[str, int], timeout: float | None = None, nodelay: bool = True, local: Any = None,
        happy_eyeballs_delay: float | None = DEFAULT_DELAY,
        ssl: SSLContext | None = None, server_hostname: str | None = None,
    ) -> Waits[Any]:
        """A TCP connection to ``(host, port)``. A name with several
        addresses is connected with Happy Eyeballs (RFC 8305, see
        ``threadlib.io.happy_eyeballs.connect_first``): IPv6 first, then
        alternating families, a new attempt every ``happy_eyeballs_delay``
        seconds (None: one after the other) or as soon as one fails; the
        first to connect wins and the others are closed. Raises
        ConnectionRefusedError, TimeoutError, ... (several failed
        addresses: one OSError naming them all).

        Waits for name resolution and the handshakes (WaitWrite);
        ``timeout`` bounds all of it. A socket that did not connect (an
        error, a timeout, a cancellation, a lost race) is closed. With ``ssl``
        (a client-side SSLContext) the result is a ``tls.TlsStream`` whose
        handshake is done, verifying ``server_hostname`` (default: the host
        connected to); ``timeout`` bounds the handshake too."""
        if ssl is not None:
            from .tls import connect_over

            return (yield from connect_over(self.connect, address, timeout, ssl, server_hostname,
                                            nodelay=nodelay, local=local,
                                            happy_eyeballs_delay=happy_eyeballs_delay))
        host, port = address[0], address[1]
        with _timeout(timeout):
            addresses = yield from self.resolve(host, port)
            if len(addresses) == 1:  # no race to run: no thread, no delay
                family, sockaddr = addresses[0]
                return (yield from _connect_tcp(family, sockaddr, nodelay, local))
            return (yield from connect_first(
                addresses, lambda a: _connect_tcp(a[0], a[1], nodelay, local), happy_eyeballs_delay,
                f"{host}:{port}"))

    @types.coroutine
    def udp(self, bind: tuple[str, int] | None = None, family: int | None = None) -> Waits[DatagramSocket]:
        """A UDP socket, bound to ``bind`` if given. Waits only to resolve
        the host name of ``bind``."""
        if family is None:
            family = socket.AF_INET
            if bind is not None:
                family = (yield from resolve(bind[0], bind[1], socket.SOCK_DGRAM))[0][0]
        sock = _new_socket(family, socket.SOCK_DGRAM)
        if bind is not None:
            try:
                sock.bind(bind)
            except BaseException:
                sock.close()
                raise
        return DatagramSocket(sock)

    @types.coroutine
    def unix_listen(self, path: str, backlog: int = 1024) -> Waits[Listener]:
        """A listener bound to the Unix socket ``path`` (never waits)."""
        sock = _new_socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return Listener(sock, nodelay=False)
        yield  # a generator, like every call that may wait

    @types.coroutine
    def unix_connect(self, path: str, timeout: float | None = None) -> Waits[Stream]:
        """A stream connected to the Unix socket ``path``; ``timeout`` bounds
        the connect, and a socket that did not connect is closed."""
        sock = _new_socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _timeout(timeout):
                yield from _connect_socket(sock, path)
        except BaseException:
            _discard(sock)
            raise
        return Stream(sock)


@types.coroutine
def _connect_tcp(family: int, sockaddr: Any, nodelay: bool, local: Any) -> Waits[Stream]:
    """One connection attempt; the socket is closed unless it connected."""
    sock = _new_socket(family, socket.SOCK_STREAM)
    try:
        if local is not None:
            sock.bind(local)
        yield from _connect_socket(sock, sockaddr)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        _discard(sock)
        raise
    return Stream(sock)


@types.coroutine
def _connect_socket(sock: socket.socket, sockaddr: Any) -> Waits[None]:
    sock.setblocking(False)
    err = sock.connect_ex(sockaddr)
    if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
        yield WaitWrite(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"{os.strerror(err)}: connect to {sockaddr!r}")


def wrap(sock: socket.socket) -> Any:
    """Adopt an existing kernel socket (made non-blocking) as a Stream,
    Listener or DatagramSocket according to its type and state."""
    if sock.type == socket.SOCK_DGRAM:
        return DatagramSocket(sock)
    try:
        accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        accepting = 0
    return Listener(sock) if accepting else Stream(sock)


def socketpair() -> tuple[Stream, Stream]:
    """Two connected Unix streams (handy for tests and wake-ups)."""
    a, b = socket.socketpair()
    return Stream(a), Stream(b)


kernel = KernelNetwork()
listen = kernel.listen
connect = kernel.connect
udp = kernel.udp
unix_listen = kernel.unix_listen
unix_connect = kernel.unix_connect


if _speedups is not None:
    # Stream.recv with no timeout on the default socket layer, compiled: a
    # RecvCall (an awaitable doing what the generator does) instead of a
    # generator per read; and Stream.sendall's first send, in C. The Python
    # methods above stay the specifications and serve every other case
    # (Stream._recv_spec, Stream._sendall_spec).
    _speedups.configure_stream(Stream, globals())
