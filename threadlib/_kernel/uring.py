"""The io_uring worker: fd readiness and file IO through one io_uring ring.

``UringPoller`` is the ``Poller`` contract on an io_uring ring
(``_uring.Ring``, the compiled module in this package): a watched fd is a
multishot poll request (edge-triggered, like the epoll registrations of
``IOWorker``) or, for a level-triggered watch, a one-shot poll re-armed
after each report. Entries prepared during a pass of the ready queue are
submitted together by the next ``poll``, which is also where the scheduler
idles (``io_uring_enter`` with a timeout); completions already posted are
reaped without a system call. ``UringWorker`` is the ``IOWorker``
(``WaitRead``/``WaitWrite``, so sockio runs unchanged) with that poller,
plus completion-based socket calls: a multishot receive per stream into
the ring's provided buffers (one buffer ring per worker), a receive
request per wait where the kernel lacks that, sends, and one multishot
accept per listener;
``threadlib.io.aioworker`` serves its ``Aio*`` file calls on the same ring
when the scheduler has one (``UringPoller.read``/``write``/``fsync``).

``uring_workers()`` builds the workers of an io_uring scheduler, or the
epoll ones with one log line saying why io_uring cannot be used (not built,
refused by the kernel or disabled by sysctl, a missing feature). The
``THREADLIB_IO`` environment variable (``epoll``, the default, or
``uring``) chooses what ``default_workers()`` returns. The environment
variable ``THREADLIB_URING_DISABLE`` turns io_uring off as a kernel
without it would (``all``), for a check of the fallback or to rule the
ring out while chasing a fault.

What it must never do: block outside the idle wait, wake a thread itself
(the callbacks of the watchers do), or let the kernel keep an fd open after
``unregister`` (the poll request is cancelled at once, with
IORING_OP_ASYNC_CANCEL, which the kernel does not refuse while it handles the
poll's wake-up as it refuses a POLL_REMOVE; so a socket closed right after
is really closed, and a SO_LINGER 0 reset really leaves).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
from collections import deque
from functools import partial
from typing import Any, Callable

from .fdio import IOWorker
from ..syscalls import SystemCall
from .worker import Handler

log = logging.getLogger("threadlib")

try:
    from . import _uring  # type: ignore[attr-defined]
except ImportError:  # not built: no C compiler, headers, or not Linux
    _uring = None

__all__ = ["UringPoller", "UringWorker", "UringUnavailable", "uring_unavailable_reason", "open_ring",
           "uring_workers", "io_backend", "usable_io_backend", "UringRecv", "UringSend", "UringAccept",
           "RecvState", "AcceptState", "RECV_REQUEST_BYTES", "SOCKET_FEATURES", "socket_features", "socket_worker"]

_CQE_F_MORE = 0 if _uring is None else _uring.CQE_F_MORE
_FLAG_BITS = select.EPOLLET | select.EPOLLONESHOT | getattr(select, "EPOLLEXCLUSIVE", 1 << 28)
_ERROR_EVENTS = select.EPOLLERR | select.EPOLLHUP


class UringUnavailable(OSError):
    """io_uring cannot be used here; the message says why (not built, the
    kernel refused or lacks it, a feature the worker needs is missing)."""


def open_ring(entries: int = 256) -> Any:
    """A new ``_uring.Ring`` after checking every feature the worker needs;
    raises ``UringUnavailable`` naming the first one missing."""
    if "all" in _disabled_by_environment():
        raise UringUnavailable(errno.EPERM, "disabled by THREADLIB_URING_DISABLE")
    if _uring is None:
        raise UringUnavailable(errno.ENOSYS, "the io_uring extension (threadlib._kernel._uring) is not built: "
                               "no C compiler or linux/io_uring.h when threadlib was installed")
    try:
        ring = _uring.Ring(entries)
    except OSError as exc:
        disabled = _sysctl_disabled()
        why = f"; kernel.io_uring_disabled is {disabled}" if disabled not in (None, "0") else ""
        raise UringUnavailable(exc.errno or errno.ENOSYS,
                               f"io_uring_setup failed: {os.strerror(exc.errno or errno.ENOSYS)}{why}") from None
    try:
        if not ring.features & _uring.FEAT_EXT_ARG:
            raise UringUnavailable(errno.ENOSYS, "io_uring lacks IORING_FEAT_EXT_ARG (timed waits; Linux >= 5.11)")
        for op, name in ((_uring.OP_POLL_ADD, "POLL_ADD"), (_uring.OP_POLL_REMOVE, "POLL_REMOVE"),
                         (_uring.OP_READ, "READ"), (_uring.OP_WRITE, "WRITE"), (_uring.OP_FSYNC, "FSYNC")):
            if not ring.supports(op):
                raise UringUnavailable(errno.ENOSYS, f"io_uring lacks IORING_OP_{name}")
        if not ring.supports(_uring.OP_ASYNC_CANCEL):
            raise UringUnavailable(errno.ENOSYS, "io_uring lacks IORING_OP_ASYNC_CANCEL")
        if not _has_multishot_poll(ring):
            raise UringUnavailable(errno.ENOSYS, "io_uring lacks multishot poll (IORING_POLL_ADD_MULTI; Linux >= 5.13)")
    except BaseException:
        ring.close()
        raise
    return ring


#: The socket features the worker uses where the kernel has them, each
#: detected when a ring is set up, each with its fallback.
SOCKET_FEATURES = ("recv_send", "multishot_accept", "multishot_recv")
_FALLBACK = {"recv_send": "sockets use readiness for it", "multishot_accept": "sockets use readiness for it",
             "multishot_recv": "a recv that waits submits a request each time"}
_NEEDS = {"multishot_recv": "recv_send"}  # a feature that needs another is left out with it


def _disabled_by_environment() -> frozenset[str]:
    # THREADLIB_URING_DISABLE: "all" (or 1) turns io_uring off; a comma list
    # of SOCKET_FEATURES turns those off as a kernel without them would.
    raw = os.environ.get("THREADLIB_URING_DISABLE", "")
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    if not names or names <= {"0", "no", "false"}:
        return frozenset()
    if names & {"1", "all", "yes", "true"}:
        return frozenset({"all"})
    unknown = sorted(names - set(SOCKET_FEATURES))
    if unknown:
        raise ValueError(f"THREADLIB_URING_DISABLE must be 'all' or a comma list of {', '.join(SOCKET_FEATURES)}, "
                         f"got {raw!r} ({', '.join(unknown)} unknown)")
    return frozenset(names)


_multishot_known: bool | None = None  # a kernel fact: probed once per process


def _has_multishot_poll(ring: Any) -> bool:
    global _multishot_known
    if _multishot_known is None:
        _multishot_known = _probe_multishot_poll(ring)
    return _multishot_known


def _probe_multishot_poll(ring: Any) -> bool:
    # A pipe's write end is writable at once: a multishot poll on it posts a
    # completion that says it stays armed (IORING_CQE_F_MORE); a kernel
    # without multishot refuses the flag (EINVAL) or posts a final one.
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        ring.poll_add(w, select.EPOLLOUT, 1, True)
        armed = ended = False
        for _ in range(10):  # each wait ends at a completion or after 1 s
            for ud, res, flags in ring.poll(1.0):
                if ud == 1:
                    armed = armed or (res > 0 and bool(flags & _uring.CQE_F_MORE))
                    ended = not flags & _uring.CQE_F_MORE
            if armed or ended:
                break
        if armed:
            ring.poll_remove(1, 2)
            removed = False
            for _ in range(10):
                for ud, res, flags in ring.poll(1.0):
                    removed = removed or ud == 2
                    ended = ended or (ud == 1 and not flags & _uring.CQE_F_MORE)
                if removed and ended:
                    break
        return armed
    finally:
        os.close(r)
        os.close(w)


_accept_multishot_known: bool | None = None


def socket_features(ring: Any) -> dict[str, str | None]:
    """For each of ``SOCKET_FEATURES``: None if the worker may use it on
    ``ring``, else why not (the kernel lacks it, or
    ``THREADLIB_URING_DISABLE`` turned it off)."""
    global _accept_multishot_known
    off = _disabled_by_environment()
    why: dict[str, str | None] = {}
    if "recv_send" in off:
        why["recv_send"] = "disabled by THREADLIB_URING_DISABLE"
    elif not (ring.supports(_uring.OP_RECV) and ring.supports(_uring.OP_SEND)):
        why["recv_send"] = "the kernel lacks IORING_OP_RECV/IORING_OP_SEND (Linux >= 5.6)"
    else:
        why["recv_send"] = None
    if "multishot_accept" in off:
        why["multishot_accept"] = "disabled by THREADLIB_URING_DISABLE"
    elif not ring.supports(_uring.OP_ACCEPT):
        why["multishot_accept"] = "the kernel lacks IORING_OP_ACCEPT (Linux >= 5.5)"
    else:
        if _accept_multishot_known is None:
            _accept_multishot_known = _probe_multishot_accept(ring)
        why["multishot_accept"] = (None if _accept_multishot_known else
                                   "the kernel refuses IORING_ACCEPT_MULTISHOT (Linux >= 5.19)")
    why["multishot_recv"] = _multishot_recv_reason(ring, off, why["recv_send"])
    return why


_recv_multishot_known: bool | None = None


def _multishot_recv_reason(ring: Any, off: frozenset[str], recv_send: str | None) -> str | None:
    # Needs the ring's provided buffers, registered here (once per ring),
    # and a kernel that keeps a receive armed (probed once per process).
    global _recv_multishot_known
    if "multishot_recv" in off:
        return "disabled by THREADLIB_URING_DISABLE"
    if recv_send is not None:
        return f"it needs recv_send ({recv_send})"
    try:
        ring.provide_buffers(RECV_BUFFERS, RECV_BUFFER_BYTES)
    except OSError as exc:
        return f"the kernel refuses IORING_REGISTER_PBUF_RING (Linux >= 5.19): {exc.strerror}"
    if _recv_multishot_known is None:
        _recv_multishot_known = _probe_multishot_recv(ring)
    return None if _recv_multishot_known else "the kernel refuses IORING_RECV_MULTISHOT (Linux >= 6.0)"


def _probe_multishot_recv(ring: Any) -> bool:
    # A multishot receive on a socket with a byte waiting posts that byte
    # and stays armed (IORING_CQE_F_MORE) until cancelled; a kernel without
    # it refuses the flag (EINVAL).
    a, b = socket.socketpair()
    try:
        b.send(b"x")
        ring.recv_multishot(a.fileno(), 1)
        got: Any = None
        for _ in range(10):  # each wait ends at a completion or after 1 s
            for ud, res, flags in ring.poll(1.0):
                if ud == 1 and got is None:
                    got = (res, bool(flags & _uring.CQE_F_MORE))
            if got is not None:
                break
        if got is not None and got[1]:
            ring.cancel(1, 2)
            ended = cancelled = False
            for _ in range(10):
                for ud, res, flags in ring.poll(1.0):
                    ended = ended or (ud == 1 and not flags & _uring.CQE_F_MORE)
                    cancelled = cancelled or ud == 2
                if ended and cancelled:
                    break
        return bool(got == (b"x", True))
    finally:
        a.close()
        b.close()


def _probe_multishot_accept(ring: Any) -> bool:
    # A multishot accept on a listener nobody connects to stays armed until
    # cancelled (-ECANCELED); a kernel without it refuses the flag (EINVAL).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("")  # an abstract address of the kernel's choosing
        listener.listen(1)
        ring.accept(listener.fileno(), 1, True)
        ring.cancel(1, 2)
        result: int | None = None
        cancelled = False
        for _ in range(10):  # each wait ends at a completion or after 1 s
            for ud, res, flags in ring.poll(1.0):
                if ud == 1 and not flags & _uring.CQE_F_MORE:
                    result = res
                cancelled = cancelled or ud == 2
            if result is not None and cancelled:
                break
        return result == -errno.ECANCELED


def _sysctl_disabled() -> str | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip()
    except OSError:
        return None


def uring_unavailable_reason() -> str | None:
    """None if an io_uring scheduler can be built here, else why not."""
    try:
        open_ring(8).close()
    except UringUnavailable as exc:
        return exc.strerror
    return None


class _Watch:
    """One watched fd: its poll request's token and what to call."""

    __slots__ = ("fd", "events", "callback", "token", "multishot")

    def __init__(self, fd: int, events: int, callback: Callable[[int], None], token: int, multishot: bool) -> None:
        self.fd = fd
        self.events = events
        self.callback = callback
        self.token = token
        self.multishot = multishot


