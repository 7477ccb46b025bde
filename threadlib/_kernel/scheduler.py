"""The scheduler: the ready queue, the dispatch table, the idle wait.

Design principles (in the spirit of curio's kernel):

1. A thread is a generator (or an ``async def`` coroutine, or anything with
   ``send``/``throw``). It runs until it yields a system call: a plain data
   object from :mod:`threadlib.syscalls`.
2. The scheduler knows almost nothing. It owns the ready queue, the clock,
   and a dispatch table ``type(syscall) -> handler`` built from the workers
   it was given. Everything that waits on the outside world (timers,
   sockets, disk, a thread pool, a TCP stack) is a worker
   (:mod:`.worker` has the contract). Adding a system call or an event
   source never edits this file.
3. A waiting thread costs as little as possible: a Thread object with a few
   slots and its generator frame. Waits are withdrawn, not polled.
4. Exceptions travel both ways. A worker resumes a thread with a value or
   throws an exception into it; an exception a thread does not catch ends
   that thread only, is kept for whoever joins it, and is logged once if
   nobody ever does. An exception escaping a worker's handler is the
   worker's bug: logged as an internal error naming the worker, and raised
   at the thread's wait as ``WorkerError``.
5. Timeouts and cancellation are one mechanism: the wait is withdrawn from
   the worker that owns it and an exception is thrown at the wait. Cancel
   scopes (``scopes``) give a thread a deadline; a timer is armed only
   when the thread suspends, and the scope chain says what to raise.

This file is over 800 lines on purpose: the run loop, its instrumented
twin, the dispatch and the kernel's own system calls all read and write
the same private state of one object (the ready queue, the pending
interrupts, the base context and its twin), and their invariants are
easier to check side by side than spread over mixins.

The scheduler idles in its poller (an epoll instance, made when the first
fd is watched, or one a worker provides) or, with no fds at all, on its
clock. It never does IO itself and never blocks anywhere else; it reads
time only through ``self.clock``.

Context variables: every thread sees its own ``contextvars.Context``,
copied from its spawner's, without paying for one until it writes. Threads
that never set a variable all run, uncopied, in one *base* context (a copy
of the context ``run`` was called in) that ``run`` enters once; after each
step an O(1) comparison with an untouched twin of the base tells whether
the step wrote to it, and if so the written base becomes that thread's own
context and the others move to a fresh copy (``_rebase``). A thread with a
context of its own has its coroutine wrapped in an ``InContext``, whose
``send`` runs in that context: the loop itself never asks.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import sys
import threading
import types
from typing import IO, Any, Callable, Iterable, TypeVar

from ..syscalls import (
    YIELD,
    Cancel,
    GetCurrent,
    GetScheduler,
    Join,
    JoinAny,
    Park,
    Spawn,
    SystemCall,
    Unpark,
    Yield,
)
from .blocking import BlockingPool
from .clocks import Clock, MonotonicClock
from .compiled import COMPILED
from .compiled import speedups as _speedups
from . import gcbursts
from .fdio import IOWorker
from .interrupts import ConsoleSignals
from .introspect import HookList, SlowStepDetector, format_dump, hook_lists
from .pollers import EpollPoller
from .threads import COROUTINE_TYPES, InContext, Thread, ThreadCancelled, _Lineage, _Unretrieved, driven, mark_retrieved
from .timers import TimerWorker
from .uring import io_backend, uring_workers
from .worker import Handler, Poller, Worker, WorkerError

log = logging.getLogger("threadlib")

_local = threading.local()

# Set in the untouched twin of the base context by add_instrument and
# remove_instrument, so that the running pass ends at its next step and
# the next pass runs the right loop.
_END_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar("threadlib_end_pass", default=False)

_W = TypeVar("_W")

# Called by run() as it starts, with the scheduler; each may return a
# function for run() to call when it ends. The package registers the one
# that gives threads a running asyncio loop when asyncio is loaded
# (threadlib.loop), so that the kernel never imports a layer above it.
RUN_COMPANIONS: list[Callable[[Scheduler], Callable[[], None] | None]] = []


def current_scheduler() -> Scheduler | None:
    """The scheduler running in this OS thread, or None."""
    sched: Scheduler | None = getattr(_local, "scheduler", None)
    return sched


def running_scheduler() -> Scheduler:
    """The scheduler running in this OS thread; RuntimeError if none."""
    sched: Scheduler | None = getattr(_local, "scheduler", None)
    if sched is None:
        raise RuntimeError("no threadlib scheduler is running in this OS thread")
    return sched


def forget_fd(fd: int) -> None:
    """Before closing ``fd``: the scheduler running in this OS thread, if
    any, forgets it (``Scheduler.forget_fd``), so that the next fd with
    that number does not meet stale waiters."""
    sched: Scheduler | None = getattr(_local, "scheduler", None)
    if sched is not None:
        sched.forget_fd(fd)


def default_workers(io: str | None = None) -> list[Worker]:
    """The standard workers: timers, fd readiness (epoll), the blocking pool.
    With ``io="uring"`` (or, when ``io`` is None, ``THREADLIB_IO=uring`` in
    the environment), ``uring_workers()`` instead (which falls back to
    these, saying why, without io_uring)."""
    if io_backend(io) == "uring":
        return uring_workers()
    return [TimerWorker(), IOWorker(), BlockingPool()]


class Scheduler:
    """Runs threads; idles in one poll bounded by the nearest deadline.

    ``Scheduler(workers=[...])`` builds its dispatch table from the workers'
    handlers. With no workers it uses the standard ones (timers, epoll IO,
    the blocking pool). A timer worker is always present because timeouts
    need one. ``poller`` replaces the epoll poller made on first use;
    ``clock`` replaces real time (``VirtualClock`` for simulations).
    """

    # ``current`` is a slot (everything else lives in the instance dict):
    # the compiled run loop writes it at every step through the slot's
    # offset, where a generic attribute store cost a ninth of a switch.
    __slots__ = ("current", "__dict__", "__weakref__")

    def __init__(self, workers: Iterable[Worker] | None = None, clock: Clock | None = None,
                 poller: Poller | None = None) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self._poller: Poller | None = poller
        self._ready: collections.deque[Thread] = collections.deque()
        # A joiner is a waiting Thread or a callback taking the ended thread.
        self._joiners: dict[Thread, list[Any]] = {}
        self._timeouts: dict[Thread, list[Any]] = {}
        # Interrupts (cancel) aimed at a thread that is ready, not waiting:
        # delivered at its next wait, so the value it was resumed with (a
        # lock handed over, a queue item) is never lost.
        self._pending: dict[Thread, BaseException] = {}
        self.current: Thread | None = None
        self._owners: dict[type, Worker] = {}  # system call class -> the worker serving it
        self._fd_forgetters: list[Callable[[int], None]] = []
        # The list of live threads is intrusive (Thread._prev/_next), so
        # listing costs two pointers per thread instead of a dict entry.
        self._head = Thread(None, "<head>")
        self._head._prev = self._head._next = self._head
        self._live = 0
        # Spawn bursts freeze the GC's view of the heap (gcbursts): the live
        # count of the next freeze, and the one below which to thaw (0:
        # nothing frozen by this scheduler).
        self._gc_freeze_at = gcbursts.STEP
        self._gc_thaw_below = 0
        self._ids_given = 0  # Thread.id, numbered per scheduler as first asked for
        # The Ctrl-C/SIGTERM handling of run(), while installed.
        self._signals: Any = None
        self._closed = False  # the workers are closed (the end of run, or close())
        self._handlers: dict[type, Handler] = {
            Yield: self._sys_yield,
            Spawn: self._sys_spawn,
            Join: self._sys_join,
            JoinAny: self._sys_join_any,
            Cancel: self._sys_cancel,
            Park: self._sys_park,
            Unpark: self._sys_unpark,
            GetCurrent: self._sys_get_current,
            GetScheduler: self._sys_get_scheduler,
        }
        # Joiners are not searched for when withdrawn: the joined thread's
        # end finds them no longer waiting and skips them.
        ignore = lambda thread, syscall: None
        self._withdrawers: dict[type, Handler] = {
            Park: self._withdraw_park,
            Join: ignore,
            JoinAny: ignore,
        }
        # While run() runs: the context it was called in (never entered nor
        # written), the shared base the context-less threads run in, and an
        # untouched twin of the base that a written base no longer equals.
        self._origin: contextvars.Context | None = None
        self._base: contextvars.Context | None = None
        self._twin: contextvars.Context | None = None
        # Instruments (introspect.Instrument): with none, passes run
        # _run_ready, which never looks for them.
        self._instruments: list[Any] = []
        self._hooks: dict[str, HookList] = hook_lists([])
        self._spawn_hooks: HookList | None = None  # the thread_spawned hooks, if any
        # The pass used without instruments: the compiled loop when it is
        # built (and THREADLIB_PURE is unset), else _run_ready.
        self._run_plain: Callable[[], bool] = (self._run_ready if _speedups is None
                                               else types.MethodType(_speedups.run_ready, self))
        self._run_pass: Callable[[], bool] = self._run_plain
        # The poll step: compiled for the EpollPoller when built (it runs
        # the Python _poll below for any other poller), else _poll.
        if _speedups is not None:
            self._poll = types.MethodType(_speedups.poll, self)  # type: ignore[method-assign]
        self.workers: list[Worker] = []
        self._timed: list[Worker] = []  # the workers with a next_deadline of their own
        workers = default_workers() if workers is None else list(workers)
        timers = next((w for w in workers if isinstance(w, TimerWorker)), None)
        if timers is None:
            timers = TimerWorker()
            workers.insert(0, timers)
        # Known before any worker attaches: an attach may set timers. A
        # second TimerWorker would fail to attach (Sleep is served once).
        self._timers: TimerWorker = timers
        for worker in workers:
            self.add_worker(worker)

    # -- assembling ---------------------------------------------------------
    def add_worker(self, worker: Worker) -> None:
        """Attach a worker: its system calls join the dispatch table."""
        handlers = worker.attach(self) or {}
        for cls in handlers:
            if cls in self._handlers:
                owner = self._owners.get(cls, "the scheduler itself")
                raise ValueError(f"{cls.__name__} is already served by {owner!r}")
        for cls, handler in handlers.items():
            self._handlers[cls] = handler
            self._withdrawers[cls] = worker.withdraw
            self._owners[cls] = worker
        forget = getattr(worker, "forget_fd", None)
        if forget is not None:
            self._fd_forgetters.append(forget)
        if getattr(type(worker), "next_deadline", None) is not Worker.next_deadline:
            self._timed.append(worker)  # it may have deadlines: _poll asks it
        self.workers.append(worker)

    def worker(self, cls: type[_W]) -> _W | None:
        """The attached worker that is an instance of ``cls``, or None."""
        for w in self.workers:
            if isinstance(w, cls):
                return w
        return None

    def worker_for(self, syscall_class: type) -> Worker | None:
        """The worker serving ``syscall_class``, or None (also for the
        scheduler's own system calls)."""
        return self._owners.get(syscall_class)

    # -- the poller ---------------------------------------------------------------
    def use_poller(self, poller: Poller) -> None:
        """Idle in ``poller`` instead of an epoll made on first use. Only
        before any fd is watched (a worker's ``attach`` is the place)."""
        if self._poller is not None:
            raise RuntimeError(f"this scheduler already polls with {self._poller!r}")
        self._poller = poller

    def _fd_poller(self) -> Poller:
        poller = self._poller
        if poller is None:
            poller = self._poller = EpollPoller()
            if self._signals is not None:
                self._signals.watch(poller)
        return poller

    def watch_fd(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Put ``fd`` in the scheduler's poller; ``callback(events)`` runs
        in the scheduler when it fires."""
        self._fd_poller().register(fd, events, callback)

    def modify_fd(self, fd: int, events: int) -> None:
        """Change the events watched on ``fd``."""
        self._fd_poller().modify(fd, events)

    def unwatch_fd(self, fd: int) -> None:
        """Stop watching ``fd`` (quietly if it is not watched)."""
        if self._poller is not None:
            self._poller.unregister(fd)

    def forget_fd(self, fd: int) -> None:
        """Call before closing an fd that threads may have waited on: every
        worker that tracks fds forgets it (its waiters get EBADF)."""
        for forget in self._fd_forgetters:
            forget(fd)

    def now(self) -> float:
        """The scheduler's clock."""
        return self.clock.now()

    def call_at(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> list[Any]:
        """Run ``callback(arg)`` in the scheduler once the clock reaches
        ``when``; returns a handle for :meth:`cancel_call`."""
        return self._timers.call_at(when, callback, arg)

    def cancel_call(self, handle: list[Any]) -> None:
        """Cancel a callback scheduled with :meth:`call_at` (no-op if it ran)."""
        self._timers.cancel(handle)

    # -- the thread life cycle ----------------------------------------------
    def spawn(self, coro: Any, name: str | None = None, context: contextvars.Context | None = None) -> Thread:
        """Create a thread (from outside any thread, or from a handler).

        Its parent is the running thread (the one whose system call a
        handler serves), if any. Its context variables start as a copy of
        that thread's, or, from outside any thread, of the caller's current
        context (while ``run`` runs: of the context ``run`` was called in).
        ``context`` gives the thread that context instead (not a copy: the
        caller hands it over), for code that runs threads on behalf of
        callers with contexts of their own (an asyncio task)."""
        foreign = type(coro) not in COROUTINE_TYPES
        if foreign and not (hasattr(coro, "send") and hasattr(coro, "throw")):
            raise TypeError(
                f"a thread needs a generator or coroutine object, got {coro!r}"
                + (" (a function: call it first, or use spawn(func, *args))" if callable(coro) else "")
            )
        t = Thread(coro, name)
        parent = self.current  # the thread whose Spawn (or handler) this is
        if parent is not None:
            t._parent = parent._lineage or self._lineage(parent)
            if type(parent._coro) is InContext:
                t._coro = InContext(coro, parent._coro.current_context().copy())
        elif self._origin is None:
            t._coro = InContext(coro, contextvars.copy_context())
        if context is not None:
            t._coro = InContext(coro, context)
        if foreign:
            self._adopt_context(t)
        head = self._head
        last = head._prev
        t._prev = last
        t._next = head
        last._next = t
        head._prev = t
        self._live += 1
        if self._live >= self._gc_freeze_at:
            self._gc_freeze_at, self._gc_thaw_below = gcbursts.freeze(self._live, self._gc_thaw_below)
        self._ready.append(t)
        if self._spawn_hooks is not None:
            # Numbered by this scheduler now: a hook may ask for the id
            # from outside any run (a spawn before run), where no
            # scheduler would be current to number it.
            t._id = self._next_thread_id()
            self._report("thread_spawned", t)
        return t

    def _next_thread_id(self) -> int:
        self._ids_given += 1
        return self._ids_given

    def _lineage(self, parent: Thread) -> _Lineage:
        lineage = parent._lineage = _Lineage(parent)
        return lineage

    def _adopt_context(self, t: Thread) -> None:
        # A thread object that switches contexts itself (a greenlet does:
        # its gr_context) gets its own context at once, and is told which.
        coro = t._coro
        if type(coro) is InContext:
            coro = coro.coro
        if getattr(coro, "adopt_context", None) is None:
            return  # any other object with send/throw is run like a generator
        if type(t._coro) is not InContext:
            origin = self._origin
            t._coro = InContext(coro, origin.copy() if origin is not None else contextvars.copy_context())
        coro.adopt_context(t._coro.context)

    def threads(self) -> list[Thread]:
        """Every live thread, oldest first (for debugging)."""
        out = []
        head = self._head
        t = head._next
        while t is not head:
            out.append(t)
            t = t._next
        return out

    def thread_tree(self) -> dict[Thread | None, list[Thread]]:
        """Every live thread under its parent: ``{parent: [children, oldest
        first]}``, with the roots (the main thread, threads spawned from
        outside, threads whose parent has ended) under None. Every key but
        None is itself a live thread, so walking from ``tree[None]`` with
        ``tree.get(t, [])`` visits each live thread once."""
        tree: dict[Thread | None, list[Thread]] = {}
        for t in self.threads():
            lineage = t._parent
            parent = lineage.thread if lineage is not None else None
            children = tree.get(parent)
            if children is None:
                tree[parent] = [t]
            else:
                children.append(t)
        return tree

    def resume(self, thread: Thread, value: Any = None) -> None:
        """Make a suspended thread ready; its wait returns ``value``."""
        thread._value = value
        thread._wait = None
        if thread._scope is not None:
            self._disarm_timeout(thread)
        self._ready.append(thread)

    def throw(self, thread: Thread, exc: BaseException) -> None:
        """Make a suspended thread ready; its wait raises ``exc``."""
        # resume's body with one slot changed, kept apart: every wake-up
        # passes through resume, which should not test which kind it is.
        thread._exc = exc
        thread._wait = None
        if thread._scope is not None:
            self._disarm_timeout(thread)
        self._ready.append(thread)

    def suspend(self, thread: Thread, syscall: Any) -> None:
        """Record that ``thread`` now waits in ``syscall`` (handlers call
        this). Arms the thread's timeout, if it is inside a timeout scope;
        raises a pending interrupt instead of waiting (the dispatcher then
        withdraws the wait and throws it into the thread)."""
        thread._wait = syscall
        if self._pending:
            exc = self._pending.pop(thread, None)
            if exc is not None:
                raise _PendingInterrupt(exc)
        scope = thread._scope
        if scope is not None:
            deadline = scope._effective
            if deadline is not None:
                self._timeouts[thread] = self._timers.call_at(deadline, self._time_out, thread)

    def _disarm_timeout(self, thread: Thread) -> None:
        entry = self._timeouts.pop(thread, None)
        if entry is not None:
            self._timers.cancel(entry)

    def _time_out(self, thread: Thread) -> None:
        self._timeouts.pop(thread, None)
        wait = thread._wait
        if wait is None or thread._coro is None:
            return
        now = self.clock.now()
        scope = thread._scope
        # The innermost scope in effect that is due raises; scopes outside
        # a shield do not count.
        while scope is not None:
            if scope._fired(now):
                self.interrupt(thread, scope._exception(wait))
                return
            if scope._shield:
                break
            scope = scope._outer
        deadline = thread.deadline
        if deadline is not None and deadline > now:  # moved later since the timer was armed
            self._timeouts[thread] = self._timers.call_at(deadline, self._time_out, thread)

    def _deadline_changed(self, thread: Thread) -> None:
        """A scope of ``thread`` moved its deadline or was cancelled: re-arm
        the timer of the wait in progress, if any (at -inf for a cancel, so
        the wait raises at the next poll)."""
        if thread._wait is None or thread._coro is None:
            return
        self._disarm_timeout(thread)
        deadline = thread.deadline
        if deadline is not None:
            self._timeouts[thread] = self._timers.call_at(deadline, self._time_out, thread)

    def _cancel_thread(self, thread: Thread, exc: BaseException) -> None:
        """Cancel a whole thread (``Thread.cancel``, a task group, Ctrl-C):
        ``interrupt`` it with ``exc``, unless it is inside a shielded scope,
        which holds ``exc`` back until it exits."""
        scope = thread._scope
        while scope is not None:
            if scope._shield:
                if getattr(scope, "_held", None) is None:
                    scope._held = exc
                return
            scope = scope._outer
        self.interrupt(thread, exc)

    def interrupt(self, thread: Thread, exc: BaseException) -> None:
        """Withdraw ``thread`` from whatever it waits on and raise ``exc``
        there. If it is ready or running, it first resumes with the value
        it was given, and ``exc`` is raised at its next wait (the next
        system call that would suspend it)."""
        if thread._coro is None:
            return
        wait = thread._wait
        if wait is None:
            self._pending[thread] = exc
            return
        self._withdrawers[type(wait)](thread, wait)
        self.throw(thread, exc)

    def _finish(self, t: Thread, value: Any, exc: BaseException | None) -> None:
        # The default name comes from the coroutine: read it before it goes.
        name = t.name if exc is not None else ""
        t._coro = None
        t._value = value
        t._exc = exc
        t._wait = None
        t._prev._next = t._next
        t._next._prev = t._prev
        del t._prev, t._next  # an ended thread keeps no neighbour alive
        self._live -= 1
        if self._live < self._gc_thaw_below:
            self._gc_freeze_at, self._gc_thaw_below = gcbursts.thaw(self._live)
        lineage = t._lineage
        if lineage is not None:
            lineage.thread = None  # its children now have no parent
        if t._scope is not None:
            self._disarm_timeout(t)
        if self._pending:
            self._pending.pop(t, None)
        joiners = self._joiners.pop(t, None) if self._joiners else None
        if joiners:
            for j in joiners:
                if type(j) is Thread:
                    if type(j._wait) is Join and j._wait.thread is t:
                        if exc is None:
                            self.resume(j, value)
                        else:
                            self.throw(j, exc)
                else:
                    j(t)
        elif exc is not None and not isinstance(exc, ThreadCancelled):
            t._wait = _Unretrieved(name, exc)

    def add_done_callback(self, thread: Thread, callback: Callable[[Thread], None]) -> None:
        """Run ``callback(thread)`` in the scheduler when ``thread`` ends
        (at once if it has ended). The callback counts as a joiner: an
        exception the thread ends with is not logged as unretrieved; the
        callback should take it (``thread.result()``)."""
        if thread._coro is None:
            callback(thread)
        else:
            self._joiners.setdefault(thread, []).append(callback)

    # -- seeing what the threads do ------------------------------------------
    def add_instrument(self, instrument: Any) -> None:
        """Call ``instrument``'s hook methods (see ``Instrument``: any of
        ``thread_spawned``, ``before_step``, ``after_step``, ``system_call``,
        ``thread_finished``) from now on. Installed from inside a thread, it
        sees the steps from the next one on. While no instrument is
        installed the run loop never looks for hooks."""
        if any(i is instrument for i in self._instruments):
            raise ValueError(f"{instrument!r} is already installed")
        self._instruments.append(instrument)
        self._use_instruments()

    def remove_instrument(self, instrument: Any) -> None:
        """Stop calling ``instrument``'s hooks (``ValueError`` if it is not
        installed)."""
        for i, installed in enumerate(self._instruments):
            if installed is instrument:
                del self._instruments[i]
                self._use_instruments()
                return
        raise ValueError(f"{instrument!r} is not installed")

    def _use_instruments(self) -> None:
        # In place: a pass in progress holds these lists, and takes the
        # change from the next hook call on.
        for name, hooks in hook_lists(self._instruments).items():
            self._hooks[name][:] = hooks
        self._run_pass = self._run_ready_instrumented if self._instruments else self._run_plain
        self._spawn_hooks = self._hooks["thread_spawned"] or None
        twin = self._twin
        if twin is not None:
            # A pass in progress ends at its next step (its base no longer
            # equals the twin), so the change does not wait for the ready
            # queue to drain, which busy threads may never let happen.
            twin.run(_END_PASS.set, True)

    def warn_slow_steps(self, threshold: float = 0.1, logger: logging.Logger | None = None) -> SlowStepDetector:
        """Install a ``SlowStepDetector``: log a WARNING (on ``logger``, by
        default the "threadlib" logger) naming the thread and where it
        was, whenever one step ran longer than ``threshold`` seconds.
        Returns it; ``remove_instrument`` takes it away."""
        detector = SlowStepDetector(threshold, logger)
        self.add_instrument(detector)
        return detector

    def dump(self, file: IO[str] | None = None) -> str:
        """A thread dump: every live thread grouped by what it waits on
        (the system call and its fields) and its stack, with the count,
        ids, names and parents of the threads in each group. Returns the
        text; also writes it to ``file`` when one is given."""
        text = format_dump(self)
        if file is not None:
            file.write(text)
            file.flush()
        return text

    def enable_dump_signal(self, signum: int, file: IO[str] | None = None) -> None:
        """Write a thread dump to ``file`` (default: ``sys.stderr`` at the
        time) each time the process receives ``signum`` (e.g.
        ``signal.SIGUSR1``), without stopping anything else. The signal is
        caught from now until the scheduler ends; must be called in the
        main OS thread. The dump is written by the scheduler between steps,
        never in the signal handler.

        It goes through the scheduler's ``SignalWorker`` (one is added if
        missing), which owns the process's signal wake-up fd, so
        ``wait_signal`` keeps working alongside."""
        # The one import from a layer above the kernel: CPython has a single
        # wake-up fd per process, and threadlib.process.signals owns it.
        from ..process.signals import SignalWorker

        worker = self.worker(SignalWorker)
        if worker is None:
            worker = SignalWorker()
            self.add_worker(worker)

        def write_dump(signum: int) -> None:
            try:
                self.dump(file if file is not None else sys.stderr)
            except Exception:  # a closed stderr must not stop the server
                log.exception("writing the thread dump asked for by signal %d failed", signum)

        worker.on_signal(signum, write_dump)

    def _report(self, hook: str, *args: Any) -> None:
        for instrument, method in self._hooks[hook]:
            try:
                method(*args)
            except Exception:
                self._instrument_failed(instrument, hook)

    def _instrument_failed(self, instrument: Any, hook: str) -> None:
        # Called from an except block: log.exception has the traceback.
        log.exception("instrument %r failed in %s and was removed", instrument, hook)
        if any(i is instrument for i in self._instruments):
            self.remove_instrument(instrument)

    # -- the run loop ---------------------------------------------------------
    def run(self, main: Any, *args: Any, handle_sigint: bool = True, handle_sigterm: bool = False) -> Any:
        """Run ``main`` (a generator, coroutine, or function plus args) as a
        thread until it ends; return its result or raise its exception.
        Threads still alive then are cancelled and run to their end.

        In the main OS thread, while Python's default handlers are in
        place, Ctrl-C (and SIGTERM with ``handle_sigterm``) is delivered to
        the main thread as ``KeyboardInterrupt`` (``SystemExit(143)``) at
        its wait, as a cancel; a second one within 3 s exits at once
        (see ``interrupts``)."""
        if args or (callable(main) and not hasattr(main, "send")):
            main = driven(main(*args))  # run(sleep, 1) as well as run(func, *args)
        self._enter()
        withdrawals: list[Callable[[], None]] = []
        try:
            for companion in RUN_COMPANIONS:
                withdraw = companion(self)
                if withdraw is not None:
                    withdrawals.append(withdraw)
        except BaseException:
            for withdraw in reversed(withdrawals):
                withdraw()
            self._leave()
            raise
        try:
            main_thread = self.spawn(main, name="main")
            if handle_sigint or handle_sigterm:
                self._signals = ConsoleSignals.install(self, main_thread, handle_sigint, handle_sigterm)
            try:
                self._in_base(self._loop, main_thread)
            except (KeyboardInterrupt, SystemExit):
                # Ctrl-C or exit() in some thread: the other threads' finally
                # blocks still run and the workers still close before it
                # reaches the caller.
                self._cancel_remaining(interrupted=True)
                raise
            self._cancel_remaining()
            return main_thread.result()
        finally:
            if self._signals is not None:
                self._signals.uninstall()
                self._signals = None
            self._leave()
            for withdraw in reversed(withdrawals):
                withdraw()

    def run_while(self, keep_going: Callable[[], object]) -> None:
        """Run threads and workers while ``keep_going()`` is true (asked
        after every pass and before every poll); then return, leaving every
        thread and worker as it is for a later ``run_while`` or ``close``.
        For a host event loop that drives threadlib (``threadlib.loop``):
        unlike ``run`` it starts no thread, cancels nothing, closes nothing
        and installs no Ctrl-C handling. A ``KeyboardInterrupt`` or
        ``SystemExit`` that ends a thread comes out of it."""
        if self._closed:
            raise RuntimeError("this scheduler has been closed")
        self._enter()
        try:
            self._in_base(self._loop_while, keep_going)
        finally:
            self._leave()

    def close(self) -> None:
        """End a scheduler driven by ``run_while``: cancel the live threads,
        let them finish as ``run`` does at its end (up to one second of the
        clock), and close the workers. A second call does nothing."""
        if self._closed:
            return
        self._enter()
        try:
            self._cancel_remaining()  # closes the workers, which marks it closed
        finally:
            self._leave()

    def _enter(self) -> None:
        if getattr(_local, "scheduler", None) is not None:
            raise RuntimeError("a threadlib scheduler is already running in this OS thread")
        _local.scheduler = self
        origin = self._origin = contextvars.copy_context()
        self._base = origin.copy()
        self._twin = origin.copy()

    def _leave(self) -> None:
        _local.scheduler = None
        self.current = None
        self._origin = self._base = self._twin = None

    def _loop_while(self, keep_going: Callable[[], object]) -> bool:
        # _loop with a condition in place of a thread to wait for.
        # With no thread ready a pass would do nothing and keep_going could
        # not have changed its mind: straight to the poll (the simulator
        # wakes a host for a packet with no thread ready, thousands of
        # times per simulated second).
        run_pass = self._run_pass
        poll = self._poll
        ready = self._ready
        while keep_going():
            if ready:
                if run_pass():
                    return True
                if not keep_going():
                    break
            poll()
        return False

    def _in_base(self, loop: Callable[[Any], bool], arg: Any) -> None:
        # Run loop(arg) in the base context. A loop returns True when a step
        # wrote to the base (which now belongs to that thread): it goes on in
        # the fresh base _rebase made.
        while True:
            base = self._base
            assert base is not None  # set while run() runs
            if not base.run(loop, arg):
                return

    def _loop(self, until: Thread) -> bool:
        # add_instrument/remove_instrument end the pass (True), so the loop
        # in use can be read once per entry.
        run_pass = self._run_pass
        poll = self._poll
        while until._coro is not None:
            if run_pass():
                return True
            if until._coro is None:
                break
            poll()
        return False

    def _run_ready(self) -> bool:
        # The specification of _speedups.run_ready, which must do exactly
        # this: a change here is a change there.
        ready = self._ready
        popleft = ready.popleft
        append = ready.append
        handlers = self._handlers
        pending = self._pending
        base = self._base
        twin = self._twin
        stop: BaseException | None = None
        while ready:
            t = popleft()
            self.current = t
            try:
                exc = t._exc
                if exc is None:
                    sc = t._coro.send(t._value)
                else:
                    t._exc = None
                    sc = t._coro.throw(exc)
            except StopIteration as e:
                self._finish(t, e.value, None)
                if base != twin:
                    return self._rebase(None, None)
                continue
            except (KeyboardInterrupt, SystemExit) as e:
                self._finish(t, None, e)
                mark_retrieved(t)  # run() raises it to its caller: nobody need log it
                stop = e
                break
            except BaseException as e:
                self._finish(t, None, e)
                if base != twin:
                    return self._rebase(None, None)
                continue
            if base != twin:  # O(1) while they share one mapping: the step wrote nothing
                return self._rebase(t, sc)
            if sc is YIELD:
                t._value = None
                if pending and t in pending:
                    t._exc = pending.pop(t)
                append(t)
                continue
            try:
                handler = handlers[sc.__class__]
            except (KeyError, AttributeError, TypeError):
                self._unknown_call(t, sc)
                continue
            try:
                handler(t, sc)
            except _PendingInterrupt as e:
                self._interrupted_wait(t, sc, e.exc)
            except BaseException as e:
                self._worker_failed(t, sc, e)
        self.current = None
        if stop:
            raise stop
        return False

    def _run_ready_instrumented(self) -> bool:
        """_run_ready with the instruments' hooks around every step: the
        loop that runs instead of it while any instrument is installed."""
        ready = self._ready
        hooks = self._hooks
        before, after, calls = hooks["before_step"], hooks["after_step"], hooks["system_call"]
        base = self._base
        twin = self._twin
        # The hooks are called in place, not through _report: the slow-step
        # detector runs in production, and the simulator's trace reports
        # every step; a Python call per hook counts.
        while ready:
            t = ready.popleft()
            self.current = t
            for owner, hook in before:
                try:
                    hook(t)
                except Exception:
                    self._instrument_failed(owner, "before_step")
            exc, t._exc = t._exc, None
            try:
                sc = t._coro.send(t._value) if exc is None else t._coro.throw(exc)
            except BaseException as e:
                self._report("after_step", t)
                self._ended(t, e)
                if base != twin:
                    return self._rebase(None, None)
                continue
            for owner, hook in after:
                try:
                    hook(t)
                except Exception:
                    self._instrument_failed(owner, "after_step")
            for owner, hook in calls:
                try:
                    hook(t, sc)
                except Exception:
                    self._instrument_failed(owner, "system_call")
            if base != twin:
                return self._rebase(t, sc)
            self._dispatch(t, sc)
        self.current = None
        return False

    def _ended(self, t: Thread, e: BaseException) -> None:
        # A step of t raised: it returned (StopIteration) or failed.
        if isinstance(e, StopIteration):
            value, exc = e.value, None
        else:
            value, exc = None, e
        self._finish(t, value, exc)
        if self._hooks["thread_finished"]:
            self._report("thread_finished", t, value, exc)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            mark_retrieved(t)  # run() raises it to its caller: nobody need log it
            self.current = None
            raise e

    def _rebase(self, t: Thread | None, sc: Any) -> bool:
        """A step wrote to the base context (or add_instrument asked the
        pass to end): the written base becomes the context of ``t`` (if it
        is a thread that wrote and is still alive), the other threads move
        to a fresh copy of the origin, and ``sc`` is dispatched. Returns
        True: the pass must end, so that the new base is entered."""
        origin = self._origin
        assert origin is not None and self._base is not None  # only while run() runs
        written = self._base
        if t is not None and type(t._coro) in COROUTINE_TYPES and written != origin:
            t._coro = InContext(t._coro, written)
        self._base = origin.copy()
        self._twin = origin.copy()
        if t is not None:
            self._dispatch(t, sc)
        self.current = None
        return True

    def _dispatch(self, t: Thread, sc: Any) -> None:
        # The generic path of _run_ready's dispatch, for the rare passes
        # that leave the fast loop and for the instrumented loop (YIELD
        # goes to _sys_yield here, which does what _run_ready inlines).
        handler = self._handlers.get(type(sc))
        if handler is None:
            self._unknown_call(t, sc)
            return
        try:
            handler(t, sc)
        except BaseException as e:
            if isinstance(e, _PendingInterrupt):
                self._interrupted_wait(t, sc, e.exc)
            else:
                self._worker_failed(t, sc, e)

    def _unknown_call(self, t: Thread, sc: Any) -> None:
        # A subclass of a served class (a subclass of asyncio.Future, say)
        # is served by its base's worker; the handler is found once per class.
        handlers = self._handlers
        for klass in getattr(type(sc), "__mro__", ())[1:]:
            handler = handlers.get(klass)
            if handler is not None and klass is not object:
                cls = type(sc)
                handlers[cls] = handler
                self._withdrawers[cls] = self._withdrawers[klass]
                if klass in self._owners:
                    self._owners[cls] = self._owners[klass]
                self._dispatch(t, sc)
                return
        t._value = None
        t._exc = TypeError(
            f"thread {t.name} yielded {sc!r} ({type(sc).__name__}), which is not a "
            f"system call this scheduler serves"
            + ("; did you write `yield` where `yield from` was meant?" if not isinstance(sc, SystemCall) else "")
        )
        self._ready.append(t)

    def _interrupted_wait(self, t: Thread, sc: Any, exc: BaseException) -> None:
        # suspend() found a cancel or timeout waiting for this thread.
        self._withdrawers[sc.__class__](t, sc)
        t._wait = None
        t._value = None
        t._exc = exc
        self._ready.append(t)

    def _worker_failed(self, t: Thread, sc: Any, error: BaseException) -> None:
        """A handler raised: a bug in the worker, not the thread's fault.
        Log it as the worker's, and raise WorkerError at the thread's wait so
        it does not hang in a wait nobody will end."""
        owner = self._owners.get(sc.__class__)
        who = repr(owner) if owner is not None else "the scheduler"
        log.error("internal error: %s failed serving %r for thread %s", who, sc, t.name,
                  exc_info=(type(error), error, error.__traceback__))
        if t._wait is sc:
            try:
                self._withdrawers[sc.__class__](t, sc)
            except Exception:
                log.exception("internal error: %s failed withdrawing %r", who, sc)
        failure = WorkerError(f"{who} failed serving {sc!r}: {error!r}")
        failure.__cause__ = error
        t._wait = None
        t._value = None
        t._exc = failure
        self._ready.append(t)

    def _poll(self) -> None:
        # The specification of _speedups.poll, which does exactly this when
        # the poller is the EpollPoller (and calls this for any other).
        clock = self.clock
        if self._poller is None and clock.virtual and self._signals is None:
            self._poll_simulated(clock)
            return
        deadline = None
        timed = self._timed  # the others' next_deadline is Worker's: always None
        for w in timed:
            d = w.next_deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        if self._ready:
            timeout = 0.0
        elif deadline is not None:
            # A virtual clock never sleeps: time moves by advance_to below.
            timeout = 0.0 if clock.virtual else max(0.0, deadline - clock.now())
        else:
            timeout = -1.0
            if self._poller is None or not self._any_worker_busy():
                # Nothing could wake a thread: no fd to wait on, no deadline.
                self._deadlock()
                return
        poller = self._poller
        if poller is not None:
            events = poller.poll(timeout)
        else:
            events = 0
            if self._signals is None:
                clock.idle(timeout)
            else:  # a Ctrl-C must end the idle sleep: no poller to wake
                self._signals.idle(clock, timeout)
        if deadline is not None:
            if clock.virtual and not self._ready and not events:
                clock.advance_to(deadline)
            now = clock.now()
            for w in timed:
                d = w.next_deadline()
                if d is not None and d <= now:
                    w.expire(now)

    def _poll_simulated(self, clock: Clock) -> None:
        # _poll for a host of the simulator (a virtual clock, no poller, no
        # signals), which polls a few times per packet: nothing can run
        # between asking the workers' deadlines and expiring them, so each
        # is asked once (twice was a tenth of a host's poll) until the
        # first expiry, which may move the others'.
        deadline = None
        timed = self._timed
        asked = []
        for w in timed:
            d = w.next_deadline()
            asked.append(d)
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        if deadline is None and not self._ready:
            self._deadlock()  # no fd to wait on, no deadline: nothing could wake a thread
            return
        clock.idle(0.0)  # a virtual clock never sleeps: time moves by advance_to
        if deadline is not None:
            if not self._ready:
                clock.advance_to(deadline)
            now = clock.now()
            fresh = True
            for w, d in zip(timed, asked):
                if not fresh:
                    d = w.next_deadline()
                if d is not None and d <= now:
                    w.expire(now)
                    fresh = False

    def _any_worker_busy(self) -> bool:
        # Asked at every poll that may block: a loop, not any() over a
        # generator expression (a function and a generator made per poll).
        for w in self.workers:
            if w.busy():
                return True
        return False

    def _deadlock(self) -> None:
        """No thread is ready and no worker can ever wake one: every live
        thread waits on something only another thread could provide."""
        waiting = [t for t in self.threads() if t._wait is not None]
        summary = ", ".join(repr(t) for t in waiting[:5]) + (" ..." if len(waiting) > 5 else "")
        for t in waiting:
            if t._name == "main":
                self.interrupt(t, RuntimeError(f"deadlock: every thread waits forever: {summary}"))
                return
        raise RuntimeError(f"deadlock: every thread waits forever: {summary}")

    def _cancel_remaining(self, interrupted: bool = False) -> None:
        """Cancel every live thread so its finally blocks run, and let them
        finish; then close the workers. Bounded to one second of the clock,
        except after Ctrl-C (``interrupted``) with the console handler in
        place: a second Ctrl-C is then the bound, and cleanup may take as
        long as it needs until then."""
        signals = self._signals
        try:
            if not self._live or (signals is not None and signals.forced):
                return
            for t in self.threads():
                self._cancel_thread(t, ThreadCancelled())
            bound = _Drain(self.clock.now() + 1.0, patient=interrupted and signals is not None)
            self.call_at(bound.give_up, _nothing)  # so that a poll with nothing else due still wakes then
            self._in_base(self._drain, bound)
        finally:
            if signals is not None and signals.forced:
                self._close_remaining()
            self._close_workers()

    def _close_remaining(self) -> None:
        """After a forced exit (a second Ctrl-C): close every live thread's
        coroutine now, quietly, rather than leave it to the garbage
        collector at interpreter exit. ``finally`` blocks run up to their
        first wait, which is refused; nothing waits any more."""
        for t in self.threads():
            close = getattr(t._coro, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException:  # a finally that tried to wait; or yet another Ctrl-C
                    pass

    def _drain(self, bound: _Drain) -> bool:
        # The loop of _cancel_remaining; True: re-enter the base context.
        while self._live:
            if self.clock.now() >= bound.give_up:
                if not bound.patient:
                    break
                bound.patient = False
                bound.give_up = float("inf")
                names = ", ".join(t.name for t in self.threads()[:5])
                log.warning("waiting for %d threads to finish cleaning up (%s); "
                            "interrupt again to exit at once", self._live, names)
            if self._run_pass():
                return True
            if not self._live:
                break
            if not self._ready and not any(w.busy() for w in self.workers):
                break
            self._poll()
        return False

    def _close_workers(self) -> None:
        self._closed = True
        if self._gc_thaw_below:
            self._gc_freeze_at, self._gc_thaw_below = gcbursts.thaw(self._live)
        for w in reversed(self.workers):
            w.close()
        if self._poller is not None:
            self._poller.close()

    # -- the kernel's own system calls ----------------------------------------
    def _sys_yield(self, t: Thread, sc: Any) -> None:
        # The YIELD singleton is served inline by _run_ready; this serves
        # any other Yield instance a thread may build itself, and YIELD in
        # the instrumented loop.
        t._value = None
        if self._pending and t in self._pending:
            t._exc = self._pending.pop(t)
        self._ready.append(t)

    def _sys_spawn(self, t: Thread, sc: Spawn) -> None:
        try:
            t._value = self.spawn(sc.coro, sc.name)
        except TypeError as exc:  # not a coroutine: the caller's mistake
            self.throw(t, exc)
            return
        self._ready.append(t)

    def _sys_get_current(self, t: Thread, sc: Any) -> None:
        t._value = t
        self._ready.append(t)

    def _sys_get_scheduler(self, t: Thread, sc: Any) -> None:
        t._value = self
        self._ready.append(t)

    def _sys_join(self, t: Thread, sc: Join) -> None:
        target = sc.thread
        if type(target) is not Thread:
            self.throw(t, TypeError(f"join needs a Thread, got {target!r}"))
            return
        if target is t:
            self.throw(t, RuntimeError(f"{t!r} cannot join itself"))
            return
        if target._coro is None:
            exc = target._exc
            if exc is None:
                self.resume(t, target._value)
            else:
                mark_retrieved(target)
                self.throw(t, exc)
            return
        self.suspend(t, sc)
        self._joiners.setdefault(target, []).append(t)

    def _sys_join_any(self, t: Thread, sc: JoinAny) -> None:
        for target in sc.threads:
            if type(target) is not Thread:
                self.throw(t, TypeError(f"join_any needs Threads, got {target!r}"))
                return
        for target in sc.threads:
            if target._coro is None:
                self.resume(t, target)
                return

        def first_done(target: Thread, waiter: Thread = t, sc: JoinAny = sc) -> None:
            if waiter._wait is sc:
                self.resume(waiter, target)

        self.suspend(t, sc)
        for target in sc.threads:
            self._joiners.setdefault(target, []).append(first_done)

    def _sys_cancel(self, t: Thread, sc: Cancel) -> None:
        target = sc.thread
        if target is t:
            self.throw(t, RuntimeError("a thread cannot cancel itself through Cancel; raise ThreadCancelled"))
            return
        self._cancel_thread(target, ThreadCancelled())
        self.resume(t)

    def _sys_park(self, t: Thread, sc: Park) -> None:
        queue = sc.queue
        queue._sched = self
        queue._waiters.append(t)
        if self._pending or t._scope is not None:
            self.suspend(t, sc)
        else:
            t._wait = sc

    def _withdraw_park(self, t: Thread, sc: Park) -> None:
        sc.queue._withdrawn(t)

    def _sys_unpark(self, t: Thread, sc: Unpark) -> None:
        target = sc.thread
        if target._wait is not None and type(target._wait) is Park:
            queue = target._wait.queue
            queue._withdrawn(target)
            self.resume(target, sc.value)
        self.resume(t)


def _nothing(arg: Any) -> None:
    pass


class _PendingInterrupt(BaseException):
    """Raised by ``suspend`` through a worker's handler when a cancel or
    timeout was already waiting for the thread; the dispatcher withdraws
    the wait and throws ``exc`` into the thread."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Drain:
    """How long shutdown waits for cancelled threads: until ``give_up`` on
    the scheduler's clock, or, when ``patient`` (after Ctrl-C, with the
    console handler in place), until a second Ctrl-C."""

    __slots__ = ("give_up", "patient")

    def __init__(self, give_up: float, patient: bool) -> None:
        self.give_up = give_up
        self.patient = patient


if _speedups is not None:
    _speedups.configure(YIELD, _PendingInterrupt, mark_retrieved, Thread)
    _speedups.configure_scheduler(Scheduler)
    _speedups.configure_poll(Scheduler._poll, EpollPoller, TimerWorker)
    # The compiled loop serves a Park and a WaitRead itself while their
    # handlers are this scheduler's own _sys_park and the IO worker's own
    # _wait_read (their common cases, written out in C).
    from ..syscalls import WaitRead
    from .waitqueue import DONE, ParkOnce, WaitQueue
    _speedups.configure_waits(Park, WaitQueue, Scheduler._sys_park, WaitRead, IOWorker._wait_read)
    # ``await`` on a ParkOnce (sleep, Event.wait, a queue's park) or DONE
    # takes tuple's iterator in C, as their ``__await__`` says, with no
    # generic slot lookup per await.
    _speedups.configure_awaitables(ParkOnce, type(DONE))
