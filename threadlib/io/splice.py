"""Socket-to-socket transfer loops for proxies, zero-copy where possible.

After the Haskell ``splice`` package: ``splice(src, dst)`` moves data from
one socket to the other until end of file; ``proxy(a, b)`` runs both
directions at once and propagates half-close (end of file from one side
becomes ``shutdown(SHUT_WR)`` on the other).

Two implementations, one API:

- **zero-copy** (Linux, both ends ``sockio.Stream``): ``splice(2)`` from the
  source socket into a pipe and from the pipe to the destination socket;
  the data never enters user space. Each direction has its own pipe,
  enlarged to 1 MiB, taken from a small per-scheduler pool of clean pipes.
- **zero-copy from a pipe** (Linux, the source a pipe's read end, such as
  a child process's ``stdout``, the destination a ``sockio.Stream``): one
  ``splice(2)`` straight from the pipe to the socket, no pipe of our own.
- **copy** (everywhere else, and when asked with ``fallback=True``): one
  preallocated buffer per direction, ``recv_into`` then ``sendall``. Used for
  objects that are not kernel sockets (``tcpsockio`` connections, simulated
  networks: anything that is not a ``sockio.Stream``).

``zero_copy(src, dst)`` tells which one a call will use.

The waiting discipline (the mechanism is :mod:`iolib.nbio.splice`): a
direction fills its pipe with one splice from the source, then drains the
pipe completely into the destination, waiting for the destination to be
writable when it cannot take more. It waits for the source only when a
fill found the source empty, and it only ever fills an *empty* pipe: a
pipe's capacity counts slots, not bytes, so EAGAIN into a pipe that holds
something may mean "pipe full" while the source is still readable, and
waiting for the source then stalls or spins (edge-triggered epoll sends no
new edge for data already there). An empty pipe cannot be full, so here
EAGAIN always means the source is empty. Every wait follows an EAGAIN on
that fd, as the IO worker's edge-triggered registration requires. The
pipe fds are never waited on (one thread owns a pipe), but they are
"forgotten" in the scheduler before being closed, like any fd. A pipe left
with bytes in it (the destination failed, or the transfer was cancelled
mid-drain) is closed, never pooled.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import struct
import termios
import types
from typing import Any

from iolib.nbio import WOULD_BLOCK
from iolib.nbio import splice as _nb

from ..calls import join_any, now, spawn
from .._kernel import ThreadCancelled, Worker, current_scheduler
from . import sockio
from .sockio import Stream
from ..syscalls import WaitRead, WaitWrite, Waits

__all__ = [
    "AVAILABLE",
    "DEFAULT_PIPE_SIZE",
    "DEFAULT_COPY_CHUNK",
    "zero_copy",
    "splice",
    "proxy",
    "Transfer",
    "ProxyResult",
    "pipe_pool",
]

log = logging.getLogger("threadlib.io.splice")

#: True where splice(2) exists (Linux): the zero-copy path can be used.
AVAILABLE: bool = _nb.AVAILABLE
DEFAULT_PIPE_SIZE = _nb.DEFAULT_PIPE_SIZE
_MOVE = getattr(os, "SPLICE_F_MOVE", 0)
#: Buffer size of the copy loop (one buffer per direction).
DEFAULT_COPY_CHUNK = 256 * 1024


def zero_copy(src: Any, dst: Any = None, *, fallback: bool = False) -> bool:
    """Whether ``splice(src, dst)`` (or ``proxy(src, dst)``) moves data
    with splice(2) (True) or through a user-space buffer (False)."""
    if fallback or not AVAILABLE:
        return False
    if dst is not None and _is_pipe(src):
        return isinstance(dst, Stream) and _nb.splice_capable(dst.socket)
    for end in (src, dst) if dst is not None else (src,):
        if not isinstance(end, Stream) or not _nb.splice_capable(end.socket):
            return False
    return not _ring_holds(src)


def _ring_holds(src: Any) -> bool:
    """Whether ``src`` is an io_uring stream whose ring holds bytes of it, or
    a receive request that takes the next ones: only its own recv keeps
    them in order (neither splice(2) nor a recv(2) on its socket would)."""
    rx = getattr(src, "_rx", None)
    return rx is not None and bool(rx.pending)


def _is_pipe(end: Any) -> bool:
    """Whether ``end`` is the read end of a pipe (an object with ``fileno``
    and ``recv``, like a child process's ``stdout``), which splice(2)
    reads without a pipe of ours in between."""
    if isinstance(end, Stream) or not hasattr(end, "recv"):
        return False
    try:
        return stat.S_ISFIFO(os.fstat(end.fileno()).st_mode)
    except (AttributeError, OSError, TypeError, ValueError):
        return False


class Transfer:
    """What one direction moved: ``bytes`` delivered to the destination,
    ``waits`` (times the loop waited for a socket), ``zero_copy``, ``eof``
    (the source ended cleanly), ``error`` (the exception that ended it)."""

    __slots__ = ("bytes", "waits", "zero_copy", "eof", "error")

    def __init__(self) -> None:
        self.bytes = 0
        self.waits = 0
        self.zero_copy = False
        self.eof = False
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        how = "splice" if self.zero_copy else "copy"
        end = "eof" if self.eof else f"error={self.error!r}" if self.error else "running"
        return f"<Transfer {self.bytes} B {how} waits={self.waits} {end}>"


class ProxyResult:
    """The outcome of ``proxy(a, b)``: bytes each way, and the first error
    (None when both directions ended with end of file)."""

    __slots__ = ("a_to_b", "b_to_a", "zero_copy", "error", "seconds")

    def __init__(self, ab: Transfer, ba: Transfer, seconds: float) -> None:
        self.a_to_b = ab
        self.b_to_a = ba
        self.zero_copy = ab.zero_copy and ba.zero_copy
        # The error that ended the pair, not the cancellation it caused in
        # the other direction.
        errors = [e for e in (ab.error, ba.error) if e is not None]
        real = [e for e in errors if not isinstance(e, ThreadCancelled)]
        self.error = real[0] if real else errors[0] if errors else None
        self.seconds = seconds

    def __repr__(self) -> str:
        return (f"<ProxyResult a->b {self.a_to_b.bytes} B, b->a {self.b_to_a.bytes} B, "
                f"{'splice' if self.zero_copy else 'copy'}, error={self.error!r}>")


# ---------------------------------------------------------------------------
# The per-scheduler pool of clean pipes


class _PipePoolWorker(Worker):
    """Holds a scheduler's pool of clean pipes and closes it when the
    scheduler shuts down. Serves no system call and never wakes a thread."""

    def __init__(self, sched: Any, pipe_size: int, max_idle: int) -> None:
        self.pool = _nb.PipePool(pipe_size, max_idle, forget=sched.forget_fd)

    def busy(self) -> bool:
        return False

    def close(self) -> None:
        self.pool.close()


def pipe_pool(sched: Any = None, pipe_size: int = DEFAULT_PIPE_SIZE, max_idle: int = 32) -> _nb.PipePool:
    """The pool of clean pipes of ``sched`` (the running scheduler by
    default), created on first use; its idle pipes are closed when the
    scheduler ends. ``pipe_size``/``max_idle`` apply only on creation."""
    sched = sched or current_scheduler()
    if sched is None:
        raise RuntimeError("pipe_pool() needs a running threadlib scheduler")
    for w in sched.workers:
        if type(w) is _PipePoolWorker:
            return w.pool
    worker = _PipePoolWorker(sched, pipe_size, max_idle)
    sched.add_worker(worker)
    return worker.pool


# ---------------------------------------------------------------------------
# One direction


@types.coroutine
def splice(src: Any, dst: Any, chunk_size: int | None = None, *, fallback: bool = False,
           half_close: bool = False, stats: Transfer | None = None) -> Waits[int]:
    """Move data from ``src`` to ``dst`` until ``src`` reaches end of file;
    return the bytes moved. Errors are raised (ConnectionResetError,
    BrokenPipeError, ...). ``stats`` (a :class:`Transfer`), if given, is
    filled in when the call ends, by an error or a cancellation too.
    ``half_close`` shuts down ``dst``'s sending side once everything has
    been delivered. Neither socket is closed.

    Zero-copy when ``zero_copy(src, dst, fallback=fallback)`` says so and a
    pipe can be had (out of fds, it copies instead). ``chunk_size`` bounds
    one splice into the pipe (default: the pipe's size, 1 MiB), or is the
    copy buffer's size (default 256 KiB).
    """
    if stats is None:
        stats = Transfer()
    pool: _nb.PipePool | None = None
    pipe: _nb.PipePair | None = None
    if zero_copy(src, dst, fallback=fallback) and not _is_pipe(src):
        pool = pipe_pool()
        try:
            pipe = pool.get()
        except OSError as exc:
            # Out of fds or pipe memory: copying needs neither.
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
            log.warning("no pipe for splice (%s); copying instead", exc.strerror)
    from_pipe = pipe is None and zero_copy(src, dst, fallback=fallback) and _is_pipe(src)
    stats.zero_copy = pipe is not None or from_pipe
    try:
        if from_pipe:
            yield from _splice_from_pipe(src, dst, chunk_size, stats)
        elif pool is not None and pipe is not None:
            yield from _splice_streams(src, dst, chunk_size, stats, pool, pipe)
        elif isinstance(src, Stream) and isinstance(dst, Stream) and not _ring_holds(src):
            yield from _copy_streams(src, dst, chunk_size or DEFAULT_COPY_CHUNK, stats)
        else:
            yield from _copy_generic(src, dst, chunk_size or DEFAULT_COPY_CHUNK, stats)
        stats.eof = True
        if half_close:
            yield from _shutdown_write(dst)
    except BaseException as exc:
        stats.error = exc
        raise
    return stats.bytes


@types.coroutine
def _splice_streams(src: Stream, dst: Stream, chunk_size: int | None, stats: Transfer,
                    pool: _nb.PipePool, pipe: _nb.PipePair) -> Waits[Any]:
    src_fd, dst_fd = src.fileno(), dst.fileno()
    wait_src = WaitRead(src_fd)
    wait_dst = WaitWrite(dst_fd)
    chunk = chunk_size or pipe.capacity
    fill_from = pipe.fill_from
    drain_to = pipe.drain_to
    moved = 0
    waits = 0
    try:
        while True:
            # The pipe is empty here, so WOULD_BLOCK means the source is.
            n = fill_from(src_fd, chunk)
            if n is WOULD_BLOCK:
                if not pipe.fill:  # (always: kept so a change cannot spin)
                    waits += 1
                    yield wait_src
                    continue
            # Drain all of it, waiting for the destination as needed: the
            # next fill must start from an empty pipe again.
            while pipe.fill:
                m = drain_to(dst_fd)
                if m is WOULD_BLOCK:
                    waits += 1
                    yield wait_dst
                    continue
                moved += m
            if n == 0:  # end of file, and everything delivered
                return
    finally:
        stats.bytes += moved
        stats.waits += waits
        # A pipe with bytes in it (the destination failed, or we were
        # cancelled mid-drain) is closed; a clean one goes back to the pool.
        pool.put(pipe)


@types.coroutine
def _splice_from_pipe(src: Any, dst: Stream, chunk_size: int | None, stats: Transfer) -> Waits[Any]:
    """Pipe to socket in one splice(2) per step. EAGAIN means the pipe is
    empty or the socket full; the pipe's byte count (FIONREAD) tells which
    to wait for. Bytes can land in the pipe between the EAGAIN and the
    count: then the socket may well have room, and a wait for it would
    never see an edge (it is writable already), so the splice is tried
    once more first; only a second EAGAIN with bytes waiting means a full
    socket. An empty pipe's wait cannot miss data that arrives after the
    count: that raises a new edge."""
    buffered = getattr(src, "buffered", 0)
    if buffered:  # read ahead by the source (a readline): it goes first
        data = yield from src.recv(buffered)
        yield from dst.sendall(data)
        stats.bytes += len(data)
    src_fd, dst_fd = src.fileno(), dst.fileno()
    wait_src = WaitRead(src_fd)
    wait_dst = WaitWrite(dst_fd)
    chunk = chunk_size or DEFAULT_PIPE_SIZE
    moved = 0
    waits = 0
    try:
        while True:
            n = _nb.splice(src_fd, dst_fd, chunk, _MOVE)
            if n is WOULD_BLOCK:
                if not _pipe_pending(src_fd):
                    waits += 1
                    yield wait_src
                    continue
                n = _nb.splice(src_fd, dst_fd, chunk, _MOVE)
                if n is WOULD_BLOCK:
                    waits += 1
                    yield wait_dst
                    continue
            if n == 0:  # the writer closed its end and the pipe is empty
                return
            moved += n
    finally:
        stats.bytes += moved
        stats.waits += waits


def _pipe_pending(fd: int) -> int:
    """Bytes in the pipe ``fd``, from the kernel (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


@types.coroutine
def _copy_streams(src: Stream, dst: Stream, chunk_size: int, stats: Transfer) -> Waits[Any]:
    """The copy loop on kernel sockets, straight on the sockets through
    sockio's socket layer (its calls, fetched once: no method call per
    step, and a recording sees every byte): one buffer, recv_into, send
    until all is sent."""
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    rsock, wsock = src.socket, dst.socket
    recv_into, send = sockio._recv_into, sockio._send

    wait_src = WaitRead(src.fileno())
    wait_dst = WaitWrite(dst.fileno())
    moved = 0
    waits = 0
    try:
        while True:
            try:
                n = recv_into(rsock, buf, 0)
            except BlockingIOError:
                waits += 1
                yield wait_src
                continue
            if not n:
                return
            try:
                sent = send(wsock, view[:n])
            except BlockingIOError:
                sent = 0
            while sent < n:
                waits += 1
                yield wait_dst
                try:
                    sent += send(wsock, view[sent:n])
                except BlockingIOError:
                    pass
            moved += n
    finally:
        view.release()
        stats.bytes += moved
        stats.waits += waits


@types.coroutine
def _copy_generic(src: Any, dst: Any, chunk_size: int, stats: Transfer) -> Waits[Any]:
    """The copy loop on anything with ``recv_into``/``recv`` and ``sendall``
    methods that may wait (tcpsockio connections, simulated sockets, a
    Stream paired with one of those, an io_uring stream whose ring holds
    its next bytes)."""
    recv_into = getattr(src, "recv_into", None)
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    try:
        while True:
            if recv_into is not None:
                n = yield from _maybe_wait(recv_into(view))
                if not n:
                    return
                data = view[:n]
            else:
                data = yield from _maybe_wait(src.recv(chunk_size))
                n = len(data)
                if not n:
                    return
            yield from _maybe_wait(dst.sendall(data))
            stats.bytes += n
    finally:
        view.release()


@types.coroutine
def _maybe_wait(result: Any) -> Waits[Any]:
    """``yield from`` a call's result if it is a generator or coroutine
    (a call that may wait), else return it as is."""
    if isinstance(result, types.GeneratorType):
        return (yield from result)
    if isinstance(result, types.CoroutineType):
        return (yield from result.__await__())
    return result


@types.coroutine
def _shutdown_write(dst: Any) -> Waits[Any]:
    try:
        result = dst.shutdown(socket.SHUT_WR)
    except TypeError:
        result = dst.shutdown()  # APIs whose shutdown() takes no direction
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET):
            raise
        return
    yield from _maybe_wait(result)


# ---------------------------------------------------------------------------
# Both directions


@types.coroutine
def proxy(a: Any, b: Any, chunk_size: int | None = None, *, fallback: bool = False) -> Waits[ProxyResult]:
    """Move data both ways between ``a`` and ``b`` until both directions
    have ended; return a :class:`ProxyResult`.

    End of file from one side becomes ``shutdown(SHUT_WR)`` on the other
    (half-close), and the other direction carries on. An error in one
    direction (a reset, a broken pipe) ends the other as well, at once;
    it is reported in ``result.error``, not raised. Neither socket is
    closed: the caller closes both (after an error, an abortive close,
    SO_LINGER 0, passes the reset on to the other peer). A timeout or a
    cancellation of the caller cancels both directions and waits for them
    to end before it is raised.
    """
    started = now()
    ab, ba = Transfer(), Transfer()
    ab.zero_copy = ba.zero_copy = zero_copy(a, b, fallback=fallback)
    t_ab = yield from spawn(_direction(a, b, chunk_size, fallback, ab), name="splice a->b")
    t_ba = yield from spawn(_direction(b, a, chunk_size, fallback, ba), name="splice b->a")
    running = [t_ab, t_ba]
    try:
        while running:
            done = yield from join_any(running)
            running.remove(done)
            if (ab.error or ba.error) is not None:
                for t in running:
                    yield from t.cancel()
                running.clear()
    finally:
        for t in running:  # we were cancelled: end both directions first
            yield from t.cancel()
    return ProxyResult(ab, ba, now() - started)


@types.coroutine
def _direction(src: Any, dst: Any, chunk_size: int | None, fallback: bool, stats: Transfer) -> Waits[Any]:
    try:
        yield from splice(src, dst, chunk_size, fallback=fallback, half_close=True, stats=stats)
    except ThreadCancelled:
        raise
    except Exception:
        pass  # kept in stats.error, reported by proxy()
