"""Task groups: threads that cannot outlive the block that spawned them.

A group has an owner (the thread that opened it), a body (the owner's code
inside the group), a cancel scope around the body, and children. When a
child fails, the other children are cancelled and so is the body (its
scope); the group ends once the body and every child have ended, and
raises what went wrong together. The anchors are asyncio's TaskGroup and
trio's nursery; the rules, in full, are in ``TaskGroup``'s docstring and in
docs/design.md section 5.

Two forms, because a plain ``with`` cannot wait at its exit in a generator
thread: ``async with TaskGroup() as g:`` in ``async def`` threads, and
``yield from task_group(body)`` (``body(g)`` is the group's body) in
generator threads, ``async def`` threads and, through
``threadlib.frontends.green.call``, green threads.

What the scheduler does for a group happens in the kernel's context (a
child's end reaches the group as a joiner callback); nothing here runs user
code from there, and a group keeps only its live children, so a
long-running group (a server's connections) holds no ended thread.
"""

from __future__ import annotations

import types
from typing import Any, Callable

from ..syscalls import Waits
from .scheduler import Scheduler, running_scheduler
from .scopes import CancelScope
from .threads import Thread, ThreadCancelled, as_coroutine
from .waitqueue import WaitQueue

_NEW, _OPEN, _ENDED = 0, 1, 2


