"""Using every core: N worker processes sharing one listening port.

Each worker process runs its own scheduler and binds its own listener with
SO_REUSEPORT, so the kernel spreads connections across them with no shared
accept lock. The parent only supervises: it restarts a worker that dies
unexpectedly (with a back-off), and on SIGINT/SIGTERM tells every worker to
stop (SIGTERM) and waits for them, so responses in flight are finished.

A worker's main is an ordinary thread function ``main(index, shutdown)``
(index: 0..N-1); it is expected to stop when ``shutdown`` (a threadlib
Event) is set. The
worker's own SIGTERM handling sets it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import types
from typing import Any, Callable

from .. import calls
from . import signals
from ..syscalls import Waits
from ..sync import Event

log = logging.getLogger("threadlib.process.multicore")

__all__ = ["run_worker", "serve"]


def run_worker(main: Callable[[int, Event], Any], index: int = 0) -> Any:
    """Run ``main(index, shutdown)`` in this process with SIGTERM/SIGINT
    setting ``shutdown``; return main's result."""

    @types.coroutine
    def supervised() -> Waits[Any]:
        shutdown = Event()

        @types.coroutine
        def watch_signals() -> Waits[Any]:
            yield from signals.wait_signal(signal.SIGTERM, signal.SIGINT)
            shutdown.set()

        watcher = yield from calls.spawn(watch_signals())
        try:
            return (yield from _as_generator(main(index, shutdown)))
        finally:
            if not watcher.done:
                yield from watcher.cancel()

    return signals.scheduler().run(supervised())


@types.coroutine
def _as_generator(coro: Any) -> Waits[Any]:
    if isinstance(coro, types.CoroutineType):
        return (yield from coro.__await__())
    return (yield from coro)


def serve(main: Callable[[int, Event], Any], workers: int, restart_limit: int = 10) -> int:
    """Fork ``workers`` processes each running ``run_worker(main, i)`` and
    supervise them until SIGINT/SIGTERM. Returns an exit status."""
    if workers <= 1:
        run_worker(main, 0)
        return 0
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    restarts = 0

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                run_worker(main, index)
            except BaseException:
                log.exception("worker %d failed", index)
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        children[pid] = index

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    old_int = signal.signal(signal.SIGINT, stop)
    old_term = signal.signal(signal.SIGTERM, stop)
    try:
        for i in range(workers):
            start(i)
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = children.pop(pid, None)
            if index is None or stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            restarts += 1
            if restarts > restart_limit:
                log.error("worker %d exited (%d); restart limit reached, stopping", index, code)
                stop(signal.SIGTERM, None)
                continue
            log.warning("worker %d exited (%d); restarting", index, code)
            time.sleep(min(1.0, 0.05 * restarts))
            start(index)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return 0