class UringPoller:
    """The ``Poller`` contract on an io_uring ring, plus file reads and
    writes whose completions run a callback.

    Every request carries a token (its user_data); a completion whose token
    is no longer known (a removed watch, a modified one) is dropped. A
    watch registered with ``EPOLLET`` is one multishot poll request; one
    without it is level-triggered: a one-shot poll re-armed after each
    report, so a still-ready fd is reported again at the next pass, as
    epoll does."""

    def __init__(self, ring: Any) -> None:
        self._ring = ring
        self._next = 1  # 0 is the token of requests whose completion is ignored
        self._handlers: dict[int, Callable[[int, int], None]] = {}
        self._by_fd: dict[int, _Watch] = {}
        self.completions = 0  # completions reaped (for tests and introspection)

    def _token(self) -> int:
        token = self._next
        self._next = token + 1
        return token

    # -- the Poller contract ------------------------------------------------------
    def register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Watch ``fd`` for ``events`` (epoll bits); ``callback(events)`` runs
        when it fires. A number still registered (its fd was closed without
        ``unregister``) is replaced."""
        if not isinstance(fd, int) or fd < 0:
            raise ValueError(f"fd must be a non-negative int, got {fd!r}")
        if fd in self._by_fd:
            self.unregister(fd)
        watch = _Watch(fd, events, callback, self._token(), bool(events & select.EPOLLET))
        self._by_fd[fd] = watch
        self._arm(watch)

    def _arm(self, watch: _Watch) -> None:
        self._handlers[watch.token] = lambda res, flags: self._fired(watch, res, flags)
        self._ring.poll_add(watch.fd, watch.events & ~_FLAG_BITS, watch.token, watch.multishot)

    def _fired(self, watch: _Watch, res: int, flags: int) -> None:
        if self._by_fd.get(watch.fd) is not watch:
            return  # removed or replaced after this completion was posted
        if res < 0:
            if res == -errno.ECANCELED:
                return
            # The fd is gone (EBADF) or cannot be polled: report an error so
            # the waiters retry their call and meet the real error; the
            # watch is over.
            self._drop(watch)
            watch.callback(_ERROR_EVENTS)
            return
        if not flags & _uring.CQE_F_MORE:
            # A one-shot report, or a multishot poll the kernel ended (its
            # completion queue overflowed): arm again before the callback,
            # which may modify or unregister the fd.
            self._arm(watch)
        watch.callback(res)

    def modify(self, fd: int, events: int) -> None:
        """Change the events watched on ``fd``: the old poll request is
        removed and a new one armed, which reports the fd's current state."""
        watch = self._by_fd.get(fd)
        if watch is None:
            raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered in the io_uring poller")
        if watch.events == events:
            return
        self._remove_request(watch)
        watch.events = events
        watch.multishot = bool(events & select.EPOLLET)
        watch.token = self._token()
        self._arm(watch)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (quietly if it is not watched). The cancel
        is submitted at once: until the kernel drops its poll request, the
        request holds the file open."""
        watch = self._by_fd.get(fd)
        if watch is not None:
            self._drop(watch)
            self._ring.submit()

    def _drop(self, watch: _Watch) -> None:
        del self._by_fd[watch.fd]
        self._remove_request(watch)

    def _remove_request(self, watch: _Watch) -> None:
        if self._handlers.pop(watch.token, None) is not None:
            self._cancel(watch.token)

    def _cancel(self, target: int, tries: int = 0) -> None:
        # An ASYNC_CANCEL, not a POLL_REMOVE: the kernel refuses the removal
        # of a poll whose wake-up it is handling at that moment (EALREADY)
        # and leaves the poll armed, holding its file: a socket closed after
        # ``unregister`` then stayed open, and a reset (SO_LINGER 0) was
        # never sent. A cancel marks such a poll, which ends. EALREADY from
        # the cancel itself (never seen for polls) is retried, bounded.
        token = self._token()
        handlers = self._handlers

        def done(res: int, flags: int) -> None:
            del handlers[token]
            if res == -errno.EALREADY and tries < 100:
                self._cancel(target, tries + 1)

        handlers[token] = done
        self._ring.cancel(target, token)

    def poll(self, timeout: float) -> int:
        """Submit what was prepared, wait up to ``timeout`` seconds (negative:
        no limit; 0: never) unless completions are already there, run their
        callbacks; return how many completions were reaped."""
        # The ring calls each completion's handler itself (Ring.dispatch):
        # no list of tuples, no Python loop per completion.
        done: int = self._ring.dispatch(timeout, self._handlers)
        self.completions += done
        return done

    def fileno(self) -> int:
        """The ring's fd."""
        fd: int = self._ring.fileno()
        return fd

    def close(self) -> None:
        """Close the ring (after the kernel has finished every read and
        write still in flight)."""
        self._handlers.clear()
        self._by_fd.clear()
        self._ring.close()

    # -- file IO --------------------------------------------------------------------
    def _one_shot(self, callback: Callable[[int], None]) -> int:
        token = self._token()
        handlers = self._handlers

        def done(res: int, flags: int) -> None:
            del handlers[token]
            callback(res)

        handlers[token] = done
        return token

    def read(self, fd: int, buf: Any, offset: int, callback: Callable[[int], None]) -> None:
        """Read len(buf) bytes at ``offset`` of ``fd`` into the writable
        ``buf`` (held until done); ``callback(bytes or -errno)`` then runs."""
        _check_io(fd, offset)
        token = self._one_shot(callback)
        try:
            self._ring.read(fd, buf, offset, token)
        except BaseException:
            del self._handlers[token]
            raise

    def write(self, fd: int, buf: Any, offset: int, callback: Callable[[int], None]) -> None:
        """Write ``buf`` at ``offset`` of ``fd`` (held until done);
        ``callback(bytes or -errno)`` then runs."""
        _check_io(fd, offset)
        token = self._one_shot(callback)
        try:
            self._ring.write(fd, buf, offset, token)
        except BaseException:
            del self._handlers[token]
            raise

    def fsync(self, fd: int, datasync: bool, callback: Callable[[int], None]) -> None:
        """Flush ``fd`` to stable storage (fdatasync when ``datasync``);
        ``callback(0 or -errno)`` then runs."""
        _check_io(fd, 0)
        token = self._one_shot(callback)
        self._ring.fsync(fd, datasync, token)

    @property
    def in_flight(self) -> int:
        """Reads and writes handed to the ring and not yet reaped."""
        n: int = self._ring.in_flight
        return n


