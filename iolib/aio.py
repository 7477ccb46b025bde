"""Linux native AIO (io_submit/io_getevents) for O_DIRECT file IO.

This module is the mechanism the runtime's AIO worker wraps: requests are
submitted with a caller-chosen token, completions are signalled on one
eventfd (which the runtime puts in epoll) and collected with `reap()` as
`(token, result)` pairs, where a negative result is `-errno`.  It talks to
the kernel through the ctypes bindings of the `libaio` package (the
`python-libaio` project; Debian's `libaio1` supplies the shared library).

It must never block or schedule: `io_getevents` is always called with a
zero timeout, and no more than `max_in_flight` requests are handed to the
kernel at once (past the device queue depth, `io_submit` itself sleeps).
Buffered (non-O_DIRECT) AIO is carried out synchronously inside
`io_submit`, so only use it on descriptors from `open_direct`; buffers
must be aligned (see `aligned_buffer`), otherwise the request completes
with `-EINVAL` rather than raising.  Only `close()` may wait: the kernel
finishes requests still in flight before tearing the context down.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections import deque
from typing import Any, NamedTuple

__all__ = [
    "AioContext",
    "AioUnavailable",
    "DirectIOUnsupported",
    "aio_unavailable_reason",
    "aligned_buffer",
    "open_direct",
    "FSYNC_UNSUPPORTED_ERRNOS",
]

try:
    from libaio import libaio as _lib  # loads libaio.so.1 at import time
    _IMPORT_FAILURE: str | None = None
except (ImportError, OSError) as _exc:  # missing package or missing libaio1
    _lib = None
    _IMPORT_FAILURE = (
        f"Linux AIO unavailable: cannot load python-libaio / libaio.so.1 "
        f"({type(_exc).__name__}: {_exc}); install the PyPI package 'libaio' "
        f"and the Debian package 'libaio1'"
    )

# Kernel opcodes (include/uapi/linux/aio_abi.h).
_CMD_PREAD = 0
_CMD_PWRITE = 1
_CMD_FSYNC = 2
_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1

# struct iocb and struct io_event as the kernel lays them out on a 64-bit
# little-endian machine.  Packing the whole struct in one call is several
# times cheaper than setting ctypes fields one by one.
_IOCB = struct.Struct("<QIIHhIQQqQII")
_EVENT = struct.Struct("<QQqq")

# The result errnos with which a kernel refuses IOCB_CMD_FSYNC/FDSYNC for a
# file (before 4.18 only a few filesystems implemented aio_fsync).  The
# runtime should then run os.fsync on its blocking pool.
FSYNC_UNSUPPORTED_ERRNOS = frozenset({errno.EINVAL, errno.EOPNOTSUPP})


class AioUnavailable(RuntimeError):
    """Linux AIO cannot be used here; the message says why."""


class DirectIOUnsupported(OSError):
    """The filesystem refuses O_DIRECT (tmpfs before Linux 6.6, ramfs, procfs...)."""


_probe_result: list[str | None] = []


def aio_unavailable_reason() -> str | None:
    """Why Linux AIO cannot be used on this machine, or None if it can.

    Checks that the library loads and that the kernel grants an AIO context
    (it refuses with ENOSYS without CONFIG_AIO, EPERM under some seccomp
    profiles, EAGAIN when /proc/sys/fs/aio-max-nr is exhausted).
    """
    if _IMPORT_FAILURE is not None:
        return _IMPORT_FAILURE
    if not _probe_result:
        ctx = _lib.io_context_t()
        try:
            _lib.io_setup(1, ctypes.byref(ctx))
        except OSError as exc:
            _probe_result.append(
                f"Linux AIO unavailable: io_setup failed with "
                f"{errno.errorcode.get(exc.errno, exc.errno)} ({os.strerror(exc.errno)})"
            )
        else:
            _lib.io_destroy(ctx)
            _probe_result.append(None)
    return _probe_result[0]


def aligned_buffer(size: int, alignment: int = 4096) -> mmap.mmap:
    """A zero-filled, writable buffer of `size` bytes whose address is aligned.

    Anonymous mmaps start on a page boundary, which satisfies O_DIRECT's
    512- or 4096-byte rule.  (iolib.chunk may later own a pooled version;
    this one is enough for single buffers.)  Slices taken at multiples of
    `alignment` through memoryview stay aligned.
    """
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"aligned_buffer size must be a positive int, got {size!r}")
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, got {alignment!r}")
    if alignment > mmap.PAGESIZE:
        raise ValueError(
            f"alignment {alignment} exceeds the page size {mmap.PAGESIZE}; "
            f"mmap only guarantees page alignment"
        )
    return mmap.mmap(-1, size)


def open_direct(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open `path` with O_DIRECT (and O_CLOEXEC); return the raw fd.

    Raises DirectIOUnsupported (an OSError with errno EINVAL) when the
    filesystem refuses O_DIRECT, so the caller can fall back to buffered IO
    on a blocking thread pool.  Note that with O_CREAT some filesystems
    create the file before refusing the flag.  Other OSErrors propagate.
    """
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise DirectIOUnsupported(
                errno.EINVAL,
                f"the filesystem holding {os.fspath(path)!r} refuses O_DIRECT; "
                f"use buffered IO on a blocking pool instead",
                os.fspath(path),
            ) from None
        raise


