"""The AIO worker: Linux native AIO as system calls (`AioRead`, `AioWrite`,
`AioFsync`, `AioClose`) served through the scheduler's epoll.

`AioWorker` wraps one `iolib.aio.AioContext`. A handler queues the request
and suspends the thread; queued requests are handed to the kernel in one
`io_submit` per scheduler pass (the worker asks for the CPU "now" through
`next_deadline`, so every thread made ready in that pass is in the batch).
The context's eventfd sits in the scheduler's epoll; on completion the
waiting thread resumes with the byte count, or gets `OSError(errno)`.

What it must never do: block (the engine never waits, and in-flight is
capped), or let a buffer be reused while the kernel may still write it.
A waiter withdrawn by cancel or timeout is forgotten, but its request stays
in the engine, which keeps the buffer referenced until the completion is
reaped; the result is then dropped.  Requests refer to descriptors by
number, so a descriptor must not be closed while requests on it are
pending: `AioClose` closes it only once they are all reaped.

Use: `Scheduler(workers=default_workers() + [AioWorker()])`, or let
`threadlib.io.fileio` attach one to the running scheduler on first use.
On a scheduler that idles in an io_uring ring (`threadlib.uring_workers()`),
the worker attached is `UringAioWorker`: the same calls, the same rules,
served by that ring instead of an AIO context (`O_DIRECT` or not).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import types
from typing import Any, Callable, Protocol

from iolib.aio import AioContext, AioUnavailable, aio_unavailable_reason
from .._kernel import Scheduler, Thread, Worker, current_scheduler
from .._kernel.uring import UringPoller
from .._kernel.worker import Handler
from ..syscalls import SystemCall, Waits

log = logging.getLogger("threadlib")

# What the engine raises for a request it will not take: the caller's news.
_REFUSALS = (OSError, ValueError, TypeError, AioUnavailable)

__all__ = ["AioRead", "AioWrite", "AioFsync", "AioClose", "AioWorker", "UringAioWorker", "ensure_aio_worker",
           "aio_read", "aio_write", "aio_fsync", "aio_close"]


class AioRead(SystemCall):
    """Read len(buf) bytes at `offset` of the O_DIRECT descriptor `fd` into the
    aligned, writable buffer `buf`; resume with the byte count (short at EOF)."""

    __slots__ = ("fd", "buf", "offset")

    def __init__(self, fd: int, buf: Any, offset: int) -> None:
        self.fd = fd
        self.buf = buf
        self.offset = offset


class AioWrite(SystemCall):
    """Write the aligned buffer `buf` at `offset` of the O_DIRECT descriptor
    `fd`; resume with the byte count."""

    __slots__ = ("fd", "buf", "offset")

    def __init__(self, fd: int, buf: Any, offset: int) -> None:
        self.fd = fd
        self.buf = buf
        self.offset = offset


class AioFsync(SystemCall):
    """Flush `fd` to stable storage (fdatasync when `datasync`); resume with 0.
    A kernel or filesystem without AIO fsync raises OSError(EINVAL/EOPNOTSUPP)."""

    __slots__ = ("fd", "datasync")

    def __init__(self, fd: int, datasync: bool = False) -> None:
        self.fd = fd
        self.datasync = datasync


class AioClose(SystemCall):
    """Close `fd` once no request on it is pending in the worker; resume with None."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


class _Engine(Protocol):
    """What AioWorker needs of its engine: iolib.aio.AioContext, or the
    io_uring adapter below."""

    @property
    def eventfd(self) -> int: ...

    def submit_read(self, fd: int, buf: Any, offset: int, token: Any) -> None: ...
    def submit_write(self, fd: int, buf: Any, offset: int, token: Any) -> None: ...
    def submit_fsync(self, fd: int, token: Any, datasync: bool = False) -> None: ...
    def flush(self) -> int: ...
    def reap(self) -> list[tuple[Any, int]]: ...
    def close(self) -> None: ...


