"""Recording a real run: everything that came from outside the program,
written to a log as it happens.

A run is deterministic except where the outside world answers, and in a
threadlib program it answers in only four places, each a seam the
scheduler already has:

* a worker serving a system call: which threads it made ready at once
  (an fd that was already readable) and with what;
* the scheduler's poll: which threads the workers made ready (a socket
  became readable, a timer fired, a pool call returned, a signal came),
  in order, with what, and the clock at that moment;
* the clock, as read by the program (``threadlib.now``, a timeout's
  start), not by the workers;
* the kernel's sockets, through sockio's socket layer (``sockets``).

Everything else (the ready queue's order, spawns, joins, locks, queues,
cancellation between threads) follows from those, so replay recomputes it
and only checks it. Threads are numbered in spawn order. The recorder
attaches to a scheduler before its run by wrapping those seams on that one
scheduler object; it never changes what the program sees, and it never
blocks beyond a buffered write into the page cache.

Only the kernel network, the user-level stack (``userstack``: at its
device) and the standard workers (timers, the epoll IO worker, the
blocking pool, signals) are recorded: a scheduler with other workers
(AIO, io_uring) is refused with a clear error, as is a second recording
in the same process.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from .._kernel import scheduler as _scheduler
from .._kernel.blocking import BlockingPool
from .._kernel.compiled import speedups
from .._kernel.fdio import IOWorker
from .._kernel.timers import TimerWorker
from ..io import sockio
from . import log as _log
from . import sockets as _sockets
from . import userstack as _userstack
from .player import ended_value

#: Workers whose every effect on threads passes through the seams above.
RECORDABLE_WORKERS: tuple[type, ...] = (TimerWorker, IOWorker, BlockingPool)


def _recordable(worker: Any) -> bool:
    if isinstance(worker, RECORDABLE_WORKERS) or _userstack.is_user_worker(worker):
        return True
    from ..process.signals import SignalWorker  # a layer beside this one: imported when asked

    return isinstance(worker, SignalWorker)


class RecordingClock:
    """The scheduler's clock while recording: the program's reads are
    written down; the workers' and the scheduler's own (``quiet``) are not.
    Slots: the compiled recorders (RecordedHandler, RecordedPoll) count
    ``quiet`` up and down in its slot, around every handler call and poll."""

    __slots__ = ("inner", "virtual", "_writer", "quiet", "_now")

    def __init__(self, inner: Any, writer: _log.LogWriter) -> None:
        self.inner = inner
        self.virtual = inner.virtual
        self._writer = writer
        self.quiet = 0
        self._now = inner.now

    def now(self) -> float:
        """The inner clock's time, written to the log unless quiet."""
        return self._read(_log.CLOCK, self._now)

    def wall(self) -> float:
        """The inner clock's time of day, written to the log unless quiet."""
        return self._read(_log.WALL, self.inner.wall)

    def _read(self, kind: int, read: Callable[[], float]) -> float:
        t = read()
        if not self.quiet:
            buf = self._writer.buf
            _log.append(buf, _log._KIND_F64.pack(kind, t))
            if len(buf) >= _log.FLUSH_AT:
                self._writer.flush()
        return t

    def idle(self, seconds: float) -> None:
        """The inner clock's idle."""
        self.inner.idle(seconds)

    def advance_to(self, when: float) -> None:
        """The inner clock's advance_to."""
        self.inner.advance_to(when)


def scope_depth(thread: Any, exc: BaseException) -> int | None:
    """Where in ``thread``'s scope chain the scope that made ``exc`` is
    (0 innermost), or None if no scope of the thread made it."""
    scope = getattr(exc, "scope", None)
    if scope is None:
        return None
    depth = 0
    s = thread._scope
    while s is not None:
        if s is scope:
            return depth
        s = s._outer
        depth += 1
    return None


