"""The kernel: threads, wait queues, clocks, the scheduler and its standard
workers. Private: users import from ``threadlib``, extenders from
``threadlib.lowlevel``; ``docs/design.md`` is the tour.

One job per module:

=================  =========================================================
``threads``        Thread, ThreadCancelled: what the scheduler keeps per thread
``waitqueue``      WaitQueue: Park/Unpark, the primitive of every sync object
``clocks``         MonotonicClock, VirtualClock: the only readers of time
``worker``         the worker contract (Worker, Poller, WorkerError)
``scheduler``      Scheduler: ready queue, dispatch, idle wait, kernel calls
``scopes``         CancelScope, timeout: deadlines and cancellation of a block
``groups``         TaskGroup, task_group: children that cannot outlive a block
``interrupts``     ConsoleSignals: Ctrl-C/SIGTERM as a cancel of the main thread
``pollers``        EpollPoller: the default idle wait
``timers``         TimerWorker: Sleep, timeouts, call_at
``fdio``           IOWorker: WaitRead/WaitWrite on fds
``uring``          UringPoller, UringWorker, uring_workers: the io_uring ring as poller and file IO
``blocking``       BlockingPool: Blocking calls on OS threads
``introspect``     thread dumps, instruments, the slow-step detector
=================  =========================================================
"""

from .blocking import BlockingPool
from .clocks import MonotonicClock, VirtualClock
from .fdio import IOWorker
from .introspect import Instrument, SlowStepDetector
from .pollers import EpollPoller
from .scheduler import Scheduler, current_scheduler, default_workers, forget_fd, running_scheduler
from .threads import COROUTINE_TYPES, Thread, ThreadCancelled
from .timers import TimerWorker
from .uring import (UringPoller, UringUnavailable, UringWorker, io_backend, uring_unavailable_reason, uring_workers,
                    usable_io_backend)
from .waitqueue import DONE, ParkOnce, WaitQueue
from .worker import Poller, Worker, WorkerError

__all__ = [
    "BlockingPool", "MonotonicClock", "VirtualClock", "IOWorker", "EpollPoller", "Scheduler",
    "current_scheduler", "default_workers", "forget_fd", "running_scheduler", "COROUTINE_TYPES", "Thread",
    "ThreadCancelled", "TimerWorker", "DONE", "ParkOnce", "WaitQueue", "Poller", "Worker", "WorkerError",
    "Instrument", "SlowStepDetector", "UringPoller", "UringUnavailable", "UringWorker", "io_backend", "usable_io_backend",
    "uring_unavailable_reason", "uring_workers",
]
