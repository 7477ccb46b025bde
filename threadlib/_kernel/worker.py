"""The worker contract: how an event source plugs into the scheduler.

This is the one place the contract is written down; ``docs/design.md``
tours it with examples. A *worker* is an event loop the scheduler is
assembled from (timers, fd readiness, a blocking-call pool, Linux AIO, a
user-level TCP stack, a simulated network). The scheduler knows workers only
through the methods below.

Life cycle
    ``Scheduler(workers=[...])`` or ``sched.add_worker(w)`` calls
    ``w.attach(sched)`` once. When the scheduler ends it calls ``w.close()``
    (in reverse order of attaching). A worker serves one scheduler.

``attach(sched) -> {SystemCallClass: handler}``
    The system call classes this worker serves, each with a handler
    ``handler(thread, syscall)``. A class is served by exactly one worker
    (attaching a second one raises ``ValueError``). Other code finds the
    worker with ``sched.worker_for(SyscallClass)`` or ``sched.worker(Class)``;
    the scheduler has no named slots for workers. ``attach`` may also call
    ``sched.watch_fd`` (which puts the fd in the scheduler's poller),
    ``sched.use_poller`` (to provide the idle wait itself, before any fd is
    watched) and ``sched.call_at`` (a timer).

A handler runs inside the scheduler, on the thread's behalf. It must
    * either resume the thread at once: ``sched.resume(thread, value)``;
    * or refuse the call: ``sched.throw(thread, exc)`` with an exception that
      names what the caller got wrong (a closed fd, a bad argument, a second
      reader), and return;
    * or suspend it: ``sched.suspend(thread, syscall)``, remember it, and
      later ``sched.resume``/``sched.throw`` it from an event (an fd
      callback, ``expire``). ``suspend`` may raise (a cancel or timeout that
      was pending for this thread): let that propagate, after which the
      thread is withdrawn from this worker like any interrupted wait, so
      call ``suspend`` before recording the thread anywhere, or make
      ``withdraw`` undo what was recorded.
    A handler never blocks and never runs user code. Any other exception that
    escapes a handler is a bug in the worker, not the caller's fault: the
    scheduler logs it as an internal error naming the worker and the system
    call, and the thread's wait raises ``WorkerError`` (chained to it).

``withdraw(thread, syscall)``
    The thread, suspended in ``syscall`` by this worker, was cancelled or
    timed out: forget it. Never resume it afterwards (check
    ``thread.waiting_on is syscall`` before resuming from a late event).
    Must not raise.

``next_deadline() -> float | None`` and ``expire(now)``
    When the worker next needs the CPU, on the scheduler's clock (``-inf``
    for "at once", e.g. work left over from a bounded batch), or None.
    ``expire(now)`` is called once ``now`` has reached it.

``busy() -> bool``
    Whether this worker may still wake a thread without any thread acting
    (a pending timer, an fd waiter, a call running in the pool). Used only
    to tell a deadlock from idling: when no thread is ready and no worker is
    busy, every live thread waits for another thread. The base class says
    True (a worker that cannot tell might wake someone), which turns
    deadlock detection off while it is attached: override it.

``forget_fd(fd)`` (optional)
    A worker that tracks fds defines it; ``sched.forget_fd(fd)``, which
    sockio calls before closing an fd, calls it on every such worker so a
    later fd with the same number does not meet stale waiters. Threads
    waiting on ``fd`` get ``OSError(EBADF)``.

``close()``
    The scheduler has ended: release fds and OS threads. Must not raise.

Thread state
    A worker reads a thread only through ``thread.waiting_on`` (the system
    call it waits in, or None) and ``thread.deadline``, and changes it only
    through the scheduler. The standard workers in this package inline
    ``Scheduler.resume`` on their hot paths; that is the kernel's privilege.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .threads import Thread

Handler = Callable[["Thread", Any], None]


class WorkerError(RuntimeError):
    """A worker failed while serving a thread's system call.

    Raised at the thread's wait; ``__cause__`` is the worker's exception.
    The thread did nothing wrong: the scheduler has logged the failure as an
    internal error of the worker."""


class Worker:
    """Base class with the contract's defaults: serves nothing, no
    deadline, and busy (override ``busy`` so deadlocks can be detected).
    See the module docstring for the contract."""

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Called once when added to ``sched``; return the handlers."""
        return {}

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """Forget ``thread``, which was suspended in ``syscall``."""

    def next_deadline(self) -> float | None:
        """When this worker next needs the CPU (scheduler clock), or None."""
        return None

    def expire(self, now: float) -> None:
        """Called when ``now`` has reached :meth:`next_deadline`."""

    def busy(self) -> bool:
        """Whether this worker may still wake a thread. Used only to tell a
        deadlock (nothing ready, nothing pending) from idling."""
        return True

    def close(self) -> None:
        """The scheduler has ended; release resources."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class Poller(Protocol):
    """Where the scheduler idles: fd readiness with callbacks.

    The default is ``EpollPoller``, created when the first fd is watched; a
    scheduler whose workers watch no fds has none and idles on its clock. A
    worker may provide its own (an io_uring ring, a simulated fabric) with
    ``sched.use_poller``."""

    def register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        """Watch ``fd`` for ``events``; ``callback(events)`` runs when it fires."""

    def modify(self, fd: int, events: int) -> None:
        """Change the events watched on a registered fd."""

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (quietly if it is not watched)."""

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds (negative: until an event; 0: never
        wait), run the callbacks of what fired, return how many fired."""

    def close(self) -> None:
        """Release the poller."""
