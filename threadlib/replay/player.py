"""Replaying a recorded run: the program runs again, on a scheduler whose
every answer from the outside world is read from the log, and every
output and every decision it makes is checked against the recording.

The replay scheduler is an ordinary ``Scheduler`` (the compiled or the
pure run loop, the same kernel system calls) with one worker, the
``ReplayWorker``, serving every system call class the recorded workers
served, a timer worker that never fires, and a clock that gives the
program the times it read then. Its poll delivers the threads the
recorded poll made ready, with the same values and exceptions; a worker
call that completed at once then completes at once now; sockio's sockets
are ``ReplaySocket``s answering from the log. Nothing is sent or received,
no fd is opened, no time passes: a replay runs as fast as the program
can compute.

The first event that differs (another thread, another system call, a
socket call on another fd, other bytes sent, a clock read the recording
did not have, a program that ends early or late) stops the replay with
``Divergence``, which names the record, the log offset, the thread, and
what was expected and what came.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

from .._kernel import scheduler as _scheduler
from .._kernel.threads import mark_retrieved
from .._kernel.timers import TimerWorker
from .._kernel.worker import Worker
from ..io import sockio
from . import log as _log
from . import sockets as _sockets
from . import userstack as _userstack


class Divergence(BaseException):
    """The replayed program did something other than the recorded one.

    ``record`` is the number of the log record (1-based) and ``offset`` its
    byte offset; ``thread`` the thread that diverged (its name and id);
    ``expected`` what the recording has there and ``got`` what came.

    It derives from ``BaseException``, like ``KeyboardInterrupt``, so that
    a server's ``except Exception`` around a request does not swallow it;
    once raised, the replay stops at the scheduler's next poll whatever the
    program does with it."""

    def __init__(self, record: int, offset: int, thread: str, expected: str, got: str) -> None:
        self.record = record
        self.offset = offset
        self.thread = thread
        self.expected = expected
        self.got = got
        super().__init__(f"replay diverged at record {record} (log offset {offset}) in {thread}: "
                         f"the recording has {expected}; the program did {got}")


def _thread_name(t: Any) -> str:
    return f"thread {t.name!r} (id {t._id})" if t is not None else "the scheduler"


class ReplayClock:
    """The clock of a replay: the program's reads give the recorded times;
    the scheduler's own (``quiet``) give the time of the last poll."""

    virtual = True

    def __init__(self, player: Player) -> None:
        self._player = player
        self.quiet = 0
        self.current = 0.0

    def now(self) -> float:
        """The next recorded clock read, or the poll time when quiet."""
        if self.quiet:
            return self.current
        t: float = self._player.clock_read(_log.CLOCK, "read the clock")
        self.current = t
        return t

    def wall(self) -> float:
        """The next recorded time-of-day read."""
        t: float = self._player.clock_read(_log.WALL, "read the time of day")
        return t

    def idle(self, seconds: float) -> None:
        """Nothing: no time passes in a replay."""

    def advance_to(self, when: float) -> None:
        """Nothing: the log sets the time."""


class _SilentTimers(TimerWorker):
    """The scheduler's timer worker in a replay: it keeps the timeouts the
    kernel arms but never fires one (the log says when each fired) and
    serves no system call (Sleep is the ReplayWorker's)."""

    def attach(self, sched: Any) -> dict[type, Any]:
        """Serve nothing."""
        self._sched = sched
        return {}

    def next_deadline(self) -> float | None:
        """None: no timer fires in a replay."""
        return None

    def busy(self) -> bool:
        """Never busy."""
        return False


