"""An asyncio event loop on threadlib's scheduler, so that asyncio tasks and
threadlib threads run side by side in one OS thread and wait on the same
workers. It must never run a second selector, read the time but through the
scheduler's clock, or block the scheduler.

Use it like uvloop::

    asyncio.run(main(), loop_factory=threadlib.loop.new_event_loop)   # 3.12+
    with asyncio.Runner(loop_factory=threadlib.loop.new_event_loop) as r:  # 3.11
        r.run(main())
    threadlib.loop.install()   # asyncio.run(main()) now uses it

or the other way round, threadlib first: ``threadlib.loop.run(main)`` is
``threadlib.run`` with an asyncio loop on the scheduler, so a thread can
``await asyncio.sleep(1)`` or any asyncio future.

How it works. ``ThreadlibEventLoop`` is asyncio's own selector loop
(``asyncio.SelectorEventLoop``: its transports, protocols, ``sock_*``
methods, servers, UDP, Unix sockets, SSL through ``sslproto``, pipes and
signal handlers) with the three things a selector loop gets from outside
replaced by the scheduler's:

* **readiness**: its "selector" puts each fd, level-triggered, in the
  scheduler's poller (``sched.watch_fd``); a firing fd appends its reader or
  writer handle to the loop's ready queue at once. There is no ``select``
  call of asyncio's own: the scheduler's one poll serves both worlds.
* **time and timers**: ``loop.time()`` is the scheduler's clock, and
  ``call_at``/``call_later`` put their handle in the scheduler's
  ``TimerWorker`` (a cancelled handle is removed from it).
* **blocking calls**: ``run_in_executor(None, ...)`` (and so
  ``getaddrinfo`` and ``asyncio.to_thread``'s loop side) go to the
  scheduler's ``BlockingPool``; child processes are watched through a
  pidfd in the poller, with no helper OS thread.

The callbacks run in one threadlib thread, the *loop thread*: each step
runs the batch of handles that were ready when it began (asyncio's
``_run_once`` minus the select), then the thread yields a ``_LoopWait``
served by ``_LoopWorker``, which resumes it when an fd fires, a timer is
due, a threadlib thread calls ``call_soon`` (a task created or a future
settled from a thread runs in the same pass of the scheduler), or
(through a zero-timeout poll, as asyncio does) when callbacks scheduled by
callbacks are waiting. One generator step per loop iteration, no generator per
callback. ``run_forever`` drives the scheduler (``Scheduler.run_while``)
until the loop thread has seen ``stop()``; threadlib threads spawned from
asyncio code keep their state between runs and are cancelled by
``loop.close()``.

Crossing between the worlds: a threadlib thread may yield (``await``) any
asyncio future of this loop (the worker serves ``asyncio.Future`` as a
system call; a cancelled thread cancels the future, as a cancelled task
does); ``from_asyncio(aw)`` runs an awaitable as an asyncio task in a copy
of the thread's context and waits for it. From asyncio,
``spawn_thread(func, *args)`` starts a thread in a copy of the task's
context and ``await run_in_thread(func, *args)`` waits for its result;
cancelling the awaiting task cancels the thread and waits for it to
finish, and a thread that ends cancelled comes back as ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import os
import selectors
import sys
import threading
import types
import warnings
from asyncio import events, format_helpers, futures, unix_events
from typing import Any, Callable, Generator, Mapping, TypeVar

from ._kernel import Scheduler, Thread, ThreadCancelled, Worker, current_scheduler
from ._kernel.compiled import speedups as _speedups
from ._kernel.worker import Handler
from .syscalls import Blocking, SystemCall

__all__ = [
    "ThreadlibEventLoop", "EventLoopPolicy", "new_event_loop", "install", "run",
    "spawn_thread", "run_in_thread", "from_asyncio",
]

_T = TypeVar("_T")

_EPOLLIN = 0x001
_EPOLLOUT = 0x004
_EPOLLERR = 0x008
_EPOLLHUP = 0x010
_READ_FIRED = _EPOLLIN | _EPOLLERR | _EPOLLHUP
_WRITE_FIRED = _EPOLLOUT | _EPOLLERR | _EPOLLHUP


def _run_batch(ready: collections.deque[events.Handle]) -> None:
    """Run the handles that are in ``ready`` now (asyncio's ``_run_once``
    minus the select); those they schedule wait for the next batch. The
    specification of the compiled ``_speedups.run_handles``."""
    popleft = ready.popleft
    for _ in range(len(ready)):
        handle = popleft()
        if not handle._cancelled:
            handle._run()


def _report_callback_error(handle: events.Handle, exc: BaseException) -> None:
    """What asyncio's ``Handle._run`` does once its callback has raised
    ``exc`` (not SystemExit or KeyboardInterrupt): the loop's exception
    handler hears of it. The compiled batch calls this."""
    untyped: Any = handle
    if sys.version_info >= (3, 13):
        where = format_helpers._format_callback_source(untyped._callback, untyped._args,
                                                       debug=untyped._loop.get_debug())
    else:
        where = format_helpers._format_callback_source(untyped._callback, untyped._args)
    context = {"message": f"Exception in callback {where}", "exception": exc, "handle": handle}
    if untyped._source_traceback:
        context["source_traceback"] = untyped._source_traceback
    untyped._loop.call_exception_handler(context)


class _LoopWait(SystemCall):
    """The loop thread's wait: resumed when the loop has callbacks to run."""

    __slots__ = ()


