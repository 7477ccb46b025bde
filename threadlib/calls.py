"""The calls a thread makes to the runtime itself: spawn, sleep, join,
timeouts and cancel scopes, task groups, the clock.

Each call that may wait is a generator function decorated with
``types.coroutine``, so ``yield from spawn(...)`` and ``await spawn(...)``
are the same call producing the same system calls. Nothing here touches
the scheduler's internals: it yields system calls, or (for the few plain
calls such as ``now()``) reads the scheduler running in this OS thread.
Cancel scopes (``timeout``, ``move_on_after``, ...) and task groups touch
thread state, so they live in the kernel (``_kernel.scopes``,
``_kernel.groups``) and are re-exported here.
"""

from __future__ import annotations

import contextvars
import time as _time
import types
from typing import Any, Callable, Iterable

from ._kernel import COROUTINE_TYPES, Scheduler, Thread, current_scheduler, running_scheduler
from ._kernel.groups import TaskGroup as TaskGroup
from ._kernel.groups import task_group as task_group
from ._kernel.scopes import CancelScope as CancelScope
from ._kernel.scopes import fail_after as fail_after
from ._kernel.scopes import fail_at as fail_at
from ._kernel.scopes import move_on_after as move_on_after
from ._kernel.scopes import move_on_at as move_on_at
from ._kernel.scopes import timeout as timeout
from ._kernel.scopes import timeout_at as timeout_at
from ._kernel.threads import as_coroutine as _as_coroutine
from ._kernel.waitqueue import ParkOnce
from .syscalls import GET_CURRENT, YIELD, Blocking, JoinAny, Sleep, Spawn
from .syscalls import Waits as Waits  # re-exported: users annotate their own waiting calls with it


@types.coroutine
def spawn(target: Any, *args: Any, name: str | None = None) -> Waits[Thread]:
    """Start a thread running ``target`` (a generator or coroutine object,
    or a function called with ``args``); return its Thread at once (the
    call never waits: the new thread is ready, the caller goes on)."""
    if args or type(target) not in COROUTINE_TYPES:
        target = _as_coroutine(target, args)
    thread: Thread = yield Spawn(target, name)
    return thread


def sleep(seconds: float) -> ParkOnce:
    """Wait ``seconds`` on the scheduler's clock; ``sleep(0)`` lets every
    other ready thread run first. An enclosing ``timeout`` that falls
    earlier ends it with TimeoutError. (``yield from`` or ``await`` it.)"""
    # Not a generator: the one system call in a one-item tuple, which
    # ``yield from`` iterates in C. ``sleep(0)`` is the commonest switch,
    # and a generator made and finished per call was a quarter of it.
    if seconds <= 0:
        return _YIELD_ONCE
    return _new_tuple(ParkOnce, (Sleep(seconds),))  # ParkOnce(...) without its Python __new__


_YIELD_ONCE = ParkOnce(YIELD)
_new_tuple = tuple.__new__


@types.coroutine
def current() -> Waits[Thread]:
    """The calling thread (resumes at once)."""
    thread: Thread = yield GET_CURRENT
    return thread


@types.coroutine
def blocking(func: Callable[..., Any], *args: Any) -> Waits[Any]:
    """Run ``func(*args)`` on the blocking pool (an OS thread) and return
    its result; other threads keep running meanwhile. ``func`` runs in a
    copy of the calling thread's context variables (what it sets there
    stays there).

    A timeout or cancellation ends the wait, not the call: ``func`` runs to
    its end on the OS thread and its result is dropped."""
    return (yield Blocking(func, args, contextvars.copy_context()))


@types.coroutine
def join_all(threads: Iterable[Thread]) -> Waits[list[Any]]:
    """Wait for every thread; return their results in order. The first
    exception (in order) is raised once all have ended. A timeout or a
    cancellation of the caller leaves the threads running."""
    threads = list(threads)
    results = []
    error = None
    for t in threads:
        try:
            results.append((yield from t.join()))
        except BaseException as exc:
            if not t._ended_with(exc):
                raise  # aimed at the caller (its cancel or timeout), not the thread's outcome
            if error is None:  # the thread's own exception: kept, raised after the others end
                error = exc
            results.append(None)
    if error is not None:
        raise error
    return results


@types.coroutine
def join_any(threads: Iterable[Thread]) -> Waits[Thread]:
    """Wait until one of ``threads`` has ended; return that thread (its
    result is left for ``join``). The others keep running."""
    threads = tuple(threads)
    if not threads:
        raise ValueError("join_any() needs at least one thread")
    first: Thread = yield JoinAny(threads)
    return first


def now() -> float:
    """The scheduler's clock (monotonic seconds, or virtual time)."""
    return running_scheduler().clock.now()


def wall_time() -> float:
    """The time of day in seconds since the Unix epoch, from the running
    scheduler's clock (``time.time()`` on a real clock, the simulated date
    on a ``VirtualClock``); ``time.time()`` outside a scheduler. For dates
    that are sent or logged (an HTTP ``Date`` header): use ``now()`` to
    measure intervals."""
    sched = current_scheduler()
    if sched is None:
        return _time.time()
    wall: Callable[[], float] | None = getattr(sched.clock, "wall", None)
    return wall() if wall is not None else _time.time()


def current_thread() -> Thread:
    """The running thread, without a system call (plain code may call it)."""
    t = running_scheduler().current
    if t is None:
        raise RuntimeError("current_thread() called outside a thread")
    return t


def run(main: Any, *args: Any, scheduler: Scheduler | None = None, handle_sigint: bool = True,
        handle_sigterm: bool = False, dump_on: int | None = None, record: str | None = None) -> Any:
    """Run ``main`` on a new default scheduler (or ``scheduler``) until it
    ends; return its result or raise its exception. Ctrl-C (and SIGTERM
    with ``handle_sigterm``) cancels the main thread: see
    ``Scheduler.run``. With ``dump_on`` (a signal number such as
    ``signal.SIGUSR1``), that signal writes a thread dump to stderr
    (``Scheduler.enable_dump_signal``). With ``record`` (a path), the run
    is recorded there for ``threadlib.replay``."""
    sched = scheduler or Scheduler()
    if dump_on is not None:
        sched.enable_dump_signal(dump_on)
    if record is not None:
        from .replay import run_recorded  # a layer beside this one, loaded only to record

        return run_recorded(sched, main, args, record, handle_sigint=handle_sigint, handle_sigterm=handle_sigterm)
    return sched.run(main, *args, handle_sigint=handle_sigint, handle_sigterm=handle_sigterm)
