"""The kernel: threads, the scheduler, and the handful of system calls that
only the scheduler can serve.

Design principles (in the spirit of curio's kernel):

1. A thread is a generator (or an ``async def`` coroutine, or anything with
   ``send``/``throw``). It runs until it yields a system call: a plain data
   object from :mod:`threadlib.syscalls`.
2. The scheduler knows almost nothing. It owns the ready queue, the clock,
   one epoll instance, and a dispatch table ``type(syscall) -> handler``
   built from the workers it was given. Everything that waits on the
   outside world (timers, sockets, disk, a thread pool, a TCP stack) is a
   worker. Adding a system call or an event source never edits this file.
3. A waiting thread costs as little as possible: a Thread object with a few
   slots and its generator frame. Waits are withdrawn, not polled.
4. Exceptions travel both ways. A worker resumes a thread with a value or
   throws an exception into it; an exception a thread does not catch ends
   that thread only, is kept for whoever joins it, and is logged once if
   nobody ever does.
5. Timeouts and cancellation are one mechanism: the wait is withdrawn from
   the worker that owns it and an exception is thrown at the wait.

This module must never do IO itself beyond the one ``epoll_wait`` that idles
the process, and never block anywhere else.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import select
import threading
import time
import types
from typing import Any, Callable, Iterable

from iolib.epoll import Epoll
from .syscalls import (
    GET_CURRENT,
    GET_SCHEDULER,
    YIELD,
    Blocking,
    Cancel,
    GetCurrent,
    GetScheduler,
    Join,
    JoinAny,
    Park,
    Sleep,
    Spawn,
    SystemCall,
    Unpark,
    Yield,
)

log = logging.getLogger("threadlib")

__all__ = [
    "Thread",
    "ThreadCancelled",
    "Scheduler",
    "Worker",
    "WaitQueue",
    "MonotonicClock",
    "VirtualClock",
    "current_scheduler",
]


class ThreadCancelled(BaseException):
    """Thrown into a thread at its current wait when it is cancelled.

    A BaseException, like asyncio.CancelledError, so that ``except
    Exception`` in user code does not swallow it by accident.
    """


# ---------------------------------------------------------------------------
# Clocks. The scheduler owns the clock; timers, deadlines and threadlib.now()
# read only this, so a virtual clock makes a run independent of wall time.


class MonotonicClock:
    """Real time: ``time.monotonic``. The scheduler sleeps in epoll_wait."""

    virtual = False

    def __init__(self) -> None:
        self.now = time.monotonic


class VirtualClock:
    """Simulated time. It stands still while threads run and jumps to the
    next deadline when every thread waits, so a run with timers takes no
    wall time and is repeatable."""

    virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance_to(self, when: float) -> None:
        if when > self._now:
            self._now = when


# ---------------------------------------------------------------------------
# Threads


class Thread:
    """A user-level thread: a generator plus the little the scheduler needs.

    Slots, not a dict: ten million blocked threads must fit in a few GiB.
    ``_wait`` is the system call the thread is blocked in (None while ready
    or running); after the thread ends it is reused to hold the reporter of
    an exception nobody has retrieved yet.
    """

    __slots__ = ("_coro", "_value", "_exc", "_wait", "deadline", "_id", "_name", "_prev", "_next")

    def __init__(self, coro: Any, name: str | None) -> None:
        self._coro = coro
        self._value = None
        self._exc = None
        self._wait = None
        self.deadline = None  # absolute clock time of the innermost timeout scope
        self._id = None
        self._name = name

    @property
    def id(self) -> int:
        """A process-wide unique number, given when first asked for (an int
        object per thread would cost a blocked thread 32 bytes more)."""
        tid = self._id
        if tid is None:
            tid = self._id = next(_thread_ids)
        return tid

    # -- introspection ----------------------------------------------------
    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        coro = self._coro
        qualname = getattr(coro, "__qualname__", None) if coro is not None else None
        return f"{qualname or 'thread'}-{self.id}"

    @property
    def done(self) -> bool:
        return self._coro is None

    @property
    def waiting_on(self) -> SystemCall | None:
        """The system call this thread is blocked in, or None."""
        wait = self._wait
        return wait if isinstance(wait, SystemCall) else None

    @property
    def state(self) -> str:
        if self._coro is None:
            if self._exc is None:
                return "done"
            return "cancelled" if isinstance(self._exc, ThreadCancelled) else "failed"
        return "waiting" if self._wait is not None else "ready"

    def result(self) -> Any:
        """The thread's return value; raises its exception. Only once done."""
        if self._coro is not None:
            raise RuntimeError(f"{self!r} has not ended yet")
        exc = self._exc
        if exc is not None:
            _mark_retrieved(self)
            raise exc
        return self._value

    def __repr__(self) -> str:
        wait = self.waiting_on
        extra = f" on {wait!r}" if wait is not None else ""
        return f"<Thread {self.id} {self.name!r} {self.state}{extra}>"

    # -- blocking operations, usable with yield from and await -------------
    @types.coroutine
    def join(self) -> Any:
        """Wait for the thread to end; return its result or raise its exception."""
        return (yield Join(self))

    @types.coroutine
    def cancel(self) -> Any:
        """Deliver ThreadCancelled at the thread's wait and wait until it has
        ended. Returns True if the thread was still running."""
        if self._coro is None:
            return False
        yield Cancel(self)
        try:
            yield Join(self)
        except BaseException:
            pass  # ThreadCancelled, as asked; anything else it died of is its joiner's news
        return True

    @types.coroutine
    def wait(self) -> None:
        """Wait for the thread to end without taking its result or exception."""
        if self._coro is None:
            return
        yield JoinAny((self,))