class TaskGroup:
    """Structured concurrency: ``async with TaskGroup() as g:`` (or ``yield
    from task_group(body)``); ``g.spawn(func, *args)`` starts a child that
    cannot outlive the block.

    The rules:

    * the group ends when its body and every child have ended; the owner
      waits for the children at the end of the block;
    * a child that fails (any exception but ``ThreadCancelled``) cancels the
      others (``ThreadCancelled`` at their wait) and the body (its waits
      raise ``ThreadCancelled``, which the group's own scope catches);
      ``cancel()`` does the same without a failure;
    * if the body raises, the children are cancelled; so they are if the
      owner is cancelled, interrupted or times out while waiting for them
      at the end, after which it goes on waiting, shielded, until they have
      ended (their ``finally`` blocks may wait);
    * then: a ``KeyboardInterrupt`` or ``SystemExit`` from the body or a
      child is raised as it is (Ctrl-C stays Ctrl-C); otherwise the
      failures, children's in the order they ended and then the body's, are
      raised together as one ``BaseExceptionGroup`` (an ``ExceptionGroup``
      when all are ``Exception``s); otherwise a cancellation from outside
      the group that reached the body (``ThreadCancelled`` of the owner or
      of an enclosing scope, an enclosing timeout's ``TimeoutError``) is
      raised as it is; otherwise the block ends normally.

    A child's ``ThreadCancelled`` is never a failure. Children's exceptions
    count as retrieved (they are not logged as unjoined).
    """

    __slots__ = ("_sched", "_owner", "_scope", "_children", "_failures", "_fatal", "_waiter",
                 "_state", "_cancelled")

    def __init__(self) -> None:
        self._sched: Scheduler | None = None
        self._owner: Thread | None = None
        self._scope = CancelScope()  # around the body
        self._children: dict[Thread, None] = {}  # live ones only, oldest first
        self._failures: list[BaseException] = []
        self._fatal: BaseException | None = None  # the first KeyboardInterrupt/SystemExit
        self._waiter = WaitQueue()  # the owner, waiting for the last child
        self._state = _NEW
        self._cancelled = False

    def __repr__(self) -> str:
        owner = self._owner.name if self._owner is not None else None
        state = ("new", "open", "ended")[self._state]
        return f"<TaskGroup of {owner} {state}, {len(self._children)} children>"

    # -- what the body does ----------------------------------------------------
    def spawn(self, target: Any, *args: Any, name: str | None = None) -> Thread:
        """Start a child (``target`` as for ``threadlib.spawn``) and return
        its Thread at once; a plain call (no ``yield from``/``await``),
        from the body, from a child or from any other thread of the
        scheduler. A child spawned into a cancelled group is cancelled at
        its first wait. ``RuntimeError`` before the group is entered or
        after it has ended."""
        if self._state != _OPEN:
            raise RuntimeError(f"{self!r} cannot spawn: "
                               + ("enter it first" if self._state == _NEW else "it has ended"))
        sched = self._sched
        owner = self._owner
        assert sched is not None and owner is not None  # set on entry
        t = sched.spawn(as_coroutine(target, args), name)
        if t.parent is not owner:
            t._parent = owner._lineage or sched._lineage(owner)
        self._children[t] = None
        sched._joiners[t] = [self]  # a new thread has no other joiner yet
        if self._cancelled:
            sched._cancel_thread(t, ThreadCancelled())
        return t

    def cancel(self) -> None:
        """Cancel the body and every child. The group then ends without an
        exception of its own (children's failures are still raised)."""
        if self._cancelled:
            return
        self._cancelled = True
        self._scope.cancel()
        sched = self._sched
        if sched is not None:
            for child in list(self._children):
                sched._cancel_thread(child, ThreadCancelled())

    @property
    def cancel_called(self) -> bool:
        """Whether the group has been cancelled (by ``cancel()`` or a failure)."""
        return self._cancelled

    @property
    def children(self) -> list[Thread]:
        """The children still running, oldest first."""
        return list(self._children)

    # -- async with -----------------------------------------------------------------
    def __enter__(self) -> TaskGroup:
        raise TypeError("a TaskGroup cannot be used with a plain `with`, which cannot wait for the "
                        "children at its end: write `async with TaskGroup() as g:` in an async def "
                        "thread, or `yield from threadlib.task_group(body)` in a generator thread")

    def __exit__(self, *exc_info: Any) -> None:
        """Never reached: ``__enter__`` refuses."""

    async def __aenter__(self) -> TaskGroup:
        self._open()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return await self._close(exc)

    # -- the kernel's side ---------------------------------------------------
    def _open(self) -> None:
        if self._state != _NEW:
            raise RuntimeError(f"{self!r} was already entered: a task group is entered once")
        sched = running_scheduler()
        owner = sched.current
        if owner is None:
            raise RuntimeError("TaskGroup used outside a thread")
        self._sched = sched
        self._owner = owner
        self._scope.__enter__()
        self._state = _OPEN

    def __call__(self, child: Thread) -> None:
        """A child has ended (called by the scheduler, as the child's joiner)."""
        self._children.pop(child, None)
        exc = child._exc
        if exc is not None and not isinstance(exc, ThreadCancelled):
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                if self._fatal is None:
                    self._fatal = exc
            else:
                self._failures.append(exc)
            self.cancel()
        if not self._children:
            self._waiter.wake_one()

    def _outer_cancellation(self, exc: BaseException) -> bool:
        """Whether ``exc``, from the body, is a cancellation that came from
        outside the group (to be raised as it is)."""
        if isinstance(exc, ThreadCancelled):
            return True
        if isinstance(exc, TimeoutError):
            scope = getattr(exc, "scope", None)
            s = self._scope._outer
            while s is not None:
                if s is scope:
                    return True
                s = s._outer
        return False

    @types.coroutine
    def _close(self, exc: BaseException | None) -> Waits[bool]:
        """Leave the body (``exc``: what it raised), wait for the children,
        and raise per the rules; True if ``exc`` is to be swallowed."""
        if self._scope.__exit__(type(exc) if exc is not None else None, exc, None):
            exc = None  # the group's own cancellation, caught by its scope
            swallow = True
        else:
            swallow = False
        body: BaseException | None = exc  # what the body ended with, still to be raised
        if body is not None:
            self.cancel()
        shield: CancelScope | None = None
        while self._children:
            try:
                yield self._waiter.park
            except GeneratorExit:
                self.cancel()  # the owner's coroutine is being closed: no more waiting
                raise
            except BaseException as interrupt:
                if shield is not None:
                    # Through the shield only what no cancel is: a deadlock
                    # report, a worker's failure. Waiting on cannot help.
                    shield.__exit__(None, None, None)
                    self._state = _ENDED
                    raise
                # The owner was cancelled, interrupted or timed out while
                # waiting: cancel the children and wait on, shielded, so
                # they cannot outlive the block.
                if body is None:
                    body = interrupt
                self.cancel()
                shield = CancelScope(shield=True)
                shield.__enter__()
        if shield is not None:
            shield.__exit__(None, None, None)
        self._state = _ENDED
        return self._outcome(body, exc, swallow)

    def _outcome(self, body: BaseException | None, exc: BaseException | None, swallow: bool) -> bool:
        fatal = self._fatal
        if isinstance(body, (KeyboardInterrupt, SystemExit)):
            fatal = body
        if fatal is not None:
            if fatal is exc:
                return False  # the body's own: let it go on as it is
            raise fatal
        failures = list(self._failures)
        if body is not None and not self._outer_cancellation(body):
            failures.append(body)
        if failures:
            owner = self._owner.name if self._owner is not None else "?"
            raise BaseExceptionGroup(f"task group of thread {owner}: {len(failures)} failed", failures)
        if body is not None:
            if body is exc:
                return False
            raise body
        return swallow


@types.coroutine
def task_group(body: Callable[..., Any], *args: Any) -> Waits[Any]:
    """**Waits**: run ``body(g, *args)`` as the body of a new ``TaskGroup``
    ``g`` in the calling thread, then wait for every child; return what the
    body returned (None if the group's cancellation ended it). The form for
    generator threads (``yield from task_group(body)``); ``body`` may be a
    generator function, an ``async def`` function, or (in a green thread,
    through ``green.call``) a plain function that blocks."""
    g = TaskGroup()
    g._open()
    result: Any = None
    try:
        coro = body(g, *args)
        if hasattr(coro, "__await__") or (hasattr(coro, "send") and hasattr(coro, "throw")):
            result = yield from as_coroutine(coro, ())
        else:
            result = coro  # a plain function (a green thread's body) has run already
    except BaseException as exc:
        if isinstance(exc, GeneratorExit):
            g.cancel()
            raise
        if not (yield from g._close(exc)):
            raise
        return None
    yield from g._close(None)
    return result
