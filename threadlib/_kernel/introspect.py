"""Seeing what the threads do: thread dumps, instruments, the slow-step detector.

A *dump* lists every live thread grouped by what it waits on and where
(its stack, down the ``yield from``/``await`` chain), with a count per
identical group, like a Go goroutine dump. An *instrument* is an object
with optional hook methods (``Instrument`` documents them) that the
scheduler calls around every step while at least one is installed; with
none installed the run loop never looks for them. ``SlowStepDetector`` is
an instrument that warns when one step (the code a thread runs between two
waits) held the CPU too long: the blocking-call detector of event loops.

Nothing here may change a thread or the scheduler's state: it only reads.
The detector's ``time.perf_counter`` is the one deliberate read of wall
time outside the scheduler's clock: it measures how long a step ran, only
for the warning, and never decides when anything runs.
"""

from __future__ import annotations

import linecache
import logging
import math
import os
import reprlib
import types
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

from ..syscalls import SystemCall, _slot_names
from .threads import InContext
from .waitqueue import WaitQueue

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .threads import Thread

log = logging.getLogger("threadlib")

#: The hook methods an instrument may define, in the order the scheduler
#: calls them for one step.
HOOK_NAMES = ("thread_spawned", "before_step", "after_step", "system_call", "thread_finished")


class Instrument:
    """The hooks an instrument may define, all optional.

    Pass any object to ``Scheduler.add_instrument``; only the methods it
    defines are called (a subclass of this class that overrides some of
    them gets only those called). Hooks run in the scheduler, between
    steps, with ``sched.current`` set to the thread in question; they must
    not wait or block, and should be quick: they run on every step of
    every thread. A hook that raises is logged and its instrument removed.

    For one step the order is ``before_step``, the thread's code,
    ``after_step``, then ``system_call`` (it yielded one) or
    ``thread_finished`` (it returned or raised).
    """

    def thread_spawned(self, thread: Thread) -> None:
        """A thread was created (it is ready; it has not run yet)."""

    def before_step(self, thread: Thread) -> None:
        """``thread`` is about to run until its next system call or its end."""

    def after_step(self, thread: Thread) -> None:
        """``thread`` has stopped running: it yielded a system call or ended."""

    def system_call(self, thread: Thread, syscall: Any) -> None:
        """``thread`` yielded ``syscall`` (about to be served: it may wait)."""

    def thread_finished(self, thread: Thread, value: Any, exc: BaseException | None) -> None:
        """``thread`` ended: returned ``value``, or raised ``exc``
        (``ThreadCancelled`` when it was cancelled)."""


HookList = list[tuple[Any, Callable[..., None]]]


def hook_lists(instruments: list[Any]) -> dict[str, HookList]:
    """For each hook name, the (instrument, bound method) pairs to call:
    the methods an instrument defines itself, not ``Instrument``'s no-ops."""
    hooks: dict[str, HookList] = {name: [] for name in HOOK_NAMES}
    for instrument in instruments:
        for name in HOOK_NAMES:
            method = getattr(instrument, name, None)
            if method is None or getattr(type(instrument), name, None) is getattr(Instrument, name):
                continue
            hooks[name].append((instrument, method))
    return hooks


class SlowStepDetector(Instrument):
    """Logs a WARNING when one step of a thread (the code it runs between
    two waits) took longer than ``threshold`` seconds: something blocked
    the whole scheduler (a blocking call, a long computation).

    The warning names the thread and where the step ended (the innermost
    frame outside threadlib at its next wait): the blocking code ran in
    that step, after the thread's previous wait. Install with
    ``sched.warn_slow_steps(threshold)``; ``slow_steps`` counts the warnings.
    Time is measured with ``time.perf_counter`` (wall time, not the
    scheduler's clock: a ``VirtualClock`` does not move while a step runs).
    Per step it costs two clock reads; frames are looked at only for a
    slow step (looking at a generator's frame makes CPython keep a frame
    object for it, about 100 bytes per suspended generator).
    """

    def __init__(self, threshold: float = 0.1, logger: logging.Logger | None = None) -> None:
        if not (isinstance(threshold, (int, float)) and threshold > 0):
            raise ValueError(f"the slow-step threshold must be a positive number of seconds, got {threshold!r}")
        self.threshold = float(threshold)
        self.logger = logger or log
        self.slow_steps = 0
        # Installed in the middle of a step, it sees that step's end first.
        self._started = math.inf

    def before_step(self, thread: Thread) -> None:
        """Note the time."""
        self._started = perf_counter()

    def after_step(self, thread: Thread) -> None:
        """Warn if the step took longer than the threshold."""
        elapsed = perf_counter() - self._started
        if elapsed <= self.threshold:
            return
        self.slow_steps += 1
        stopped_at = f"at {_where(thread._coro)}" if thread._coro is not None else "when it ended"
        self.logger.warning(
            "slow step: thread %s (id %d) ran %.3f s without waiting (threshold %.3f s), stopping %s; "
            "a blocking call in that step, since the thread's previous wait, stalled every thread",
            thread.name, thread.id, elapsed, self.threshold, stopped_at,
        )

    def __repr__(self) -> str:
        return f"<SlowStepDetector threshold={self.threshold} slow_steps={self.slow_steps}>"


_THREADLIB_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _where(coro: Any) -> str:
    # The innermost frame of the application rather than of threadlib (a
    # thread waiting in sleep() is "at" the line that called sleep).
    frames = thread_frames(coro)
    if not frames:
        return "an unknown place"
    f = next((f for f in reversed(frames) if not f.f_code.co_filename.startswith(_THREADLIB_DIR)), frames[-1])
    return f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_qualname}"


# ---------------------------------------------------------------------------
# Stacks and dumps

