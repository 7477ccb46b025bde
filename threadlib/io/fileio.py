"""File IO for threads: reads and writes at any offset and length, on Linux
AIO with O_DIRECT, or on the blocking thread pool where that is impossible.

`open(path)` returns a `File`. On a filesystem that accepts O_DIRECT, and
where libaio loads and the kernel grants an AIO context, reads and writes
are `AioRead`/`AioWrite` system calls served by the scheduler's AioWorker
(attached on first use if the scheduler has none).  O_DIRECT wants the
offset, the length and the buffer's address aligned; this module reads the
aligned superset into a pooled aligned buffer and returns the requested
slice, and writes unaligned ranges by read-modify-write of the edge blocks,
cutting the file back to its exact size when the aligned write went past
the end.  Elsewhere (tmpfs before Linux 6.6, ramfs, no libaio, no AIO
context) the same calls run `os.pread`/`os.pwrite` through `Blocking`, and
one warning per reason says why.

It must never block the scheduler on a data transfer, and never hand a
buffer back for reuse while the kernel may still write into it: a request
whose thread was cancelled or timed out keeps its buffer out of the pool.
`open`, `stat`, `ftruncate` and `close` are metadata calls made inline,
as nginx does: on a local filesystem they do not wait for the disk.

`f.fileno()` is a second, buffered descriptor of the same file, for
sendfile (which refuses unaligned ranges on an O_DIRECT descriptor);
`pread_view` lends the aligned buffer the kernel read into, without a copy.

On a simulated host (``threadlib.sim``) the scheduler's worker for the
Aio* calls also offers a ``filesystem`` (open, fstat, ftruncate, stat):
files then live on the host's simulated disk, every call goes there, and
no real file or descriptor is touched.

Writes through one File are safe against each other (overlapping blocks
are serialised, size changes are ordered); writes to the same blocks
through another File or another process may race, as with any O_DIRECT
read-modify-write.
"""

from __future__ import annotations

import errno
import io
import logging
import mmap
import os
import stat as _stat
import threading
import types
from typing import Any, Callable, Protocol, TypeVar

from iolib.aio import FSYNC_UNSUPPORTED_ERRNOS, DirectIOUnsupported, open_direct
from .aioworker import AioClose, AioFsync, AioRead, AioWorker, AioWrite, ensure_aio_worker, offer_buffer
from .._kernel import WaitQueue, current_scheduler, running_scheduler
from ..syscalls import Blocking, Waits

__all__ = ["File", "ReadView", "open", "read_file", "write_file", "stat", "BLOCK", "MAX_CHUNK"]

log = logging.getLogger("threadlib.io.fileio")

_R = TypeVar("_R")

BLOCK = 4096              # alignment of offsets, lengths and buffers (any device's logical block divides it)
MAX_CHUNK = 1 << 20       # largest single request; bigger transfers are split
_MASK = BLOCK - 1
_ONE_REQUEST = MAX_CHUNK - BLOCK  # the longest read that always fits one aligned request
_ZEROS = bytes(BLOCK)

_MODES = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "x": os.O_RDWR | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


# ---------------------------------------------------------------------------
# Aligned buffers


