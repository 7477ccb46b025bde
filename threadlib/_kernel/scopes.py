"""Cancel scopes: a deadline and a cancel switch for a block of one thread.

``with scope:`` covers every wait the entering thread makes inside the
block. Once the scope's deadline has passed or ``cancel()`` was called,
each wait in it that suspends raises: ``ThreadCancelled`` (its ``scope``
naming this scope), which the scope catches at its exit, or, for a
``timeout``/``fail_after`` scope whose deadline passed, ``TimeoutError``,
which goes on to the caller. The condition is level-triggered: every
further wait inside the block raises again, until the block is left.

A shielded scope hides every scope outside it, and holds back cancels of
the whole thread (``Thread.cancel``, a task group cancelling its children,
Ctrl-C) until it exits; then they are delivered at the thread's next wait.

Scopes cost nothing until the thread waits: entering one sets the thread's
``_scope`` slot to it (each scope links to the one outside it) and works
out its ``_effective`` deadline, the thread's ``deadline``: the earliest
deadline still in effect, ``-inf`` once a scope in effect is cancelled.
The scheduler arms a timer from it only when the thread suspends
(``Scheduler.suspend``), and asks the scope chain which exception to raise
only when that timer fires. A thread outside every scope has ``_scope``
None, the one test the hot paths make, and pays nothing.

Nothing here waits, and time is read only through the scheduler's clock.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from .scheduler import running_scheduler
from .threads import Thread, ThreadCancelled

_S = TypeVar("_S", bound="CancelScope")

_CANCELLED_AT = -math.inf  # the effective deadline of a cancelled scope: "already due"

# CancelScope._state bits: one int instead of a slot per flag, because
# every wait given a timeout= makes and enters a scope.
_ENTERED, _EXITED, _CANCELLED, _CAUGHT, _EXPIRED, _INERT = 1, 2, 4, 8, 16, 32
_GENERAL = 64  # a timeout that must be entered through CancelScope.__enter__ (shielded, absolute)


def _check_time(what: str, value: Any) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value != value):
        raise TypeError(f"{what} must be a number of seconds (or None), got {value!r}")


class CancelScope:
    """``with CancelScope(deadline=None, shield=False) as scope:`` -- a block
    that can be cancelled (``scope.cancel()``, from inside or from another
    thread) or given an absolute deadline on the scheduler's clock. Waits
    inside it then raise ``ThreadCancelled``, which the scope catches at
    its exit (``cancelled_caught`` tells). Entered once, by one thread;
    works in generator, ``async def`` and green threads.
    """

    __slots__ = ("_deadline", "_relative", "_shield", "_state", "_thread", "_outer", "_effective", "_held")

    # Set on entry; read only while entered.
    _thread: Thread
    _outer: CancelScope | None
    _effective: float | None  # this level's deadline, min'ed with the outer ones unless shielded
    _held: BaseException | None  # a thread cancel a shield holds back; unset until one comes

    def __init__(self, deadline: float | None = None, shield: bool = False) -> None:
        _check_time("CancelScope deadline", deadline)
        self._deadline: float | None = deadline
        self._relative: float | None = None  # seconds from entry, for the *_after forms
        self._shield = shield
        self._state = 0

    def __repr__(self) -> str:
        state = self._state
        words = ["cancelled" if state & _CANCELLED else "exited" if state & _EXITED else
                 "active" if state & _ENTERED else "new"]
        if self.deadline is not None:
            words.append(f"deadline={self.deadline!r}")
        if self.shield:
            words.append("shield")
        return f"<{type(self).__name__} {' '.join(words)}>"

    # -- entering and leaving -------------------------------------------------
    def __enter__(self: _S) -> _S:
        state = self._state
        if state & (_ENTERED | _EXITED):
            raise RuntimeError(f"{self!r} was already entered: a cancel scope is entered once")
        sched = running_scheduler()
        t = sched.current
        if t is None:
            raise RuntimeError(f"{type(self).__name__} used outside a thread")
        relative = self._relative
        deadline: float | None
        if relative is not None:
            try:
                deadline = self._deadline = sched.clock.now() + relative
            except TypeError:
                raise TypeError(f"{type(self).__name__} needs seconds as a number or None, "
                                f"got {relative!r}") from None
        else:
            deadline = self.deadline
        # This level's effective deadline, as _level() would say, inline.
        if state & _CANCELLED:
            deadline = _CANCELLED_AT
        outer = t._scope
        if outer is not None and not self._shield:
            above = outer._effective
            if above is not None and (deadline is None or above < deadline):
                deadline = above
        self._effective = deadline
        self._outer = outer
        self._thread = t
        self._state = state | _ENTERED
        t._scope = self
        if self._shield and sched._pending:
            # A cancel that reached the thread just before (it was ready):
            # the shield holds it like one arriving inside.
            held = sched._pending.pop(t, None)
            if held is not None:
                self._held = held
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        state = self._state
        if state & (_ENTERED | _EXITED) != _ENTERED:
            raise RuntimeError(f"{self!r} exited without being entered, or twice")
        t = self._thread
        if t._scope is not self or running_scheduler().current is not t:
            self._unwind(t)
        t._scope = self._outer
        del self._thread  # a scope kept for its flags keeps no thread alive
        if self._shield:
            self._release(t)
        if isinstance(exc, ThreadCancelled) and exc.scope is self:
            self._state = state ^ (_ENTERED | _EXITED) | _CAUGHT
            return True
        self._state = state ^ (_ENTERED | _EXITED)
        return False

    def _unwind(self, t: Thread) -> None:
        # Inner scopes left entered (an abandoned generator) are dropped
        # with this one; a scope exited by another thread was misused.
        if running_scheduler().current is not t:
            raise RuntimeError(f"{self!r} exited by a thread other than the one that entered it ({t.name})")
        s = t._scope
        while s is not None and s is not self:
            s = s._outer
        if s is None:
            raise RuntimeError(f"{self!r} is not among the scopes {t.name} is in")

    def _release(self, t: Thread) -> None:
        """Pass on the thread cancel this shield held back: to a shield
        further out, or to the thread's next wait."""
        held = getattr(self, "_held", None)
        if held is not None:
            self._held = None
            running_scheduler()._cancel_thread(t, held)

    # -- the state others may change --------------------------------------------
    def cancel(self) -> None:
        """Cancel the block: its waits raise from now on (a wait in
        progress at once, at the scheduler's next poll). From inside the
        block or from any other thread; before entry, the block starts
        cancelled; after its exit, nothing happens."""
        if self._state & _CANCELLED:
            return
        self._state |= _CANCELLED
        self._refresh()

    @property
    def cancel_called(self) -> bool:
        """Whether ``cancel()`` has been called."""
        return bool(self._state & _CANCELLED)

    @property
    def cancelled_caught(self) -> bool:
        """After the block: whether it ended by catching its own
        cancellation (a ``ThreadCancelled`` raised because of it)."""
        return bool(self._state & _CAUGHT)

    @property
    def deadline(self) -> float | None:
        """The absolute deadline on the scheduler's clock, or None (also
        before entry for the ``*_after`` forms, which start counting at
        entry). Assigning moves it, also while a wait inside is under way."""
        return getattr(self, "_deadline", None)  # unset in an inert timeout(None)

    @deadline.setter
    def deadline(self, value: float | None) -> None:
        if self._state & _INERT:
            raise RuntimeError("timeout(None) is inert and cannot be given a deadline; use fail_after(None) "
                               "or CancelScope()")
        _check_time("deadline", value)
        self._deadline = value
        self._relative = None
        self._state |= _GENERAL
        self._refresh()

    @property
    def shield(self) -> bool:
        """Whether the scope hides the scopes outside it and holds back
        cancels of the whole thread until it exits. Assignable: turning it
        off delivers a held cancel at the thread's next wait."""
        return getattr(self, "_shield", False)  # unset in an inert timeout(None)

    @shield.setter
    def shield(self, value: bool) -> None:
        was = self._shield
        self._shield = bool(value)
        if was and not value and self._state & (_ENTERED | _EXITED) == _ENTERED:
            self._release(self._thread)
        self._refresh()

    # -- the kernel's side -----------------------------------------------------
    def _level(self, outer: CancelScope | None) -> float | None:
        own = _CANCELLED_AT if self._state & _CANCELLED else self._deadline
        if self._shield or outer is None:
            return own
        above = outer._effective
        if above is None or (own is not None and own <= above):
            return own
        return above

    def _refresh(self) -> None:
        """Recompute the effective deadlines from this scope inwards and let
        the scheduler move the thread's timer if it is waiting."""
        if self._state & (_ENTERED | _EXITED) != _ENTERED:
            return
        t = self._thread
        inner = []
        s = t._scope
        while s is not None and s is not self:
            inner.append(s)
            s = s._outer
        self._effective = self._level(self._outer)
        for s in reversed(inner):
            s._effective = s._level(s._outer)
        running_scheduler()._deadline_changed(t)

    def _fired(self, now: float) -> bool:
        return bool(self._state & _CANCELLED) or (self._deadline is not None and self._deadline <= now)

    def _exception(self, wait: Any) -> BaseException:
        """What the wait the thread is in raises now that this scope fired."""
        exc = ThreadCancelled(f"cancelled by {self!r} while waiting on {wait!r}")
        exc.scope = self
        return exc


