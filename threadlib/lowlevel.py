"""For extenders: the names needed to write a worker, a system call, a
sync primitive or a front end. Users of threadlib need none of them.

Everything here is documented in ``docs/design.md`` (the tour) and
``docs/api.md`` (the reference); the worker contract is spelled out in
``threadlib._kernel.worker``. These names are stable; the modules under
``threadlib._kernel`` that define them are not.
"""

from ._kernel import (
    BlockingPool,
    EpollPoller,
    Instrument,
    IOWorker,
    MonotonicClock,
    ParkOnce,
    Poller,
    Scheduler,
    SlowStepDetector,
    Thread,
    TimerWorker,
    UringPoller,
    UringUnavailable,
    UringWorker,
    VirtualClock,
    WaitQueue,
    Worker,
    WorkerError,
    current_scheduler,
    default_workers,
    io_backend,
    uring_unavailable_reason,
    uring_workers,
    usable_io_backend,
)
from ._kernel.compiled import COMPILED
from ._kernel.worker import Handler
from .syscalls import Blocking, Cancel, GetCurrent, GetScheduler, Join, JoinAny, Park, Sleep
from .syscalls import Spawn, SystemCall, Unpark, WaitRead, WaitWrite, Yield

__all__ = [
    "Scheduler", "Worker", "WorkerError", "Handler", "Poller", "EpollPoller",
    "TimerWorker", "IOWorker", "BlockingPool", "default_workers", "current_scheduler",
    "Thread", "WaitQueue", "ParkOnce", "MonotonicClock", "VirtualClock",
    "SystemCall", "Yield", "Sleep", "WaitRead", "WaitWrite", "Spawn", "Join", "JoinAny", "Cancel",
    "Park", "Unpark", "Blocking", "GetCurrent", "GetScheduler",
    "Instrument", "SlowStepDetector", "COMPILED",
    "UringPoller", "UringUnavailable", "UringWorker", "uring_workers", "uring_unavailable_reason", "io_backend",
    "usable_io_backend",
]
