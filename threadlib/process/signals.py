"""Waiting for Unix signals: a worked example of adding a system call and a
worker without touching the scheduler.

``WaitSignal`` is a new system call (plain data: which signals).
``SignalWorker`` serves it: it asks CPython to write each caught signal's
number to a socket (``signal.set_wakeup_fd``), puts that socket in the
scheduler's epoll, and wakes the threads waiting for the signal. (Python
has no signalfd binding, and signalfd would need the signal blocked in
every OS thread, the blocking pool's included; the wake-up fd needs
neither.) A signal that arrives while nobody waits is remembered and
returned by the next wait. Code that is not a thread (the scheduler's
thread dump) can have a callback run in the scheduler for a signal
instead (``SignalWorker.on_signal``). Nothing here runs in the signal
handler but CPython's own write to the wake-up fd.

Signal handlers can only be installed from the main OS thread. A process
has one wake-up fd, so a scheduler whose asyncio loop (``threadlib.loop``)
has signal handlers cannot also have a ``SignalWorker`` catching signals:
whichever comes second is refused with ``RuntimeError``, never left to
steal the other's signals silently.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import types
from typing import Any, Callable, Iterable

from .._kernel import Scheduler, Thread, Worker
from .._kernel.worker import Handler
from ..syscalls import SystemCall, Waits

__all__ = ["WaitSignal", "SignalWorker", "wait_signal", "scheduler"]

log = logging.getLogger("threadlib")


class WaitSignal(SystemCall):
    """Resume with the number of the first of ``signums`` to arrive."""

    __slots__ = ("signums",)

    def __init__(self, signums: tuple[int, ...]) -> None:
        self.signums = signums


class SignalWorker(Worker):
    """Serves ``WaitSignal`` through ``signal.set_wakeup_fd`` and a socket
    pair in the scheduler's epoll (see the module docstring). Signals are
    caught from the first wait on; ``close`` restores the old handlers."""

    def __init__(self) -> None:
        self._waiters: dict[int, list[tuple[Thread, WaitSignal]]] = {}
        self._callbacks: dict[int, list[Callable[[int], None]]] = {}
        self._pending: dict[int, int] = {}
        self._old_handlers: dict[int, Any] = {}
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._old_wakeup_fd = -1

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Serve ``WaitSignal``; nothing is caught until the first wait."""
        self._sched = sched
        return {WaitSignal: self._wait_signal}

    @property
    def catching(self) -> bool:
        """Whether the worker has taken the process's signal wake-up fd (from
        the first ``wait_signal`` or ``on_signal`` until ``close``)."""
        return self._reader is not None

    def _start(self) -> None:
        # threadlib.loop is looked up, not imported: if no code imported it,
        # no asyncio loop of ours can hold signal handlers.
        loop_module = sys.modules.get("threadlib.loop")
        if loop_module is not None and loop_module._handles_signals(self._sched):
            raise RuntimeError("this scheduler's asyncio loop has signal handlers (add_signal_handler), "
                               "which own the process's one signal wake-up fd: wait_signal and "
                               "SignalWorker.on_signal cannot be used on the same scheduler")
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._sched.watch_fd(self._reader.fileno(), 1, self._on_readable)  # EPOLLIN

    def _catch(self, signum: int) -> None:
        if signum in self._old_handlers:
            return
        # A Python-level handler that does nothing: the C handler still
        # writes the number to the wake-up fd, which is all we need.
        self._old_handlers[signum] = signal.signal(signum, _note_signal)

    def _wait_signal(self, thread: Thread, sc: WaitSignal) -> None:
        if self._reader is None:
            try:
                self._start()
            except RuntimeError as exc:  # the asyncio loop's signal handlers: the thread's mistake
                self._sched.throw(thread, exc)
                return
        try:
            for signum in sc.signums:
                self._catch(signum)
        except (ValueError, TypeError, OSError) as exc:  # not a signal number, or one Python cannot catch
            self._sched.throw(thread, exc)
            return
        for signum in sc.signums:
            if self._pending.get(signum):
                self._pending[signum] -= 1
                self._sched.resume(thread, signum)
                return
        self._sched.suspend(thread, sc)
        for signum in sc.signums:
            self._waiters.setdefault(signum, []).append((thread, sc))

    def on_signal(self, signum: int, callback: Callable[[int], None]) -> None:
        """Run ``callback(signum)`` in the scheduler each time ``signum``
        arrives, until the scheduler ends. The signal is caught from now on
        (main OS thread only: ``ValueError`` otherwise, as for a number
        Python cannot catch). A signal that has callbacks is not remembered
        for later ``wait_signal`` calls unless a thread was waiting for it."""
        if self._reader is None:
            self._start()
        self._catch(signum)
        self._callbacks.setdefault(signum, []).append(callback)

    def _on_readable(self, events: int) -> None:
        reader = self._reader
        assert reader is not None  # its fd is watched only while it is open
        try:
            data = reader.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            callbacks = self._callbacks.get(signum)
            for callback in callbacks or ():
                try:
                    callback(signum)
                except Exception:  # the callback's bug must not stop the scheduler
                    log.exception("callback %r for signal %d failed", callback, signum)
            woken = callbacks is not None
            for thread, sc in self._waiters.pop(signum, []):
                if thread.waiting_on is sc:
                    self._sched.resume(thread, signum)
                    woken = True
            if not woken:
                self._pending[signum] = self._pending.get(signum, 0) + 1

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """Take the thread off the waiters of its signals (they stay caught)."""
        for signum in syscall.signums:
            waiters = self._waiters.get(signum)
            if waiters:
                waiters[:] = [(t, sc) for t, sc in waiters if t is not thread]

    def busy(self) -> bool:
        """Whether any thread waits for a signal."""
        return any(self._waiters.values())

    def close(self) -> None:
        """Restore the signal handlers and wake-up fd found, close the sockets."""
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        self._callbacks.clear()
        if self._reader is not None and self._writer is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._sched.unwatch_fd(self._reader.fileno())
            self._reader.close()
            self._writer.close()
            self._reader = self._writer = None


def _note_signal(signum: int, frame: Any) -> None:
    pass


@types.coroutine
def wait_signal(*signums: int) -> Waits[int]:
    """Wait for any of ``signums``; return the one that arrived. Needs a
    scheduler with a SignalWorker (``threadlib.process.signals.scheduler()``).

    A signal caught while nobody waits is kept for the next wait; one that
    arrives after the waiter timed out or was cancelled is kept likewise."""
    if not signums:
        raise ValueError("wait_signal() needs at least one signal number")
    signum: int = yield WaitSignal(tuple(signums))
    return signum


def scheduler(workers: Iterable[Worker] | None = None, **kwargs: Any) -> Scheduler:
    """A default scheduler plus a SignalWorker."""
    from .._kernel import default_workers

    return Scheduler(workers=list(workers or default_workers()) + [SignalWorker()], **kwargs)
