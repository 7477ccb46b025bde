"""System calls: what a thread yields when it must wait.

A system call is plain data. It names what the thread waits for and carries
nothing else: no callbacks, no references to the scheduler. The scheduler
looks up ``type(syscall)`` in a dispatch table that its workers filled in,
and the worker that owns the class decides when the thread resumes and with
what value or exception. Because they are only data, they can be logged,
compared and printed (``Thread.waiting_on`` shows the one a thread waits in).

This module must never import the scheduler or any worker: it is the
vocabulary both sides share. A new system call is a new class here or in
user code, plus a worker that registers a handler for it.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable, Generator, TypeAlias, TypeVar

_T = TypeVar("_T")

#: The return type of a call that may wait: a generator that yields system
#: calls and returns ``T``. Decorated with ``types.coroutine`` (as every
#: waiting call in threadlib is), it serves ``yield from call()`` in a
#: generator thread and ``await call()`` in an ``async def`` thread, both
#: giving ``T``. Annotate your own waiting helpers with it:
#: ``def fetch(conn) -> Waits[bytes]``. Calls that may hand back a
#: ready-made awaitable instead of a generator return ``threadlib.net.Call[T]``.
Waits: TypeAlias = Generator[Any, Any, _T]


class SystemCall:
    """Base class of every system call (for ``isinstance`` checks and docs)."""

    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _slot_names(type(self)))
        return f"{type(self).__name__}({fields})"


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        names.extend(klass.__dict__.get("__slots__", ()))
    return names


class Yield(SystemCall):
    """Let every other ready thread run once, then resume with None."""

    __slots__ = ()


YIELD = Yield()


class Sleep(SystemCall):
    """Resume with None after ``seconds`` on the scheduler's clock."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class WaitRead(SystemCall):
    """Resume once ``fd`` is readable (or has an error or hang-up), with the
    epoll event mask that said so."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


class WaitWrite(SystemCall):
    """Resume once ``fd`` is writable (or has an error), with the epoll
    event mask that said so."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


class Spawn(SystemCall):
    """Start ``coro`` (a generator or coroutine) as a new thread; resume with it."""

    __slots__ = ("coro", "name")

    def __init__(self, coro: Any, name: str | None = None) -> None:
        self.coro = coro
        self.name = name


class Join(SystemCall):
    """Resume with ``thread``'s result, or its exception, once it has ended."""

    __slots__ = ("thread",)

    def __init__(self, thread: Any) -> None:
        self.thread = thread


class JoinAny(SystemCall):
    """Resume with the first of ``threads`` to end (the thread, not its result)."""

    __slots__ = ("threads",)

    def __init__(self, threads: tuple[Any, ...]) -> None:
        self.threads = threads


class Cancel(SystemCall):
    """Deliver ThreadCancelled to ``thread`` at its current wait; resume at once."""

    __slots__ = ("thread",)

    def __init__(self, thread: Any) -> None:
        self.thread = thread


class Park(SystemCall):
    """Wait in ``queue`` (a WaitQueue) until some thread wakes this one.

    One Park object is shared by all the threads waiting in a queue, so a
    waiting thread costs the queue one slot and nothing more.
    """

    __slots__ = ("queue",)

    def __init__(self, queue: Any) -> None:
        self.queue = queue


class Unpark(SystemCall):
    """Wake ``thread`` (parked anywhere) with ``value``; resume the caller at once."""

    __slots__ = ("thread", "value")

    def __init__(self, thread: Any, value: Any = None) -> None:
        self.thread = thread
        self.value = value


class Blocking(SystemCall):
    """Run ``func(*args)`` on a pool of OS threads; resume with its result.

    The original runtime's SYS_BLIO: for calls that cannot be made
    non-blocking (getaddrinfo, a stat on a slow disk, a C library call).
    With a ``context``, ``func`` runs in it (``context.run(func, *args)``):
    ``threadlib.blocking`` passes a copy of the caller's context.
    """

    __slots__ = ("func", "args", "context")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...] = (),
                 context: contextvars.Context | None = None) -> None:
        self.func = func
        self.args = args
        self.context = context


class GetCurrent(SystemCall):
    """Resume with the calling Thread object."""

    __slots__ = ()


GET_CURRENT = GetCurrent()


class GetScheduler(SystemCall):
    """Resume with the Scheduler running the calling thread."""

    __slots__ = ()


GET_SCHEDULER = GetScheduler()