def put_wakes(buf: bytearray, ready: Any, start: int) -> None:
    """The threads ``ready[start:]``, each with its outcome."""
    n = len(ready)
    _log.put_uint(buf, n - start)
    for i in range(start, n):
        t = ready[i]
        _log.put_uint(buf, t._id)
        exc = t._exc
        if exc is None:
            _log.put_value(buf, t._value)
        else:
            _log.put_exception(buf, exc, scope_depth(t, exc))


class Recorder:
    """Records one scheduler's run into the log at ``path``.

    ``attach(sched)`` before the run; ``finish(value, exc)`` after it
    (``run_recorded`` does both)."""

    def __init__(self, path: str, entry: str | None = None, args: list[Any] | None = None) -> None:
        self.path = path
        self.entry = entry
        self.args = args or []
        self.writer: _log.LogWriter
        self._undo: list[Callable[[], None]] = []

    def attach(self, sched: _scheduler.Scheduler) -> None:
        """Wrap ``sched``'s seams and open the log (before ``sched.run``)."""
        unsupported = [w for w in sched.workers if not _recordable(w)]
        if unsupported:
            raise ValueError(
                f"cannot record a run with {type(unsupported[0]).__name__}: record/replay covers the "
                f"timers, the epoll IO worker, the blocking pool, signals and the user-level stack")
        if any(_userstack.is_user_worker(w) for w in sched.workers):
            raise ValueError("cannot record a scheduler that a user network already joined: let the network "
                             "join inside the run (at its first use), so that its start is recorded")
        if _sockets._Recording.recorder is not None or _sockets._Replaying.player is not None:
            raise RuntimeError("a recording or replay is already in progress in this process")
        classes = sorted(sched._owners, key=lambda c: (c.__module__, c.__qualname__))
        meta = {
            "entry": self.entry, "args": self.args, "python": sys.version.split()[0],
            "classes": [f"{c.__module__}:{c.__qualname__}" for c in classes],
            # Whether a replay must make user networks on ReplayDevices (it
            # then imports tcpsockio, which a kernel-only replay never pays for).
            "user_stack": "threadlib.io.tcpsockio.network" in sys.modules,
        }
        writer = self.writer = _log.LogWriter(self.path, meta)
        buf = writer.buf  # one bytearray for the whole run (flush empties it in place)
        rec_poll = speedups.rec_poll if speedups is not None else None
        inner_now = sched.clock.now
        index = {c: i for i, c in enumerate(classes)}
        ready = sched._ready
        clock = RecordingClock(sched.clock, writer)
        put_uint = _log.put_uint

        for cls, handler in list(sched._handlers.items()):
            if cls in index:
                sched._handlers[cls] = self._wrap_handler(handler, index[cls], ready, clock)

        real_poll = sched._poll
        # [the first wake of this poll not yet written, whether a poll is on]:
        # a user-stack worker running inside the poll writes what came
        # before it and leaves its own wakes out (userstack).
        poll_state: list[Any] = [0, False]

        def write_poll(start: int, now: float) -> None:
            buf.append(_log.POLL)
            if len(ready) == start:
                buf.append(0)
            else:
                put_uint(buf, 1)
                buf.extend(_log._F64.pack(now))
                put_wakes(buf, ready, start)

        def poll() -> None:
            # The specification of _speedups.RecordedPoll, used instead when built.
            poll_state[0] = len(ready)
            poll_state[1] = True
            clock.quiet += 1
            try:
                real_poll()
            finally:
                clock.quiet -= 1
                poll_state[1] = False
            start = poll_state[0]
            now = inner_now()
            if rec_poll is None or not rec_poll(buf, ready, start, now):
                write_poll(start, now)
            if len(buf) >= _log.FLUSH_AT:
                writer.flush()

        if speedups is not None:
            poll = speedups.RecordedPoll(real_poll, ready, clock, buf, writer, write_poll, poll_state, inner_now,
                                         _log.FLUSH_AT)

        real_spawn = sched.spawn

        def spawn(coro: Any, name: str | None = None, context: Any = None) -> Any:
            t = real_spawn(coro, name, context)
            t._id = sched._next_thread_id()
            return t

        real_add_worker = sched.add_worker
        user_workers: list[Any] = []

        def add_worker(worker: Any) -> None:
            # A worker joining mid-run: a user network at its first use.
            if not _recordable(worker):
                raise ValueError(f"cannot record a run with {type(worker).__name__}: record/replay covers the "
                                 f"timers, the epoll IO worker, the blocking pool, signals and the user-level stack")
            real_add_worker(worker)
            if _userstack.is_user_worker(worker):
                _userstack.record_worker(self, sched, worker, len(user_workers), ready, poll_state)
                user_workers.append(worker)
            else:
                for cls, handler in list(sched._handlers.items()):
                    if sched._owners.get(cls) is worker:
                        raise ValueError(f"cannot record {type(worker).__name__} joining during the run: "
                                         f"give it to the scheduler before")

        real_clock = sched.clock
        sched.clock = clock
        sched._poll = poll  # type: ignore[method-assign]
        sched.spawn = spawn  # type: ignore[method-assign]
        sched.add_worker = add_worker  # type: ignore[method-assign]
        _sockets._Recording.recorder = self
        current = (sockio._recv, sockio._recv_into, sockio._send, sockio._new_socket, sockio._sendfile)
        previous = sockio._use_socket_layer(_sockets.recording_layer(writer.buf, current))

        def undo() -> None:
            sockio._use_socket_layer(previous)
            _sockets._Recording.recorder = None
            sched.clock = real_clock
            del sched.spawn, sched.add_worker
            sched._poll = real_poll  # type: ignore[method-assign]  # the compiled poll step is an attribute of its own

        self._undo.append(undo)

    def _wrap_handler(self, handler: Callable[[Any, Any], None], index: int, ready: Any,
                      clock: RecordingClock) -> Callable[[Any, Any], None]:
        writer = self.writer
        buf = writer.buf
        put_uint = _log.put_uint
        rec_handler = speedups.rec_handler if speedups is not None else None

        def write_handler(t: Any, start: int) -> None:
            buf.append(_log.HANDLER)
            put_uint(buf, t._id)
            put_uint(buf, index)
            if len(ready) == start:
                buf.append(0)
            else:
                put_wakes(buf, ready, start)

        def recorded(t: Any, sc: Any) -> None:
            # The specification of _speedups.RecordedHandler, used instead when built.
            start = len(ready)
            clock.quiet += 1
            try:
                handler(t, sc)
            finally:
                clock.quiet -= 1
                if rec_handler is None or not rec_handler(buf, ready, start, t._id, index):
                    write_handler(t, start)
                if len(buf) >= _log.FLUSH_AT:
                    writer.flush()

        if speedups is not None:
            compiled: Callable[[Any, Any], None] = speedups.RecordedHandler(
                handler, ready, clock, buf, writer, write_handler, index, _log.FLUSH_AT)
            return compiled
        return recorded

    def finish(self, value: Any, exc: BaseException | None) -> None:
        """Write main's outcome and close the log; undo the wrapping."""
        try:
            buf = self.writer.buf
            buf.append(_log.END)
            if exc is None:
                _log.put_value(buf, ended_value(value))
            else:
                _log.put_exception(buf, exc, None)
            self.writer.close()
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()


def run_recorded(sched: _scheduler.Scheduler, main: Any, args: tuple[Any, ...], path: str,
                 entry: str | None = None, entry_args: list[Any] | None = None, **run_options: Any) -> Any:
    """``sched.run(main, *args)`` with the run recorded to ``path``."""
    recorder = Recorder(path, entry, entry_args)
    recorder.attach(sched)
    try:
        value = sched.run(main, *args, **run_options)
    except BaseException as exc:
        recorder.finish(None, exc)
        raise
    recorder.finish(value, None)
    return value