def _check_io(fd: Any, offset: Any) -> None:
    if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
        raise ValueError(f"fd must be a non-negative int file descriptor, got {fd!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")


class RecvState:
    """The completion-based receive side of one socket (``sockio``'s
    io_uring streams hold one): the recv request in flight, its waiter, and
    what arrived for a recv whose thread was cancelled meanwhile, which the
    next recv on the socket gets first (no byte is lost or reordered)."""

    __slots__ = ("fd", "waiter", "want", "token", "buf", "leftover", "eof", "error", "stopping")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.waiter: Any = None
        self.want = 0
        self.token = 0  # the recv request in flight (0: none)
        self.buf: bytearray | None = None
        self.leftover: bytes | bytearray = b""  # a bytearray while arrivals gather
        self.eof = False
        self.error: OSError | None = None
        self.stopping = False  # the multishot request's cancel is out (it took enough ahead)

    def take(self, nbytes: int) -> bytes | None:
        """Up to ``nbytes`` of what was received (b'' at end of stream, the
        error raised), or None if nothing is there."""
        data = self.leftover
        if data:
            if len(data) <= nbytes:
                self.leftover = b""
                return data if type(data) is bytes else bytes(data)
            if isinstance(data, bytearray):  # arrivals gathered: taken from the front, no copy of the rest
                chunk = bytes(data[:nbytes])
                del data[:nbytes]
                return chunk
            self.leftover = data[nbytes:]
            return data[:nbytes]
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc
        return b"" if self.eof else None

    @property
    def pending(self) -> bool:
        """Whether a recv must go through the worker (a request still in
        flight, or what one left): a direct recv(2) could reorder bytes."""
        return bool(self.token or self.leftover or self.eof or self.error is not None)