class timeout(CancelScope):
    """``with timeout(seconds, shield=False):`` -- every wait inside the
    block raises ``TimeoutError`` once ``seconds`` have passed since entry
    (``fail_after`` is the same scope; ``fail_at``/``timeout_at`` take an
    absolute deadline).

    Timeouts are deadlines, not durations: a block that waits many times
    shares one deadline, and nested blocks keep the earliest. The deadline
    is checked only at waits, so a thread that never waits is never
    interrupted. ``expired`` tells afterwards whether this block's own
    deadline is the one that fired. ``cancel()`` makes it fire now (a
    timeout never ends its block quietly: that is ``move_on_after``).
    ``timeout(None)`` does nothing and costs nothing, so library calls can
    take an optional ``timeout`` argument cheaply; it cannot be cancelled
    or given a deadline later.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float | None, shield: bool = False) -> None:
        # CancelScope.__init__ written out: every wait given a timeout= pays
        # this, and timeout(None) (inert) as little as it can.
        self.seconds = seconds
        if seconds is None and not shield:
            self._state = _INERT
            return
        self._relative = seconds
        self._shield = shield
        # _deadline stays unset until entry (the deadline property says None).
        self._state = _GENERAL if shield or seconds is None else 0

    def __enter__(self) -> timeout:
        state = self._state
        if state:
            if state == _INERT:  # (== rather than &: the interpreter specialises it)
                return self
            return CancelScope.__enter__(self)
        # CancelScope.__enter__ for the common case (relative, not shielded,
        # not cancelled, not entered yet), written out.
        sched = running_scheduler()
        t = sched.current
        if t is None:
            raise RuntimeError("timeout used outside a thread")
        try:
            deadline = self._deadline = sched.clock.now() + self._relative  # type: ignore[operator]
        except TypeError:
            raise TypeError(f"timeout needs seconds as a number or None, got {self._relative!r}") from None
        outer = t._scope
        if outer is not None:
            above = outer._effective
            if above is not None and above < deadline:
                deadline = above
        self._effective = deadline
        self._outer = outer
        self._thread = t
        self._state = _ENTERED
        t._scope = self
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        state = self._state
        if state == _ENTERED:
            # The common case (not shielded, not cancelled), written out.
            t = self._thread
            if t._scope is not self:
                self._unwind(t)
            t._scope = self._outer
            state = _EXITED  # (_thread stays: one store less; a timeout is seldom kept)
        elif state == _INERT:
            return False
        else:
            # Shielded or cancelled: the general exit (never its own
            # ThreadCancelled to catch: a timeout raises TimeoutError).
            CancelScope.__exit__(self, exc_type, exc, tb)
            state = self._state
        if exc_type is TimeoutError and getattr(exc, "scope", None) is self:
            state |= _EXPIRED
        self._state = state
        return False

    @property
    def expired(self) -> bool:
        """After the block: True if the TimeoutError that left it was this
        scope's own deadline (or its ``cancel()``)."""
        return bool(self._state & _EXPIRED)

    def cancel(self) -> None:
        """Make the block time out now: its waits raise ``TimeoutError``
        (as when the deadline passes; ``expired`` is then True too)."""
        if self._state & _INERT:
            raise RuntimeError("timeout(None) is inert and cannot be cancelled; use fail_after(None) "
                               "or CancelScope()")
        CancelScope.cancel(self)

    def _exception(self, wait: Any) -> BaseException:
        exc = TimeoutError(f"timed out waiting on {wait!r}" if not self._state & _CANCELLED
                           else f"timeout scope cancelled while waiting on {wait!r}")
        # The scope that fired: lets `expired` and task groups tell this
        # scope's TimeoutError from any other.
        setattr(exc, "scope", self)
        return exc

    @classmethod
    def _at(cls, deadline: float | None, shield: bool) -> timeout:
        _check_time("deadline", deadline)
        scope = cls(None, True)  # not inert
        scope._shield = shield
        scope._deadline = deadline
        return scope


