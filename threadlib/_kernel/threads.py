"""Threads: what the scheduler keeps per user-level thread.

A ``Thread`` is a coroutine (generator, ``async def`` coroutine, or anything
with ``send``/``throw``) plus the few slots the scheduler needs: the value or
exception to resume it with, the system call it waits in, its deadline, its
innermost cancel scope and the thread that spawned it. It also offers the
thread-level calls (``join``, ``cancel``, ``wait``) as system calls.
Nothing here runs a thread: the scheduler does.

Workers read a thread's state through ``waiting_on`` (the system call it
waits in) and change it only through the scheduler's ``resume``/``throw``.
A thread with context variables of its own has its coroutine wrapped in
an ``InContext`` (see ``Scheduler.spawn``); the others share the
scheduler's base context and cost nothing more.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import traceback
import types
from typing import Any

from ..syscalls import Cancel, Join, JoinAny, SystemCall, Waits

log = logging.getLogger("threadlib")


class ThreadCancelled(BaseException):
    """Thrown into a thread at its current wait when it is cancelled.

    A BaseException, like asyncio.CancelledError, so that ``except
    Exception`` in user code does not swallow it by accident. ``scope`` is
    the cancel scope whose cancellation raised it (that scope catches it at
    its exit), or None when the whole thread was cancelled.
    """

    #: The CancelScope that raised it, or None for a cancel of the thread.
    scope: Any = None


class Thread:
    """A user-level thread: a generator plus the little the scheduler needs.

    Slots, not a dict: ten million blocked threads must fit in a few GiB.
    ``_wait`` is the system call the thread is blocked in (None while ready
    or running); after the thread ends it is reused to hold the reporter of
    an exception nobody has retrieved yet.
    """

    __slots__ = ("_coro", "_value", "_exc", "_wait", "_scope", "_id", "_name", "_prev", "_next",
                 "_parent", "_lineage")

    # Set by the scheduler when it links the thread into its live list.
    _prev: Thread
    _next: Thread

    def __init__(self, coro: Any, name: str | None) -> None:
        self._coro: Any = coro  # None once the thread has ended
        self._value: Any = None
        self._exc: BaseException | None = None
        # A SystemCall while waiting; an _Unretrieved after a failed end.
        self._wait: Any = None
        # The innermost CancelScope the thread is in; its ``_effective`` is
        # the thread's deadline. None (the common case) means no deadline:
        # the hot paths test this slot alone.
        self._scope: Any = None
        self._id: int | None = None
        self._name = name
        # The spawner's _Lineage (set by Scheduler.spawn), not the spawner
        # itself: a live child never keeps an ended parent alive.
        self._parent: _Lineage | None = None
        self._lineage: _Lineage | None = None  # made on its first spawn, cleared at its end

    @property
    def id(self) -> int:
        """A number unique among the threads of its scheduler (1, 2, 3, ...),
        given when first asked for, in the order they are asked for: two
        runs of one program in one process number their threads alike,
        which a process-wide counter would not, and a thread nobody asks
        about carries no int object (32 bytes a blocked thread would pay).
        Asked outside a running scheduler, it is a process-wide number."""
        tid = self._id
        if tid is None:
            from .scheduler import current_scheduler  # the scheduler imports this module

            sched = current_scheduler()
            tid = self._id = sched._next_thread_id() if sched is not None else next(_thread_ids)
        return tid

    # -- introspection ----------------------------------------------------
    @property
    def name(self) -> str:
        """The name given at spawn, or the coroutine's qualified name plus the id."""
        if self._name is not None:
            return self._name
        coro = self._coro
        if type(coro) is InContext:
            coro = coro.coro
        qualname = getattr(coro, "__qualname__", None) if coro is not None else None
        return f"{qualname or 'thread'}-{self.id}"

    @property
    def deadline(self) -> float | None:
        """The absolute clock time at which the thread's waits start to
        raise (the earliest deadline of the cancel scopes in effect, -inf
        once one of them is cancelled), or None. Set through scopes only."""
        scope = self._scope
        return scope._effective if scope is not None else None

    @property
    def parent(self) -> Thread | None:
        """The thread that spawned this one (for a task group's child, the
        group's owner), while that thread lives; None for the main thread,
        for threads spawned from outside any thread, and once the parent
        has ended."""
        lineage = self._parent
        return lineage.thread if lineage is not None else None

    @property
    def done(self) -> bool:
        """Whether the thread has ended (returned, raised or was cancelled)."""
        return self._coro is None

    @property
    def waiting_on(self) -> SystemCall | None:
        """The system call this thread is blocked in, or None."""
        wait = self._wait
        return wait if isinstance(wait, SystemCall) else None

    @property
    def state(self) -> str:
        """"ready", "waiting", "done", "failed" or "cancelled"."""
        if self._coro is None:
            if self._exc is None:
                return "done"
            return "cancelled" if isinstance(self._exc, ThreadCancelled) else "failed"
        return "waiting" if self._wait is not None else "ready"

    def stack(self) -> list[traceback.FrameSummary]:
        """Where the thread is: its frames, outermost first, down the chain
        of ``yield from``/``await`` to the innermost (for a green thread, its
        greenlet's frames). Empty once it has ended."""
        from .introspect import thread_frames

        return [traceback.FrameSummary(f.f_code.co_filename, f.f_lineno or 0, f.f_code.co_qualname,
                                       lookup_line=False)
                for f in thread_frames(self._coro)]

    def result(self) -> Any:
        """The thread's return value; raises its exception. Only once done."""
        if self._coro is not None:
            raise RuntimeError(f"{self!r} has not ended yet")
        exc = self._exc
        if exc is not None:
            mark_retrieved(self)
            raise exc
        return self._value

    def __repr__(self) -> str:
        wait = self.waiting_on
        extra = f" on {wait!r}" if wait is not None else ""
        return f"<Thread {self.id} {self.name!r} {self.state}{extra}>"

    # -- blocking operations, usable with yield from and await -------------
    @types.coroutine
    def join(self) -> Waits[Any]:
        """Wait for the thread to end; return its result or raise its exception.

        Parks until the thread ends (at once if it has). A timeout or a
        cancellation of the joiner leaves the thread running and its
        outcome unretrieved."""
        return (yield Join(self))

    @types.coroutine
    def cancel(self) -> Waits[bool]:
        """Deliver ThreadCancelled at the thread's wait and wait until it has
        ended. Returns True if the thread was still running.

        The wait lasts as long as the thread's ``finally`` blocks do; if the
        canceller is itself timed out or cancelled meanwhile, the thread has
        still been told and ends on its own."""
        if self._coro is None:
            return False
        yield Cancel(self)
        try:
            yield Join(self)
        except BaseException as exc:
            if not self._ended_with(exc):
                raise  # the canceller itself was cancelled or timed out while waiting
            # ThreadCancelled, as asked; anything else it died of is its joiner's news
        return True

    def _ended_with(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this thread's own outcome (what a Join on it
        raised), as opposed to an interrupt aimed at the joiner."""
        return self._coro is None and exc is self._exc

    @types.coroutine
    def wait(self) -> Waits[None]:
        """Wait for the thread to end without taking its result or exception
        (an exception nobody joins is still logged)."""
        if self._coro is None:
            return
        yield JoinAny((self,))


class InContext:
    """A thread's coroutine that runs in a ``contextvars.Context`` of its
    own: ``send`` and ``throw`` go through ``context.run``.

    Only threads that need their own context (one that wrote a context
    variable, a child of such a thread, a green thread) are wrapped, so the
    run loop never asks which kind a thread is: ``send`` is a C-level
    partial, no Python frame per step. A thread object that switches
    contexts itself (it has ``adopt_context``: a green thread, whose
    greenlet runs in ``context``) has its own ``send`` called directly.
    """

    __slots__ = ("send", "coro", "context")

    def __init__(self, coro: Any, context: contextvars.Context) -> None:
        self.coro = coro
        self.context = context
        if hasattr(coro, "adopt_context"):
            self.send = coro.send
        elif type(coro) in COROUTINE_TYPES:
            # Context.run(context, Type.send, coro, value): unbound, so that
            # no bound-method objects are kept per thread (110 bytes less).
            self.send = functools.partial(contextvars.Context.run, context, type(coro).send, coro)
        else:
            self.send = functools.partial(contextvars.Context.run, context, coro.send)

    def throw(self, exc: BaseException) -> Any:
        """``coro.throw(exc)`` inside the context."""
        return self.context.run(self.coro.throw, exc)

    def close(self) -> None:
        """``coro.close()`` inside the context (a forced exit closes every
        live thread's coroutine, this kind too)."""
        close = getattr(self.coro, "close", None)
        if close is not None:
            self.context.run(close)

    def current_context(self) -> contextvars.Context:
        """The context the thread's code is in now (what a thread it spawns
        copies): ``context``, or for a green thread its greenlet's."""
        own = getattr(self.coro, "context", None)
        return own if own is not None else self.context


_thread_ids = itertools.count(1)
COROUTINE_TYPES = (types.GeneratorType, types.CoroutineType)


class _Lineage:
    """What children point at instead of their parent Thread: the scheduler
    clears ``thread`` when the parent ends, so ended threads are never kept
    alive by their children (nor their unjoined exceptions kept unlogged).
    One per thread that has spawned, shared by all its children."""

    __slots__ = ("thread",)

    def __init__(self, thread: Thread) -> None:
        self.thread: Thread | None = thread


def as_coroutine(target: Any, args: tuple[Any, ...]) -> Any:
    """What ``spawn(target, *args)`` runs: ``target`` itself if it is a
    running generator or coroutine, a driver for another awaitable, or
    ``target(*args)`` (driven, if it is an awaitable but no generator);
    TypeError for anything else."""
    if hasattr(target, "send") and hasattr(target, "throw"):
        if args:
            raise TypeError(f"spawn() got arguments for {target!r}, which is already a running generator")
        return target
    if hasattr(target, "__await__") and not args:
        return drive(target)  # an awaitable such as ev.wait() or conn.sendall(data)
    if callable(target):
        return driven(target(*args))  # sleep(1) is such an awaitable too
    raise TypeError(f"spawn() needs a generator, a coroutine, or a function returning one; got {target!r}")


def driven(made: Any) -> Any:
    """``made``, or a generator driving it if it is an awaitable but no
    generator (what ``sleep`` or ``Event.wait`` return)."""
    if hasattr(made, "__await__") and not (hasattr(made, "send") and hasattr(made, "throw")):
        return drive(made)
    return made


def drive(awaitable: Any) -> Waits[Any]:
    """A generator running ``awaitable`` (anything with ``__await__``) to its end."""
    return (yield from awaitable.__await__())


class _Unretrieved:
    """Logs a thread's exception when it is dropped without anyone having
    seen it: the "logged once if nobody joins" rule, paid only by threads
    that failed."""

    __slots__ = ("thread_name", "exc")

    def __init__(self, thread_name: str, exc: BaseException) -> None:
        self.thread_name = thread_name
        self.exc: BaseException | None = exc

    def __del__(self) -> None:
        exc = self.exc
        if exc is not None:
            self.exc = None
            log.error(
                "thread %s ended with an exception nobody joined",
                self.thread_name,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            # Nobody else has it: handlers that keep the record (a test's
            # capture, a memory handler) keep the traceback, which formats
            # without the frames' locals, so the failed thread's data goes.
            traceback.clear_frames(exc.__traceback__)


def mark_retrieved(thread: Thread) -> None:
    """Someone has seen ``thread``'s exception: do not log it as unjoined."""
    reporter = thread._wait
    if type(reporter) is _Unretrieved:
        reporter.exc = None
        thread._wait = None