class AcceptState:
    """The multishot accept of one listener: its request, the connections
    it delivered that no accept has taken yet, and the waiting thread."""

    __slots__ = ("fd", "waiter", "token", "ready", "error", "closed")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.waiter: Any = None
        self.token = 0
        self.ready: deque[int] = deque()
        self.error: OSError | None = None
        self.closed = False


class UringRecv(SystemCall):
    """Resume (with None) once an IORING_OP_RECV of up to ``nbytes`` on
    ``state``'s socket has received something, end of stream or an error,
    which the thread then takes with ``state.take``: the kernel waits for
    the data and copies it in one step. Served by ``UringWorker``."""

    __slots__ = ("state", "nbytes")

    def __init__(self, state: RecvState, nbytes: int) -> None:
        self.state = state
        self.nbytes = nbytes


class UringSend(SystemCall):
    """Resume with how many bytes of ``data`` an IORING_OP_SEND on ``fd``
    sent (the kernel waits for room itself). Served by ``UringWorker``."""

    __slots__ = ("fd", "data")

    def __init__(self, fd: int, data: Any) -> None:
        self.fd = fd
        self.data = data


class UringAccept(SystemCall):
    """Resume (with None) once the listener's multishot accept
    (IORING_ACCEPT_MULTISHOT) has queued a connection in ``state.ready``
    (or an error in ``state.error``), which the thread then takes. Served
    by ``UringWorker``."""

    __slots__ = ("state",)

    def __init__(self, state: AcceptState) -> None:
        self.state = state