_thread_ids = itertools.count(1)
_COROUTINE_TYPES = (types.GeneratorType, types.CoroutineType)


class _Unretrieved:
    """Logs a thread's exception when it is dropped without anyone having
    seen it: the "logged once if nobody joins" rule, paid only by threads
    that failed."""

    __slots__ = ("thread_name", "exc")

    def __init__(self, thread_name: str, exc: BaseException) -> None:
        self.thread_name = thread_name
        self.exc = exc

    def __del__(self) -> None:
        exc = self.exc
        if exc is not None:
            self.exc = None
            log.error(
                "thread %s ended with an exception nobody joined",
                self.thread_name,
                exc_info=(type(exc), exc, exc.__traceback__),
            )


def _mark_retrieved(thread: Thread) -> None:
    reporter = thread._wait
    if type(reporter) is _Unretrieved:
        reporter.exc = None
        thread._wait = None


# ---------------------------------------------------------------------------
# Wait queues: the Park/Unpark primitive every sync object is made of.


class ParkOnce:
    """An awaitable that yields one system call and returns None.

    ``yield from`` and ``await`` both accept it; iterating it costs a tuple
    iterator (48 bytes) where a generator would cost a frame (~200)."""

    __slots__ = ("_step",)

    def __init__(self, syscall: Any) -> None:
        self._step = (syscall,)

    def __iter__(self) -> Any:
        return iter(self._step)

    __await__ = __iter__


class _Done:
    """An awaitable that completes at once with None."""

    __slots__ = ()

    def __iter__(self) -> Any:
        return iter(())

    __await__ = __iter__


DONE = _Done()