def move_on_after(seconds: float | None, shield: bool = False) -> CancelScope:
    """A ``CancelScope`` whose deadline is ``seconds`` after entry (None:
    no deadline): when it passes, the block is left quietly
    (``cancelled_caught`` is then True)."""
    _check_time("move_on_after seconds", seconds)
    scope = CancelScope(None, shield)
    scope._relative = seconds
    return scope


def move_on_at(deadline: float | None, shield: bool = False) -> CancelScope:
    """A ``CancelScope`` with an absolute deadline on the scheduler's clock."""
    return CancelScope(deadline, shield)


def fail_after(seconds: float | None, shield: bool = False) -> timeout:
    """A ``timeout`` scope: waits inside raise ``TimeoutError`` once
    ``seconds`` have passed since entry. ``fail_after(None)`` is an
    ordinary scope without a deadline (it can be cancelled or given one)."""
    _check_time("fail_after seconds", seconds)
    if seconds is not None or shield:
        return timeout(seconds, shield)
    scope = timeout(None, True)  # made shielded, so not inert: it can be cancelled or given a deadline later
    scope._shield = False
    return scope


def fail_at(deadline: float | None, shield: bool = False) -> timeout:
    """A ``timeout`` scope with an absolute deadline on the scheduler's clock."""
    return timeout._at(deadline, shield)


def timeout_at(deadline: float | None) -> timeout:
    """Like ``timeout`` with an absolute deadline on the scheduler's clock."""
    return timeout._at(deadline, False)
