"""Zero-copy socket-to-socket transfer through a pipe: the non-blocking part.

On Linux, ``splice(2)`` moves data between a file descriptor and a pipe
without copying it through user space: socket -> pipe, then pipe -> socket.
This module holds the mechanism only. Every step makes one non-blocking
system call and returns a byte count, 0 at end of file, or ``WOULD_BLOCK``
(from :mod:`iolib.nbio`) together with *which side* would block, so the
caller knows what to wait for. Nothing here waits, loops on EAGAIN, or
knows about threads (threadlib.io.splice holds the loops that wait).

Things measured on Linux 6.x that shape the API:

- ``SPLICE_F_NONBLOCK`` makes only the *pipe* side non-blocking; a socket
  end blocks unless the socket itself is O_NONBLOCK. Callers must pass
  non-blocking sockets.
- A pipe's capacity counts *slots* (one per page or skb fragment), not
  bytes: a 1 MiB pipe can be full with far fewer bytes in it. EAGAIN from
  socket -> pipe therefore means "socket empty" *or* "pipe full" while the
  socket is still readable. :meth:`PipePair.fill_from` tells them apart
  (an empty pipe cannot be full; otherwise it polls the pipe's write end),
  and records the answer in ``blocked``. Waiting for the socket when the
  pipe was full makes a loop spin (with edge-triggered epoll the socket is
  already readable and no new edge comes until more data arrives).
- ``SPLICE_F_MORE`` on pipe -> socket corks the socket like MSG_MORE;
  on the last chunk it holds the data back for ~200 ms. It is off unless
  asked for.
- After an error (the peer reset, the destination closed) bytes can be
  left in the pipe. Such a pipe is *dirty*: close it, never reuse it.
  :class:`PipePool` refuses dirty pipes (and checks with FIONREAD).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
from typing import Any, Callable

from . import WOULD_BLOCK

__all__ = [
    "AVAILABLE",
    "DEFAULT_PIPE_SIZE",
    "SRC",
    "DST",
    "PIPE_FULL",
    "PIPE_EMPTY",
    "splice",
    "splice_capable",
    "PipePair",
    "PipePool",
]

#: Whether this platform has splice(2) (Linux, Python 3.10+).
AVAILABLE: bool = sys.platform.startswith("linux") and hasattr(os, "splice")

#: Pipe size that used the least CPU per GB moved on the machines measured
#: (64 KiB pipes cost ~2x more system calls; beyond 1 MiB nothing is gained,
#: and 1 MiB is the default /proc/sys/fs/pipe-max-size).
DEFAULT_PIPE_SIZE = 1 << 20

# Which side of a step would block (``PipePair.blocked`` after WOULD_BLOCK).
SRC = "src"  # the source has no data: wait until it is readable
DST = "dst"  # the destination is full: wait until it is writable
PIPE_FULL = "pipe-full"  # no free slot in the pipe: drain it first
PIPE_EMPTY = "pipe-empty"  # nothing in the pipe: fill it first

if AVAILABLE:
    _F_MOVE = os.SPLICE_F_MOVE
    _F_NONBLOCK = os.SPLICE_F_NONBLOCK
    _F_MORE = os.SPLICE_F_MORE
    _IN_FLAGS = _F_MOVE | _F_NONBLOCK
    _splice = os.splice
else:  # pragma: no cover - exercised only off Linux
    _F_MOVE = _F_NONBLOCK = _F_MORE = _IN_FLAGS = 0
    _splice = None

_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named here for Pythons that lack it
_F_GETPIPE_SZ = 1032
_FIONREAD = 0x541B  # termios.FIONREAD on Linux


def splice(fd_in: int, fd_out: int, count: int, flags: int = 0) -> Any:
    """One ``splice(2)``: bytes moved, 0 at end of input, or WOULD_BLOCK.
    ``SPLICE_F_NONBLOCK`` is always added (it affects only the pipe end)."""
    try:
        return _splice(fd_in, fd_out, count, flags=flags | _F_NONBLOCK)
    except BlockingIOError:
        return WOULD_BLOCK


def splice_capable(sock: Any) -> bool:
    """Whether ``sock`` (a ``socket.socket``) can be spliced to and from a
    pipe: a kernel stream socket (TCP over IPv4/IPv6, or Unix) on Linux."""
    if not AVAILABLE or not isinstance(sock, socket.socket):
        return False
    try:
        return sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
    except OSError:
        return False


class PipePair:
    """A pipe used as the in-kernel buffer of one transfer direction.

    ``fill`` counts the bytes spliced in and not yet spliced out (kept from
    the return values, no system call); ``capacity`` is the pipe size in
    bytes as the kernel reports it (its slot count times the page size).
    ``blocked`` says which side the last step that returned WOULD_BLOCK
    waits for (SRC, DST, PIPE_FULL or PIPE_EMPTY). ``dirty`` is set when a
    step failed with bytes still in the pipe, or the pipe is closed.
    """

    __slots__ = ("rfd", "wfd", "capacity", "fill", "blocked", "dirty", "_poll")

    def __init__(self, size: int = DEFAULT_PIPE_SIZE) -> None:
        if not AVAILABLE:
            raise OSError(errno.ENOSYS, "splice(2) is not available on this platform")
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.capacity = _set_pipe_size(self.wfd, size)
        except BaseException:
            os.close(self.rfd)
            os.close(self.wfd)
            raise
        self.fill = 0
        self.blocked: str | None = None
        self.dirty = False
        self._poll: Any = None

    # -- the two steps ------------------------------------------------------
    def fill_from(self, src_fd: int, max_bytes: int) -> Any:
        """Splice up to ``max_bytes`` from ``src_fd`` (a non-blocking socket)
        into the pipe. Returns the bytes moved, 0 at end of the source, or
        WOULD_BLOCK with ``blocked`` set to SRC (the source is empty) or
        PIPE_FULL (no free slot; the source may still be readable)."""
        try:
            n = _splice(src_fd, self.wfd, max_bytes, flags=_IN_FLAGS)
        except BlockingIOError:
            # EAGAIN is ambiguous. An empty pipe has every slot free, so
            # then it was the socket; otherwise ask the pipe (poll on its
            # write end reports POLLOUT only while a slot is free).
            if self.fill and not self.writable():
                self.blocked = PIPE_FULL
            else:
                self.blocked = SRC
            return WOULD_BLOCK
        except OSError:
            if self.fill:
                self.dirty = True
            raise
        self.fill += n
        self.blocked = None
        return n

    def drain_to(self, dst_fd: int, max_bytes: int | None = None, more: bool = False) -> Any:
        """Splice up to ``max_bytes`` (default: everything in the pipe) from
        the pipe to ``dst_fd`` (a non-blocking socket). Returns the bytes
        moved, or WOULD_BLOCK with ``blocked`` set to DST (the socket's send
        buffer is full) or PIPE_EMPTY. ``more`` passes SPLICE_F_MORE (more
        data follows: the socket may hold a partial segment back); never
        set it on the last chunk, which it delays by ~200 ms."""
        fill = self.fill
        if not fill:
            self.blocked = PIPE_EMPTY
            return WOULD_BLOCK
        count = fill if max_bytes is None or max_bytes > fill else max_bytes
        try:
            n = _splice(self.rfd, dst_fd, count, flags=(_IN_FLAGS | _F_MORE) if more else _IN_FLAGS)
        except BlockingIOError:
            self.blocked = DST
            return WOULD_BLOCK
        except OSError:
            self.dirty = True
            raise
        if not n:  # cannot happen with bytes in the pipe; never loop on it
            self.dirty = True
            raise OSError(errno.EIO, "splice moved nothing out of a non-empty pipe")
        self.fill = fill - n
        self.blocked = None
        return n

    # -- inspection -----------------------------------------------------------
    def writable(self) -> bool:
        """Whether the pipe has a free slot (one zero-timeout poll)."""
        p = self._poll
        if p is None:
            p = self._poll = select.poll()
            p.register(self.wfd, select.POLLOUT)
        return bool(p.poll(0))

    def pending(self) -> int:
        """Bytes really in the pipe, from the kernel (FIONREAD)."""
        import fcntl

        return struct.unpack("i", fcntl.ioctl(self.rfd, _FIONREAD, b"\0\0\0\0"))[0]

    @property
    def clean(self) -> bool:
        """Empty and never failed: safe to reuse for another transfer."""
        return not self.dirty and self.fill == 0 and self.rfd >= 0

    def discard(self) -> int:
        """Throw away whatever is in the pipe (read into user space and
        dropped); returns the bytes discarded. For callers that want to
        reuse a pipe after an error; the loops here close dirty pipes."""
        dropped = 0
        while True:
            try:
                data = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            dropped += len(data)
        self.fill = 0
        self.dirty = False
        return dropped

    def close(self, forget: Callable[[int], None] | None = None) -> None:
        """Close both ends; ``forget(fd)`` is called first for each (to take
        the fd out of an event loop that may have registered it)."""
        rfd, wfd = self.rfd, self.wfd
        if rfd < 0:
            return
        self.rfd = self.wfd = -1
        self.dirty = True
        self._poll = None
        for fd in (rfd, wfd):
            try:
                if forget is not None:
                    forget(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> "PipePair":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.rfd < 0 else ("dirty" if self.dirty else "clean" if not self.fill else "in use")
        return f"<PipePair r={self.rfd} w={self.wfd} capacity={self.capacity} fill={self.fill} {state}>"


def _set_pipe_size(fd: int, size: int) -> int:
    """Ask for ``size`` bytes of pipe; return what the pipe got. A refusal
    (EPERM past the user's pipe-user-pages-soft, EBUSY) keeps the default
    size: splicing still works, with more system calls."""
    import fcntl

    if size:
        try:
            return fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL, errno.ENOMEM):
                raise
    return fcntl.fcntl(fd, _F_GETPIPE_SZ)


class PipePool:
    """A few clean pipes kept for reuse, so a new transfer does not pay for
    ``pipe2`` + ``F_SETPIPE_SZ`` (and the two closes later).

    ``get()`` returns a clean pipe (pooled or new). ``put(pipe)`` keeps it
    only if it is clean by its own count *and* the kernel says it is empty
    (FIONREAD); a dirty pipe or one past ``max_idle`` is closed. Pipes
    inherited across ``fork`` are never handed out (a pipe shared between
    processes would mix their data): the child closes its copies.
    ``forget(fd)`` is called before an fd is closed.
    """

    __slots__ = ("size", "max_idle", "forget", "_idle", "_pid", "created", "reused", "closed_dirty")

    def __init__(self, size: int = DEFAULT_PIPE_SIZE, max_idle: int = 32,
                 forget: Callable[[int], None] | None = None) -> None:
        self.size = size
        self.max_idle = max_idle
        self.forget = forget
        self._idle: list[PipePair] = []
        self._pid = os.getpid()
        self.created = 0
        self.reused = 0
        self.closed_dirty = 0

    def __len__(self) -> int:
        return len(self._idle)

    def get(self) -> PipePair:
        idle = self._idle
        if idle:
            if os.getpid() == self._pid:
                self.reused += 1
                return idle.pop()
            self._after_fork()
        self.created += 1
        return PipePair(self.size)

    def put(self, pipe: PipePair) -> bool:
        """Return ``pipe``; True if it was kept for reuse, False if closed."""
        if pipe.rfd < 0:
            return False
        keep = pipe.clean and len(self._idle) < self.max_idle and os.getpid() == self._pid
        if keep:
            try:
                keep = pipe.pending() == 0
            except OSError:
                keep = False
        if keep:
            pipe.blocked = None
            self._idle.append(pipe)
            return True
        if not pipe.clean:
            self.closed_dirty += 1
        pipe.close(self.forget)
        return False

    def discard(self, pipe: PipePair) -> None:
        """Close ``pipe`` without considering it for reuse."""
        if pipe.rfd >= 0:
            if not pipe.clean:
                self.closed_dirty += 1
            pipe.close(self.forget)

    def close(self) -> None:
        """Close every idle pipe."""
        idle, self._idle = self._idle, []
        forget = self.forget if os.getpid() == self._pid else None
        for pipe in idle:
            pipe.close(forget)

    def _after_fork(self) -> None:
        idle, self._idle = self._idle, []
        for pipe in idle:
            pipe.close()  # this process's copies only; never registered here
        self._pid = os.getpid()