class ReplayWorker(Worker):
    """Serves every recorded system call class: the thread waits until the
    log says it was woken, and is woken with what the log says."""

    def __init__(self, player: Player, classes: list[type]) -> None:
        self._player = player
        self._classes = classes
        self._index = {c: i for i, c in enumerate(classes)}
        # fd -> the threads waiting on it, for forget_fd (sockio's close).
        self._fd_waiters: dict[int, list[Any]] = {}

    def attach(self, sched: Any) -> dict[type, Any]:
        """Serve every system call class the recording's workers served."""
        self._sched = sched
        return {cls: self._serve for cls in self._classes}

    def _serve(self, t: Any, sc: Any) -> None:
        player = self._player
        cls = type(sc)
        index = self._index.get(cls)
        if index is None:  # a subclass served through its base
            index = next(i for c, i in self._index.items() if isinstance(sc, c))
        wakes = player.reader.handler(t._id, index)  # the common record in one call; else the Python's
        try:
            if wakes is None:
                wakes = player.handler_record(t, index, sc)
        except (Divergence, _log.LogError):
            # Not raised here (the scheduler would take it for this worker's
            # bug): the thread waits for good and the next poll raises it.
            t._wait = sc
            return
        clock = player.clock
        clock.quiet += 1
        try:
            self._sched.suspend(t, sc)
        finally:
            clock.quiet -= 1
        fd = getattr(sc, "fd", None)
        if type(fd) is int:
            self._fd_waiters.setdefault(fd, []).append(t)
        if wakes:
            player.apply(wakes)

    def withdraw(self, thread: Any, syscall: Any) -> None:
        """Forget a wait that was withdrawn (a timeout, a cancel)."""
        fd = getattr(syscall, "fd", None)
        if type(fd) is int:
            waiters = self._fd_waiters.get(fd)
            if waiters is not None and thread in waiters:
                waiters.remove(thread)
                if not waiters:
                    del self._fd_waiters[fd]

    def forget_fd(self, fd: int) -> None:
        """As the IO worker does: threads still waiting on ``fd`` get EBADF."""
        for t in self._fd_waiters.pop(fd, ()):
            if t._wait is not None and getattr(t._wait, "fd", None) == fd:
                self._sched.throw(t, OSError(9, f"fd {fd} was closed while a thread waited on it"))

    def busy(self) -> bool:
        """Never: the replay's poll, not a worker, says what happens next."""
        return False


