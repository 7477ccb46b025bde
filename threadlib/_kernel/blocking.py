"""The blocking pool: ``Blocking(func, args)`` on a pool of OS threads.

For calls that cannot be made non-blocking (getaddrinfo, a C library call,
a stat on a slow disk). The OS threads run only ``func``; completions come
back through a deque and an eventfd in the scheduler's poller, so the
scheduler never waits on a lock.
"""

from __future__ import annotations

import collections
import os
import select
import threading
from typing import TYPE_CHECKING, Any

from ..syscalls import Blocking
from .threads import Thread
from .worker import Handler, Worker

if TYPE_CHECKING:
    from .scheduler import Scheduler


class BlockingPool(Worker):
    """``Blocking(func, args)``: run a blocking call on a pool of OS threads.

    Completions are handed back through a deque and an eventfd in the
    scheduler's epoll, so the scheduler never waits on a lock. Threads are
    started on first use. A cancelled caller's call still runs to the end
    (an OS thread cannot be interrupted); its result is dropped.
    """

    def __init__(self, max_threads: int = 16) -> None:
        self.max_threads = max_threads
        self._jobs: Any = None
        # (thread, syscall, (ok, result or exception)) from the OS threads
        self._done: collections.deque[tuple[Thread, Blocking, tuple[bool, Any]]] = collections.deque()
        self._os_threads: list[threading.Thread] = []
        # Calls handed over and not yet delivered back (queued, running, or
        # done and waiting in _done); only the scheduler's thread changes it.
        self._pending = 0
        self._efd = -1
        # Guards _efd against close(): an OS thread still running a call the
        # caller gave up on would otherwise write its wake-up into whatever
        # fd next gets that number (a socket of the next server, say).
        self._efd_lock = threading.Lock()

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Serve ``Blocking``; the OS threads and the eventfd come at first use."""
        self._sched = sched
        return {Blocking: self._blocking}

    def _start(self) -> None:
        import queue

        self._jobs = queue.SimpleQueue()
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sched.watch_fd(self._efd, select.EPOLLIN, self._on_done)

    def _blocking(self, thread: Thread, sc: Blocking) -> None:
        if self._jobs is None:
            self._start()
        self._sched.suspend(thread, sc)
        self._pending += 1
        # An OS thread runs one call at a time, so while there are no more
        # calls outstanding than OS threads, every queued call has a thread
        # free to take it: a call that waits for another one never waits
        # behind it.  Counted here, on the scheduler's thread alone (a count
        # of idle threads kept by the OS threads themselves lags behind: a
        # burst of calls then started one thread and queued the rest behind
        # the first).  Past max_threads, calls queue.
        threads = len(self._os_threads)
        if self._pending > threads and threads < self.max_threads:
            t = threading.Thread(target=self._serve, name="threadlib-blocking", daemon=True)
            self._os_threads.append(t)
            t.start()
        self._jobs.put((thread, sc))

    def _serve(self) -> None:
        jobs = self._jobs
        done = self._done
        efd_lock = self._efd_lock
        while True:
            job = jobs.get()
            if job is None:
                return
            thread, sc = job
            try:
                ctx = sc.context
                outcome = (True, sc.func(*sc.args) if ctx is None else ctx.run(sc.func, *sc.args))
            except BaseException as exc:  # handed to the caller, not swallowed
                outcome = (False, exc)
            done.append((thread, sc, outcome))
            with efd_lock:
                if self._efd < 0:
                    return  # the pool closed while the call ran: nobody waits for it
                os.eventfd_write(self._efd, 1)

    def _on_done(self, events: int) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        done = self._done
        sched = self._sched
        while done:
            thread, sc, (ok, value) = done.popleft()
            self._pending -= 1
            if thread._wait is not sc:
                continue  # the caller was cancelled or timed out
            if ok:
                sched.resume(thread, value)
            else:
                sched.throw(thread, value)

    def busy(self) -> bool:
        """Whether a call is queued or running (its caller may be waiting)."""
        return self._pending > 0

    def close(self) -> None:
        """Tell the OS threads to stop once idle (a running call is not
        interrupted; the threads are daemons) and close the eventfd."""
        if self._jobs is not None:
            for _ in self._os_threads:
                self._jobs.put(None)
            self._sched.unwatch_fd(self._efd)
            with self._efd_lock:
                os.close(self._efd)
                self._efd = -1
            self._jobs = None
