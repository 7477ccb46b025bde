"""Ctrl-C and SIGTERM as a cancel of the main thread, under ``Scheduler.run``.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the
main OS thread happens to be, which inside a scheduler can be halfway
through moving a thread between queues. While ``Scheduler.run`` runs in the
main OS thread with Python's default handlers in place, ``ConsoleSignals``
takes over: its handler only notes the signal and wakes the scheduler (a
byte on a socket pair whose reading end is in the scheduler's poller;
``signal.set_wakeup_fd`` points at the same socket, for a signal that lands
on another OS thread while the main one sleeps in the poll). At its next
poll the scheduler delivers ``KeyboardInterrupt`` (``SystemExit(143)`` for
SIGTERM) to the main thread at its wait, the way ``Thread.cancel`` delivers
``ThreadCancelled``: ``finally`` blocks run and may wait, task groups cancel
their children and wait for them, and ``run`` raises it once the main
thread has ended and the remaining threads have been cancelled. A
scheduler with no poller (timers only) sleeps on its clock instead; the
handler ends that sleep by raising a private exception the idle wait
catches.

A second signal within ``FORCE_WINDOW`` seconds of the previous one (on the
scheduler's clock), or any signal once the main thread has ended (the
shutdown is under way), raises ``KeyboardInterrupt`` (``SystemExit``) from
the handler at once: the program exits without the remaining cleanup.

This module must never run the scheduler's bookkeeping from a signal
handler, install anything outside the main OS thread, or replace a handler
(or a wake-up fd) someone else set; ``uninstall`` puts back what it found.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

from .worker import Poller

if TYPE_CHECKING:
    from .clocks import Clock
    from .scheduler import Scheduler
    from .threads import Thread

log = logging.getLogger("threadlib")

#: Seconds within which a second Ctrl-C (or SIGTERM) exits at once.
FORCE_WINDOW = 3.0


class _Wakeup(BaseException):
    """Raised by the handler into an idle sleep on the clock, to end it."""


def signal_exception(signum: int) -> BaseException:
    """What the main thread gets for ``signum``: KeyboardInterrupt for
    SIGINT, SystemExit(128 + signum) otherwise (143 for SIGTERM, the exit
    status a shell reports for a process ended by SIGTERM)."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return SystemExit(128 + signum)


class ConsoleSignals:
    """SIGINT (and optionally SIGTERM) turned into a cancel of ``main``;
    see the module docstring. Made by ``install``; ``Scheduler.run`` calls
    ``uninstall`` on its way out."""

    def __init__(self, sched: Scheduler, main: Thread) -> None:
        self._sched = sched
        self._main = main
        self._old: dict[int, Any] = {}
        self._received: list[int] = []
        self._last: float | None = None
        self._signum: int = signal.SIGINT  # the signal that forced the exit
        self._idling = False
        #: True once a second signal made the program exit at once.
        self.forced = False
        self._handler = self._on_signal  # one bound method, to recognise it later
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._poller: Poller | None = None

    @classmethod
    def install(cls, sched: Scheduler, main: Thread, sigint: bool, sigterm: bool) -> ConsoleSignals | None:
        """Take over SIGINT (if ``sigint`` and Python's default handler is in
        place) and SIGTERM (if ``sigterm`` and its action is the default);
        None when there is nothing to take over, when not in the main OS
        thread, or when a wake-up fd is already set (another event loop
        owns signal delivery here)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        signums = []
        if sigint and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signums.append(signal.SIGINT)
        if sigterm and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signums.append(signal.SIGTERM)
        if not signums:
            return None
        try:
            guard = cls(sched, main)
        except OSError as exc:  # no fd left for the socket pair: run on without
            log.warning("Ctrl-C will interrupt wherever it lands (no socket pair for the handler: %s)", exc)
            return None
        previous_fd = signal.set_wakeup_fd(guard._writer.fileno(), warn_on_full_buffer=False)
        if previous_fd != -1:
            signal.set_wakeup_fd(previous_fd)
            guard._close_sockets()
            return None
        for signum in signums:
            guard._old[signum] = signal.signal(signum, guard._handler)
        poller = sched._poller
        if poller is not None:
            guard.watch(poller)
        return guard

    def watch(self, poller: Poller) -> None:
        """Put the wake-up socket in ``poller`` (the scheduler calls this
        when it makes its poller after ``install``)."""
        poller.register(self._reader.fileno(), select.EPOLLIN, self._on_readable)
        self._poller = poller

    def uninstall(self) -> None:
        """Put back the handlers and the wake-up fd found at install (those
        someone replaced since are left alone) and close the socket pair."""
        for signum, old in self._old.items():
            if signal.getsignal(signum) is self._handler:
                signal.signal(signum, old)
        self._old.clear()
        fd = signal.set_wakeup_fd(-1)
        if fd != self._writer.fileno():
            signal.set_wakeup_fd(fd)
        if self._poller is not None:
            try:
                self._poller.unregister(self._reader.fileno())
            except (OSError, ValueError):
                pass  # the poller was closed with the scheduler
            self._poller = None
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._reader.close()
        self._writer.close()

    # -- in the signal handler: note, wake, never touch the scheduler ----------
    def _on_signal(self, signum: int, frame: Any) -> None:
        now = self._sched.clock.now()
        last, self._last = self._last, now
        forced = self.forced or self._main._coro is None or (last is not None and now - last < FORCE_WINDOW)
        if forced:
            self.forced = True
        else:
            self._received.append(signum)
        try:
            self._writer.send(b"\0")  # wakes the poll even if another wake-up fd replaced ours
        except OSError:
            pass  # full: a wake-up is pending anyway
        if forced:
            # Out at once, from wherever the main OS thread is. Should a
            # thread's code catch it and wait on, the wake-up above makes
            # the scheduler raise it again from its poll.
            self._signum = signum
            raise signal_exception(signum)
        if self._idling:
            self._idling = False
            raise _Wakeup()

    # -- in the scheduler --------------------------------------------------------
    def _on_readable(self, events: int) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass  # drained
        self._deliver()

    def _deliver(self) -> None:
        if self.forced:
            raise signal_exception(self._signum)
        received = self._received
        while received:
            signum = received.pop(0)
            self._sched._cancel_thread(self._main, signal_exception(signum))

    def idle(self, clock: Clock, seconds: float) -> None:
        """``clock.idle(seconds)`` that a signal ends early (the scheduler
        has no poller), then the delivery of what arrived."""
        try:
            self._idling = True
            if not self._received:
                clock.idle(seconds)
            self._idling = False
        except _Wakeup:
            pass
        if self._received or self.forced:
            self._deliver()