class WaitQueue:
    """A FIFO of parked threads. ``yield queue.park`` waits in it; plain
    ``wake_one``/``wake_all`` calls (no yield) make waiters ready.

    Withdrawn waiters (cancelled, timed out) are not searched for and
    removed: they are skipped when popped, and the deque is compacted when
    they pile up, so cancelling any number of waiters stays O(1) each.
    """

    __slots__ = ("_waiters", "park", "parked", "_stale", "_sched")

    def __init__(self) -> None:
        self._waiters: collections.deque[Thread] = collections.deque()
        self.park = Park(self)
        # ``yield from queue.parked`` / ``await queue.parked``: park once,
        # return None. A tuple iterator instead of a generator frame keeps a
        # parked thread ~150 bytes smaller.
        self.parked = ParkOnce(self.park)
        self._stale = 0
        self._sched: Scheduler | None = None  # set by the first park: a queue lives in one scheduler

    def has_waiters(self) -> bool:
        """Cheap and possibly stale-positive; wake_one tells for sure."""
        return bool(self._waiters)

    def __len__(self) -> int:
        return len(self._waiters) - self._stale

    def __bool__(self) -> bool:
        return len(self._waiters) > self._stale

    def _withdrawn(self) -> None:
        self._stale += 1
        waiters = self._waiters
        if self._stale > 64 and self._stale * 2 > len(waiters):
            park = self.park
            seen: set[int] = set()
            live = collections.deque()
            for t in waiters:
                if t._wait is park and id(t) not in seen:
                    seen.add(id(t))
                    live.append(t)
            self._waiters = live
            self._stale = 0

    def wake_one(self, value: Any = None) -> Thread | None:
        """Make the longest-waiting thread ready with ``value``; return it."""
        waiters = self._waiters
        park = self.park
        while waiters:
            t = waiters.popleft()
            if t._wait is park:
                # Scheduler.resume, inlined: every lock and queue hand-off comes here.
                t._value = value
                t._wait = None
                sched = self._sched
                if t.deadline is not None:
                    sched._disarm_timeout(t)
                sched._ready.append(t)
                return t
            self._stale -= 1
        return None

    def wake_all(self, value: Any = None) -> int:
        waiters = self._waiters
        self._waiters = collections.deque()
        self._stale = 0
        if not waiters:
            return 0
        park = self.park
        resume = self._sched.resume
        woken = 0
        for t in waiters:
            if t._wait is park:
                resume(t, value)
                woken += 1
        return woken

    def throw_one(self, exc: BaseException) -> Thread | None:
        """Wake the longest-waiting thread by raising ``exc`` at its wait."""
        waiters = self._waiters
        park = self.park
        while waiters:
            t = waiters.popleft()
            if t._wait is park:
                self._sched.throw(t, exc)
                return t
            self._stale -= 1
        return None


# ---------------------------------------------------------------------------
# Workers


class Worker:
    """An event loop the scheduler is assembled from.

    A worker says which system calls it serves by returning handlers from
    :meth:`attach`; it may put fds into the scheduler's epoll
    (``sched.watch_fd``) and say when it next needs the CPU
    (:meth:`next_deadline`, then :meth:`expire`). A handler either resumes
    the thread at once (``sched.resume``) or suspends it
    (``sched.suspend``) and resumes it later; when a suspended thread is
    cancelled or times out, the scheduler calls :meth:`withdraw` so the
    worker forgets it.
    """

    def attach(self, sched: "Scheduler") -> dict[type, Callable[[Thread, Any], None]]:
        return {}

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """Forget ``thread``, which was suspended in ``syscall``."""

    def next_deadline(self) -> float | None:
        return None

    def expire(self, now: float) -> None:
        """Called when ``now`` has reached :meth:`next_deadline`."""

    def busy(self) -> bool:
        """Whether this worker may still wake a thread. Used only to tell a
        deadlock (nothing ready, nothing pending) from idling."""
        return True

    def close(self) -> None:
        pass


_WAKE_SLEEPER = object()  # marks heap entries of sleeping threads