_MAX_DEPTH = 256  # a yield-from chain longer than this is cut (a cycle cannot happen, a bug might)


def thread_chain(coro: Any) -> tuple[list[types.FrameType], str | None]:
    """The frames of a thread object, outermost first (a generator's or
    coroutine's frame, then those of whatever it delegates to through
    ``yield from``/``await``; an object with a ``frames()`` method, a green
    thread, gives its own), and what it waits in when the innermost call is
    a compiled one with no frame (a compiled ``Stream.recv`` says
    ``"Stream.recv"`` as its ``where``), else None. ``([], None)`` for an
    ended thread."""
    frames: list[types.FrameType] = []
    if type(coro) is InContext:
        coro = coro.coro
    while coro is not None and len(frames) < _MAX_DEPTH:
        if isinstance(coro, types.GeneratorType):
            frame, coro = coro.gi_frame, coro.gi_yieldfrom
        elif isinstance(coro, types.CoroutineType):
            frame, coro = coro.cr_frame, coro.cr_await
        else:
            own = getattr(coro, "frames", None)
            if own is not None:
                frames.extend(own())
                break
            where = getattr(coro, "where", None)  # an iterator without frames (ParkOnce's), or compiled
            return frames, where if isinstance(where, str) else None
        if frame is None:
            break
        frames.append(frame)
    return frames, None


def thread_frames(coro: Any) -> list[types.FrameType]:
    """The frames of a thread object, outermost first (see thread_chain)."""
    return thread_chain(coro)[0]


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlong = 30

_MAX_IDS = 10  # threads listed by id per group; the rest are counted


def _describe_wait(thread: Thread, running: Thread | None, frames: list[types.FrameType],
                   owners: dict[int, str | None]) -> tuple[str, str]:
    """(what the thread does, the fields of its system call). ``owners``
    caches the owner found per WaitQueue (by id): reading a frame's locals
    makes CPython keep a dict on it, so it is done once per queue."""
    if thread is running:
        return "running", ""
    wait = thread.waiting_on
    if wait is None:
        return "ready", ""
    fields = []
    for name in _slot_names(type(wait)):
        value = getattr(wait, name, None)
        # A Park names a bare WaitQueue: say whose it is (the Event, Mutex
        # or Queue the thread waits on), found among the innermost locals.
        shown = None
        if type(value) is WaitQueue:
            key = id(value)
            if key not in owners:
                owners[key] = _owner_of(value, frames)
            shown = owners[key]
        fields.append(f"{name}={shown or _short.repr(value)}")
    return f"waiting in {type(wait).__name__}", ", ".join(fields)


_OWNER_FRAMES = 6  # how far out from the innermost frame to look for a queue's owner


def _owner_of(queue: WaitQueue, frames: list[types.FrameType]) -> str | None:
    for frame in reversed(frames[-_OWNER_FRAMES:]):
        for value in frame.f_locals.values():
            for attr in _attribute_names(value):
                if getattr(value, attr, None) is queue:
                    owner = _short.repr(value)
                    return owner if attr == "_waiters" else f"{owner}.{attr}"
    return None


def _attribute_names(obj: Any) -> list[str]:
    if isinstance(obj, (type, types.ModuleType, types.FunctionType, WaitQueue, SystemCall)):
        return []
    names: list[str] = []
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    names.extend(getattr(obj, "__dict__", ()))
    return names


def _describe_thread(thread: Thread) -> str:
    parent = getattr(thread, "parent", None)
    text = f"#{thread.id} {thread.name!r}"
    if parent is not None:
        text += f" (parent #{parent.id})"
    return text


def format_dump(sched: Scheduler) -> str:
    """The text of ``Scheduler.dump``: every live thread, grouped by what it
    waits on and its stack (file, line, function), largest group first."""
    running = sched.current
    # (what they do, stack) -> [(thread, the fields of its system call)]:
    # threads that differ only in the fields (each connection's fd) are
    # one group, as in Go, which lists every thread's own fields.
    groups: dict[tuple[str, tuple[tuple[str, int, str], ...]], list[tuple[Thread, str]]] = {}
    threads = sched.threads()
    owners: dict[int, str | None] = {}
    for t in threads:
        frames, tail = thread_chain(t._coro)
        stack = tuple((f.f_code.co_filename, f.f_lineno or 0, f.f_code.co_qualname) for f in frames)
        if tail is not None:  # a compiled call has no frame: named as one
            stack += (("<compiled>", 0, tail),)
        state, fields = _describe_wait(t, running, frames, owners)
        groups.setdefault((state, stack), []).append((t, fields))
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0][0].id))
    lines = [
        f"threadlib thread dump: {len(threads)} live thread{'s' if len(threads) != 1 else ''} "
        f"in {len(groups)} group{'s' if len(groups) != 1 else ''} "
        f"(scheduler clock {sched.clock.now():.3f}; stacks outermost call first)",
    ]
    for (state, stack), members in ordered:
        lines.append("")
        distinct = {fields for _, fields in members}
        same = len(distinct) == 1
        header = f"{state}({distinct.pop()})" if same and state.startswith("waiting") else state
        lines.append(f"{len(members)} thread{'s' if len(members) != 1 else ''} {header}:")
        shown = ", ".join(_describe_thread(t) + ("" if same else f" ({fields})") for t, fields in members[:_MAX_IDS])
        more = f", and {len(members) - _MAX_IDS} more" if len(members) > _MAX_IDS else ""
        lines.append(f"  threads: {shown}{more}")
        if not stack:
            lines.append("  (no frames: not a generator, or not started)")
        for filename, lineno, name in stack:
            lines.append(f'  File "{filename}", line {lineno}, in {name}')
            source = linecache.getline(filename, lineno).strip()
            if source:
                lines.append(f"    {source}")
    return "\n".join(lines) + "\n"