def _load_class(name: str) -> type:
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _guarded(method: Any) -> Any:
    # A damaged log found in the middle of a thread's step ends the replay
    # even if the program catches the error: the next poll raises it again.
    def guarded(self: Player, *args: Any) -> Any:
        try:
            return method(self, *args)
        except _log.LogError as exc:
            self.failed(exc)

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class Player:
    """Reads the log and answers the replay scheduler's questions."""

    def __init__(self, path: Any, trusted: bool = False) -> None:
        self.reader = _log.LogReader(path, trusted=trusted)
        self.meta = self.reader.meta
        try:
            self.classes = [_load_class(name) for name in self.meta.get("classes", [])]
        except (ImportError, AttributeError) as exc:
            self.reader.close()
            raise _log.LogError(f"a system call class of the recording is gone: {exc}", 0) from None
        self.sched: Any = None
        self.clock = ReplayClock(self)
        self.threads: dict[int, Any] = {}
        self._sweep_at = 1024
        self._output: dict[int, tuple[int, int]] = {}  # fd -> (sends, bytes) checked so far
        self.user_workers: list[Any] = []  # in the order they joined
        # The first divergence or log error: every later question raises it.
        self.failure: Divergence | _log.LogError | None = None

    # -- reporting ---------------------------------------------------------
    def failed(self, error: _log.LogError) -> NoReturn:
        """A damaged log met while replaying: it ends the replay."""
        if self.failure is None:
            self.failure = error
        raise self.failure

    def diverged(self, got: str, expected: str) -> NoReturn:
        """Raise (and remember) the Divergence at the record being read."""
        if self.failure is None:
            sched = self.sched
            self.failure = Divergence(self.reader.records, self.reader.record_start,
                                      _thread_name(sched.current if sched is not None else None), expected, got)
        raise self.failure

    def _next_description(self) -> str:
        reader = self.reader
        kind = reader.kind()
        if kind == 0:
            return "the end of the log"
        start = reader.offset
        if kind == _log.SOCK:
            # Peek at the op and fd without consuming: read, then describe.
            reader.begin()
            op = reader.uint()
            fd = reader.uint()
            return f"{_log.OP_NAMES.get(op, op)} on fd {fd} (record at offset {start})"
        if kind == _log.HANDLER:
            reader.begin()
            tid = reader.uint()
            index = reader.uint()
            name = self.classes[index].__name__ if index < len(self.classes) else index
            return f"thread {tid} waiting in {name} (record at offset {start})"
        return f"a {_log.KIND_NAMES[kind]} record at offset {start}"

    def _unexpected(self, got: str) -> NoReturn:
        if self.reader.at_end():
            self.failed(_log.LogError("the log ends without an end record: the recording was cut short "
                                      "(its process was killed?) and this replay matched it up to here",
                                      self.reader.offset))
        kind_text = self._next_description()
        self.diverged(got, kind_text)

    # -- the records -----------------------------------------------------------
    # Each question first asks the reader's decoder for the common record
    # (one call, compiled when built); None sends it to the Python below,
    # which reads that record field by field and reports what is wrong.
    def clock_read(self, kind: int, what: str) -> float:
        """The next record, a clock read of ``kind``."""
        t: float | None = self.reader.clock(kind)
        return self._clock_read(kind, what) if t is None else t

    @_guarded
    def _clock_read(self, kind: int, what: str) -> float:
        if self.reader.kind() != kind:
            self._unexpected(what)
        self.reader.begin()
        t: float = self.reader.f64()
        return t

    @_guarded
    def handler_record(self, t: Any, index: int, sc: Any) -> list[tuple[int, Any, Any]]:
        """The next record, ``t`` waiting in call class ``index``: the threads it woke at once."""
        reader = self.reader
        if reader.kind() != _log.HANDLER:
            self._unexpected(f"wait in {sc!r}")
        reader.begin()
        tid = reader.uint()
        recorded = reader.uint()
        if tid != t._id or recorded != index:
            name = self.classes[recorded].__name__ if recorded < len(self.classes) else recorded
            self.diverged(f"wait in {sc!r}", f"thread {tid} waiting in {name}")
        return self._wakes()

    def _wakes(self) -> list[tuple[int, Any, Any]]:
        reader = self.reader
        return [(reader.uint(), *reader.outcome()) for _ in range(reader.uint())]

    def apply(self, wakes: list[tuple[int, Any, Any]]) -> None:
        """Wake each recorded thread as the recording did (resume, or interrupt with the exception)."""
        sched = self.sched
        for tid, value, exc in wakes:
            t = self.threads.get(tid)
            if t is None or t._coro is None or t._wait is None:
                state = "not alive" if t is None or t._coro is None else "not waiting"
                self.diverged(f"thread {tid} {state} here", f"thread {tid} woken")
            wait = t._wait
            if exc is None:
                if isinstance(value, _log.Opaque):
                    self.diverged("a wake-up it cannot replay", f"thread {tid} woken with {value!r}")
                sched._withdrawers[type(wait)](t, wait)
                sched.resume(t, value)
                continue
            if isinstance(exc, _log.ScopeRaised):
                scope = t._scope
                depth = exc.depth
                while depth and scope is not None:
                    scope = scope._outer
                    depth -= 1
                if scope is None:
                    self.diverged(f"thread {tid} with fewer cancel scopes", f"a scope {exc.depth} deep fired")
                exc = scope._exception(wait)
            elif isinstance(exc, _log.Opaque):
                self.diverged("a wake-up it cannot replay", f"thread {tid} woken with {exc!r}")
            sched.interrupt(t, exc)

    @_guarded
    def poll(self) -> None:
        """The scheduler polls: the next records, a poll's wake-ups and the
        user-stack workers' runs inside it."""
        if self.failure is not None:
            raise self.failure
        reader = self.reader
        while True:
            got = reader.poll()
            if got is not None:
                flag, when, wakes = got
                if flag:
                    self.clock.current = when
                    self.apply(wakes)
                if flag != 2:
                    return
                continue
            kind = reader.kind()
            if kind == _log.USER:
                reader.begin()
                worker = self._user_worker(reader.uint())
                if reader.uint() == _userstack.DEVICE_EVENT:
                    worker._on_device(reader.uint())
                else:
                    worker.expire(reader.f64())
                continue
            if kind != _log.POLL:
                ready = self.sched._ready
                self._unexpected("no step left: every thread waits" if not ready
                                 else f"a poll with {len(ready)} threads ready")
            reader.begin()
            flag = reader.uint()
            if flag:
                self.clock.current = reader.f64()
                self.apply(self._wakes())
            if flag != 2:
                return

    # -- the user-level stack (userstack) ----------------------------------------
    def _user_worker(self, index: int) -> Any:
        if index >= len(self.user_workers):
            self.diverged(f"{len(self.user_workers)} user networks", f"user network #{index + 1} running")
        return self.user_workers[index]

    @_guarded
    def user_joined(self, worker: Any) -> None:
        """A user-stack worker joined the replay: give it the recorded stack
        seed and a device and clock that answer from the log."""
        reader = self.reader
        if reader.kind() != _log.USERSTATE:
            self._unexpected("a user network joining")
        reader.begin()
        index = reader.uint()
        if index != len(self.user_workers):
            self.diverged(f"user network #{len(self.user_workers) + 1} joining", f"user network #{index + 1}")
        state, isn_key = reader.value(), reader.value()
        try:
            worker.stack.rng.setstate(state)
        except (TypeError, ValueError):
            raise _log.LogError("a user stack's random state is damaged", reader.record_start) from None
        if type(isn_key) is not bytes or len(isn_key) != 16:
            raise _log.LogError("a user stack's ISN secret is damaged", reader.record_start)
        worker.stack._isn_key = isn_key
        device = worker.device
        if not isinstance(device, _userstack.ReplayDevice):
            self.diverged("a user network on a real device", "a user network made by open_network")
        device.vnet_hdr_size = reader.uint()
        device.name = reader.text()
        device.player = self
        device.index = index
        self.user_workers.append(worker)

        def now() -> float:
            t: float = self.clock_read(_log.UCLOCK, "read the user stack's clock")
            return t

        worker._clock_now = now

    @_guarded
    def device_read(self, index: int, n: int) -> list[bytes]:
        """The next record: a read of user network ``index``'s device."""
        reader = self.reader
        if reader.kind() != _log.DEVIN:
            self._unexpected(f"a read of up to {n} packets from user network #{index + 1}")
        reader.begin()
        if reader.uint() != index:
            self.diverged(f"a read from user network #{index + 1}", "another network's read")
        frames = [reader.blob() for _ in range(reader.uint())]
        if len(frames) > n:
            self.diverged(f"a read of up to {n} packets", f"{len(frames)} packets read")
        return frames

    @_guarded
    def device_write(self, index: int, packets: list[Any]) -> int:
        """The next record: a write to user network ``index``'s device, checked."""
        reader = self.reader
        if reader.kind() != _log.DEVOUT:
            self._unexpected(f"a write of {len(packets)} packets to user network #{index + 1}")
        start = reader.offset
        reader.begin()
        recorded_index, given, written = reader.uint(), reader.uint(), reader.uint()
        crc, first = reader.u32(), reader.blob()
        if recorded_index != index or given != len(packets) or written > given or \
                _userstack._crc(packets[:written]) != crc:
            got = _userstack.first_bytes(packets)
            self.diverged(f"a write of {len(packets)} packets to user network #{index + 1}, the first starting {got!r}",
                          f"a write of {given} packets to user network #{recorded_index + 1}, the first starting "
                          f"{first!r} (record at offset {start})")
        return int(written)

    @_guarded
    def socket_result(self, op: int, fd: int, what: str) -> tuple[bool, Any]:
        """The next record, socket operation ``op`` on ``fd``: ``(ok, result or exception)``."""
        reader = self.reader
        if reader.kind() != _log.SOCK:
            self._unexpected(f"{what} on fd {fd}" if fd >= 0 else what)
        start = reader.offset
        reader.begin()
        recorded_op = reader.uint()
        recorded_fd = reader.uint()
        if recorded_op != op or (fd >= 0 and recorded_fd != fd):
            self.diverged(f"{what} on fd {fd}" if fd >= 0 else what,
                          f"{_log.OP_NAMES.get(recorded_op, recorded_op)} on fd {recorded_fd} "
                          f"(record at offset {start})")
        if reader.uint():
            _, exc = reader.outcome()
            if not isinstance(exc, BaseException):
                raise _log.LogError("a failed socket call is recorded without its error", start)
            return False, exc
        return True, _sockets._read_result(reader, op)

    def output_diverged(self, fd: int, count: int, prefix: bytes, got: bytes) -> NoReturn:
        """Raise the Divergence of a send whose bytes differ from the recorded ones."""
        sends, sent = self._output.get(fd, (0, 0))
        self.diverged(f"send #{sends + 1} on fd {fd} (bytes {sent}..{sent + count} of its output): {got[:64]!r}",
                      f"{count} bytes starting {prefix!r}")

    def count_output(self, fd: int, count: int) -> None:
        """Count a checked send (for the position in the next report)."""
        sends, sent = self._output.get(fd, (0, 0))
        self._output[fd] = (sends + 1, sent + count)

    def spawned(self, t: Any) -> None:
        """Know ``t`` by its id, for the wake-ups that name it."""
        self.threads[t._id] = t
        if len(self.threads) >= self._sweep_at:
            self.threads = {i: th for i, th in self.threads.items() if th._coro is not None}
            self._sweep_at = max(1024, 2 * len(self.threads))

    def end(self, value: Any, exc: BaseException | None) -> None:
        """main ended: the log must end here too, the same way."""
        if self.failure is not None:
            raise self.failure
        reader = self.reader
        got = f"main raising {type(exc).__name__}" if exc is not None else "main returning"
        if reader.kind() != _log.END:
            self._unexpected(got)
        reader.begin()
        recorded_value, recorded_exc = reader.outcome()
        if exc is None:
            value = ended_value(value)
            got = f"main returning {value!r}"[:200]
        if (recorded_exc is None) != (exc is None) or (
                exc is not None and type(recorded_exc) is not type(exc) and not isinstance(recorded_exc, _log.Opaque)
                ) or (exc is None and recorded_value != value):
            expected = (f"main raising {type(recorded_exc).__name__}" if recorded_exc is not None
                        else f"main returning {recorded_value!r}"[:200])
            self.diverged(got, expected)
        if not reader.at_end():
            raise _log.LogError("records follow the end record (damaged log)", reader.offset)