# A waiting recv's request reads into a buffer of the worker's: at most
# this much (an idle connection holds one while it waits, so it is small;
# a recv that filled it tries the socket directly next, for the rest).
RECV_REQUEST_BYTES = 16 * 1024
# Multishot receives pick from the ring's provided buffers, each lent from
# an arrival's posting to its reaping: enough for one pass's arrivals (more
# end the requests with ENOBUFS, re-armed at the next wait; the data waits
# in the socket). Each receive takes what arrived into at most one buffer.
RECV_BUFFERS = 256
RECV_BUFFER_BYTES = 16 * 1024
# Bytes a multishot receive may take ahead of the stream's reader before it
# is stopped (re-armed when the reader next waits): TCP's window, not this
# process's memory, holds back a sender whose reader is slow.
RECV_AHEAD_BYTES = 256 * 1024
_FREE_BUFFERS = 128  # buffers kept for reuse (allocating and zeroing one costs more than the recv)
_ACCEPT_QUEUE_CAP = 256  # connections taken ahead of accept() before the multishot pauses
_feature_logged: set[tuple[str, str]] = set()


class UringWorker(IOWorker):
    """``WaitRead``/``WaitWrite`` served through an io_uring ring, which is
    also where the scheduler idles (it installs a ``UringPoller``), and the
    completion-based socket calls ``UringRecv``, ``UringSend`` and
    ``UringAccept`` that ``sockio`` uses on such a scheduler.

    ``UringWorker()`` opens its ring at once and raises ``UringUnavailable``
    when it cannot; ``uring_workers()`` catches that and falls back to
    epoll. Each socket feature (``SOCKET_FEATURES``) is detected at once
    too: one the kernel lacks (or ``THREADLIB_URING_DISABLE`` names) is
    left out with one log line naming it, and sockio keeps the readiness
    path for it. Attach it before anything watches an fd
    (``uring_workers()`` puts it first after the timers)."""

    def __init__(self, entries: int = 256) -> None:
        super().__init__()
        ring = open_ring(entries)
        try:
            why = socket_features(ring)
        except BaseException:
            ring.close()
            raise
        self.poller = UringPoller(ring)
        self._ring = ring
        #: The socket features in use (names from SOCKET_FEATURES).
        self.features = frozenset(name for name, reason in why.items() if reason is None)
        self.recv_send = "recv_send" in self.features
        self.multishot_accept = "multishot_accept" in self.features
        self.multishot_recv = "multishot_recv" in self.features
        for name, reason in why.items():
            if reason is not None and name in _NEEDS and why[_NEEDS[name]] is not None:
                continue  # said with the feature it needs
            if reason is not None and (name, reason) not in _feature_logged:
                _feature_logged.add((name, reason))
                log.warning("threadlib: io_uring without %s (%s); %s", name, reason, _FALLBACK[name])
        self._rx: dict[int, RecvState] = {}
        self._free_buffers: list[bytearray] = []
        self._tx: dict[int, list[Any]] = {}  # fd -> [token, thread, data] of the send in flight
        self._accepts: dict[int, AcceptState] = {}

    def attach(self, sched: Any) -> dict[type, Handler]:
        """Install the ring as the scheduler's poller; serve WaitRead/WaitWrite
        and the completion-based socket calls."""
        try:
            sched.use_poller(self.poller)
        except RuntimeError:
            self.poller.close()
            raise
        handlers = super().attach(sched)
        self._ready_append = sched._ready.append
        handlers[UringRecv] = self._recv
        handlers[UringSend] = self._send
        handlers[UringAccept] = self._accept
        return handlers

    # -- recv ---------------------------------------------------------------------
    # What a recv request received is kept in its RecvState and the thread
    # resumed with None; the thread takes the bytes itself once it runs. A
    # thread cancelled after its request completed but before it ran (the
    # cancel replaces the value it was resumed with) so loses nothing: the
    # bytes wait for the next recv.
    def _recv(self, thread: Any, sc: UringRecv) -> None:
        st = sc.state
        sched = self._sched
        if st.waiter is not None:
            sched.throw(thread, RuntimeError(f"fd {st.fd} already has a reader waiting: {st.waiter!r}"))
            return
        if st.leftover or st.eof or st.error is not None:
            sched.resume(thread, None)
            return
        if st.fd < 0:
            sched.throw(thread, OSError(errno.EBADF, "the socket was closed"))
            return
        st.waiter = thread
        st.want = sc.nbytes
        self.waiting += 1
        if not st.token:  # else a request is out (armed, or cancelled): its result comes here
            if self.multishot_recv:
                self._arm_recv(st)
            else:
                self._submit_recv(st)
        # Scheduler.suspend, inlined for the common case (no timeout, no
        # pending cancel), as IOWorker does: this is every waiting read.
        if sched._pending or thread._scope is not None:
            sched.suspend(thread, sc)
        else:
            thread._wait = sc

    def _submit_recv(self, st: RecvState) -> None:
        poller = self.poller
        token = poller._next
        poller._next = token + 1
        free = self._free_buffers
        buf = free.pop() if free else bytearray(RECV_REQUEST_BYTES)
        want = st.want
        poller._handlers[token] = partial(self._recv_done, st)
        try:
            self._ring.recv(st.fd, buf if want >= RECV_REQUEST_BYTES else memoryview(buf)[:max(want, 0)], token)
        except BaseException:
            del poller._handlers[token]
            raise
        st.token = token
        st.buf = buf
        self._rx[st.fd] = st

    def _arm_recv(self, st: RecvState) -> None:
        # A multishot receive: armed at the stream's first wait, it stays
        # armed, each arrival copied into st.leftover as it is reaped,
        # whether a thread waits or not (the next recv takes it with no
        # system call).
        poller = self.poller
        token = poller._next
        poller._next = token + 1
        poller._handlers[token] = partial(self._recv_more, st)
        try:
            self._ring.recv_multishot(st.fd, token)
        except BaseException:
            del poller._handlers[token]
            raise
        st.token = token
        self._rx[st.fd] = st

    def _recv_more(self, st: RecvState, res: Any, flags: int) -> None:
        # res: the bytes that arrived (copied out of the provided buffer),
        # or an int that ends the request: 0 at end of stream, -ENOBUFS,
        # -ECANCELED or another -errno.
        if type(res) is bytes:
            left = st.leftover
            if not left:
                st.leftover = res
            elif type(left) is bytearray:
                left += res  # gathered in place: many arrivals between two reads copy nothing over
            else:
                st.leftover = bytearray(left) + res
            if flags & _CQE_F_MORE:
                if len(st.leftover) >= RECV_AHEAD_BYTES and not st.stopping:
                    st.stopping = True
                    self.poller._cancel(st.token)  # its end re-arms it if a reader waits
            else:  # the kernel ended it (its completion queue overflowed)
                del self.poller._handlers[st.token]
                st.token = 0
                st.stopping = False
        else:
            del self.poller._handlers[st.token]
            st.token = 0
            st.stopping = False
            if res == 0:
                st.eof = True
            elif res == -errno.ENOBUFS or res == -errno.ECANCELED:
                # Every buffer was lent at once (the data waits in the
                # socket), or stopped: armed again if a reader waits for
                # more; a reader with bytes already there is woken below.
                if st.waiter is not None and not st.leftover and st.fd >= 0:
                    self._arm_recv(st)
                    return
            else:
                st.error = OSError(-res, os.strerror(-res))
        if st.waiter is not None:
            self._wake_reader(st)

    def _wake_reader(self, st: RecvState) -> None:
        # The reader takes what arrived itself once it runs (see _recv).
        thread = st.waiter
        st.waiter = None
        self.waiting -= 1
        if thread._scope is None:  # Scheduler.resume, inlined (no timer to disarm)
            thread._value = None
            thread._wait = None
            self._ready_append(thread)
        else:
            self._sched.resume(thread, None)

    def _recv_done(self, st: RecvState, res: int, flags: int) -> None:
        del self.poller._handlers[st.token]
        st.token = 0
        buf, st.buf = st.buf, None
        thread = st.waiter
        if res > 0:
            assert buf is not None
            data = bytes(memoryview(buf)[:res])
            st.leftover = st.leftover + data if st.leftover else data
        elif res == 0:
            st.eof = True
        elif res == -errno.ECANCELED:
            if buf is not None and len(self._free_buffers) < _FREE_BUFFERS:
                self._free_buffers.append(buf)
            if thread is not None and st.fd >= 0:
                self._submit_recv(st)  # cancelled for a thread that left; another recv adopted it
            return
        else:
            st.error = OSError(-res, os.strerror(-res))
        if buf is not None and len(self._free_buffers) < _FREE_BUFFERS:
            self._free_buffers.append(buf)  # reaped: the kernel is done with it
        if thread is not None:
            self._wake_reader(st)

    # -- send ---------------------------------------------------------------------
    def _send(self, thread: Any, sc: UringSend) -> None:
        if sc.fd in self._tx:
            self._sched.throw(thread, RuntimeError(f"fd {sc.fd} already has a writer waiting"))
            return
        poller = self.poller
        token = poller._token()
        entry = [token, thread]
        poller._handlers[token] = lambda res, flags: self._send_done(sc.fd, entry, res)
        try:
            self._ring.send(sc.fd, sc.data, token)
        except BaseException as exc:
            del poller._handlers[token]
            self._sched.throw(thread, exc)
            return
        self._tx[sc.fd] = entry
        self.waiting += 1
        self._sched.suspend(thread, sc)

    def _send_done(self, fd: int, entry: list[Any], res: int) -> None:
        del self.poller._handlers[entry[0]]
        thread = entry[1]
        if thread is None:
            return  # its thread left: sendall's contract is an unknown prefix sent
        entry[1] = None
        if self._tx.get(fd) is entry:
            del self._tx[fd]
        self.waiting -= 1
        if res >= 0:
            self._sched.resume(thread, res)
        else:
            self._sched.throw(thread, OSError(-res, os.strerror(-res)))

    # -- accept -------------------------------------------------------------------
    def _accept(self, thread: Any, sc: UringAccept) -> None:
        st = sc.state
        sched = self._sched
        if st.waiter is not None:
            sched.throw(thread, RuntimeError(f"listener fd {st.fd} already has a thread accepting"))
            return
        if st.closed:
            sched.throw(thread, OSError(errno.EBADF, f"listener fd {st.fd} was closed"))
            return
        if st.ready or st.error is not None:
            sched.resume(thread, None)  # the thread takes it (sockio.UringListener)
            return
        st.waiter = thread
        self.waiting += 1
        if not st.token:
            self._arm_accept(st)
        sched.suspend(thread, sc)

    def _arm_accept(self, st: AcceptState) -> None:
        poller = self.poller
        token = poller._token()
        poller._handlers[token] = lambda res, flags: self._accepted(st, token, res, flags)
        self._ring.accept(st.fd, token, True)
        st.token = token
        self._accepts[st.fd] = st

    def _accepted(self, st: AcceptState, token: int, res: int, flags: int) -> None:
        if not flags & _uring.CQE_F_MORE:
            del self.poller._handlers[token]
            if st.token == token:
                st.token = 0
        if st.closed:
            if res >= 0:
                os.close(res)  # delivered as the listener closed: nobody will take it
            return
        if res >= 0:
            st.ready.append(res)
            if len(st.ready) >= _ACCEPT_QUEUE_CAP and st.token:
                # Nobody is accepting: stop taking connections off the
                # kernel's queue (the backlog bounds them again).
                self.poller._cancel(st.token)
        elif res != -errno.ECANCELED:
            st.error = OSError(-res, os.strerror(-res))
        thread = st.waiter
        if thread is None:
            return
        if st.ready or st.error is not None:
            st.waiter = None
            self.waiting -= 1
            self._sched.resume(thread, None)
        elif not st.token:
            # The request ended (paused, cancelled, or stopped by the
            # kernel) while a thread waits for it: arm a new one.
            self._arm_accept(st)

    # -- leaving ------------------------------------------------------------------
    def withdraw(self, thread: Any, syscall: Any) -> None:
        """Free the waiter's place; a recv, send or accept request in flight
        for it is cancelled (what a cancelled recv still receives goes to
        the next recv on the socket; accepted connections stay queued)."""
        cls = type(syscall)
        if cls is UringRecv:
            st = syscall.state
            if st.waiter is thread:
                st.waiter = None
                self.waiting -= 1
                if st.token and not self.multishot_recv:  # a multishot one goes on for the next recv
                    self.poller._cancel(st.token)
        elif cls is UringSend:
            entry = self._tx.get(syscall.fd)
            if entry is not None and entry[1] is thread:
                del self._tx[syscall.fd]
                entry[1] = None
                self.waiting -= 1
                self.poller._cancel(entry[0])
        elif cls is UringAccept:
            st = syscall.state
            if st.waiter is thread:
                st.waiter = None
                self.waiting -= 1
        else:
            super().withdraw(thread, syscall)

    def forget_fd(self, fd: int) -> None:
        """Stop watching ``fd`` (call before closing it): its poll, recv,
        send and accept requests are cancelled at once, connections
        accepted ahead are closed, and threads waiting on it get
        OSError(EBADF)."""
        super().forget_fd(fd)
        closed = OSError(errno.EBADF, f"fd {fd} was closed while a thread waited on it")
        cancelled = False
        st = self._rx.pop(fd, None)
        if st is not None:
            st.fd = -1
            if st.token:
                self.poller._cancel(st.token)
                cancelled = True
            if st.waiter is not None:
                thread, st.waiter = st.waiter, None
                self.waiting -= 1
                self._sched.throw(thread, closed)
        entry = self._tx.pop(fd, None)
        if entry is not None:
            self.poller._cancel(entry[0])
            cancelled = True
            if entry[1] is not None:
                thread, entry[1] = entry[1], None
                self.waiting -= 1
                self._sched.throw(thread, closed)
        acc = self._accepts.pop(fd, None)
        if acc is not None:
            acc.closed = True
            if acc.token:
                self.poller._cancel(acc.token)
                cancelled = True
            while acc.ready:
                os.close(acc.ready.popleft())
            if acc.waiter is not None:
                thread, acc.waiter = acc.waiter, None
                self.waiting -= 1
                self._sched.throw(thread, closed)
        if cancelled:
            # Now, not at the next pass: until the kernel drops them, the
            # requests hold the socket open past the caller's close().
            self._ring.submit()

    def __repr__(self) -> str:
        return f"<UringWorker fds={len(self._fds)} features={sorted(self.features)}>"