class _PyWatch:
    """One fd of the loop in the scheduler's poller: its selector key (whose
    ``data`` is asyncio's ``(reader, writer)`` handles) and the callback the
    poller runs, which queues those handles as asyncio's ``_process_events``
    would. The specification of the compiled ``_speedups.LoopWatch``."""

    __slots__ = ("key", "loop", "ready_append")

    def __init__(self, key: selectors.SelectorKey, loop: ThreadlibEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.ready_append = loop._ready.append

    def on_events(self, fired: int) -> None:
        key = self.key
        reader, writer = key.data
        if fired & _READ_FIRED and reader is not None and key.events & selectors.EVENT_READ:
            if reader._cancelled:
                self.loop._remove_reader(key.fd)
            else:
                self.ready_append(reader)
        if fired & _WRITE_FIRED and writer is not None and key.events & selectors.EVENT_WRITE:
            if writer._cancelled:
                self.loop._remove_writer(key.fd)
            else:
                self.ready_append(writer)
        # _LoopWorker.wake, inlined: this runs for every fd event of the loop.
        loop = self.loop
        worker = loop._worker
        thread = worker.thread
        if thread is not None and not loop._halted:
            worker.thread = None
            worker._sched.resume(thread)


_Watch: Any = _PyWatch if _speedups is None else _speedups.LoopWatch


def _epoll_mask(events: int) -> int:
    mask = 0
    if events & selectors.EVENT_READ:
        mask |= _EPOLLIN
    if events & selectors.EVENT_WRITE:
        mask |= _EPOLLOUT
    return mask


class _SchedulerSelector(selectors.BaseSelector):
    """The selector asyncio's selector loop registers its fds with. It keeps
    asyncio's ``SelectorKey`` per fd and puts the fd in the scheduler's
    poller; it never selects (the scheduler polls)."""

    def __init__(self, sched: Scheduler, loop: ThreadlibEventLoop) -> None:
        self._sched = sched
        self._loop = loop
        self._watches: dict[int, _PyWatch] = {}
        self._map = _KeyMap(self._watches)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Watch ``fileobj`` for ``events`` (EVENT_READ/EVENT_WRITE)."""
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fileobj_to_fd(fileobj)
        if fd in self._watches:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        watch = _Watch(key, self._loop)
        try:
            self._sched.watch_fd(fd, _epoll_mask(events), watch.on_events)
        except FileExistsError:
            # A closed fd's number reused while a dup of it kept the old
            # file in the epoll set: start afresh.
            self._sched.unwatch_fd(fd)
            self._sched.watch_fd(fd, _epoll_mask(events), watch.on_events)
        self._watches[fd] = watch
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        """Stop watching ``fileobj``; KeyError if it is not registered."""
        fd = _fileobj_to_fd(fileobj, self._watches)
        watch = self._watches.pop(fd, None)
        if watch is None:
            raise KeyError(f"{fileobj!r} is not registered")
        self._sched.unwatch_fd(fd)
        return watch.key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        """Change the events and data of a registered ``fileobj``."""
        fd = _fileobj_to_fd(fileobj, self._watches)
        watch = self._watches.get(fd)
        if watch is None:
            raise KeyError(f"{fileobj!r} is not registered")
        old = watch.key
        if events != old.events:
            try:
                self._sched.modify_fd(fd, _epoll_mask(events))
            except FileNotFoundError:  # closed and reopened behind our back
                self._sched.unwatch_fd(fd)
                self._sched.watch_fd(fd, _epoll_mask(events), watch.on_events)
        watch.key = old._replace(events=events, data=data)
        return watch.key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Never used: the scheduler polls and the fds' callbacks queue the
        handles."""
        raise RuntimeError("the threadlib loop's selector does not select: the scheduler polls")

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        """The key of a registered ``fileobj``; KeyError otherwise."""
        watch = self._watches.get(_fileobj_to_fd(fileobj, self._watches))
        if watch is None:
            raise KeyError(f"{fileobj!r} is not registered")
        return watch.key

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        """fd -> key of every registered fd."""
        return self._map

    def close(self) -> None:
        """Take every fd out of the poller."""
        for fd in list(self._watches):
            self._sched.unwatch_fd(fd)
        self._watches.clear()


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    def __init__(self, watches: dict[int, _PyWatch]) -> None:
        self._watches = watches

    def __len__(self) -> int:
        return len(self._watches)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._watches[_fileobj_to_fd(fileobj, self._watches)].key

    def __iter__(self) -> Any:
        return iter(self._watches)


def _fileobj_to_fd(fileobj: Any, known: dict[int, _PyWatch] | None = None) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            # A closed file object may still be registered: find it by identity.
            for watch in (known or {}).values():
                if watch.key.fileobj is fileobj:
                    return watch.key.fd
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        if known is not None:
            for watch in known.values():
                if watch.key.fileobj is fileobj:
                    return watch.key.fd
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class _LoopWorker(Worker):
    """Serves the loop thread's ``_LoopWait`` and lets threadlib threads
    wait on asyncio futures (``asyncio.Future`` and its subclasses are
    system calls while it is attached; a bare ``yield``, asyncio's
    ``sleep(0)``, is a yield)."""

    def __init__(self, loop: ThreadlibEventLoop) -> None:
        self._loop = loop
        self._ready: collections.deque[Any] = loop._ready
        self.thread: Thread | None = None  # the loop thread, while it waits
        self._waiting: dict[Thread, Callable[[Any], None]] = {}  # threads on futures

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Serve the loop's wait, asyncio futures and bare yields."""
        self._sched = sched
        handlers: dict[type, Handler] = {
            _LoopWait: self._loop_wait,
            asyncio.Future: self._await_future,
            type(None): self._bare_yield,
        }
        py_future = getattr(futures, "_PyFuture", None)
        if py_future is not None and py_future is not asyncio.Future:
            handlers[py_future] = self._await_future
        return handlers

    def _loop_wait(self, thread: Thread, sc: _LoopWait) -> None:
        sched = self._sched
        if sched._pending:
            sched.suspend(thread, sc)  # raises a pending cancel
        else:
            thread._wait = sc
        self.thread = thread

    def wake(self) -> None:
        """Resume the loop thread if it waits and the loop runs (an fd or a
        timer made callbacks ready)."""
        thread = self.thread
        if thread is not None and not self._loop._halted:
            self.thread = None
            self._sched.resume(thread)

    def next_deadline(self) -> float | None:
        """At once (-inf) while callbacks wait for the waiting loop thread:
        the scheduler then polls with a zero timeout first, as asyncio does."""
        loop = self._loop
        if self.thread is not None and (self._ready or loop._stopping) and not loop._halted:
            return float("-inf")
        return None

    def expire(self, now: float) -> None:
        """Resume the loop thread to run the ready callbacks."""
        loop = self._loop
        if self._ready or loop._stopping:
            self.wake()

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """The loop thread or a thread awaiting a future was interrupted; a
        future waited on is cancelled, as a cancelled task cancels the
        future it awaits."""
        if type(syscall) is _LoopWait:
            if self.thread is thread:
                self.thread = None
            return
        callback = self._waiting.pop(thread, None)
        if callback is not None:
            try:
                syscall.remove_done_callback(callback)
                syscall.cancel()
            except Exception:  # a closed loop: nothing will run the callbacks anyway
                pass

    def _await_future(self, thread: Thread, fut: Any) -> None:
        sched = self._sched
        if fut.get_loop() is not self._loop:
            sched.throw(thread, RuntimeError(
                f"{fut!r} belongs to another event loop than the one on this scheduler"))
            return
        fut._asyncio_future_blocking = False  # what a Task does with a future it accepts
        if fut.done():
            sched.resume(thread)
            return
        sched.suspend(thread, fut)
        callback = functools.partial(self._future_done, thread)
        self._waiting[thread] = callback
        fut.add_done_callback(callback)

    def _future_done(self, thread: Thread, fut: Any) -> None:
        if self._waiting.pop(thread, None) is not None and thread._wait is fut:
            self._sched.resume(thread)

    def _bare_yield(self, thread: Thread, sc: None) -> None:
        self._sched.resume(thread)

    def busy(self) -> bool:
        """Driven by ``run_forever``: always (asyncio waits for ever, woken
        from other OS threads too). On a scheduler of its own (``run``):
        while a thread awaits a future, callbacks are ready, or the loop
        watches fds besides its self-pipe or handles signals."""
        loop = self._loop
        if not loop._hosted:
            return True
        selector = loop._selector
        return bool(self._waiting or self._ready or loop._signal_handlers
                    or (selector is not None and len(selector.get_map()) > 1))


# asyncio's loop and handle internals (_ready, _check_closed, _scheduled,
# ...) are not in typeshed: to mypy the two classes built on them derive
# from Any, so their use of those internals is not checked, while the
# instances still pass wherever an asyncio loop or handle is expected.
_SelectorEventLoop: Any = asyncio.SelectorEventLoop
_AsyncioTimerHandle: Any = asyncio.TimerHandle


class _TimerHandle(_AsyncioTimerHandle):  # type: ignore[misc]
    """asyncio's timer handle, which also holds its entry in the
    scheduler's timer heap."""

    __slots__ = ("_entry",)


class ThreadlibEventLoop(_SelectorEventLoop):  # type: ignore[misc]
    """An asyncio event loop whose fds, timers, blocking calls and child
    processes are served by a threadlib scheduler (``scheduler``, by
    default a new one with the standard workers). See the module docstring
    for how. ``run_forever`` drives the scheduler, so threadlib threads
    spawned on it run while the loop runs."""

    _thread_id: int | None  # asyncio's: the OS thread running the loop
    _stopping: bool  # asyncio's: stop() was called

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        self._sched = sched = scheduler if scheduler is not None else Scheduler()
        self._hosted = False  # True: sched.run drives it (threadlib.loop.run)
        self._halted = False  # the loop thread has seen stop(): run_forever returns
        self._going: list[bool] = []  # non-empty while run_forever should go on (see _halt)
        self._escaped: BaseException | None = None  # Ctrl-C/exit from a callback
        self._child_fds: dict[int, int] = {}  # pid -> pidfd
        self._clock_now = sched.clock.now
        super().__init__(_SchedulerSelector(sched, self))
        self._worker = _LoopWorker(self)  # after asyncio's __init__, which makes the ready deque
        self._loop_thread: Thread | None = None
        if not self._dormant:
            self._start_on_scheduler()

    # A dormant loop (the one Scheduler.run provides, _ProvidedLoop) has no
    # self-pipe, worker or loop thread until asyncio code first uses it.
    _dormant = False

    def _start_on_scheduler(self) -> None:
        sched = self._sched
        sched.add_worker(self._worker)
        if not self._hosted:
            # Driven by run_forever, the loop's worker is always busy (see
            # its busy()): asked first, it spares the scheduler's idle poll
            # asking every other worker.
            sched.workers.insert(0, sched.workers.pop())
        self._loop_thread = self._sched.spawn(self._serve(), name="asyncio-loop")

    @property
    def scheduler(self) -> Scheduler:
        """The threadlib scheduler this loop runs on."""
        return self._sched

    # -- the loop thread ---------------------------------------------------------
    def _serve(self) -> Generator[Any, Any, None]:
        ready = self._ready
        run_batch = _run_batch if _speedups is None else _speedups.run_handles
        wait = _LoopWait()
        while True:
            try:
                yield wait
            except ThreadCancelled:
                return
            try:
                if self._debug:
                    self._run_batch_debug()
                else:
                    run_batch(ready)
            except (KeyboardInterrupt, SystemExit) as exc:
                if self._hosted:
                    raise
                self._escaped = exc  # run_forever raises it; the loop stays usable
                self._halt()
                continue
            if self._stopping:
                if self._hosted:
                    self._stopping = False
                else:
                    self._halt()

    def _run_batch_debug(self) -> None:
        ready = self._ready
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            started = self.time()
            try:
                self._current_handle = handle
                handle._run()
                took = self.time() - started
                if took >= self.slow_callback_duration:
                    from asyncio.log import logger
                    logger.warning("Executing %s took %.3f seconds", handle, took)
            finally:
                self._current_handle = None

    def _halt(self) -> None:
        # run_forever's scheduler asks _going.__len__ (a C call, twice a
        # pass) whether to go on: emptied here, refilled by run_forever.
        self._halted = True
        self._going.clear()

    def run_forever(self) -> None:
        """Run until ``stop()``: drive the scheduler (its threads run too)."""
        self._check_closed()
        self._check_running()
        if self._hosted:
            raise RuntimeError("this loop runs on threadlib.loop.run's scheduler: it cannot be run itself")
        self._set_coroutine_origin_tracking(self._debug)
        old_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                   finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._halted = False
            self._going[:] = (True,)
            self._sched.run_while(self._going.__len__)
            escaped, self._escaped = self._escaped, None
            if escaped is not None:
                raise escaped
        finally:
            self._stopping = False
            self._halted = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_hooks)

    def _run_once(self) -> None:
        raise RuntimeError("the threadlib loop runs its callbacks in its loop thread")

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """asyncio's ``add_signal_handler``, refused (``RuntimeError``) on a
        scheduler whose ``SignalWorker`` already catches signals: a process
        has one signal wake-up fd, and each would take it from the other."""
        # Looked up, not imported: if nobody imported threadlib.process.signals,
        # no SignalWorker exists.
        signals = sys.modules.get("threadlib.process.signals")
        if signals is not None:
            worker = self._sched.worker(signals.SignalWorker)
            if worker is not None and worker.catching:
                raise RuntimeError("this scheduler's SignalWorker (wait_signal, on_signal, dump signals) "
                                   "owns the process's one signal wake-up fd: asyncio signal handlers "
                                   "cannot be added on the same scheduler")
        super().add_signal_handler(sig, callback, *args)

    def close(self) -> None:
        """Close the loop: cancel the threadlib threads still alive on its
        scheduler (their ``finally`` blocks run), close the workers, then
        close what asyncio's loop holds."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if not self._hosted:
            running = current_scheduler()
            if running is None:
                self._sched.close()
            elif running is not self._sched:
                self._sched._close_workers()  # inside another scheduler (a collected loop): no draining
        for pidfd in self._child_fds.values():
            os.close(pidfd)
        self._child_fds.clear()
        super().close()

    def call_soon(self, callback: Callable[..., object], *args: Any,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        """asyncio's ``call_soon``. Called from a threadlib thread while the
        loop thread waits (a connection thread starting a task, settling a
        future), it also makes the loop thread ready: the callback runs in
        the same pass of the scheduler, with no poll before it. Callbacks
        scheduled by callbacks still wait for the next batch, after a poll,
        so asyncio code cannot starve the fds."""
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_soon")
        handle = events.Handle(callback, args, self, context)
        untyped: Any = handle  # _source_traceback is not in typeshed
        if untyped._source_traceback:
            del untyped._source_traceback[-1]
        self._ready.append(handle)
        worker = self._worker
        if worker.thread is not None:
            worker.wake()
        return handle

    # -- time and timers: the scheduler's ---------------------------------------
    def time(self) -> float:
        """The scheduler's clock."""
        return self._clock_now()

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        """Run ``callback(*args)`` once ``time()`` reaches ``when``; the
        timer lives in the scheduler's timer worker."""
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        timer = _TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        timer._entry = self._sched.call_at(when, self._timer_due, timer)
        timer._scheduled = True
        return timer

    def _timer_due(self, timer: _TimerHandle) -> None:
        timer._scheduled = False
        timer._entry = None
        if not timer._cancelled:
            self._ready.append(timer)
            self._worker.wake()

    def _timer_handle_cancelled(self, handle: Any) -> None:
        if handle._scheduled and type(handle) is _TimerHandle:
            handle._scheduled = False
            self._sched.cancel_call(handle._entry)
            handle._entry = None

    # -- blocking calls: the scheduler's pool ------------------------------------
    def run_in_executor(self, executor: Any, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """With no executor (and no default set), ``func(*args)`` runs in the
        scheduler's blocking pool; otherwise as asyncio does."""
        if executor is not None or self._default_executor is not None:
            started: asyncio.Future[_T] = super().run_in_executor(executor, func, *args)
            return started
        self._check_closed()
        if self._debug:
            self._check_callback(func, "run_in_executor")
        fut: asyncio.Future[_T] = self.create_future()
        thread = self._sched.spawn(_call_blocking(fut, func, args), name="asyncio-executor")

        def cancel_call(f: asyncio.Future[_T]) -> None:
            if f.cancelled() and thread._wait is not None:
                self._sched.interrupt(thread, ThreadCancelled())

        fut.add_done_callback(cancel_call)
        return fut

    # -- child processes: a pidfd in the poller ----------------------------------
    async def _make_subprocess_transport(self, protocol: Any, args: Any, shell: bool, stdin: Any,
                                         stdout: Any, stderr: Any, bufsize: int, extra: Any = None,
                                         **kwargs: Any) -> Any:
        waiter = self.create_future()
        transport = unix_events._UnixSubprocessTransport(  # type: ignore[attr-defined]
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs)
        self._watch_child(transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    def _watch_child(self, transport: Any) -> None:
        pid = transport.get_pid()
        pidfd = os.pidfd_open(pid)
        self._child_fds[pid] = pidfd

        def reap() -> None:
            self._remove_reader(pidfd)
            os.close(self._child_fds.pop(pid))
            try:
                _, status = os.waitpid(pid, 0)  # it has exited: the pidfd said so
            except ChildProcessError:
                # Reaped by someone else (asyncio says the same in this case).
                warnings.warn(f"Unknown child process pid {pid}, will report returncode 255",
                              RuntimeWarning, stacklevel=1)
                code = 255
            else:
                code = os.waitstatus_to_exitcode(status)
            transport._process_exited(code)

        self._add_reader(pidfd, reap)


def _call_blocking(fut: asyncio.Future[Any], func: Callable[..., Any],
                   args: tuple[Any, ...]) -> Generator[Any, Any, None]:
    try:
        value = yield Blocking(func, args)
    except ThreadCancelled:
        return
    except BaseException as exc:
        if not fut.done():
            # As asyncio's executor futures report it: concurrent.futures'
            # CancelledError becomes asyncio's.
            if isinstance(exc, concurrent.futures.CancelledError):
                exc = asyncio.CancelledError(*exc.args)
            fut.set_exception(exc)
        return
    if not fut.done():
        fut.set_result(value)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, making ``ThreadlibEventLoop`` loops."""

    _loop_factory = ThreadlibEventLoop


def _handles_signals(sched: Scheduler) -> bool:
    """Whether an asyncio loop on ``sched`` has signal handlers (asked by
    ``threadlib.process.signals``, which refuses to share the wake-up fd)."""
    for worker in sched.workers:
        if isinstance(worker, _LoopWorker) and worker._loop._signal_handlers:
            return True
    return False


def new_event_loop() -> ThreadlibEventLoop:
    """A new ``ThreadlibEventLoop`` on a new scheduler (the ``loop_factory``
    for ``asyncio.Runner`` and ``asyncio.run``)."""
    return ThreadlibEventLoop()


def install() -> None:
    """Make asyncio's ``new_event_loop`` (and so ``asyncio.run``) use
    ``ThreadlibEventLoop``: sets ``EventLoopPolicy`` as asyncio's policy."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


if _speedups is not None:
    # call_soon and the loop thread's batch, compiled: asyncio's Handle made
    # and run in place (_call_soon_spec and _run_batch stay the
    # specifications, and serve a loop in debug mode or still dormant).
    _speedups.configure_loop(ThreadlibEventLoop, events.Handle, (events.Handle, events.TimerHandle, _TimerHandle),
                             _report_callback_error)


class _ProvidedLoop(ThreadlibEventLoop):
    """The running loop ``Scheduler.run`` provides to its threads when
    asyncio is loaded and no loop runs yet, so that ``await
    asyncio.sleep(1)`` works in a thread of plain ``threadlib.run``. It is
    dormant until asyncio code first schedules something on it (every
    asyncio entry point that does checks ``_check_closed`` first; futures
    are made by ``create_future``): only then does it make its self-pipe,
    attach its worker and start its loop thread, so a run that never
    touches asyncio pays for a few attributes and nothing else, and a
    bare ``yield`` keeps its error until then. It installs no async
    generator hooks: threadlib's own async generators are finalized as
    they would be without it."""

    _dormant = True

    def __init__(self, scheduler: Scheduler) -> None:
        self._ssock = self._csock = None  # asyncio's self-pipe, made on waking
        super().__init__(scheduler)
        self._hosted = True

    def _make_self_pipe(self) -> None:
        if not self._dormant:
            super()._make_self_pipe()

    def _close_self_pipe(self) -> None:
        if self._ssock is not None:
            super()._close_self_pipe()

    def _wake(self) -> None:
        if self._dormant and not self._closed:
            self._dormant = False
            self._make_self_pipe()
            self._start_on_scheduler()
            # Awake, it is a plain loop: the two checks every asyncio entry
            # point makes step aside (instance attributes shadow them), a
            # frame less per call_soon, create_task and future.
            self._check_closed = super()._check_closed  # type: ignore[method-assign]
            self.create_future = super().create_future  # type: ignore[method-assign]

    def _check_closed(self) -> None:
        self._wake()
        super()._check_closed()

    def create_future(self) -> asyncio.Future[Any]:
        """A future of this loop (which wakes, so that threads can await it)."""
        self._wake()
        fut: asyncio.Future[Any] = super().create_future()
        return fut


def _provide_running_loop(sched: Scheduler) -> Callable[[], None] | None:
    """Called by ``Scheduler.run`` (only when asyncio is loaded): make a
    dormant ``_ProvidedLoop`` the running loop of this OS thread while
    ``sched`` runs, unless a loop runs already (``threadlib.loop.run``, or
    asyncio around us). Returns what undoes it, or None."""
    if events._get_running_loop() is not None:
        return None
    loop = _ProvidedLoop(sched)
    loop._thread_id = threading.get_ident()
    events._set_running_loop(loop)

    def withdraw() -> None:
        events._set_running_loop(None)
        loop._thread_id = None
        loop.close()

    return withdraw


def run(main: Any, *args: Any, scheduler: Scheduler | None = None, **options: Any) -> Any:
    """``threadlib.run(main, *args)`` with an asyncio loop on the scheduler:
    the threads may await asyncio futures and call asyncio code that needs
    a running loop (``asyncio.sleep``, ``open_connection``, ...). The loop
    is closed when ``main`` ends. ``options`` are ``Scheduler.run``'s."""
    sched = scheduler if scheduler is not None else Scheduler()
    loop = ThreadlibEventLoop(sched)
    loop._hosted = True
    old_hooks = sys.get_asyncgen_hooks()
    loop._thread_id = threading.get_ident()
    events._set_running_loop(loop)
    sys.set_asyncgen_hooks(firstiter=loop._asyncgen_firstiter_hook, finalizer=loop._asyncgen_finalizer_hook)
    try:
        return sched.run(main, *args, **options)
    finally:
        events._set_running_loop(None)
        sys.set_asyncgen_hooks(*old_hooks)
        loop._thread_id = None
        loop.close()


def _running_loop() -> ThreadlibEventLoop:
    loop = events.get_running_loop()
    if not isinstance(loop, ThreadlibEventLoop):
        raise RuntimeError(f"the running event loop is {loop!r}, not a threadlib.loop.ThreadlibEventLoop")
    return loop


def spawn_thread(func: Any, *args: Any, name: str | None = None) -> Thread:
    """From asyncio code on a ``ThreadlibEventLoop``: start a threadlib
    thread (a generator or coroutine object, or a function and its args)
    in a copy of the current context; returns the ``Thread``."""
    loop = _running_loop()
    coro = func(*args) if args or (callable(func) and not hasattr(func, "send")) else func
    return loop._sched.spawn(coro, name, context=contextvars.copy_context())


async def run_in_thread(func: Any, *args: Any, name: str | None = None) -> Any:
    """From an asyncio task: run ``func(*args)`` (or a generator/coroutine
    object) as a threadlib thread and return its result or raise its
    exception. Cancelling the task cancels the thread and waits for it to
    end; a thread that ends cancelled raises ``CancelledError`` here."""
    loop = _running_loop()
    thread = spawn_thread(func, *args, name=name)
    ended: asyncio.Future[None] = loop.create_future()

    def on_end(t: Thread) -> None:
        if not ended.done():
            ended.set_result(None)

    loop._sched.add_done_callback(thread, on_end)
    cancelled: asyncio.CancelledError | None = None
    while not ended.done():
        try:
            await asyncio.shield(ended)
        except asyncio.CancelledError as exc:
            if ended.done():
                break
            cancelled = exc
            loop._sched._cancel_thread(thread, ThreadCancelled())
    try:
        return thread.result()
    except ThreadCancelled:
        raise (cancelled or asyncio.CancelledError()) from None


@types.coroutine
def from_asyncio(aw: Any) -> Generator[Any, Any, Any]:
    """From a threadlib thread (on a scheduler with a ``ThreadlibEventLoop``):
    run the awaitable ``aw`` as an asyncio task in a copy of the thread's
    context and return its result (``yield from`` or ``await``). Cancelling
    the thread cancels the task and waits for it to end; a task that ends
    cancelled raises ``CancelledError`` in the thread."""
    loop = _running_loop()
    if asyncio.iscoroutine(aw):
        task = loop.create_task(aw, context=contextvars.copy_context())
    else:
        task = asyncio.ensure_future(aw, loop=loop)
    try:
        while not task.done():
            yield task
    except ThreadCancelled:
        task.cancel()
        while not task.done():
            try:
                yield task
            except ThreadCancelled:
                task.cancel()
        raise
    return task.result()