class _AlignedPool:
    """Page-aligned buffers in power-of-two size classes (4 KiB .. MAX_CHUNK),
    carved out of mmap arenas so a 4 KiB buffer does not cost an mmap.

    Buffers are memoryviews of an arena; an arena lives while any of its
    buffers does, so a buffer dropped instead of given back (the kernel may
    still own it) is simply freed later.  list.pop/append are atomic under
    the GIL, so schedulers in several OS threads may share the pool.
    """

    ARENA = 256 * 1024
    KEEP_BYTES = 16 * 1024 * 1024  # free bytes kept per size class

    def __init__(self) -> None:
        self._free: dict[int, list[memoryview]] = {}
        self._keep: dict[int, int] = {}
        size = BLOCK
        while size <= MAX_CHUNK:
            self._free[size] = []
            self._keep[size] = max(8, self.KEEP_BYTES // size)
            size <<= 1

    @staticmethod
    def size_class(size: int) -> int:
        return BLOCK if size <= BLOCK else 1 << (size - 1).bit_length()

    def take(self, size: int) -> memoryview:
        cls = BLOCK if size <= BLOCK else 1 << (size - 1).bit_length()
        if cls > MAX_CHUNK:
            raise ValueError(f"aligned buffers go up to {MAX_CHUNK} bytes, asked for {size}")
        free = self._free[cls]
        if free:
            return free.pop()
        arena = memoryview(mmap.mmap(-1, max(cls, self.ARENA)))
        offer_buffer(arena)  # io_uring rings register it: fixed-buffer reads and writes
        pieces = [arena[i:i + cls] for i in range(0, len(arena), cls)]
        buf = pieces.pop()
        free.extend(pieces[: self._keep[cls]])
        return buf

    def give(self, buf: memoryview) -> None:
        free = self._free.get(len(buf))
        if free is not None and len(free) < self._keep[len(buf)]:
            free.append(buf)


_pool = _AlignedPool()
_free_blocks = _pool._free[BLOCK]  # the 4 KiB class, used inline on the hot path
_KEEP_BLOCKS = _pool._keep[BLOCK]


class ReadView:
    """Bytes read by `File.pread_view`, lent without a copy.

    `view` is a memoryview of the data (shorter than asked at end of file).
    Call `release()` (or use `with ... as view:`) when done; the buffer is
    then reused, so the view must not be used afterwards.
    """

    __slots__ = ("view", "_buf")

    def __init__(self, view: memoryview, buf: memoryview | None) -> None:
        self.view = view
        self._buf = buf

    def __len__(self) -> int:
        return len(self.view)

    def __bytes__(self) -> bytes:
        return bytes(self.view)

    def release(self) -> None:
        """Give the buffer back for reuse; the view must not be used after."""
        buf = self._buf
        if buf is not None:
            self._buf = None
            self.view.release()
            _pool.give(buf)

    def __enter__(self) -> memoryview:
        return self.view

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------
# Fallback bookkeeping

_warned: set[Any] = set()


def _warn_once(key: Any, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def _aio_worker() -> tuple[AioWorker | None, str | None]:
    """The running scheduler's AioWorker (attached if missing, context
    started), or why AIO cannot be used."""
    worker = ensure_aio_worker(running_scheduler())
    reason = worker.start()
    return (worker, None) if reason is None else (None, reason)


# ---------------------------------------------------------------------------
# Where the metadata calls go: the real OS, or a simulated host's disk


class FileSystem(Protocol):
    """The metadata calls fileio makes inline, as ``os`` has them; a
    simulated disk provides its own (``threadlib.sim``)."""

    def fstat(self, fd: int) -> os.stat_result:
        """``os.fstat(fd)``."""

    def ftruncate(self, fd: int, size: int) -> None:
        """``os.ftruncate(fd, size)``."""


class _RealFileSystem:
    fstat = staticmethod(os.fstat)
    ftruncate = staticmethod(os.ftruncate)


_REAL = _RealFileSystem()


def _simulated_filesystem() -> Any:
    """The running scheduler's simulated file system (a simulated host's
    disk), or None: real files."""
    sched = current_scheduler()
    worker = sched.worker_for(AioRead) if sched is not None else None
    return getattr(worker, "filesystem", None)


# ---------------------------------------------------------------------------
# Files


class _RangeLock:
    """Byte ranges of a file being written; writers of overlapping ranges
    wait.  Extending the file locks [start, infinity), which orders every
    size change."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held: list[tuple[int, float]] = []
        self._waiters = WaitQueue()

    @types.coroutine
    def acquire(self, lo: int, hi: float) -> Waits[tuple[int, float]]:
        while any(l < hi and lo < h for l, h in self._held):
            yield self._waiters.park
        entry = (lo, hi)
        self._held.append(entry)
        return entry

    def release(self, entry: tuple[int, float]) -> None:
        self._held.remove(entry)
        if self._waiters:
            self._waiters.wake_all()


class File:
    """An open file. Every method that may wait works with `yield from` and
    `await`.  `direct` tells whether IO goes through Linux AIO (True) or the
    blocking pool (False).

    The methods take no `timeout`: an enclosing `threadlib.timeout` bounds
    their waits.  A read that is timed out or cancelled leaves nothing
    behind; a write may still complete (the kernel or the pool finishes
    what it was given), as `pwrite` says."""

    def __init__(self, path: str, fd: int, writable: bool, direct: bool, filesystem: FileSystem | None = None) -> None:
        self.path = path
        self._fd = fd
        self._fs: FileSystem = _REAL if filesystem is None else filesystem
        self.simulated = filesystem is not None
        self.writable = writable
        self.direct = direct
        self._ranges = _RangeLock()
        self._aio_fsync = direct
        # Blocking-pool calls still running on the fd (their callers may have
        # been cancelled); the fd is closed by whichever finishes last.
        self._buffered_fd = -1
        self._pool_lock = threading.Lock()
        self._pool_users = 0
        self._close_deferred = -1

    # -- plain calls ------------------------------------------------------
    def fileno(self) -> int:
        """A descriptor for sendfile, mmap or plain os.pread: never O_DIRECT.

        sendfile from an O_DIRECT descriptor fails with EINVAL unless offset
        and length are block aligned, so a direct File opens a second,
        buffered descriptor of the same file on first call (through
        /proc/self/fd, so it works after a rename or unlink) and closes it
        in close()."""
        self._check_open()
        if self.simulated:
            raise io.UnsupportedOperation(f"{self.path!r} is on a simulated disk: it has no real descriptor")
        if not self.direct:
            return self._fd
        if self._buffered_fd < 0:
            flags = os.O_RDWR if self.writable else os.O_RDONLY
            self._buffered_fd = os.open(f"/proc/self/fd/{self._fd}", flags | os.O_CLOEXEC)
        return self._buffered_fd

    @property
    def direct_fd(self) -> int:
        """The O_DIRECT descriptor the AIO requests use (the only one, when not `direct`)."""
        self._check_open()
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._fd < 0

    @property
    def size(self) -> int:
        """The file's current size in bytes (fstat)."""
        self._check_open()
        return self._fs.fstat(self._fd).st_size

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<threadlib.io.fileio.File {self.path!r} {state} {'aio' if self.direct else 'pool'}>"

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"I/O operation on closed file {self.path!r}")

    def _error(self, exc: OSError) -> OSError:
        if exc.filename is None and exc.errno is not None and not isinstance(exc, TimeoutError):
            return OSError(exc.errno, exc.strerror, self.path)
        return exc

    # -- reading ----------------------------------------------------------------
    @types.coroutine
    def pread(self, n: int, offset: int) -> Waits[bytes]:
        """Up to `n` bytes at `offset` (fewer only at end of file); waits in
        `AioRead` (or on the blocking pool)."""
        # The hot path of a file server: kept to one system call and no
        # nested generator.
        fd = self._fd
        if fd < 0:
            self._check_open()
        if type(n) is not int or type(offset) is not int or n < 0 or offset < 0:
            _check_range(n, offset)
        if n > _ONE_REQUEST or not self.direct:
            out = bytearray(n)
            got = yield from self.pread_into(out, offset)
            del out[got:]
            return bytes(out)
        if n == 0:
            return b""
        start = offset & _MASK
        span = (start + n + _MASK) & ~_MASK
        if span == BLOCK and _free_blocks:
            buf = _free_blocks.pop()
        else:
            buf = _pool.take(span)
        try:
            got = yield AioRead(fd, buf if len(buf) == span else buf[:span], offset - start)
        except OSError as exc:
            raise self._error(exc) from None  # buf is not given back: the kernel may own it
        if got == n and start == 0 and span == BLOCK:
            # the common aligned read; n < BLOCK when it ends at end of file
            data = bytes(buf) if n == BLOCK else bytes(buf[:n])
            if len(_free_blocks) < _KEEP_BLOCKS:
                _free_blocks.append(buf)
            return data
        if got < span and got > 0 and not got & _MASK:
            got = yield from self._read_rest(buf, offset - start, span, got)
        data = bytes(buf[start:min(got, start + n)]) if got > start else b""
        _pool.give(buf)
        return data

    @types.coroutine
    def pread_into(self, buffer: Any, offset: int) -> Waits[int]:
        """Read into the writable `buffer` at `offset`; the byte count (less
        than len(buffer) only at end of file)."""
        self._check_open()
        out = _byte_view(buffer, "pread_into needs a writable buffer", writable=True)
        n = len(out)
        _check_range(n, offset)
        if not self.direct:
            return (yield from self._pool_call(_pread_into_all, self._fd, out, offset))
        done = 0
        while done < n:
            pos = offset + done
            start = pos & _MASK
            want = min(n - done, MAX_CHUNK - start)
            span = (start + want + _MASK) & ~_MASK
            buf = _pool.take(span)
            got = yield from self._read_aligned(buf, pos - start, span)
            useful = max(0, min(got - start, want))
            if useful:
                out[done:done + useful] = buf[start:start + useful]
            _pool.give(buf)
            done += useful
            if useful < want:
                break  # end of file
        return done

    @types.coroutine
    def pread_view(self, n: int, offset: int) -> Waits[ReadView]:
        """Up to `n` bytes at `offset` as a ReadView: a memoryview of the
        pooled buffer the kernel read into (no copy).  Release it when done."""
        self._check_open()
        _check_range(n, offset)
        if n > _ONE_REQUEST or not self.direct:
            data = yield from self.pread(n, offset)
            return ReadView(memoryview(data), None)
        start = offset & _MASK
        span = max(BLOCK, (start + n + _MASK) & ~_MASK)
        buf = _pool.take(span)
        got = yield from self._read_aligned(buf, offset - start, span)
        return ReadView(buf[start:max(start, min(got, start + n))], buf)

    @types.coroutine
    def _read_aligned(self, buf: memoryview, pos: int, span: int) -> Waits[int]:
        """Fill buf[:span] from the aligned `pos`; bytes read (short at EOF).
        On an exception `buf` is not given back: the kernel may still own it."""
        try:
            got: int = yield AioRead(self._fd, buf if len(buf) == span else buf[:span], pos)
        except OSError as exc:
            raise self._error(exc) from None
        if got < span and got > 0 and not got & _MASK:
            got = yield from self._read_rest(buf, pos, span, got)
        return got

    @types.coroutine
    def _read_rest(self, buf: memoryview, pos: int, span: int, got: int) -> Waits[int]:
        # A regular file reads short only at its end; a read that stopped on a
        # block boundary short of the span is continued until it returns 0.
        try:
            while got < span and not got & _MASK:
                more = yield AioRead(self._fd, buf[got:span], pos + got)
                if more <= 0:
                    break
                got += more
        except OSError as exc:
            raise self._error(exc) from None
        return got

    # -- writing ----------------------------------------------------------------
    @types.coroutine
    def pwrite(self, data: Any, offset: int) -> Waits[int]:
        """Write all of `data` (any bytes-like object) at `offset`, extending
        the file if needed; returns len(data).  Waits in `AioWrite` (or on
        the blocking pool), and for overlapping writes through this File.
        After a timeout or cancellation any part of `data` may have been
        written: the requests already made complete, and their blocks stay
        locked against other writes until they do."""
        self._check_writable()
        src = _byte_view(data, "pwrite needs a bytes-like object")
        n = len(src)
        _check_range(n, offset)
        if not self.direct:
            return (yield from self._pool_call(_pwrite_all, self._fd, src, offset))
        done = 0
        while done < n:
            pos = offset + done
            want = min(n - done, MAX_CHUNK - (pos & _MASK))
            yield from self._write_chunk(src[done:done + want], pos)
            done += want
        return n

    @types.coroutine
    def _write_chunk(self, src: memoryview, offset: int) -> Waits[None]:
        n = len(src)
        end = offset + n
        a0 = offset & ~_MASK
        a1 = (end + _MASK) & ~_MASK
        fd = self._fd
        ranges = self._ranges
        held: tuple[int, float] | None = None
        pending_write: AioWrite | None = None
        try:
            size = self._fs.fstat(fd).st_size
            extending = a1 > size
            held = yield from ranges.acquire(a0, float("inf") if extending else a1)
            size = self._fs.fstat(fd).st_size
            if not extending and a1 > size:
                # Another write cut the file back while we waited: now we extend.
                ranges.release(held)
                held = None
                extending = True
                held = yield from ranges.acquire(a0, float("inf"))
                size = self._fs.fstat(fd).st_size
            span = a1 - a0
            buf = _pool.take(span)
            head = offset - a0
            tail_block = a1 - BLOCK
            if head:
                yield from self._fill_block(buf, 0, a0, size)
            if end != a1 and (tail_block != a0 or not head):
                yield from self._fill_block(buf, tail_block - a0, tail_block, size)
            buf[head:head + n] = src
            pending_write = AioWrite(fd, buf if len(buf) == span else buf[:span], a0)
            try:
                written = yield pending_write
            except OSError as exc:
                worker = running_scheduler().worker(AioWorker)
                if worker is None or not worker.is_pending(pending_write):
                    pending_write = None  # the write itself failed; it is over
                raise self._error(exc) from None
            pending_write = None
            target = max(size, end)
            if extending and a1 > target:
                # The aligned write padded the last block past the end.
                self._fs.ftruncate(fd, target)
            if written != span:
                raise OSError(errno.EIO, f"short O_DIRECT write ({written} of {span} bytes at {a0})", self.path)
            _pool.give(buf)
        except BaseException:
            if held is not None and pending_write is not None:
                # Interrupted while the kernel still writes: the blocks stay
                # locked (and the size unsettled) until the write completes.
                worker = running_scheduler().worker(AioWorker)
                if worker is not None and worker.after_completion(
                        pending_write, self._settle_write, (held, extending, max(size, end))):
                    held = None
            if held is not None:
                ranges.release(held)
            raise
        ranges.release(held)

    def _settle_write(self, result: int, held: tuple[int, float], extending: bool, target: int) -> None:
        """Finish a write whose thread was interrupted, once the kernel is done."""
        try:
            if extending and self._fd >= 0 and self._fs.fstat(self._fd).st_size > target:
                self._fs.ftruncate(self._fd, target)
        except OSError:
            pass  # the file went away: nothing left to settle
        finally:
            self._ranges.release(held)

    @types.coroutine
    def _fill_block(self, buf: memoryview, at: int, pos: int, size: int) -> Waits[None]:
        """Read the block at `pos` into buf[at:at+BLOCK] (zeros past EOF)."""
        got = 0
        if pos < size:
            got = yield from self._read_aligned(buf[at:at + BLOCK], pos, BLOCK)
        if got < BLOCK:
            buf[at + got:at + BLOCK] = _ZEROS[got:]

    @types.coroutine
    def truncate(self, size: int) -> Waits[None]:
        """Set the file's size to `size` bytes (cut or zero-extended), once
        writes through this File past `size` are done (it waits for them)."""
        self._check_writable()
        _check_range(0, size)
        held = yield from self._ranges.acquire(size & ~_MASK, float("inf"))
        try:
            self._fs.ftruncate(self._fd, size)
        finally:
            self._ranges.release(held)

    @types.coroutine
    def fsync(self, datasync: bool = False) -> Waits[None]:
        """Flush the file's data (and metadata unless `datasync`) to disk;
        waits in `AioFsync`, or on the blocking pool where AIO has none."""
        self._check_open()
        if self._aio_fsync:
            try:
                yield AioFsync(self._fd, datasync)
                return
            except OSError as exc:
                if exc.errno not in FSYNC_UNSUPPORTED_ERRNOS or isinstance(exc, TimeoutError):
                    raise self._error(exc) from None
                self._aio_fsync = False  # this kernel/filesystem has no AIO fsync
        yield from self._pool_call(os.fdatasync if datasync else os.fsync, self._fd)

    @types.coroutine
    def stat(self) -> Waits[os.stat_result]:
        """os.fstat of the file (inline: never waits)."""
        self._check_open()
        return self._fs.fstat(self._fd)
        yield  # a generator, so it works with yield from and await

    @types.coroutine
    def close(self) -> Waits[None]:
        """Close the file. Requests still in flight (of cancelled callers) are
        waited for before the descriptor is released, so its number cannot
        be reused under them. Closing twice is allowed."""
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        if self.direct:
            if self._buffered_fd >= 0:
                os.close(self._buffered_fd)
                self._buffered_fd = -1
            yield AioClose(fd)
            return
        with self._pool_lock:
            if self._pool_users:
                self._close_deferred = fd
                return
        os.close(fd)

    def _check_writable(self) -> None:
        self._check_open()
        if not self.writable:
            raise PermissionError(errno.EBADF, "file opened read-only (mode 'r'); reopen with 'r+' to write",
                                  self.path)

    # -- the blocking pool path ----------------------------------------------------
    @types.coroutine
    def _pool_call(self, func: Callable[..., _R], *args: Any) -> Waits[_R]:
        if running_scheduler().worker_for(Blocking) is None:
            raise RuntimeError(f"{self.path!r} is served by the blocking pool, and this scheduler "
                               f"has no BlockingPool worker (see threadlib.default_workers())")
        with self._pool_lock:
            self._pool_users += 1
        try:
            result: _R = yield Blocking(self._run_in_pool, (func, args))
            return result
        except OSError as exc:
            raise self._error(exc) from None

    def _run_in_pool(self, func: Callable[..., _R], args: tuple[Any, ...]) -> _R:
        # Runs on an OS thread of the pool. If close() came meanwhile (the
        # caller may have been cancelled), the last call out closes the fd.
        try:
            return func(*args)
        finally:
            with self._pool_lock:
                self._pool_users -= 1
                fd = self._close_deferred if self._pool_users == 0 else -1
                if fd >= 0:
                    self._close_deferred = -1
            if fd >= 0:
                os.close(fd)

    # -- context manager (plain `with` closes synchronously only if idle) -----------
    async def __aenter__(self) -> "File":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def _byte_view(obj: Any, what: str, writable: bool = False) -> memoryview:
    """``obj`` as a flat byte view; TypeError saying ``what`` was expected."""
    try:
        view = memoryview(obj).cast("B")
    except TypeError:
        raise TypeError(f"{what}, got {type(obj).__name__}") from None
    if writable and view.readonly:
        raise TypeError(f"{what}, got a read-only {type(obj).__name__}")
    return view


def _check_range(n: Any, offset: Any) -> None:
    if type(n) is not int or n < 0:
        raise ValueError(f"length must be a non-negative int, got {n!r}")
    if type(offset) is not int or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")


def _pread_into_all(fd: int, out: memoryview, offset: int) -> int:
    done = 0
    n = len(out)
    while done < n:
        got = os.preadv(fd, [out[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _pwrite_all(fd: int, src: memoryview, offset: int) -> int:
    done = 0
    n = len(src)
    while done < n:
        done += os.pwrite(fd, src[done:], offset + done)
    return n


# ---------------------------------------------------------------------------
# Opening


@types.coroutine
def open(path: str | os.PathLike[Any], mode: str = "r", *, direct: bool | None = None,
         perms: int = 0o644) -> Waits[File]:
    """Open `path` for thread IO (inline metadata calls: it never waits).

    `mode`: "r" (read), "r+" (read and write), "w" (create or truncate),
    "x" (create, fail if it exists); a "b" is accepted and ignored (data is
    always bytes).  `direct=None` uses Linux AIO with O_DIRECT where the
    filesystem and kernel allow and falls back to the blocking pool with a
    warning otherwise; `direct=False` asks for the pool without a warning;
    `direct=True` raises instead of falling back.  On a simulated host the
    file is on its simulated disk, whatever `direct` says.
    """
    fspath = os.fspath(path)
    if not isinstance(fspath, str):
        fspath = os.fsdecode(fspath)
    if not isinstance(mode, str) or mode.replace("b", "") not in _MODES:
        raise ValueError(f"mode must be one of 'r', 'r+', 'w', 'w+', 'x', 'x+' (optionally with 'b'), got {mode!r}")
    flags = _MODES[mode.replace("b", "")]
    writable = flags & os.O_ACCMODE != os.O_RDONLY
    simulated = _simulated_filesystem()
    if simulated is not None:
        return File(fspath, simulated.open(fspath, flags, perms), writable, direct=True, filesystem=simulated)
    if direct is not False:
        worker, reason = _aio_worker()
        if worker is not None:
            try:
                fd = open_direct(fspath, flags, perms)
            except DirectIOUnsupported as exc:
                if direct:
                    raise
                flags &= ~os.O_EXCL  # the filesystem may have created it before refusing
                fd = _open_buffered(fspath, flags, perms)
                dev = os.fstat(fd).st_dev
                _warn_once(("o_direct", dev),
                           f"threadlib.io.fileio: the filesystem holding {fspath!r} (device "
                           f"{os.major(dev)}:{os.minor(dev)}) refuses O_DIRECT ({exc.strerror}); "
                           f"file IO on it runs on the blocking thread pool instead of Linux AIO")
                return File(fspath, fd, writable, direct=False)
            _check_regular(fd, fspath)
            return File(fspath, fd, writable, direct=True)
        if direct:
            raise OSError(errno.ENOSYS, reason, fspath)
        _warn_once(("aio", reason),
                   f"threadlib.io.fileio: {reason}; file IO runs on the blocking thread pool instead")
    fd = _open_buffered(fspath, flags, perms)
    return File(fspath, fd, writable, direct=False)
    yield  # a generator, so it works with yield from and await


def _open_buffered(path: str, flags: int, perms: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, perms)
    _check_regular(fd, path)
    return fd


def _check_regular(fd: int, path: str) -> None:
    mode = os.fstat(fd).st_mode
    if _stat.S_ISDIR(mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "fileio opens files, not directories", path)


@types.coroutine
def read_file(path: str | os.PathLike[Any], *, direct: bool | None = None) -> Waits[bytes]:
    """The whole contents of `path` (up to its size when opened): `open`,
    `pread`, `close`, and so waits as they do."""
    f = yield from open(path, "r", direct=direct)
    try:
        return (yield from f.pread(f.size, 0))
    finally:
        yield from f.close()


@types.coroutine
def write_file(path: str | os.PathLike[Any], data: Any, *, direct: bool | None = None) -> Waits[int]:
    """Replace the contents of `path` with `data` (created if missing):
    `open`, `pwrite`, `close`, and so waits as they do; interrupted, the
    file may hold any part of `data`."""
    f = yield from open(path, "w", direct=direct)
    try:
        return (yield from f.pwrite(data, 0))
    finally:
        yield from f.close()


@types.coroutine
def stat(path: str | os.PathLike[Any]) -> Waits[os.stat_result]:
    """os.stat of `path` (inline: a metadata lookup; never waits)."""
    simulated = _simulated_filesystem()
    if simulated is not None:
        stat_result: os.stat_result = simulated.stat(os.fsdecode(os.fspath(path)))
        return stat_result
    return os.stat(path)
    yield