def socket_worker() -> UringWorker | None:
    """The ``UringWorker`` of the scheduler running in this OS thread, if
    it has one (sockio then makes completion-based sockets)."""
    from .scheduler import _local

    sched = getattr(_local, "scheduler", None)
    if sched is None:
        return None
    worker: UringWorker | None = sched.worker(UringWorker)
    return worker


def io_backend(choice: str | None = None) -> str:
    """The IO backend ``default_workers()`` uses: ``choice`` if given (a
    program's ``--io``), else ``THREADLIB_IO`` from the environment
    (``epoll`` or ``uring``), ``epoll`` when unset; ValueError naming the
    bad value otherwise."""
    source = "THREADLIB_IO" if choice is None else "the IO backend"
    raw = os.environ.get("THREADLIB_IO", "") if choice is None else choice
    value = raw.strip().lower()
    if value in ("", "epoll") and (value or choice is None):
        return "epoll"
    if value in ("uring", "io_uring"):
        return "uring"
    raise ValueError(f"{source} must be 'epoll' or 'uring', got {raw!r}")


_fallback_logged: set[str] = set()


def _log_fallback(reason: str) -> None:
    if reason not in _fallback_logged:
        _fallback_logged.add(reason)
        log.warning("threadlib: io_uring unavailable (%s); using epoll", reason)


def usable_io_backend(choice: str | None = None) -> str:
    """The backend to build schedulers with for ``choice`` (``epoll``,
    ``uring``; None: ``THREADLIB_IO``): ``uring`` only if a ring can be
    set up here, else ``epoll`` with the one log line of the fallback. For
    a program that forks workers, so the line is written once, by the
    parent. ValueError names a bad ``choice`` or ``THREADLIB_IO``."""
    backend = io_backend(choice)
    if backend == "uring":
        reason = uring_unavailable_reason()
        if reason is not None:
            _log_fallback(reason)
            return "epoll"
    return backend


def uring_workers() -> list[Any]:
    """The workers of an io_uring scheduler: timers, ``UringWorker``, the
    blocking pool (file calls are served on the ring too, once ``fileio``
    attaches its worker). Where io_uring cannot be used, the epoll workers,
    and one log line (per reason and process) saying why."""
    from .blocking import BlockingPool
    from .timers import TimerWorker
    try:
        io: IOWorker = UringWorker()
    except UringUnavailable as exc:
        _log_fallback(exc.strerror or str(exc))
        io = IOWorker()
    return [TimerWorker(), io, BlockingPool()]
