"""threadlib: user-level threads for network servers.

Threads are generator coroutines (``async def`` works too, and greenlets
through ``threadlib.green``). A thread that must wait yields a system call,
a plain data object; a scheduler assembled from workers (timers, epoll IO,
a blocking-call pool, Linux AIO, a user-level TCP stack, your own) resumes
it. See DESIGN.md for the architecture, README.md for the tour.
"""

from . import syscalls
from .core import (
    blocking,
    current,
    current_thread,
    join_all,
    join_any,
    now,
    run,
    sleep,
    spawn,
    timeout,
    timeout_at,
)
from .kernel import (
    BlockingPool,
    IOWorker,
    MonotonicClock,
    Scheduler,
    Thread,
    ThreadCancelled,
    TimerWorker,
    VirtualClock,
    WaitQueue,
    Worker,
    current_scheduler,
    default_workers,
)
from .sync import Condition, Event, Mutex, Queue, QueueClosed, Semaphore
from .syscalls import (
    Blocking,
    Cancel,
    GetCurrent,
    Join,
    JoinAny,
    Park,
    Sleep,
    Spawn,
    SystemCall,
    Unpark,
    WaitRead,
    WaitWrite,
    Yield,
)

__all__ = [
    "run", "spawn", "sleep", "current", "current_thread", "blocking", "join_all", "join_any", "now",
    "timeout", "timeout_at",
    "Scheduler", "Worker", "TimerWorker", "IOWorker", "BlockingPool", "default_workers",
    "MonotonicClock", "VirtualClock", "Thread", "ThreadCancelled", "WaitQueue", "current_scheduler",
    "Event", "Mutex", "Semaphore", "Condition", "Queue", "QueueClosed",
    "SystemCall", "Yield", "Sleep", "WaitRead", "WaitWrite", "Spawn", "Join", "JoinAny", "Cancel",
    "Park", "Unpark", "Blocking", "GetCurrent", "syscalls",
]


def __getattr__(name: str):
    # Submodules that pull in more (sockets, greenlet, AIO) load on first use.
    if name in ("sockio", "green", "signals", "multicore", "fileio", "aioworker", "tcpsockio", "splice", "replay"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'threadlib' has no attribute {name!r}")
