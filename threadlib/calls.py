"""The calls a thread makes to the runtime itself: spawn, sleep, join,
timeouts, the clock.

Each call that may wait is a generator function decorated with
``types.coroutine``, so ``yield from spawn(...)`` and ``await spawn(...)``
are the same call producing the same system calls. Nothing here touches
the scheduler's internals: it yields system calls, or (for the few plain
calls such as ``now()``) reads the scheduler running in this OS thread.
"""

from __future__ import annotations

import contextvars
import types
from typing import Any, Callable, Iterable, Literal

from ._kernel import COROUTINE_TYPES, Scheduler, Thread, running_scheduler
from .syscalls import GET_CURRENT, YIELD, Blocking, JoinAny, Sleep, Spawn
from .syscalls import Waits as Waits  # re-exported: users annotate their own waiting calls with it


def _as_coroutine(target: Any, args: tuple[Any, ...]) -> Any:
    if hasattr(target, "send") and hasattr(target, "throw"):
        if args:
            raise TypeError(f"spawn() got arguments for {target!r}, which is already a running generator")
        return target
    if hasattr(target, "__await__") and not args:
        return _drive(target)  # an awaitable such as ev.wait() or conn.sendall(data)
    if callable(target):
        return target(*args)
    raise TypeError(f"spawn() needs a generator, a coroutine, or a function returning one; got {target!r}")


def _drive(awaitable: Any) -> Waits[Any]:
    return (yield from awaitable.__await__())


@types.coroutine
def spawn(target: Any, *args: Any, name: str | None = None) -> Waits[Thread]:
    """Start a thread running ``target`` (a generator or coroutine object,
    or a function called with ``args``); return its Thread at once (the
    call never waits: the new thread is ready, the caller goes on)."""
    if args or type(target) not in COROUTINE_TYPES:
        target = _as_coroutine(target, args)
    thread: Thread = yield Spawn(target, name)
    return thread


@types.coroutine
def sleep(seconds: float) -> Waits[None]:
    """Wait ``seconds`` on the scheduler's clock; ``sleep(0)`` lets every
    other ready thread run first. An enclosing ``timeout`` that falls
    earlier ends it with TimeoutError."""
    if seconds <= 0:
        yield YIELD
    else:
        yield Sleep(seconds)


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


def current_thread() -> Thread:
    """The running thread, without a system call (plain code may call it)."""
    t = running_scheduler().current
    if t is None:
        raise RuntimeError("current_thread() called outside a thread")
    return t


class timeout:
    """``with timeout(seconds):`` -- every wait inside the block raises
    ``TimeoutError`` once the deadline has passed.

    Timeouts are deadlines, not durations: a block that waits many times
    shares one deadline, and nested blocks keep the earliest. The deadline
    is checked only at waits, so a thread that never waits is never
    interrupted. ``expired`` tells afterwards whether this block's own
    deadline is the one that fired. ``timeout(None)`` does nothing, so
    library calls can take an optional ``timeout`` argument cheaply.
    """

    __slots__ = ("seconds", "deadline", "expired", "_thread", "_outer")

    _thread: Thread | None  # None when there is no deadline (seconds is None)
    _outer: float | None  # the thread's deadline before this block

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.deadline: float | None = None
        self.expired = False

    def __enter__(self) -> "timeout":
        if self.seconds is None:
            self._thread = None
            return self
        sched = running_scheduler()
        t = sched.current
        if t is None:
            raise RuntimeError("timeout() used outside a thread")
        self.deadline = sched.clock.now() + self.seconds
        self._thread = t
        self._outer = t.deadline
        if self._outer is None or self.deadline < self._outer:
            t.deadline = self.deadline
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        t = self._thread
        if t is None:
            return False
        t.deadline = self._outer
        deadline = self.deadline
        if exc_type is TimeoutError and deadline is not None and running_scheduler().clock.now() >= deadline:
            self.expired = True
        return False


def timeout_at(deadline: float) -> timeout:
    """Like ``timeout`` with an absolute deadline on the scheduler's clock."""
    return timeout(deadline - now())


def run(main: Any, *args: Any, scheduler: Scheduler | None = None, dump_on: int | None = None) -> Any:
    """Run ``main`` on a new default scheduler (or ``scheduler``) until it
    ends; return its result or raise its exception. With ``dump_on`` (a
    signal number such as ``signal.SIGUSR1``), that signal writes a thread
    dump to stderr (``Scheduler.enable_dump_signal``)."""
    sched = scheduler or Scheduler()
    if dump_on is not None:
        sched.enable_dump_signal(dump_on)
    return sched.run(main, *args)