class AioWorker(Worker):
    """Serves the Aio* system calls with one kernel AIO context.

    `max_in_flight` caps requests handed to the kernel (more are queued in
    the engine; past ~256 `io_submit` itself would sleep).  The context is
    created on first use, or by `start()`, which returns why AIO cannot be
    used instead of raising.
    """

    _sched: Scheduler  # unset until attach: handlers run only after it

    def __init__(self, max_in_flight: int = 128) -> None:
        if not isinstance(max_in_flight, int) or not 1 <= max_in_flight <= 65536:
            raise ValueError(f"max_in_flight must be an int in 1..65536, got {max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self._ctx: _Engine | None = None
        self._closed = False
        self._flush_due: float | None = None  # when the oldest unsubmitted request was queued
        # Requests per fd submitted and not yet reaped (withdrawn ones too),
        # and the fds waiting for that count to reach zero before os.close.
        self._pending_by_fd: dict[int, int] = {}
        self._closing: dict[int, list[tuple[Thread, AioClose]]] = {}
        # Every request not yet reaped -> the thread that made it; and what
        # to run when an interrupted caller's request finally completes.
        self._requests: dict[SystemCall, Thread] = {}
        self._after: dict[SystemCall, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self.completed = 0   # requests reaped (for tests and benchmarks)
        self.orphaned = 0    # completions whose waiter had been withdrawn

    # -- assembly -----------------------------------------------------------
    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Serve the Aio* calls for ``sched`` (one scheduler per worker); the
        kernel context is made at first use."""
        if getattr(self, "_sched", None) is not None:
            raise RuntimeError("an AioWorker serves one scheduler; create another for this one")
        self._sched = sched
        return {AioRead: self._submit_read, AioWrite: self._submit_write, AioFsync: self._submit_fsync,
                AioClose: self._close_fd}

    def start(self) -> str | None:
        """Create the kernel context now; return None, or why AIO is unavailable."""
        if self._ctx is not None:
            return None
        if self._closed:
            return "the AIO worker is closed"
        if getattr(self, "_sched", None) is None:
            return "the AIO worker is not attached to a scheduler"
        reason = aio_unavailable_reason()
        if reason is not None:
            return reason
        try:
            ctx = AioContext(self.max_in_flight, autoflush=False)
        except AioUnavailable as exc:
            return str(exc)
        except OSError as exc:  # io_setup: EAGAIN once /proc/sys/fs/aio-max-nr is used up
            return (f"Linux AIO unavailable: io_setup({self.max_in_flight}) failed with "
                    f"{errno.errorcode.get(exc.errno or 0, exc.errno)} ({exc.strerror}); "
                    f"see /proc/sys/fs/aio-max-nr")
        self._ctx = ctx
        self._sched.watch_fd(ctx.eventfd, select.EPOLLIN, self._on_completion)
        return None

    # -- handlers -------------------------------------------------------------
    # One handler per call class, so the hot path never branches on the type.
    # The engine validates (fd, offset, buffer) and raises at once; such a
    # refusal (OSError, ValueError, TypeError, AioUnavailable) goes to the
    # calling thread, as the worker contract asks.
    def _submit_read(self, thread: Thread, sc: AioRead) -> None:
        try:
            self._context_for(sc).submit_read(sc.fd, sc.buf, sc.offset, sc)
        except _REFUSALS as exc:
            self._sched.throw(thread, exc)
            return
        self._track(thread, sc)

    def _submit_write(self, thread: Thread, sc: AioWrite) -> None:
        try:
            self._context_for(sc).submit_write(sc.fd, sc.buf, sc.offset, sc)
        except _REFUSALS as exc:
            self._sched.throw(thread, exc)
            return
        self._track(thread, sc)

    def _submit_fsync(self, thread: Thread, sc: AioFsync) -> None:
        try:
            self._context_for(sc).submit_fsync(sc.fd, sc, bool(sc.datasync))
        except _REFUSALS as exc:
            self._sched.throw(thread, exc)
            return
        self._track(thread, sc)

    def _track(self, thread: Thread, sc: Any) -> None:
        pending = self._pending_by_fd
        fd = sc.fd
        pending[fd] = pending.get(fd, 0) + 1
        self._requests[sc] = thread
        if self._flush_due is None:
            self._flush_due = self._sched.clock.now()
        self._sched.suspend(thread, sc)

    def _context_for(self, sc: Any) -> _Engine:
        """The kernel context, once ``sc`` is known to be a new request on
        an fd not being closed; raises the refusal otherwise."""
        if sc in self._requests:
            raise ValueError(f"{sc!r} is already in flight; make a new system call object per request")
        if sc.fd in self._closing:
            raise OSError(errno.EBADF, f"fd {sc.fd} is being closed")
        ctx = self._ctx
        if ctx is None:
            reason = self.start()
            if reason is not None:
                raise AioUnavailable(reason)
            ctx = self._ctx
            assert ctx is not None  # start() made it, or said why not
        return ctx

    def _close_fd(self, thread: Thread, sc: AioClose) -> None:
        fd = sc.fd
        if not isinstance(fd, int) or fd < 0:
            self._sched.throw(thread, ValueError(f"AioClose needs a non-negative int fd, got {fd!r}"))
            return
        if fd in self._closing:
            self._sched.throw(thread, OSError(errno.EBADF, f"fd {fd} is already being closed"))
            return
        if not self._pending_by_fd.get(fd):
            try:
                os.close(fd)
            except OSError as exc:
                self._sched.throw(thread, exc)
                return
            self._sched.resume(thread)
            return
        self._closing[fd] = [(thread, sc)]
        self._sched.suspend(thread, sc)

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """Forget the interrupted caller; its request runs on in the kernel."""
        # The request stays with the kernel and its buffer stays referenced by
        # the engine until reaped; _on_completion then finds the thread no
        # longer waiting in this call and drops the result.  A withdrawn
        # AioClose still closes the fd when it drains: nobody else will.
        pass

    # -- the event loop side ------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When the oldest request still to be submitted was queued (so: at
        once), or None."""
        # "Now" while requests wait to be submitted: the scheduler then polls
        # without sleeping and calls expire(), which submits them in one batch.
        return self._flush_due

    def expire(self, now: float) -> None:
        """Submit the queued requests in one io_submit."""
        if self._flush_due is not None:
            self._flush_due = None
            ctx = self._ctx
            assert ctx is not None  # requests are queued only once it exists
            ctx.flush()

    def _on_completion(self, events: int) -> None:
        sched = self._sched
        pending = self._pending_by_fd
        requests = self._requests
        ctx = self._ctx
        assert ctx is not None  # its eventfd is watched only while it exists
        results = ctx.reap()
        self.completed += len(results)
        for sc, res in results:
            thread = requests.pop(sc)
            fd = sc.fd
            left = pending[fd] - 1
            if left:
                pending[fd] = left
            else:
                del pending[fd]
                if fd in self._closing:
                    self._finish_close(fd)
            if thread.waiting_on is not sc:
                self.orphaned += 1
                if self._after:
                    after = self._after.pop(sc, None)
                    if after is not None:
                        self._run_after(after, res)
                continue
            if res >= 0:
                sched.resume(thread, res)
            else:
                sched.throw(thread, OSError(-res, os.strerror(-res)))

    def after_completion(self, sc: SystemCall, callback: Callable[..., Any], args: tuple[Any, ...] = ()) -> bool:
        """Run `callback(result, *args)` in the scheduler when the request
        made by `sc` (whose caller was interrupted) completes.  Returns False,
        registering nothing, if `sc` is not pending here."""
        if sc not in self._requests:
            return False
        self._after[sc] = (callback, args)
        return True

    def is_pending(self, sc: SystemCall) -> bool:
        """Whether the request made by `sc` has not completed yet."""
        return sc in self._requests

    @staticmethod
    def _run_after(after: tuple[Callable[..., Any], tuple[Any, ...]], res: int) -> None:
        callback, args = after
        try:
            callback(res, *args)
        except Exception:  # a cleanup failing must not stop the completions of others
            log.exception("threadlib.io.aioworker: completion callback %r failed", callback)

    def _finish_close(self, fd: int) -> None:
        waiters = self._closing.pop(fd)
        try:
            os.close(fd)
        except OSError as exc:
            for thread, sc in waiters:
                if thread.waiting_on is sc:
                    self._sched.throw(thread, exc)
            return
        for thread, sc in waiters:
            if thread.waiting_on is sc:
                self._sched.resume(thread)

    # -- introspection and teardown -----------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests submitted or queued and not yet reaped."""
        return sum(self._pending_by_fd.values())

    def pending_on(self, fd: int) -> int:
        """Requests on ``fd`` not yet reaped."""
        return self._pending_by_fd.get(fd, 0)

    def busy(self) -> bool:
        """Whether any request is in flight."""
        return bool(self._pending_by_fd)

    def close(self) -> None:
        """Wait for the kernel to finish every request (io_destroy), run
        the cleanups of interrupted ones, and close fds still pending close."""
        if self._closed:
            return
        self._closed = True
        ctx = self._ctx
        if ctx is not None:
            self._sched.unwatch_fd(ctx.eventfd)
            ctx.close()  # waits for requests the kernel still owns
            self._ctx = None
        # The kernel has finished everything now: settle interrupted requests.
        after, self._after = self._after, {}
        for sc, entry in after.items():
            self._run_after(entry, -errno.ECANCELED)
        self._requests.clear()
        for fd in list(self._closing):
            self._closing.pop(fd)
            try:
                os.close(fd)
            except OSError:
                pass
        self._pending_by_fd.clear()


#: Buffer arenas offered for registration with io_uring rings (``fileio``'s
#: aligned pool offers each of its first arenas): a ring's engine registers
#: them before its next request, and the kernel then serves reads and writes
#: inside them as fixed-buffer requests (pages pinned once, not per request).
#: Registered arenas live as long as the rings that hold them, hence a cap.
OFFERED_BUFFERS: list[Any] = []
MAX_OFFERED_BUFFERS = 64  # the ring's table (FIXED_SLOTS in _uring.c)
_registration_logged = False


def offer_buffer(arena: Any) -> None:
    """Offer a writable, never resized buffer (an mmap arena) for
    registration with the io_uring rings that serve file IO; quietly
    ignored past ``MAX_OFFERED_BUFFERS``."""
    if len(OFFERED_BUFFERS) < MAX_OFFERED_BUFFERS:
        OFFERED_BUFFERS.append(arena)


class _RingEngine:
    """The AioContext interface on the scheduler's io_uring ring: requests
    go into the ring at once (the ring's next poll submits them all in one
    io_uring_enter), completions are kept until ``reap``. Requests inside a
    registered buffer (``offer_buffer``) go in as fixed-buffer ones."""

    @property
    def eventfd(self) -> int:
        """-1: nothing to watch, completions arrive through the ring."""
        return -1

    def __init__(self, poller: UringPoller, on_completion: Callable[[int], None]) -> None:
        self._poller = poller
        self._on_completion = on_completion
        self._done: list[tuple[Any, int]] = []
        self._offered = 0  # OFFERED_BUFFERS already registered (or refused)

    def _register_offered(self) -> None:
        global _registration_logged
        ring = self._poller._ring
        while self._offered < len(OFFERED_BUFFERS):
            arena = OFFERED_BUFFERS[self._offered]
            self._offered += 1
            if not ring.register_buffer(arena):
                self._offered = MAX_OFFERED_BUFFERS  # full, or refused: plain requests from now on
                if not _registration_logged and ring.registered_buffers == 0:
                    _registration_logged = True
                    log.warning("threadlib: io_uring refuses registered buffers (an old kernel or the "
                                "memlock limit); file IO uses plain reads and writes")
                return

    def _callback(self, token: Any) -> Callable[[int], None]:
        def done(res: int) -> None:
            self._done.append((token, res))
            self._on_completion(0)
        return done

    def submit_read(self, fd: int, buf: Any, offset: int, token: Any) -> None:
        """Read len(buf) bytes at ``offset`` of ``fd`` into ``buf``."""
        if self._offered < len(OFFERED_BUFFERS):
            self._register_offered()
        self._poller.read(fd, _writable(buf), offset, self._callback(token))

    def submit_write(self, fd: int, buf: Any, offset: int, token: Any) -> None:
        """Write ``buf`` at ``offset`` of ``fd``."""
        if self._offered < len(OFFERED_BUFFERS):
            self._register_offered()
        self._poller.write(fd, buf, offset, self._callback(token))

    def submit_fsync(self, fd: int, token: Any, datasync: bool = False) -> None:
        """Flush ``fd`` (fdatasync when ``datasync``)."""
        self._poller.fsync(fd, datasync, self._callback(token))

    def flush(self) -> int:
        """Nothing to do: the ring's poll submits every prepared request."""
        return 0

    def reap(self) -> list[tuple[Any, int]]:
        """The (token, result) pairs completed since the last reap."""
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Nothing of its own: the ring, closed with the scheduler, waits for
        the requests the kernel still owns."""


def _writable(buf: Any) -> Any:
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(f"a read needs a writable buffer (bytearray, mmap, writable memoryview), "
                        f"got {type(buf).__name__}") from None
    if view.readonly:
        raise TypeError(f"a read needs a writable buffer (bytearray, mmap, writable memoryview), "
                        f"got a read-only {type(buf).__name__}")
    if view.nbytes == 0:
        raise ValueError("a read needs a non-empty buffer")
    return buf


class UringAioWorker(AioWorker):
    """The Aio* calls served by the scheduler's io_uring ring
    (``threadlib.uring_workers()``) instead of a Linux AIO context: the same
    results and errors, buffers held until the kernel is done with them,
    and ``AioClose`` still waiting for the fd's requests. It needs no libaio
    and works on descriptors opened with or without O_DIRECT.
    ``ensure_aio_worker`` attaches it to a scheduler that polls with a ring."""

    def __init__(self, poller: UringPoller, max_in_flight: int = 128) -> None:
        super().__init__(max_in_flight)
        self._poller = poller

    def start(self) -> str | None:
        """Use the ring (nothing to create); None, or why not."""
        if self._ctx is not None:
            return None
        if self._closed:
            return "the AIO worker is closed"
        if getattr(self, "_sched", None) is None:
            return "the AIO worker is not attached to a scheduler"
        self._ctx = _RingEngine(self._poller, self._on_completion)
        return None

    def __repr__(self) -> str:
        return f"<UringAioWorker in_flight={self.in_flight}>"


def ensure_aio_worker(sched: Scheduler | None = None) -> AioWorker:
    """The AioWorker of `sched` (default: the running scheduler), attaching a
    new one if it has none."""
    if sched is None:
        sched = current_scheduler()
        if sched is None:
            raise RuntimeError("no threadlib scheduler is running in this OS thread")
    worker = sched.worker(AioWorker)
    if worker is None:
        poller = sched._poller
        worker = UringAioWorker(poller) if isinstance(poller, UringPoller) else AioWorker()
        sched.add_worker(worker)
    return worker


@types.coroutine
def aio_read(fd: int, buf: Any, offset: int) -> Waits[int]:
    """Read into the aligned `buf` at the aligned `offset`; the byte count.
    A cancelled or timed-out caller leaves the request with the kernel,
    which may still write into `buf`: do not reuse it."""
    count: int = yield AioRead(fd, buf, offset)
    return count


@types.coroutine
def aio_write(fd: int, buf: Any, offset: int) -> Waits[int]:
    """Write the aligned `buf` at the aligned `offset`; the byte count.
    A cancelled or timed-out caller leaves the write to complete in the
    kernel, which may still read `buf`."""
    count: int = yield AioWrite(fd, buf, offset)
    return count


@types.coroutine
def aio_fsync(fd: int, datasync: bool = False) -> Waits[None]:
    """Flush `fd` to stable storage (its data only when `datasync`)."""
    yield AioFsync(fd, datasync)


@types.coroutine
def aio_close(fd: int) -> Waits[None]:
    """Close `fd` once the worker has no request pending on it."""
    yield AioClose(fd)
