"""Socket IO over threadlib's user-level TCP/IP stack (iolib.tcp) on a TUN
device, with the same API as ``sockio`` plus Mnet.TCP's extras.

``open_network(...)`` creates a TUN device (the kernel side gets the peer
addresses, the user stack owns the others) and returns a ``UserNetwork``:
``listen``/``connect`` like ``sockio.KernelNetwork``, giving ``Stream`` and
``Listener`` objects with recv/recv_into/recv_exactly/send/sendall/sendfile/
shutdown/close, and the extras ``read``, ``get``, ``really_read``,
``write``, ``write_without_interruption``, ``peers``.

A ``UserTcpWorker`` serves the one new system call, ``TcpWait``: it keeps
the TUN fd in the scheduler's epoll and the stack's next deadline as its
timer. Per epoll event it reads every waiting packet, feeds them all to the
stack, writes every packet the stack produced in one go, and dispatches the
stack's events once. Packets produced by threads (a send, a window update,
a close) are flushed in the scheduler's next poll, batched the same way.

``open_network(..., queues=N)`` creates a multi-queue TUN device instead
and returns a ``MultiQueueNetwork``: made in a parent before it forks N
workers, it gives worker i ``for_queue(i)``, a ``UserNetwork`` with its
own Stack (own random seed: own ISNs and ephemeral ports) on queue i.
Every stack owns the same addresses; the kernel picks the queue, and so
the worker, for each flow it sends (drivers/net/tun.c,
tun_automq_select_queue): the queue a packet of the flow was last
written on, if that was less than ~3 s ago (TUN_FLOW_EXPIRE; at most 4096
flows are remembered), else the flow's symmetric hash modulo the number of
queues.  A connection the kernel side opens is therefore stable: its SYN
is hashed to a queue, that queue's stack answers, and both rules keep
choosing that queue for as long as the number of queues stays the same
(the parent keeps every queue open for the device's life, so a worker
that dies and restarts does not reshuffle the others).  A connection a
worker opens is not: once its flow entry expires (3 s without a packet
written for it, or never made beyond 4096 flows) the replies go where its
hash points, usually another worker's stack, which knows nothing of it and
resets it.  Dropping such segments instead of resetting would only turn
that into a silent stall, and would leave stale flows unreset, so
``connect`` on a queue network is refused with EOPNOTSUPP; open outgoing
connections from a single-queue network or the kernel's stack.  Packets
hashed without ports (ICMP errors, non-first IP fragments) may likewise
reach another queue than their flow.

By default the TUN device is opened with checksum and segmentation
offload (a virtio_net_hdr on every frame): the kernel and the stack trade
TCP packets of up to 64 KiB and neither computes checksums for the other,
which moves 8-10x the bytes per CPU second of plain 1500-byte frames.

This module never blocks the process on the packet path and never reads the
network anywhere but in the worker; a thread waits only in ``TcpWait``,
which the worker withdraws on cancel or timeout. ``close`` and
``write_without_interruption`` never wait at all: what does not fit in the
stack's send buffer is kept and handed to the stack as ACKs make room, so
nothing written is lost.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import os
import random
import select
import socket
import types
from typing import Any, Callable, Iterable

from iolib.packetio import CHECKSUM_TRUSTED, MAX_QUEUES, TunDevice
from iolib.tcp import Stack
from iolib.tcp import errors as tcperr
from iolib.tcp.connection import (
    EV_ACCEPT,
    EV_CLOSED,
    EV_CONNECTED,
    EV_READABLE,
    EV_WRITABLE,
    SYN_RECEIVED,
    SYN_SENT,
)

from .core import timeout as _timeout
from .kernel import Scheduler, Thread, Worker, current_scheduler
from .syscalls import SystemCall

log = logging.getLogger("threadlib.tcpsockio")

__all__ = [
    "open_network",
    "env_network_options",
    "network",
    "UserNetwork",
    "MultiQueueNetwork",
    "UserTcpWorker",
    "Stream",
    "Listener",
    "TcpWait",
    "NetUnreachable",
    "ClosedByPeer",
    "ConnectionRefused",
]

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_NEG_INF = float("-inf")

# The runtime's defaults for every connection: Linux's 200 ms minimum RTO
# (RFC 6298's 1 s makes a single loss on a LAN stall for a second), and
# Nagle off as sockio does for TCP.
DEFAULT_CONN_OPTIONS = {"min_rto": 0.2}


# ---------------------------------------------------------------------------
# Errors


class NetUnreachable(tcperr.NetUnreachable):
    """No route to the destination (errno ENETUNREACH): no local address of
    its family, or outside every route of the network."""


class ClosedByPeer(tcperr.ConnectionReset, BrokenPipeError):
    """The peer reset the connection (errno ECONNRESET): both a
    ConnectionResetError and a BrokenPipeError, so code written for either
    kernel error catches it."""


class ConnectionRefused(tcperr.ConnectionRefused):
    """The peer answered the SYN with a RST (errno ECONNREFUSED)."""


def _translate(exc: BaseException) -> BaseException:
    """A fresh exception for the caller: the stack keeps one error object
    per connection, and raising that same object again and again would
    grow its traceback without end."""
    if isinstance(exc, tcperr.ConnectionRefused):
        return ConnectionRefused(errno.ECONNREFUSED, str(exc))
    if isinstance(exc, tcperr.ConnectionReset):
        return ClosedByPeer(errno.ECONNRESET, str(exc))
    if isinstance(exc, tcperr.NetUnreachable):
        return NetUnreachable(errno.ENETUNREACH, str(exc))
    if isinstance(exc, tcperr.InvalidState):
        return BrokenPipeError(errno.EPIPE, str(exc))
    if isinstance(exc, tcperr.ConnectionTimedOut):
        return tcperr.ConnectionTimedOut(errno.ETIMEDOUT, str(exc))
    if isinstance(exc, tcperr.HostUnreachable):
        return tcperr.HostUnreachable(errno.EHOSTUNREACH, str(exc))
    if isinstance(exc, tcperr.ConnectionAborted):
        return tcperr.ConnectionAborted(errno.ECONNABORTED, str(exc))
    return exc


def _closed_error(what: str) -> OSError:
    return OSError(errno.EBADF, f"{what} is closed")


# ---------------------------------------------------------------------------
# The system call


class TcpWait(SystemCall):
    """Wait until ``socket`` (a Stream or Listener of a UserNetwork) may be
    ready for ``what``: "read", "write", "connect" or "accept". The thread
    then retries its operation; resuming early is harmless."""

    __slots__ = ("socket", "what")

    def __init__(self, socket: Any, what: str) -> None:
        self.socket = socket
        self.what = what


# ---------------------------------------------------------------------------
# The worker


class UserTcpWorker(Worker):
    """Runs a Stack on a TUN device inside a scheduler.

    ``max_batch`` bounds the packets read per epoll event, so a flood on
    the link cannot starve the threads; what is left is read at the next
    poll (the worker's deadline is then "now").
    """

    def __init__(self, device: TunDevice, stack: Stack, wait_class: type, max_batch: int = 1024) -> None:
        self.device = device
        self.stack = stack
        self.wait_class = wait_class
        self.max_batch = max_batch
        self.sched: Scheduler | None = None
        self._clock_now: Callable[[], float] = lambda: 0.0
        self._fd = -1
        self._sockets: dict[Any, Any] = {}  # stack handle -> Stream / Listener
        self._out: collections.deque = collections.deque()  # packets the device refused for now (EAGAIN)
        self._want_out = False
        self.dirty = False  # threads made the stack produce packets or events
        self._more_input = False
        self._waiting = 0
        self.stats = collections.Counter()

    # -- Worker protocol ---------------------------------------------------
    def attach(self, sched: Scheduler) -> dict:
        if self.sched is not None and self.sched is not sched:
            raise RuntimeError("this user network is attached to another scheduler; close that one first")
        self.sched = sched
        self._clock_now = sched.clock.now
        self._fd = self.device.fileno()
        sched.watch_fd(self._fd, _EPOLLIN, self._on_device)
        self.dirty = True  # anything queued while detached goes out at the first poll
        return {self.wait_class: self._wait}

    def now(self) -> float:
        return self._clock_now()

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        waiters = syscall.socket._waiters(syscall.what)
        try:
            waiters.remove(thread)
        except ValueError:
            return
        self._waiting -= 1

    def next_deadline(self) -> float | None:
        if self.dirty or self._more_input:
            return _NEG_INF
        return self.stack.next_deadline()

    def expire(self, now: float) -> None:
        if self._more_input:
            self._more_input = False
            self._read_device(now)
        self.dirty = False
        self.stack.timer(now)
        self._flush()
        self._dispatch()

    def busy(self) -> bool:
        return self._waiting > 0 or self.dirty or self.stack.next_deadline() is not None

    def close(self) -> None:
        """The scheduler is ending: leave its epoll. The stack, its
        connections and the device stay, for a later scheduler."""
        sched = self.sched
        if sched is None:
            return
        # Whatever the last threads wrote (a response, a FIN) leaves now;
        # retransmissions, if any are needed, wait for the next scheduler.
        # UserNetwork.drain() waits for the peers' acknowledgements instead.
        try:
            self.stack.timer(self._clock_now())
            self._flush()
        except OSError:
            pass
        self.sched = None
        if self._fd >= 0:
            try:
                sched.unwatch_fd(self._fd)
            except (OSError, ValueError):
                pass
        self._fd = -1
        for sock in list(self._sockets.values()):
            sock._forget_waiters()
        self._waiting = 0

    # -- waiting -------------------------------------------------------------
    def _wait(self, thread: Thread, sc: TcpWait) -> None:
        sock = sc.socket
        if sock._ready(sc.what):
            self.sched.resume(thread)
            return
        self.sched.suspend(thread, sc)
        sock._waiters(sc.what).append(thread)
        self._waiting += 1

    def _wake(self, waiters: list) -> None:
        if waiters:
            resume = self.sched.resume
            for t in waiters:
                resume(t)
            self._waiting -= len(waiters)
            waiters.clear()

    def _throw(self, waiters: list, exc: BaseException) -> None:
        if waiters:
            for t in waiters:
                self.sched.throw(t, exc)
            self._waiting -= len(waiters)
            waiters.clear()

    # -- the packet path -------------------------------------------------------
    def _on_device(self, events: int) -> None:
        now = self._clock_now()
        if events & _EPOLLOUT:
            self._flush()
        if events & ~_EPOLLOUT:
            self._read_device(now)
        self.dirty = False
        self.stack.timer(now)
        self._flush()
        self._dispatch()

    def _read_device(self, now: float) -> None:
        receive = self.stack.receive
        read_batch = self.device.read_batch
        header = getattr(self.device, "vnet_hdr_size", 0)
        left = self.max_batch
        while left > 0:
            frames = read_batch(min(left, 256))
            if header:
                for frame in frames:
                    receive(now, frame[header:], frame[0] & CHECKSUM_TRUSTED != 0)
            else:
                for frame in frames:
                    receive(now, frame)
            left -= len(frames)
            if len(frames) < 256:
                self.stats["device_reads"] += 1
                return
        # Stopped by the bound, not by an empty queue: read more next poll.
        self._more_input = True

    def _flush(self) -> None:
        packets = self.stack.take_packets()
        out = self._out
        if out:
            out.extend(packets)
            packets = list(out)
            out.clear()
        if not packets:
            return
        written = self.device.send_packets(packets)
        self.stats["packets_out"] += written
        if written < len(packets):
            out.extend(packets[written:])
            if not self._want_out and self.sched is not None:
                self._want_out = True
                self.sched.modify_fd(self._fd, _EPOLLIN | _EPOLLOUT)
        elif self._want_out and self.sched is not None:
            self._want_out = False
            self.sched.modify_fd(self._fd, _EPOLLIN)

    def _dispatch(self) -> None:
        events = self.stack.take_events()
        if not events:
            return
        sockets = self._sockets
        for handle, kind in events:
            sock = sockets.get(handle)
            if sock is None:
                continue  # a connection not accepted yet, or one already closed
            if kind == EV_READABLE:
                self._wake(sock._readers)
            elif kind == EV_WRITABLE:
                sock._writable = True
                if sock._backlog:
                    sock._push_backlog(self._clock_now())
                if not sock._backlog:
                    self._wake(sock._writers)
            elif kind == EV_ACCEPT:
                self._wake(sock._readers)
            elif kind == EV_CONNECTED:
                self._wake(sock._connecters)
            else:
                # refused, reset, eof, error, urgent, closed: everyone retries
                # and meets the news (an error, b"", ...).
                if sock._backlog and handle.error is not None:
                    sock._backlog.clear()
                sock._writable = True
                self._wake(sock._readers)
                self._wake(sock._writers)
                self._wake(sock._connecters)
                if kind == EV_CLOSED:
                    sockets.pop(handle, None)


# ---------------------------------------------------------------------------
# Streams and listeners


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
        self._backlog: collections.deque = collections.deque()  # written, not yet in the stack
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
        return socket.AF_INET6 if len(self._conn.laddr) == 16 else socket.AF_INET

    @property
    def local_address(self) -> tuple[str, int]:
        return self._conn.local

    @property
    def peer_address(self) -> tuple[str, int]:
        return self._conn.remote

    def peers(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """``(local, remote)``, each an ``(address, port)`` pair."""
        return self._conn.local, self._conn.remote

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return -1  # no kernel fd: code that asks is told so, as a closed socket would be

    def set_nodelay(self, on: bool = True) -> None:
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
    def _waiters(self, what: str) -> list:
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
            raise _closed_error("stream")

    @types.coroutine
    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` bytes; b'' once the peer has closed its side."""
        net = self._net
        stack = self._stack
        conn = self._conn
        while True:
            if self._closed:
                raise _closed_error("stream")
            try:
                data = stack.recv(conn, max_bytes, net._clock_now())
            except tcperr.BadArgument:
                raise
            except OSError as exc:
                raise _translate(exc) from None
            if data is not None:
                net.dirty = True
                return data
            if timeout is None:
                yield self._wait_r
            else:
                with _timeout(timeout):
                    yield self._wait_r

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> int:
        """Read into ``buffer`` (up to ``nbytes``, or its length); 0 at end
        of stream."""
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
    def recv_exactly(self, nbytes: int, timeout: float | None = None) -> bytes:
        """Exactly ``nbytes`` bytes, or EOFError if the stream ends first."""
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
    def read(self, buffer: Any, offset: int = 0, length: int | None = None, timeout: float | None = None) -> int:
        """Mnet's read: up to ``length`` bytes into ``buffer[offset:]``;
        the count, 0 at end of stream. Never loses bytes: it asks the
        stack for no more than fits."""
        view = _check_buffer_range(buffer, offset, length)
        if not len(view):
            return 0
        data = yield from self.recv(len(view), timeout)
        view[:len(data)] = data
        return len(data)

    @types.coroutine
    def get(self, timeout: float | None = None) -> bytes:
        """Everything received so far (waiting for at least one byte), as
        the stack's own buffer copy, without a further copy; b'' at end of
        stream."""
        net = self._net
        while True:
            if self._closed:
                raise _closed_error("stream")
            try:
                chunks = self._stack.recv_chunks(self._conn, net._clock_now())
            except OSError as exc:
                raise _translate(exc) from None
            if chunks is not None:
                net.dirty = True
                if chunks == b"":
                    return b""
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            with _timeout(timeout):
                yield self._wait_r

    @types.coroutine
    def really_read(self, buffer: Any, offset: int = 0, length: int | None = None,
                    timeout: float | None = None) -> None:
        """Fill ``buffer[offset:offset+length]`` completely, or raise
        EOFError (the stream ended first) or the connection's error."""
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
    def send(self, data: Any, timeout: float | None = None) -> int:
        """Send some of ``data``; return how many bytes went (at least one
        unless ``data`` is empty)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send() needs a bytes-like object, got {type(data).__name__}")
        net = self._net
        while True:
            if self._closed:
                raise _closed_error("stream")
            if not self._backlog:
                try:
                    n = self._stack.send(net._clock_now(), self._conn, data)
                except OSError as exc:
                    raise _translate(exc) from None
                if n or not len(data):
                    net.dirty = True
                    return n
                self._writable = False
            with _timeout(timeout):
                yield self._wait_w

    @types.coroutine
    def sendall(self, data: Any, timeout: float | None = None) -> None:
        """Send all of ``data`` (waiting for buffer space as needed)."""
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
                    raise _closed_error("stream")
                if not self._backlog:
                    try:
                        n = stack.send(net._clock_now(), conn, view[sent:] if sent else view)
                    except OSError as exc:
                        raise _translate(exc) from None
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
            raise _closed_error("stream")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write_without_interruption() needs a bytes-like object, got {type(data).__name__}")
        n = 0
        if not self._backlog:
            try:
                n = self._stack.send(self._net._clock_now(), self._conn, data)
            except OSError as exc:
                raise _translate(exc) from None
            self._net.dirty = True
        if n < len(data):
            self._backlog.append(bytes(memoryview(data).cast("B")[n:]))
            self._writable = False

    @types.coroutine
    def sendfile(self, file: Any, offset: int = 0, count: int | None = None, timeout: float | None = None) -> int:
        """Send ``count`` bytes (to end of file if None) of ``file`` (an
        object with ``fileno()`` or an fd) from ``offset``: read and send,
        there is no zero-copy path into a user-level stack. Returns the
        bytes sent (fewer only at end of file)."""
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
            exc = _closed_error("stream")
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
        return self._closed

    def fileno(self) -> int:
        return -1

    def _waiters(self, what: str) -> list:
        return self._readers

    def _ready(self, what: str) -> bool:
        return self._closed or bool(self._lst.queue)

    def _forget_waiters(self) -> None:
        self._readers.clear()

    @types.coroutine
    def accept(self, timeout: float | None = None) -> tuple[Stream, tuple[str, int]]:
        """The next connection and its peer ``(address, port)``."""
        net = self._net
        with _timeout(timeout):
            while True:
                if self._closed:
                    raise _closed_error("listener")
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
            net._throw(self._readers, _closed_error("listener"))
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


# ---------------------------------------------------------------------------
# The network object

_WILDCARDS = ("", "0.0.0.0", "::", None)


class UserNetwork:
    """The user-level stack on one TUN device, offering ``listen`` and
    ``connect`` like ``sockio.KernelNetwork``.

    It joins the scheduler of the thread that first uses it (its worker is
    added with ``sched.add_worker``); ``attach(sched)`` does that ahead of
    time. One scheduler at a time; after that scheduler ends, the next one
    to use the network takes it over. ``close()`` resets what is open and
    removes the TUN device.

    ``routes`` are the networks ``connect`` may reach (default: the
    prefixes of the stack's own addresses; pass "0.0.0.0/0" or "::/0" when
    the kernel side forwards further). Anything else raises
    ``NetUnreachable`` at once, as the kernel does without a route.
    """

    name = "user"

    def __init__(self, device: TunDevice, stack: Stack, routes: Iterable[str] | None = None,
                 queue: int | None = None) -> None:
        self.device = device
        self.stack = stack
        self.queue = queue  # the queue index on a multi-queue device (MultiQueueNetwork.for_queue)
        if routes is None:
            self.routes = [i.network for i in stack.interfaces]
        else:
            self.routes = [ipaddress.ip_network(r, strict=False) for r in routes]
        wait_class = type("TcpWait", (TcpWait,), {"__slots__": ()})  # one per network: several may share a scheduler
        self.worker = UserTcpWorker(device, stack, wait_class)
        self._closed = False

    @property
    def addresses(self) -> list[str]:
        """The stack's own addresses."""
        return [str(i.ip) for i in self.stack.interfaces]

    def attach(self, sched: Scheduler | None = None) -> None:
        """Join ``sched`` (default: the running one) now rather than at first use."""
        if self._closed:
            raise _closed_error("user network")
        sched = sched or current_scheduler()
        if sched is None:
            raise RuntimeError("UserNetwork.attach() needs a scheduler: call it from a thread or pass one")
        if self.worker.sched is sched:
            return
        sched.add_worker(self.worker)

    def _ensure(self) -> UserTcpWorker:
        if self.worker.sched is None or self.worker.sched is not current_scheduler():
            self.attach()
        return self.worker

    @types.coroutine
    def listen(self, address: tuple[str, int], backlog: int = 1024, reuse_port: bool = False,
               nodelay: bool = True) -> Listener:
        """A listener on ``(host, port)``: a wildcard host ("", "0.0.0.0",
        "::") means every local address of both families; port 0 picks a
        free one.

        ``reuse_port`` has no effect on the stack itself (a stack serves
        one process and never shares its ports).  On a network made by
        ``MultiQueueNetwork.for_queue`` every worker listens on the same
        port on its own stack and the kernel spreads new connections over
        the queues by flow hash, which is what SO_REUSEPORT does for the
        kernel's stack; pass it there for clarity."""
        worker = self._ensure()
        host, port = address[0], address[1]
        local = None if host in _WILDCARDS else host
        try:
            if port == 0:
                lst = self._listen_any_port(backlog, local)
            else:
                lst = self.stack.listen(port, backlog, local)
        except tcperr.AddressInUse as exc:
            raise OSError(errno.EADDRINUSE, str(exc)) from None
        except tcperr.BadArgument as exc:
            if local is not None and "not local" in str(exc):
                raise OSError(errno.EADDRNOTAVAIL, str(exc)) from None
            raise
        return Listener(worker, lst, nodelay)
        yield  # a generator, like every call that may wait

    def _listen_any_port(self, backlog: int, local: Any) -> Any:
        start = random.randrange(32768, 61000)
        for i in range(61000 - 32768):
            port = 32768 + (start - 32768 + i) % (61000 - 32768)
            try:
                return self.stack.listen(port, backlog, local)
            except tcperr.AddressInUse:
                continue
        raise tcperr.AddressInUse("no free port to listen on")

    def _route(self, addr: str) -> None:
        try:
            ip = ipaddress.ip_address(addr.split("%")[0])
        except ValueError:
            raise ValueError(f"not an IP address: {addr!r}") from None
        if not any(ip.version == net.version and ip in net for net in self.routes):
            raise NetUnreachable(errno.ENETUNREACH, f"network is unreachable: no route to {ip}")

    @types.coroutine
    def connect(self, address: tuple[str, int], timeout: float | None = None, nodelay: bool = True,
                local: Any = None) -> Stream:
        """A connection to ``(host, port)``. Raises ``ConnectionRefused``,
        ``NetUnreachable``, ``TimeoutError``, ... ``local`` is an optional
        ``(address, port)`` to send from."""
        from .sockio import resolve

        if self.queue is not None:
            raise OSError(errno.EOPNOTSUPP, f"connect() is refused on queue {self.queue} of multi-queue TUN device "
                          f"{self.device.name!r}: the kernel steers the replies of a connection opened here by a "
                          "flow entry that expires after ~3 s idle, after which they may reach another worker's "
                          "stack, which resets the connection; connect from a single-queue network instead")
        worker = self._ensure()
        host, port = address[0], address[1]
        last_error: BaseException | None = None
        with _timeout(timeout):
            for family, sockaddr in (yield from resolve(host, port)):
                try:
                    return (yield from self._connect_one(worker, sockaddr[0], port, nodelay, local))
                except OSError as exc:
                    last_error = exc
        assert last_error is not None
        raise last_error

    @types.coroutine
    def _connect_one(self, worker: UserTcpWorker, host: str, port: int, nodelay: bool, local: Any) -> Any:
        self._route(host)
        laddr, lport = (local[0] or None, local[1] or None) if local is not None else (None, None)
        try:
            conn = self.stack.connect(worker.now(), host, port, laddr, lport, nodelay=nodelay)
        except tcperr.BadArgument:
            raise
        except OSError as exc:
            raise _translate(exc) from None
        worker.dirty = True
        stream = Stream(worker, conn)
        wait = worker.wait_class(stream, "connect")
        try:
            while conn.state in (SYN_SENT, SYN_RECEIVED) and conn.error is None:
                yield wait
            if conn.error is not None:
                raise _translate(conn.error)
            if stream._closed:
                raise _closed_error("stream")
        except BaseException:
            stream.abort()
            raise
        return stream

    @types.coroutine
    def drain(self, timeout: float = 10.0) -> bool:
        """Wait (up to ``timeout``) until every connection's sent data is
        acknowledged and its FIN, if closed, too: call it before leaving
        the scheduler, which is the only thing that moves this stack.
        Returns whether everything drained."""
        from .core import sleep

        deadline = self.worker.now() + timeout
        while True:
            pending = [c for c in self.stack.connections()
                       if c.state not in ("CLOSED", "TIME-WAIT", "FIN-WAIT-2", "LISTEN")
                       and (len(c.sndbuf) or c.state in ("FIN-WAIT-1", "CLOSING", "LAST-ACK"))]
            if not pending and not any(s._backlog for s in self.worker._sockets.values()
                                       if isinstance(s, Stream)):
                return True
            if self.worker.now() >= deadline:
                return False
            yield from sleep(0.01)

    def close(self) -> None:
        """Reset every connection, stop listening, remove the TUN device.
        Call it from outside the scheduler or from a thread; never waits."""
        if self._closed:
            return
        self._closed = True
        worker = self.worker
        now = worker.now()
        for handle, sock in list(worker._sockets.items()):
            if isinstance(sock, Listener):
                sock.close()
            else:
                sock.abort()
        for conn in self.stack.connections():
            try:
                self.stack.abort(now, conn)
            except OSError:
                pass
        try:
            worker._flush()
        except OSError:
            pass
        sched = worker.sched
        if sched is not None:
            worker.close()
        self.device.close()

    def __enter__(self) -> UserNetwork:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        queue = f" queue {self.queue}" if self.queue is not None else ""
        return f"<UserNetwork {self.device.name}{queue} {', '.join(self.addresses)}>"


class MultiQueueNetwork:
    """A multi-queue TUN device and what each queue's stack needs: the
    handle a parent makes (``open_network(..., queues=N)``) before it forks
    N workers.  It does not serve by itself; worker i calls
    ``for_queue(i)`` for its own ``UserNetwork``.

    Keep it open in the parent while the workers run: its fds keep every
    queue attached, so the number of queues, and with it the kernel's
    hash steering, stays the same when a worker dies and is restarted.
    Flows steered to a queue nobody reads (a worker between death and
    restart) are lost until the new worker reads it, then reset.
    ``close()`` closes this process's queue fds; the kernel removes the
    device once no process holds any of them.
    """

    name = "user"

    def __init__(self, devices: list[TunDevice], make_stack: Callable[[int], Stack],
                 addresses: list[str], routes: Iterable[str] | None = None) -> None:
        self.devices = list(devices)
        self._make_stack = make_stack
        self._addresses = list(addresses)
        self.routes = routes
        self._taken: dict[int, int] = {}  # queue -> pid of the process that took it
        self._closed = False

    @property
    def queues(self) -> int:
        return len(self.devices)

    @property
    def addresses(self) -> list[str]:
        """The addresses every queue's stack owns."""
        return [a.split("/")[0] for a in self._addresses]

    @property
    def device_name(self) -> str:
        return self.devices[0].name

    def for_queue(self, index: int) -> UserNetwork:
        """A ``UserNetwork`` on queue ``index`` with a new Stack of its own.
        Call it in the process that will serve that queue (after fork);
        each queue may be taken once per process, since two stacks reading
        one queue would each see half of every connection."""
        if self._closed:
            raise _closed_error("multi-queue user network")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.devices):
            raise ValueError(f"queue index must be an int in 0..{len(self.devices) - 1}, got {index!r}")
        if self._taken.get(index) == os.getpid():
            raise RuntimeError(f"queue {index} of {self.device_name!r} already has a network in this process")
        device = self.devices[index]
        if device.closed:
            raise _closed_error(f"queue {index} of TUN device {self.device_name!r}")
        self._taken[index] = os.getpid()
        return UserNetwork(device, self._make_stack(index), self.routes, queue=index)

    def listen(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a MultiQueueNetwork ({self.queues} queues on {self.device_name!r}) does not serve: "
                           "call for_queue(i) in worker i and listen on that network")

    connect = listen

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every queue fd this process holds (networks from
        ``for_queue`` included); the device goes with the last holder."""
        if self._closed:
            return
        self._closed = True
        for device in self.devices:
            device.close()

    def __enter__(self) -> MultiQueueNetwork:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MultiQueueNetwork {self.device_name} queues={self.queues} {', '.join(self.addresses)}>"


def open_network(
    tun: str = "tl0",
    peer: str | None = "10.77.0.1/24",
    address: str | None = "10.77.0.2/24",
    peer6: str | None = "fd77::1/64",
    address6: str | None = "fd77::2",
    netns: str | None = None,
    *,
    mtu: int = 1500,
    routes: Iterable[str] | None = None,
    seed: int | None = None,
    offload: bool = True,
    queues: int = 1,
    **conn_options: Any,
) -> UserNetwork | MultiQueueNetwork:
    """Create TUN device ``tun`` (in namespace ``netns`` if given) whose
    kernel side has ``peer``/``peer6``, and a user-level stack owning
    ``address``/``address6`` (without a prefix length they take the
    peer's). Returns a ``UserNetwork``; its ``close()`` removes the device.

    ``conn_options`` are iolib.tcp ConnOptions for every connection
    (sndbuf, rcvbuf, min_rto, ...); ``min_rto`` defaults to 0.2 s.
    Creating the device makes brief blocking netlink calls: do it at
    start-up, before or between scheduler runs, not on a hot path.

    ``offload`` (on by default) opens the device with a virtio_net_hdr
    and checksum + TCP segmentation offload: the kernel hands over and
    takes TCP packets of up to 64 KiB, and neither side computes TCP
    checksums for the other (the stack takes the kernel's word for its
    packets and leaves its own checksums to the kernel).

    ``queues`` above 1 (up to 256) makes a multi-queue device with that
    many queues and returns a ``MultiQueueNetwork`` instead: make it
    before forking the workers and give worker i ``for_queue(i)``.  With
    ``seed``, queue i's stack is seeded from (seed, i).
    """
    if not isinstance(queues, int) or isinstance(queues, bool) or not 1 <= queues <= MAX_QUEUES:
        raise ValueError(f"queues must be an int in 1..{MAX_QUEUES}, got {queues!r}")
    pairs = [(peer, address), (peer6, address6)]
    kernel_side: list[str] = []
    user_side: list[str] = []
    for kernel_addr, user_addr in pairs:
        if user_addr is None and kernel_addr is None:
            continue
        if kernel_addr is None:
            raise ValueError(f"user address {user_addr!r} needs a kernel-side peer address of the same family")
        peer_if = ipaddress.ip_interface(kernel_addr)
        if user_addr is None:
            kernel_side.append(kernel_addr)
            continue
        user_if = ipaddress.ip_interface(user_addr if "/" in user_addr
                                         else f"{user_addr}/{peer_if.network.prefixlen}")
        if user_if.version != peer_if.version:
            raise ValueError(f"{user_addr!r} and {kernel_addr!r} are of different IP versions")
        if user_if.ip == peer_if.ip:
            raise ValueError(f"the user stack and the kernel side cannot share the address {user_if.ip}")
        kernel_side.append(kernel_addr)
        user_side.append(str(user_if))
    if not user_side:
        raise ValueError("open_network() needs at least one user-stack address (address or address6)")
    options = dict(DEFAULT_CONN_OPTIONS)
    options.update(conn_options)
    if queues == 1:
        stack = Stack(user_side, rng=random.Random(seed if seed is not None else os.urandom(16)), mtu=mtu,
                      offload=offload, **options)
        device = TunDevice(tun, netns=netns, addresses=kernel_side, mtu=mtu, vnet_hdr=offload)
        return UserNetwork(device, stack, routes)

    def make_stack(index: int) -> Stack:
        # Fresh entropy per call, so workers forked from one parent never
        # share ISNs or ephemeral ports.
        rng = random.Random(f"{seed}/{index}" if seed is not None else os.urandom(16))
        return Stack(user_side, rng=rng, mtu=mtu, offload=offload, **options)

    make_stack(0)  # bad options fail here, before the device exists
    if routes is not None:
        routes = [str(ipaddress.ip_network(r, strict=False)) for r in routes]
    devices = [TunDevice(tun, netns=netns, addresses=kernel_side, mtu=mtu, vnet_hdr=offload, multi_queue=True)]
    try:
        for _ in range(queues - 1):
            devices.append(devices[0].open_queue())
    except BaseException:
        for device in devices:
            device.close()
        raise
    return MultiQueueNetwork(devices, make_stack, user_side, routes)


_default: UserNetwork | None = None


def env_network_options() -> dict[str, Any]:
    """``open_network`` keyword arguments from the environment: TL_TUN
    (tl0), TL_PEER (10.77.0.1/24), TL_ADDRESS (10.77.0.2/24), TL_PEER6
    (fd77::1/64), TL_ADDRESS6 (fd77::2), TL_NETNS (none: the device
    appears in the caller's namespace); an empty value means none."""
    env = os.environ.get
    return dict(
        tun=env("TL_TUN", "tl0"),
        peer=env("TL_PEER", "10.77.0.1/24") or None,
        address=env("TL_ADDRESS", "10.77.0.2/24") or None,
        peer6=env("TL_PEER6", "fd77::1/64") or None,
        address6=env("TL_ADDRESS6", "fd77::2") or None,
        netns=env("TL_NETNS") or None,
    )


def network() -> UserNetwork:
    """The process's default user network, made on first call from the
    environment (see ``env_network_options``)."""
    global _default
    if _default is None or _default._closed:
        _default = open_network(**env_network_options())
    return _default