class _Request(NamedTuple):
    opcode: int
    fd: int
    address: int
    nbytes: int
    offset: int
    token: Any
    keepalive: Any  # the ctypes view that pins the caller's buffer


class AioContext:
    """One kernel AIO context with a bounded number of requests in flight.

    `submit_read`/`submit_write`/`submit_fsync` never block: the request is
    handed to the kernel at once, or queued when `max_in_flight` requests
    are already in flight (or when `autoflush` is False, until `flush()`).
    When the eventfd (`.eventfd`) is readable, `reap()` returns finished
    `(token, result)` pairs: a byte count, or a negative errno.  Tokens are
    opaque; passing the same token twice is allowed.  Not thread-safe.
    """

    def __init__(self, max_in_flight: int = 128, autoflush: bool = True) -> None:
        if not isinstance(max_in_flight, int) or not 1 <= max_in_flight <= 65536:
            raise ValueError(f"max_in_flight must be an int in 1..65536, got {max_in_flight!r}")
        reason = aio_unavailable_reason()
        if reason is not None:
            raise AioUnavailable(reason)
        if ctypes.sizeof(_lib.iocb) != _IOCB.size or ctypes.sizeof(_lib.io_event) != _EVENT.size:
            raise AioUnavailable("Linux AIO unavailable: unexpected struct iocb layout (not 64-bit LE?)")
        self.max_in_flight = max_in_flight
        self.autoflush = autoflush
        self._ctx = _lib.io_context_t()
        _lib.io_setup(max_in_flight, ctypes.byref(self._ctx))
        try:
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            _lib.io_destroy(self._ctx)
            raise
        # One iocb slot per possible in-flight request; the slot index travels
        # in aio_data so a completion maps back to its request without lookup.
        self._iocbs = (_lib.iocb * max_in_flight)()
        self._iocb_view = memoryview(self._iocbs).cast("B")
        base = ctypes.addressof(self._iocbs)
        self._slot_address = [base + i * _IOCB.size for i in range(max_in_flight)]
        self._submit_ptrs = (ctypes.c_void_p * max_in_flight)()
        self._submit_argtype = ctypes.cast(self._submit_ptrs, _lib.iocb_pp)
        self._events = (_lib.io_event * max_in_flight)()
        self._event_view = memoryview(self._events).cast("B")
        self._zero_timeout = _lib.timespec(0, 0)
        self._free_slots = list(range(max_in_flight - 1, -1, -1))
        self._slot_request: list[_Request | None] = [None] * max_in_flight
        self._queue: deque[_Request] = deque()
        # Requests the kernel refused at submit time; reported by reap().
        self._refused: list[tuple[Any, int]] = []
        self._closed = False

    # -- introspection -------------------------------------------------

    @property
    def eventfd(self) -> int:
        """The fd that becomes readable when `reap()` has something to return."""
        return self._eventfd

    def fileno(self) -> int:
        return self._eventfd

    @property
    def in_flight(self) -> int:
        return self.max_in_flight - len(self._free_slots)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """True when nothing is in flight, queued or waiting to be reaped."""
        return not self._queue and not self._refused and len(self._free_slots) == self.max_in_flight

    # -- submission ----------------------------------------------------

    def submit_read(self, fd: int, buf: Any, offset: int, token: Any) -> None:
        """Read len(buf) bytes at `offset` of `fd` into the writable buffer `buf`."""
        self._enqueue(_CMD_PREAD, fd, buf, offset, token)

    def submit_write(self, fd: int, buf: Any, offset: int, token: Any) -> None:
        """Write all of `buf` at `offset` of `fd`; `buf` must stay unchanged until reaped."""
        self._enqueue(_CMD_PWRITE, fd, buf, offset, token)

    def submit_fsync(self, fd: int, token: Any, datasync: bool = False) -> None:
        """Flush `fd` to stable storage (fdatasync semantics when `datasync`).

        If the kernel refuses AIO fsync for this file, the result is a
        negative errno in FSYNC_UNSUPPORTED_ERRNOS: fall back to os.fsync.
        """
        self._check_open()
        _check_fd(fd)
        self._queue.append(_Request(_CMD_FDSYNC if datasync else _CMD_FSYNC, fd, 0, 0, 0, token, None))
        if self.autoflush:
            self.flush()

    def _enqueue(self, opcode: int, fd: int, buf: Any, offset: int, token: Any) -> None:
        self._check_open()
        _check_fd(fd)
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        try:
            # Pinning the buffer through ctypes also stops the caller from
            # closing or resizing the mmap while the kernel uses it.
            pin = ctypes.c_char.from_buffer(buf)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"AIO buffer must be a non-empty writable buffer (mmap, memoryview of an mmap, "
                f"bytearray), got {type(buf).__name__}: {exc}"
            ) from None
        nbytes = memoryview(buf).nbytes
        self._queue.append(_Request(opcode, fd, ctypes.addressof(pin), nbytes, offset, token, (pin, buf)))
        if self.autoflush:
            self.flush()

    def flush(self) -> int:
        """Hand queued requests to the kernel, as many as the cap allows, in
        one io_submit per batch.  Returns how many were submitted."""
        self._check_open()
        queue = self._queue
        free = self._free_slots
        submitted_total = 0
        while queue and free:
            count = min(len(queue), len(free))
            batch = []
            ptrs = self._submit_ptrs
            for i in range(count):
                request = queue.popleft()
                slot = free.pop()
                self._slot_request[slot] = request
                _IOCB.pack_into(
                    self._iocb_view, slot * _IOCB.size,
                    slot, 0, 0, request.opcode, 0, request.fd,
                    request.address, request.nbytes, request.offset,
                    0, _IOCB_FLAG_RESFD, self._eventfd,
                )
                ptrs[i] = self._slot_address[slot]
                batch.append(slot)
            try:
                done = _lib.io_submit(self._ctx, count, self._submit_argtype)
            except OSError as exc:
                done = 0
                failure = exc.errno
            else:
                failure = None
            submitted_total += done
            # Whatever the kernel did not take goes back to the queue front in order.
            for slot in reversed(batch[done:]):
                queue.appendleft(self._slot_request[slot])
                self._slot_request[slot] = None
                free.append(slot)
            if failure is None:
                if done < count:
                    break  # kernel short of resources; retry on the next reap
                continue
            if failure == errno.EAGAIN and self.in_flight > 0:
                break  # completions will free kernel resources; retry on reap
            # The first request of the batch is bad (EBADF, EINVAL...): report
            # it as a completion so the caller sees OSError(errno) for it alone.
            bad = queue.popleft()
            self._refused.append((bad.token, -failure))
            os.eventfd_write(self._eventfd, 1)
        return submitted_total

    # -- completion ----------------------------------------------------

    def reap(self) -> list[tuple[Any, int]]:
        """Collect finished requests as (token, bytes_transferred or -errno),
        then submit queued requests into the freed slots.  Never blocks."""
        self._check_open()
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            pass
        results = self._refused
        self._refused = []
        capacity = self.max_in_flight
        view = self._event_view
        slot_request = self._slot_request
        free = self._free_slots
        while True:
            count = _lib.io_getevents(self._ctx, 0, capacity, self._events, ctypes.byref(self._zero_timeout))
            for slot, _obj, res, _res2 in _EVENT.iter_unpack(view[: count * _EVENT.size]):
                request = slot_request[slot]
                slot_request[slot] = None
                free.append(slot)
                results.append((request.token, res))
            if count < capacity:
                break
        if self._queue:
            self.flush()
            if self._refused:
                results.extend(self._refused)
                self._refused = []
        return results

    # -- teardown ------------------------------------------------------

    def close(self) -> None:
        """Destroy the context.  Waits for requests still in flight (the
        kernel cannot abandon a DMA in progress); queued ones are dropped."""
        if self._closed:
            return
        self._closed = True
        try:
            _lib.io_destroy(self._ctx)
        finally:
            os.close(self._eventfd)
            self._queue.clear()
            self._slot_request = [None] * self.max_in_flight
            self._refused = []

    def __enter__(self) -> AioContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("AioContext is closed")


def _check_fd(fd: int) -> None:
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
        raise ValueError(f"fd must be a non-negative int file descriptor, got {fd!r}")
