"""The fd readiness worker: ``WaitRead``/``WaitWrite`` on any fd.

It registers each fd once, edge-triggered, in the scheduler's poller and
keeps one reader and one writer slot per fd. It is the hot path of every
kernel-socket wait, so it inlines ``Scheduler.resume``. It never does IO
on the fds it watches.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any

from ..syscalls import WaitRead, WaitWrite
from .compiled import speedups
from .threads import Thread
from .worker import Handler, Worker

if TYPE_CHECKING:
    from .scheduler import Scheduler


class IOWorker(Worker):
    """WaitRead/WaitWrite on any fd, through the scheduler's epoll.

    An fd is registered once, edge-triggered, and stays registered until
    ``forget_fd`` (sockio calls it on close), so waiting to read costs no
    epoll_ctl: the fast path is "try the operation, and on EAGAIN record the
    thread in the fd's slot". EPOLLOUT is added only while a writer waits
    (and dropped at the first write-space event nobody waits for): with it
    always on, every ACK the peer sends would wake the scheduler for nothing.

    An edge that arrives while nobody waits is remembered (``read_ready``)
    and satisfies the next WaitRead at once. That makes it safe for a reader
    to skip the attempt that would only fail with EAGAIN (after a short
    read, say) and wait straight away: no edge is lost. A wait resumes with
    the epoll event mask, so the reader can tell a hang-up (EOF, error:
    states that raise no further edge) and stop taking that shortcut.
    """

    def __init__(self) -> None:
        self._fds: dict[int, _FdWaiters] = {}
        # Threads in reader or writer slots, kept as they come and go so
        # that busy() (asked at every idle poll) never scans the fds.
        self.waiting = 0

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Serve ``WaitRead`` and ``WaitWrite``; fds are registered at their first wait."""
        self._sched = sched
        return {WaitRead: self._wait_read, WaitWrite: self._wait_write}

    def _record(self, fd: int) -> _FdWaiters:
        rec = self._fds.get(fd)
        if rec is None:
            rec = _Record(self._sched, self, fd)
            self._sched.watch_fd(fd, _EDGE_READ, rec.on_events)
            self._fds[fd] = rec
        return rec

    def _wait_read(self, thread: Thread, sc: Any) -> None:
        rec = self._fds.get(sc.fd) or self._record(sc.fd)
        if rec.reader is not None:
            self._sched.throw(thread, RuntimeError(f"fd {sc.fd} already has a reader waiting: {rec.reader!r}"))
            return
        ready = rec.read_ready
        sched = self._sched
        if ready:
            rec.read_ready = 0
            sched.resume(thread, ready)
            return
        rec.reader = thread
        self.waiting += 1
        # Scheduler.suspend, inlined for the common case (no timeout, no
        # pending cancel): this is every socket read that has to wait.
        if sched._pending or thread._scope is not None:
            sched.suspend(thread, sc)
        else:
            thread._wait = sc

    def _wait_write(self, thread: Thread, sc: Any) -> None:
        rec = self._fds.get(sc.fd) or self._record(sc.fd)
        if rec.writer is not None:
            self._sched.throw(thread, RuntimeError(f"fd {sc.fd} already has a writer waiting: {rec.writer!r}"))
            return
        if not rec.watching_out:
            rec.watching_out = True
            # MOD re-checks readiness: if the fd is writable already, the
            # event is queued at once, so nothing is missed.
            self._sched.modify_fd(sc.fd, _EDGE_BOTH)
        rec.writer = thread
        self.waiting += 1
        self._sched.suspend(thread, sc)

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """Free the fd's reader or writer slot the thread held (the fd stays registered)."""
        rec = self._fds.get(syscall.fd)
        if rec is not None:
            if rec.reader is thread:
                rec.reader = None
                self.waiting -= 1
            if rec.writer is thread:
                rec.writer = None
                self.waiting -= 1

    def forget_fd(self, fd: int) -> None:
        """Stop watching ``fd`` (call before closing it). Threads still
        waiting on it get OSError(EBADF)."""
        rec = self._fds.pop(fd, None)
        if rec is None:
            return
        self._sched.unwatch_fd(fd)
        for t in (rec.reader, rec.writer):
            if t is not None:
                self.waiting -= 1
                self._sched.throw(t, OSError(9, f"fd {fd} was closed while a thread waited on it"))

    def busy(self) -> bool:
        """Whether any thread waits on an fd."""
        return self.waiting > 0


_EDGE_READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_EDGE_BOTH = _EDGE_READ | select.EPOLLOUT
_READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


class _FdWaiters:
    __slots__ = ("reader", "writer", "read_ready", "watching_out", "fd", "sched", "ready_append", "worker")

    def __init__(self, sched: Scheduler, worker: IOWorker, fd: int) -> None:
        self.worker = worker
        self.ready_append = sched._ready.append
        self.reader: Thread | None = None
        self.writer: Thread | None = None
        self.read_ready = 0  # events that arrived while no reader waited
        self.watching_out = False
        self.fd = fd
        self.sched = sched

    def on_events(self, events: int) -> None:
        if events & _READ_EVENTS:
            t = self.reader
            if t is not None:
                self.reader = None
                self.worker.waiting -= 1
                if t._scope is None:  # Scheduler.resume, inlined (no timer to disarm)
                    t._value = events
                    t._wait = None
                    self.ready_append(t)
                else:
                    self.sched.resume(t, events)
            else:
                self.read_ready |= events
        if events & _WRITE_EVENTS and self.watching_out:
            t = self.writer
            if t is not None:
                self.writer = None
                self.worker.waiting -= 1
                self.sched.resume(t, events)
            elif events & select.EPOLLOUT:
                self.watching_out = False
                self.sched.modify_fd(self.fd, _EDGE_READ)


# The record in use: _FdWaiters itself, or its compiled twin (_speedups.c,
# same fields, on_events in C) unless the pure-Python path is chosen.
_Record: Any = speedups.FdWaiters if speedups is not None else _FdWaiters