def _abandon(sched: Any) -> None:
    """Close the threads a failed replay leaves suspended, now, while the
    replay's socket layer is still in place: left to the garbage collector,
    their ``finally`` blocks would run at some later moment in whatever
    code is running then."""
    for t in sched.threads():
        coro = t._coro
        if coro is not None:
            try:
                coro.close()
            except BaseException:  # the replay has failed already; its report is what counts
                pass


def _ignore_fd(*args: Any) -> None:
    """A replay watches no fd: the log says when the user stack's device was ready."""


def _user_network_module(recorded: bool) -> Any:
    """tcpsockio's network module, whose open_network makes the devices:
    if the recording had it loaded, or this process has; else None."""
    name = "threadlib.io.tcpsockio.network"  # by its full name: tcpsockio.network() hides the submodule
    if name in sys.modules:
        return sys.modules[name]
    return importlib.import_module(name) if recorded else None


def ended_value(value: Any) -> Any:
    """What the log keeps of main's result: the value itself if it is
    None, an int, str or bytes, else its type's name (a repr may hold an
    address, which differs from run to run)."""
    return value if value is None or type(value) in (int, str, bytes) else f"<a {type(value).__qualname__}>"


def replay(path: Any, main: Any, *args: Any, trusted: bool = False) -> Any:
    """Run ``main(*args)`` (or the generator/coroutine ``main``) against the
    recording at ``path`` (or a binary file object); return its result (or
    raise its exception) once it has done everything the recording did, in
    the same order. Raises ``Divergence`` at the first difference and
    ``LogError`` for a damaged log. Recorded values are unpickled only if
    they are plain data or exceptions, unless ``trusted`` (a log you made:
    unpickling may run code the log names)."""
    player = Player(path, trusted)
    try:
        if _sockets._Recording.recorder is not None or _sockets._Replaying.player is not None:
            raise RuntimeError("a recording or replay is already in progress in this process")
        worker = ReplayWorker(player, player.classes)
        sched = _scheduler.Scheduler(workers=[_SilentTimers(), worker], clock=player.clock)
        player.sched = sched
        real_spawn = sched.spawn

        def spawn(coro: Any, name: str | None = None, context: Any = None) -> Any:
            t = real_spawn(coro, name, context)
            t._id = sched._next_thread_id()
            player.spawned(t)
            return t

        reader, clock = player.reader, player.clock

        def poll() -> None:
            clock.quiet += 1
            try:
                # The common poll record in one call; the rest (a failure to
                # repeat, user-stack runs, more records of this poll, anything
                # wrong) is Player.poll's.
                got = reader.poll() if player.failure is None else None
                if got is None:
                    player.poll()
                elif got[0]:
                    clock.current = got[1]
                    player.apply(got[2])
                    if got[0] == 2:
                        player.poll()
            finally:
                clock.quiet -= 1

        real_add_worker = sched.add_worker

        def add_worker(worker: Any) -> None:
            real_add_worker(worker)  # a user worker's watch_fd is a no-op here: the log says when it runs
            if _userstack.is_user_worker(worker):
                player.user_joined(worker)

        sched.spawn = spawn  # type: ignore[method-assign]
        sched._poll = poll  # type: ignore[method-assign]
        sched.add_worker = add_worker  # type: ignore[method-assign]
        sched.watch_fd = sched.modify_fd = sched.unwatch_fd = _ignore_fd  # type: ignore[method-assign, assignment]
        _sockets._Replaying.player = player
        _sockets._Replaying.reader = player.reader
        previous = sockio._use_socket_layer(_sockets.REPLAY_LAYER)
        network_module = _user_network_module(bool(player.meta.get("user_stack")))
        previous_device = None
        if network_module is not None:
            previous_device, network_module._new_device = network_module._new_device, _userstack.ReplayDevice
        try:
            try:
                value = sched.run(main, *args, handle_sigint=False)
            except BaseException as exc:
                failure = player.failure
                if failure is None:
                    player.end(None, exc)
                    raise
                # The threads the failure ended were "joined" by this report.
                for t in player.threads.values():
                    if t._coro is None and getattr(t._wait, "exc", None) is failure:
                        mark_retrieved(t)
                _abandon(sched)
                assert isinstance(failure, BaseException)
                raise failure from None
            player.end(value, None)
            return value
        finally:
            sockio._use_socket_layer(previous)
            if network_module is not None:
                network_module._new_device = previous_device
            _sockets._Replaying.player = None
            _sockets._Replaying.reader = None
    finally:
        player.reader.close()
