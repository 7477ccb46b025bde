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

A worker that cannot start at all (its port is taken, its host name does
not resolve) raises ``WorkerStartError``: that is not restarted, since
the next try would fail the same way. The supervisor reports the reason
once, stops the other workers and ``serve`` returns 1. It must never
restart a worker in a loop that cannot succeed, nor report success when
no worker served.
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

__all__ = ["WorkerStartError", "run_worker", "serve", "worker_thread"]

# The exit status of a worker process whose main raised WorkerStartError
# (sysexits' EX_CONFIG: the fault is in how it was set up, not in a run).
_EXIT_CANNOT_START = 78


class WorkerStartError(Exception):
    """Raised by a worker's main when it cannot start serving (for example
    its address is in use); its message is the one line ``serve`` reports,
    so it should name what was wrong (the address and the reason)."""



def worker_thread(main: Callable[[int, Event], Any], index: int = 0) -> Any:
    """The main thread ``run_worker`` runs: ``main(index, shutdown)`` with
    SIGTERM/SIGINT setting ``shutdown``. A recording of a worker is
    replayed against this (``threadlib.replay``)."""

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

    return supervised()


def run_worker(main: Callable[[int, Event], Any], index: int = 0, record: str | None = None,
               entry: str | None = None, entry_args: list[str] | None = None, io: str | None = None) -> Any:
    """Run ``main(index, shutdown)`` in this process with SIGTERM/SIGINT
    setting ``shutdown``; return main's result. With ``record`` (a path)
    the run is recorded there, naming ``entry`` (``MODULE:FUNCTION``) and
    ``entry_args`` as what ``python -m threadlib.replay check`` replays it
    against. ``io`` (``epoll`` or ``uring``; None: ``THREADLIB_IO``)
    chooses the IO worker (``threadlib.lowlevel.default_workers``)."""
    from .._kernel import default_workers

    sched = signals.scheduler(default_workers(io))
    if record is None:
        return sched.run(worker_thread(main, index))
    from ..replay import run_recorded

    return run_recorded(sched, worker_thread(main, index), (), record, entry, entry_args)


@types.coroutine
def _as_generator(coro: Any) -> Waits[Any]:
    if isinstance(coro, types.CoroutineType):
        return (yield from coro.__await__())
    return (yield from coro)


def serve(main: Callable[[int, Event], Any], workers: int, restart_limit: int = 10,
          record: str | None = None, entry: str | None = None, entry_args: list[str] | None = None,
          io: str | None = None) -> int:
    """Fork ``workers`` processes each running ``run_worker(main, i)`` and
    supervise them until SIGINT/SIGTERM. Returns an exit status: 0 after
    a requested stop, 1 when a worker could not start (``WorkerStartError``,
    reported in one log line) or the restart limit was reached. ``record``
    (one worker only) records the run (``run_worker``); ``io`` chooses
    the workers' IO backend (``run_worker``)."""
    if record is not None and workers > 1:
        raise ValueError("recording is for one worker: a recording is one process's run")
    if workers <= 1:
        try:
            run_worker(main, 0, record, entry, entry_args, io)
        except WorkerStartError as exc:
            log.error("%s", exc)
            return 1
        return 0
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    failed = False
    restarts = 0
    # Workers that cannot start write their reason here; the supervisor
    # reports each distinct one once (N workers failing alike is one fault).
    reasons_r, reasons_w = os.pipe()
    os.set_blocking(reasons_r, False)

    stop_signals = {signal.SIGINT, signal.SIGTERM}

    def start(index: int) -> None:
        # Until the child has dropped the supervisor's handler, a stop signal
        # must wait: run there, the handler would swallow it (and signal the
        # siblings) and the worker would never stop.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        if pid == 0:
            status = 0
            try:
                os.close(reasons_r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                # A stop that came before this worker could listen for one
                # ends it now, by the default action.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                run_worker(main, index, io=io)
            except WorkerStartError as exc:
                # One write below PIPE_BUF is atomic: lines never interleave.
                os.write(reasons_w, (" ".join(str(exc).split()) + "\n").encode()[:512])
                status = _EXIT_CANNOT_START
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
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == _EXIT_CANNOT_START:
                failed = True
                if not stopping:
                    stop(signal.SIGTERM, None)
                continue
            if stopping:
                continue
            restarts += 1
            if restarts > restart_limit:
                log.error("worker %d exited (%d); restart limit reached, stopping", index, code)
                failed = True
                stop(signal.SIGTERM, None)
                continue
            log.warning("worker %d exited (%d); restarting", index, code)
            time.sleep(min(1.0, 0.05 * restarts))
            start(index)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        os.close(reasons_w)
        reasons = _read_all(reasons_r)
        os.close(reasons_r)
    for reason in dict.fromkeys(reasons.decode(errors="replace").splitlines()):
        log.error("%s", reason)
    return 1 if failed else 0


def _read_all(fd: int) -> bytes:
    """What the (non-blocking) pipe ``fd`` holds now."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