class TimerWorker(Worker):
    """Sleep, and deadlines for everyone: a heap of timers.

    Entries are lists ``[when, seq, callback, arg]``; cancelling a timer
    blanks its callback and leaves the entry to be popped (lazy deletion),
    and the heap is rebuilt when dead entries outnumber live ones.
    """

    def __init__(self) -> None:
        self._heap: list[list] = []
        self._seq = itertools.count()
        self._dead = 0

    def attach(self, sched: "Scheduler") -> dict:
        self._sched = sched
        sched.timers = self
        return {Sleep: self._sleep}

    def call_at(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> list:
        """Run ``callback(arg)`` once the clock reaches ``when``; returns a
        handle for :meth:`cancel`."""
        entry = [when, next(self._seq), callback, arg]
        heapq.heappush(self._heap, entry)
        return entry

    def cancel(self, entry: list) -> None:
        if entry[2] is not None:
            entry[2] = None
            entry[3] = None
            self._dead += 1
            heap = self._heap
            if self._dead > 1024 and self._dead * 2 > len(heap):
                self._heap = [e for e in heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._dead = 0

    def _sleep(self, thread: Thread, sc: Sleep) -> None:
        sched = self._sched
        sched.suspend(thread, sc)
        deadline = sched.clock.now() + sc.seconds
        heapq.heappush(self._heap, [deadline, next(self._seq), _WAKE_SLEEPER, thread, sc])

    # withdraw() stays the base no-op: a withdrawn sleeper's heap entry finds
    # the thread no longer in that Sleep when it fires, and does nothing.

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def expire(self, now: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        resume = self._sched.resume
        while heap and heap[0][0] <= now:
            entry = pop(heap)
            callback = entry[2]
            if callback is _WAKE_SLEEPER:
                # Wake only if the thread still sleeps in the Sleep this
                # entry was made for (it may have been cancelled since).
                thread = entry[3]
                if thread._wait is entry[4]:
                    resume(thread)
            elif callback is None:
                self._dead -= 1
            else:
                callback(entry[3])

    def busy(self) -> bool:
        return self.next_deadline() is not None


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

    def attach(self, sched: "Scheduler") -> dict:
        self._sched = sched
        sched.io = self
        from .syscalls import WaitRead, WaitWrite

        return {WaitRead: self._wait_read, WaitWrite: self._wait_write}

    def _record(self, fd: int) -> "_FdWaiters":
        rec = self._fds.get(fd)
        if rec is None:
            rec = _FdWaiters(self._sched, fd)
            self._sched.watch_fd(fd, _EDGE_READ, rec.on_events)
            self._fds[fd] = rec
        return rec

    def _wait_read(self, thread: Thread, sc: Any) -> None:
        rec = self._fds.get(sc.fd) or self._record(sc.fd)
        if rec.reader is not None:
            raise RuntimeError(f"fd {sc.fd} already has a reader waiting: {rec.reader!r}")
        ready = rec.read_ready
        sched = self._sched
        if ready:
            rec.read_ready = 0
            sched.resume(thread, ready)
            return
        rec.reader = thread
        # Scheduler.suspend, inlined for the common case (no timeout, no
        # pending cancel): this is every socket read that has to wait.
        if sched._pending or thread.deadline is not None:
            sched.suspend(thread, sc)
        else:
            thread._wait = sc

    def _wait_write(self, thread: Thread, sc: Any) -> None:
        rec = self._fds.get(sc.fd) or self._record(sc.fd)
        if rec.writer is not None:
            raise RuntimeError(f"fd {sc.fd} already has a writer waiting: {rec.writer!r}")
        if not rec.watching_out:
            rec.watching_out = True
            # MOD re-checks readiness: if the fd is writable already, the
            # event is queued at once, so nothing is missed.
            self._sched.modify_fd(sc.fd, _EDGE_BOTH)
        rec.writer = thread
        self._sched.suspend(thread, sc)

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        rec = self._fds.get(syscall.fd)
        if rec is not None:
            if rec.reader is thread:
                rec.reader = None
            if rec.writer is thread:
                rec.writer = None

    def forget_fd(self, fd: int) -> None:
        """Stop watching ``fd`` (call before closing it). Threads still
        waiting on it get OSError(EBADF)."""
        rec = self._fds.pop(fd, None)
        if rec is None:
            return
        self._sched.unwatch_fd(fd)
        for t in (rec.reader, rec.writer):
            if t is not None:
                self._sched.throw(t, OSError(9, f"fd {fd} was closed while a thread waited on it"))

    def busy(self) -> bool:
        return any(r.reader is not None or r.writer is not None for r in self._fds.values())


_EDGE_READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_EDGE_BOTH = _EDGE_READ | select.EPOLLOUT
_READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


class _FdWaiters:
    __slots__ = ("reader", "writer", "read_ready", "watching_out", "fd", "sched", "ready_append")

    def __init__(self, sched: "Scheduler", fd: int) -> None:
        self.ready_append = sched._ready.append
        self.reader = None
        self.writer = None
        self.read_ready = 0  # events that arrived while no reader waited
        self.watching_out = False
        self.fd = fd
        self.sched = sched

    def on_events(self, events: int) -> None:
        if events & _READ_EVENTS:
            t = self.reader
            if t is not None:
                self.reader = None
                if t.deadline is None:  # Scheduler.resume, inlined
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
                self.sched.resume(t, events)
            elif events & select.EPOLLOUT:
                self.watching_out = False
                self.sched.modify_fd(self.fd, _EDGE_READ)


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
        self._done: collections.deque = collections.deque()
        self._os_threads: list[threading.Thread] = []
        self._idle = 0
        self._pending = 0
        self._efd = -1

    def attach(self, sched: "Scheduler") -> dict:
        self._sched = sched
        sched.pool = self
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
        if self._idle == 0 and len(self._os_threads) < self.max_threads:
            t = threading.Thread(target=self._serve, name="threadlib-blocking", daemon=True)
            self._os_threads.append(t)
            self._idle += 1
            t.start()
        self._jobs.put((thread, sc))

    def _serve(self) -> None:
        jobs = self._jobs
        done = self._done
        efd = self._efd
        while True:
            job = jobs.get()
            if job is None:
                return
            self._idle -= 1  # racy by design: only a hint for spawning more OS threads
            thread, sc = job
            try:
                outcome = (True, sc.func(*sc.args))
            except BaseException as exc:  # handed to the caller, not swallowed
                outcome = (False, exc)
            done.append((thread, sc, outcome))
            self._idle += 1
            try:
                os.eventfd_write(efd, 1)
            except OSError:
                return  # pool closed while the call ran

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
        return self._pending > 0

    def close(self) -> None:
        if self._jobs is not None:
            for _ in self._os_threads:
                self._jobs.put(None)
            self._sched.unwatch_fd(self._efd)
            os.close(self._efd)
            self._jobs = None


# ---------------------------------------------------------------------------
# The scheduler

_local = threading.local()


def current_scheduler() -> "Scheduler | None":
    """The scheduler running in this OS thread, or None."""
    return getattr(_local, "scheduler", None)


def _running_scheduler() -> "Scheduler":
    sched = getattr(_local, "scheduler", None)
    if sched is None:
        raise RuntimeError("no threadlib scheduler is running in this OS thread")
    return sched


def default_workers() -> list[Worker]:
    return [TimerWorker(), IOWorker(), BlockingPool()]


class Scheduler:
    """Runs threads; idles in one epoll_wait bounded by the nearest deadline.

    ``Scheduler(workers=[...])`` builds its dispatch table from the workers'
    handlers. With no workers it uses the standard ones (timers, epoll IO,
    the blocking pool). A timer worker is always present because timeouts
    need one.
    """

    def __init__(self, workers: Iterable[Worker] | None = None, clock: Any = None) -> None:
        self.clock = clock or MonotonicClock()
        self.epoll = Epoll()
        self._fd_callbacks: dict[int, Callable[[int], None]] = {}
        self._ready: collections.deque[Thread] = collections.deque()
        self._joiners: dict[Thread, list] = {}
        self._timeouts: dict[Thread, list] = {}
        # Interrupts (cancel) aimed at a thread that is ready, not waiting:
        # delivered at its next wait, so the value it was resumed with (a
        # lock handed over, a queue item) is never lost.
        self._pending: dict[Thread, BaseException] = {}
        self.current: Thread | None = None
        self.timers: TimerWorker | None = None
        self.io: IOWorker | None = None
        self.pool: BlockingPool | None = None
        self.aio: Any = None  # threadlib.aioworker.AioWorker, when attached
        self.recorder: Any = None
        # The list of live threads is intrusive (Thread._prev/_next), so
        # listing costs two pointers per thread instead of a dict entry.
        self._head = Thread(None, "<head>")
        self._head._prev = self._head._next = self._head
        self._live = 0
        self._handlers: dict[type, Callable[[Thread, Any], None]] = {
            Yield: self._sys_yield,
            Spawn: self._sys_spawn,
            Join: self._sys_join,
            JoinAny: self._sys_join_any,
            Cancel: self._sys_cancel,
            Park: self._sys_park,
            Unpark: self._sys_unpark,
            GetCurrent: self._sys_get_current,
            GetScheduler: self._sys_get_scheduler,
        }
        # Joiners are not searched for when withdrawn: the joined thread's
        # end finds them no longer waiting and skips them.
        ignore = lambda thread, syscall: None
        self._withdrawers: dict[type, Callable[[Thread, Any], None]] = {
            Park: self._withdraw_park,
            Join: ignore,
            JoinAny: ignore,
        }
        self.workers: list[Worker] = []
        workers = default_workers() if workers is None else list(workers)
        if not any(isinstance(w, TimerWorker) for w in workers):
            workers.insert(0, TimerWorker())
        for worker in workers:
            self.add_worker(worker)

    # -- assembling ---------------------------------------------------------
    def add_worker(self, worker: Worker) -> None:
        """Attach a worker: its system calls join the dispatch table."""
        handlers = worker.attach(self) or {}
        for cls, handler in handlers.items():
            if cls in self._handlers:
                raise ValueError(f"{cls.__name__} is already served by another worker")
            self._handlers[cls] = handler
            self._withdrawers[cls] = worker.withdraw
        self.workers.append(worker)

    def watch_fd(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Put ``fd`` in the scheduler's epoll; ``callback(events)`` runs
        in the scheduler when it fires."""
        self.epoll.register(fd, events)
        self._fd_callbacks[fd] = callback

    def modify_fd(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def unwatch_fd(self, fd: int) -> None:
        if self._fd_callbacks.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def forget_fd(self, fd: int) -> None:
        """Call before closing an fd that threads may have waited on."""
        if self.io is not None:
            self.io.forget_fd(fd)

    def now(self) -> float:
        return self.clock.now()

    def call_at(self, when: float, callback: Callable[[Any], None], arg: Any = None) -> list:
        return self.timers.call_at(when, callback, arg)

    # -- the thread life cycle ----------------------------------------------
    def spawn(self, coro: Any, name: str | None = None) -> Thread:
        """Create a thread (from outside any thread, or from a handler)."""
        if type(coro) not in _COROUTINE_TYPES and not (hasattr(coro, "send") and hasattr(coro, "throw")):
            raise TypeError(
                f"a thread needs a generator or coroutine object, got {coro!r}"
                + (" (a function: call it first, or use spawn(func, *args))" if callable(coro) else "")
            )
        t = Thread(coro, name)
        head = self._head
        last = head._prev
        t._prev = last
        t._next = head
        last._next = t
        head._prev = t
        self._live += 1
        self._ready.append(t)
        return t

    def threads(self) -> list[Thread]:
        """Every live thread, oldest first (for debugging)."""
        out = []
        head = self._head
        t = head._next
        while t is not head:
            out.append(t)
            t = t._next
        return out

    def resume(self, thread: Thread, value: Any = None) -> None:
        """Make a suspended thread ready; its wait returns ``value``."""
        thread._value = value
        thread._wait = None
        if thread.deadline is not None:
            self._disarm_timeout(thread)
        self._ready.append(thread)

    def throw(self, thread: Thread, exc: BaseException) -> None:
        """Make a suspended thread ready; its wait raises ``exc``."""
        thread._exc = exc
        thread._wait = None
        if thread.deadline is not None:
            self._disarm_timeout(thread)
        self._ready.append(thread)

    def suspend(self, thread: Thread, syscall: Any) -> None:
        """Record that ``thread`` now waits in ``syscall`` (handlers call
        this). Arms the thread's timeout, if it is inside a timeout scope;
        raises a pending interrupt instead of waiting (the dispatcher then
        withdraws the wait and throws it into the thread)."""
        thread._wait = syscall
        if self._pending:
            exc = self._pending.pop(thread, None)
            if exc is not None:
                raise exc
        deadline = thread.deadline
        if deadline is not None:
            self._timeouts[thread] = self.timers.call_at(deadline, self._time_out, thread)

    def _disarm_timeout(self, thread: Thread) -> None:
        entry = self._timeouts.pop(thread, None)
        if entry is not None:
            self.timers.cancel(entry)

    def _time_out(self, thread: Thread) -> None:
        self._timeouts.pop(thread, None)
        if thread._wait is not None and thread._coro is not None:
            self.interrupt(thread, TimeoutError(f"timed out waiting on {thread._wait!r}"))

    def interrupt(self, thread: Thread, exc: BaseException) -> None:
        """Withdraw ``thread`` from whatever it waits on and raise ``exc``
        there. If it is ready or running, ``exc`` is raised at its next
        resumption instead of the value it was given."""
        if thread._coro is None:
            return
        wait = thread._wait
        if wait is None:
            self._pending[thread] = exc
            return
        self._withdrawers[type(wait)](thread, wait)
        self.throw(thread, exc)

    def _finish(self, t: Thread, value: Any, exc: BaseException | None) -> None:
        t._coro = None
        t._value = value
        t._exc = exc
        t._wait = None
        t._prev._next = t._next
        t._next._prev = t._prev
        t._prev = t._next = None
        self._live -= 1
        if t.deadline is not None:
            self._disarm_timeout(t)
        if self._pending:
            self._pending.pop(t, None)
        joiners = self._joiners.pop(t, None) if self._joiners else None
        if joiners:
            for j in joiners:
                if type(j) is Thread:
                    if type(j._wait) is Join and j._wait.thread is t:
                        if exc is None:
                            self.resume(j, value)
                        else:
                            self.throw(j, exc)
                else:
                    j(t)
        elif exc is not None and not isinstance(exc, ThreadCancelled):
            t._wait = _Unretrieved(t.name, exc)

    # -- the run loop ---------------------------------------------------------
    def run(self, main: Any, *args: Any) -> Any:
        """Run ``main`` (a generator, coroutine, or function plus args) as a
        thread until it ends; return its result or raise its exception.
        Threads still alive then are cancelled and run to their end."""
        if args or (callable(main) and not hasattr(main, "send")):
            main = main(*args)
        if getattr(_local, "scheduler", None) is not None:
            raise RuntimeError("a threadlib scheduler is already running in this OS thread")
        _local.scheduler = self
        try:
            main_thread = self.spawn(main, name="main")
            self._loop(main_thread)
            self._cancel_remaining()
            return main_thread.result()
        finally:
            _local.scheduler = None
            self.current = None

    def _loop(self, until: Thread) -> None:
        while until._coro is not None:
            self._run_ready()
            if until._coro is None:
                break
            self._poll()

    def _run_ready(self) -> None:
        ready = self._ready
        popleft = ready.popleft
        append = ready.append
        handlers = self._handlers
        recorder = self.recorder
        pending = self._pending
        stop = False
        while ready:
            t = popleft()
            self.current = t
            try:
                exc = t._exc
                if exc is None:
                    sc = t._coro.send(t._value)
                else:
                    t._exc = None
                    sc = t._coro.throw(exc)
            except StopIteration as e:
                self._finish(t, e.value, None)
                continue
            except (KeyboardInterrupt, SystemExit) as e:
                self._finish(t, None, e)
                stop = e
                break
            except BaseException as e:
                self._finish(t, None, e)
                continue
            if recorder is not None:
                recorder(t, sc)
            if sc is YIELD:
                t._value = None
                if pending and t in pending:
                    t._exc = pending.pop(t)
                append(t)
                continue
            try:
                handler = handlers[sc.__class__]
            except (KeyError, AttributeError, TypeError):
                handler = None
            if handler is None:
                t._value = None
                t._exc = TypeError(
                    f"thread {t.name} yielded {sc!r} ({type(sc).__name__}), which is not a "
                    f"system call this scheduler serves"
                    + ("; did you write `yield` where `yield from` was meant?" if not isinstance(sc, SystemCall) else "")
                )
                append(t)
                continue
            try:
                handler(t, sc)
            except BaseException as e:
                # A handler refused the call (bad argument, closed fd, ...):
                # the thread that asked gets the error at its yield.
                if t._wait is sc:
                    self._withdrawers[sc.__class__](t, sc)
                t._wait = None
                t._value = None
                t._exc = e
                append(t)
        self.current = None
        if stop:
            raise stop

    def _poll(self) -> None:
        clock = self.clock
        deadline = None
        for w in self.workers:
            d = w.next_deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        if self._ready:
            timeout = 0.0
        elif deadline is not None:
            timeout = max(0.0, deadline - clock.now())
            if clock.virtual:
                timeout = 0.0
        else:
            timeout = -1.0
            if not any(w.busy() for w in self.workers):
                self._deadlock()
                return
        events = self.epoll.poll(timeout)
        if events:
            callbacks = self._fd_callbacks
            for fd, ev in events:
                cb = callbacks.get(fd)
                if cb is not None:
                    cb(ev)
        if deadline is not None:
            if clock.virtual and not self._ready and not events:
                clock.advance_to(deadline)
            now = clock.now()
            for w in self.workers:
                d = w.next_deadline()
                if d is not None and d <= now:
                    w.expire(now)

    def _deadlock(self) -> None:
        """No thread is ready and no worker can ever wake one: every live
        thread waits on something only another thread could provide."""
        waiting = [t for t in self.threads() if t._wait is not None]
        summary = ", ".join(repr(t) for t in waiting[:5]) + (" ..." if len(waiting) > 5 else "")
        for t in waiting:
            if t._name == "main":
                self.interrupt(t, RuntimeError(f"deadlock: every thread waits forever: {summary}"))
                return
        raise RuntimeError(f"deadlock: every thread waits forever: {summary}")

    def _cancel_remaining(self) -> None:
        """Cancel every live thread so its finally blocks run, and let them
        finish (bounded: a thread that keeps waiting past a second is left)."""
        if not self._live:
            self._close_workers()
            return
        for t in self.threads():
            self.interrupt(t, ThreadCancelled())
        give_up = time.monotonic() + 1.0
        while self._live and time.monotonic() < give_up:
            self._run_ready()
            if not self._live:
                break
            if not self._ready and not any(w.busy() for w in self.workers):
                break
            self._poll()
        self._close_workers()

    def _close_workers(self) -> None:
        for w in reversed(self.workers):
            w.close()
        self.epoll.close()

    # -- the kernel's own system calls ----------------------------------------
    def _sys_yield(self, t: Thread, sc: Any) -> None:
        # The YIELD singleton is served inline by _run_ready; this serves
        # any other Yield instance a thread may build itself.
        t._value = None
        self._ready.append(t)

    def _sys_spawn(self, t: Thread, sc: Spawn) -> None:
        t._value = self.spawn(sc.coro, sc.name)
        self._ready.append(t)

    def _sys_get_current(self, t: Thread, sc: Any) -> None:
        t._value = t
        self._ready.append(t)

    def _sys_get_scheduler(self, t: Thread, sc: Any) -> None:
        t._value = self
        self._ready.append(t)

    def _sys_join(self, t: Thread, sc: Join) -> None:
        target = sc.thread
        if type(target) is not Thread:
            raise TypeError(f"join needs a Thread, got {target!r}")
        if target is t:
            raise RuntimeError(f"{t!r} cannot join itself")
        if target._coro is None:
            exc = target._exc
            if exc is None:
                self.resume(t, target._value)
            else:
                _mark_retrieved(target)
                self.throw(t, exc)
            return
        self.suspend(t, sc)
        self._joiners.setdefault(target, []).append(t)

    def _sys_join_any(self, t: Thread, sc: JoinAny) -> None:
        for target in sc.threads:
            if target._coro is None:
                self.resume(t, target)
                return

        def first_done(target: Thread, waiter: Thread = t, sc: JoinAny = sc) -> None:
            if waiter._wait is sc:
                self.resume(waiter, target)

        self.suspend(t, sc)
        for target in sc.threads:
            self._joiners.setdefault(target, []).append(first_done)

    def _sys_cancel(self, t: Thread, sc: Cancel) -> None:
        target = sc.thread
        if target is t:
            raise RuntimeError("a thread cannot cancel itself through Cancel; raise ThreadCancelled")
        self.interrupt(target, ThreadCancelled())
        self.resume(t)

    def _sys_park(self, t: Thread, sc: Park) -> None:
        queue = sc.queue
        queue._sched = self
        queue._waiters.append(t)
        if self._pending or t.deadline is not None:
            self.suspend(t, sc)
        else:
            t._wait = sc

    def _withdraw_park(self, t: Thread, sc: Park) -> None:
        sc.queue._withdrawn()

    def _sys_unpark(self, t: Thread, sc: Unpark) -> None:
        target = sc.thread
        if target._wait is not None and type(target._wait) is Park:
            queue = target._wait.queue
            queue._withdrawn()
            self.resume(target, sc.value)
        self.resume(t)
