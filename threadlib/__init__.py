"""threadlib: user-level threads for network servers.

Threads are generator coroutines (``async def`` works too, and greenlets
through ``threadlib.frontends.green``). A thread that must wait yields a
system call, a plain data object; a scheduler assembled from workers
(timers, epoll IO, a blocking-call pool, Linux AIO, a user-level TCP stack,
your own) resumes it.

This module is the user API: running, spawning, sleeping, timeouts and
cancel scopes, task groups, joins and the sync primitives. The rest lives
in subpackages, loaded on first use:

``threadlib.io``         sockio (kernel sockets), fileio (files, AIO),
                         tcpsockio (the user-level TCP/IP stack), splice, tls, happy_eyeballs
``threadlib.net``        the Network/Listener/Stream contracts servers are typed against
``threadlib.frontends``  green (greenlet threads that block in plain calls)
``threadlib.process``    multicore (worker processes), signals, subprocess (child processes)
``threadlib.testing``    the pytest plugin (generator and async def tests as threads)
``threadlib.lowlevel``   for extenders: Scheduler, Worker, WaitQueue, system calls
``threadlib.loop``       an asyncio event loop on the scheduler (asyncio tasks next to threads)
``threadlib.sim``        a deterministic simulated world: hosts, links and faults on a virtual clock
``threadlib.replay``     replay a run recorded with ``run(main, record=PATH)``, checking every output

``docs/design.md`` tours the internals; ``docs/api.md`` is the reference.
"""

import sys as _sys
from typing import Any as _Any

from ._kernel import Thread, ThreadCancelled, WorkerError, current_scheduler, uring_workers
from ._kernel import scheduler as _scheduler_module
from .calls import (
    CancelScope,
    TaskGroup,
    blocking,
    current,
    current_thread,
    fail_after,
    fail_at,
    join_all,
    join_any,
    move_on_after,
    move_on_at,
    now,
    run,
    sleep,
    spawn,
    task_group,
    timeout,
    timeout_at,
    wall_time,
)
from .sync import Condition, Event, Mutex, Queue, QueueClosed, QueueEmpty, QueueFull, Semaphore

__all__ = [
    "run", "spawn", "sleep", "current", "current_thread", "blocking", "join_all", "join_any", "now",
    "wall_time", "timeout", "timeout_at", "current_scheduler",
    "CancelScope", "move_on_after", "move_on_at", "fail_after", "fail_at", "TaskGroup", "task_group",
    "Thread", "ThreadCancelled", "WorkerError", "uring_workers",
    "Event", "Mutex", "Semaphore", "Condition", "Queue", "QueueClosed", "QueueFull", "QueueEmpty",
]

_SUBMODULES = ("io", "net", "frontends", "process", "lowlevel", "syscalls", "loop", "sim", "replay")


def __getattr__(name: str) -> object:
    # Subpackages that pull in more (sockets, greenlet, AIO) load on first use.
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'threadlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(__all__) + list(_SUBMODULES))


def _asyncio_companion(sched: _Any) -> _Any:
    # Threads may await asyncio code (asyncio.sleep, a client library),
    # which needs a running loop: threadlib.loop provides one, dormant
    # until asyncio first schedules something on it. Only when asyncio is
    # loaded: a program that never imports it pays nothing.
    if "asyncio" not in _sys.modules:
        return None
    from .loop import _provide_running_loop

    return _provide_running_loop(sched)


_scheduler_module.RUN_COMPANIONS.append(_asyncio_companion)
