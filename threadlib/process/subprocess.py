"""Child processes for threads: ``run`` (start a program, feed it, collect
its output, wait for it) and ``spawn_process`` (a ``Process`` whose pipes
are streams and whose exit a thread can wait for).

A child's pipes are non-blocking and waited on like sockets (``WaitRead``/
``WaitWrite`` through the IO worker); its exit is watched through a pidfd
(``os.pidfd_open``) in the scheduler's poller and reaped with ``waitid`` on
that pidfd, so there is no SIGCHLD handler, no helper OS thread and no pid
reuse race. A thread cancelled while it waits for a child (``wait``,
``communicate``, ``run``) kills the child (SIGTERM first when the process
has a ``kill_grace``, then SIGKILL) and reaps it before the cancellation
goes on: no child outlives the thread that was waiting for it, and none is
left a zombie.

This module must never block the scheduler: nothing here calls
``Popen.wait``, ``Popen.communicate`` or a blocking read. The one
exception is starting the child (fork and exec through ``subprocess.Popen``,
about a millisecond, as in asyncio and trio) and reaping, at the end of a
scheduler, a child that was already sent SIGKILL. Linux 5.3 or later
(pidfds).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import subprocess
import types
from typing import Any, Callable, Mapping, Sequence

from .._kernel import Scheduler, Worker, current_scheduler, forget_fd
from .._kernel.scopes import CancelScope
from .._kernel.worker import Handler
from ..calls import join_all, spawn
from ..calls import timeout as _timeout
from ..sync import Event
from ..syscalls import Cancel, WaitRead, WaitWrite, Waits

__all__ = ["run", "spawn_process", "Process", "PipeReader", "PipeWriter", "PIPE", "DEVNULL", "STDOUT"]

log = logging.getLogger("threadlib.process.subprocess")

#: Make a pipe for this stream (as in the standard ``subprocess``).
PIPE = subprocess.PIPE
#: Connect this stream to ``os.devnull``.
DEVNULL = subprocess.DEVNULL
#: For ``stderr``: send it where ``stdout`` goes.
STDOUT = subprocess.STDOUT


class _Pipe:
    """One end of a pipe to a child, non-blocking, closed at most once."""

    __slots__ = ("_fd", "_wait")

    _wait: WaitRead | WaitWrite  # set by the subclass: this end's one wait

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    def fileno(self) -> int:
        """The pipe's fd; -1 once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._fd < 0

    def close(self) -> None:
        """Close now (never waits); threads waiting on it get OSError(EBADF)."""
        fd = self._fd
        if fd >= 0:
            self._fd = -1
            forget_fd(fd)
            os.close(fd)

    def _check(self) -> int:
        fd = self._fd
        if fd < 0:
            raise OSError(errno.EBADF, f"{type(self).__name__} is closed")
        return fd

    @types.coroutine
    def _io(self, op: Callable[[int, Any], Any], arg: Any, timeout: float | None) -> Waits[Any]:
        """``op(fd, arg)``, waiting for the pipe while it would block."""
        while True:
            try:
                return op(self._check(), arg)
            except BlockingIOError:
                pass
            with _timeout(timeout):
                yield self._wait

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"


def _read_into(fd: int, view: memoryview) -> int:
    return os.readv(fd, [view])


class PipeReader(_Pipe):
    """The parent's end of a child's ``stdout`` or ``stderr``: the reading
    half of ``threadlib.net.Stream`` (``recv``, ``recv_into``, ``close``),
    plus ``readline`` and ``read_all``. Each read tries the pipe first and
    waits (``WaitRead``) only when it is empty; on a timeout or a
    cancellation nothing was consumed."""

    __slots__ = ("_buffer",)

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._wait = WaitRead(fd)
        self._buffer = bytearray()  # read ahead by readline, served first

    @property
    def buffered(self) -> int:
        """Bytes read ahead by ``readline`` that the next reads return first
        (``threadlib.io.splice`` forwards them before splicing the pipe)."""
        return len(self._buffer)

    @types.coroutine
    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Waits[bytes]:
        """Up to ``max_bytes`` bytes (at least one), ``b""`` once the child
        closed its end and everything was read."""
        if self._buffer:
            buffered = bytes(self._buffer[:max_bytes])
            del self._buffer[:max_bytes]
            return buffered
        data: bytes = yield from self._io(os.read, max_bytes, timeout)
        return data

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> Waits[int]:
        """Read into ``buffer`` (up to ``nbytes``, 0 for its size); the count,
        0 at the end."""
        view = memoryview(buffer).cast("B")
        if nbytes:
            view = view[:nbytes]
        if self._buffer:
            taken = min(len(view), len(self._buffer))
            view[:taken] = self._buffer[:taken]
            del self._buffer[:taken]
            return taken
        n: int = yield from self._io(_read_into, view, timeout)
        return n

    @types.coroutine
    def readline(self, limit: int = 65536, timeout: float | None = None) -> Waits[bytes]:
        """One line, with its ``b"\\n"``; at most ``limit`` bytes (a longer
        line comes in pieces), the unterminated rest at the end, ``b""``
        after it. ``timeout`` bounds the whole line; after a timeout or a
        cancellation what was read stays buffered for the next read."""
        buffer = self._buffer
        with _timeout(timeout):
            while True:
                end = buffer.find(b"\n", 0, limit)
                if end >= 0 or len(buffer) >= limit:
                    end = end + 1 if end >= 0 else limit
                    line = bytes(buffer[:end])
                    del buffer[:end]
                    return line
                try:
                    chunk = os.read(self._check(), 65536)
                except BlockingIOError:
                    yield self._wait
                    continue
                if not chunk:
                    line = bytes(buffer)
                    buffer.clear()
                    return line
                buffer += chunk

    @types.coroutine
    def read_all(self, timeout: float | None = None) -> Waits[bytes]:
        """Everything until the child closes its end. ``timeout`` bounds the
        whole read; after a timeout or a cancellation what was read is
        kept buffered for the next read."""
        parts = bytearray()
        try:
            with _timeout(timeout):
                while chunk := (yield from self.recv(1 << 16)):
                    parts += chunk
        except BaseException:
            self._buffer[:0] = parts
            raise
        return bytes(parts)


class PipeWriter(_Pipe):
    """The parent's end of a child's ``stdin``: the writing half of
    ``threadlib.net.Stream`` (``send``, ``sendall``, ``shutdown``,
    ``close``). Writes wait (``WaitWrite``) only while the pipe is full. A
    child that closed its end makes them raise ``BrokenPipeError``."""

    __slots__ = ()

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self._wait = WaitWrite(fd)

    @types.coroutine
    def send(self, data: Any, timeout: float | None = None) -> Waits[int]:
        """Write some of ``data``; the count. On a timeout or a cancellation
        nothing was written."""
        n: int = yield from self._io(os.write, data, timeout)
        return n

    @types.coroutine
    def sendall(self, data: Any, timeout: float | None = None) -> Waits[None]:
        """Write all of ``data``. ``timeout`` bounds the whole write; after a
        timeout or a cancellation an unknown prefix was written."""
        view = memoryview(data).cast("B")
        sent = 0
        with _timeout(timeout):
            while sent < len(view):
                try:
                    sent += os.write(self._check(), view[sent:])
                except BlockingIOError:
                    yield self._wait

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """End of file for the child: closes this end (a pipe has no half-close)."""
        self.close()


class Process:
    """A child process, made by ``spawn_process``.

    ``stdin`` is a ``PipeWriter``, ``stdout`` and ``stderr`` are
    ``PipeReader``s where ``PIPE`` was asked for, else None. ``returncode``
    is None until the child has been reaped, then its exit status, or
    ``-N`` if signal N ended it. Leaving ``with`` (or ``close()``) closes
    the pipes and, if the child still runs, kills it: ``wait`` first for a
    child that should finish.
    """

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int, stdin: PipeWriter | None,
                 stdout: PipeReader | None, stderr: PipeReader | None, kill_grace: float) -> None:
        self._popen = popen  # kept until reaped: a dropped Popen would reap the child behind our back
        self._pidfd = pidfd
        self.args = popen.args
        self.pid: int = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        #: Seconds between SIGTERM and SIGKILL when an interrupted wait kills the child.
        self.kill_grace = kill_grace
        self.returncode: int | None = None
        self._exited = Event()
        self._watcher: _ChildWatcher | None = None
        self._killed = False  # sent SIGKILL by us: reaping it cannot take long
        self._out = bytearray()  # what communicate has read so far
        self._err = bytearray()

    # -- signals --------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the child; nothing once it has been reaped
        (the pidfd names this child only, never a later one with its pid)."""
        if self.returncode is not None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass  # it has exited and awaits reaping

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    # -- exit -------------------------------------------------------------
    def poll(self) -> int | None:
        """The exit status if the child has ended (reaping it), else None;
        never waits."""
        self._try_reap()
        return self.returncode

    @types.coroutine
    def wait(self, timeout: float | None = None) -> Waits[int]:
        """Wait for the child to end; its ``returncode``. Any number of
        threads may wait. On a timeout (TimeoutError) the child runs on; a
        cancellation kills it (see ``kill_grace``) and reaps it first."""
        try:
            yield from self._wait_exit(timeout)
        except (TimeoutError, GeneratorExit):
            raise
        except BaseException:
            yield from self._stop()
            raise
        assert self.returncode is not None
        return self.returncode

    @types.coroutine
    def communicate(self, input: bytes | None = None) -> Waits[tuple[bytes | None, bytes | None]]:
        """Write ``input`` to ``stdin`` (then close it), read ``stdout`` and
        ``stderr`` to their end, and wait for the child; ``(stdout,
        stderr)``, None for a stream that is not a pipe. A child that stops
        reading its input early is not an error. A cancellation kills and
        reaps the child; after a timeout (of an enclosing scope) it runs
        on and what was read so far is lost."""
        if input and self.stdin is None:
            raise ValueError("communicate(input=...) needs a process started with stdin=PIPE")
        helpers = []
        try:
            if self.stdin is not None:
                helpers.append((yield from spawn(self._feed(self.stdin, input), name=f"stdin of {self.pid}")))
            readers = [(p, b) for p, b in ((self.stdout, self._out), (self.stderr, self._err)) if p is not None]
            for pipe, buf in readers[1:]:
                helpers.append((yield from spawn(self._drain(pipe, buf), name=f"output of {self.pid}")))
            if readers:
                yield from self._drain(*readers[0])
            yield from join_all(helpers)
            helpers = []
            yield from self.wait()
        except GeneratorExit:
            raise  # the thread is being discarded: it cannot wait any more
        except BaseException as exc:
            with CancelScope(shield=True):  # the caller's deadline or cancel must not cut the reaping short
                for t in helpers:
                    if not t.done:
                        yield Cancel(t)
                for t in helpers:
                    yield from t.wait()
                if not isinstance(exc, TimeoutError):
                    yield from self._stop()
            raise
        return (bytes(self._out) if self.stdout is not None else None,
                bytes(self._err) if self.stderr is not None else None)

    @types.coroutine
    def _feed(self, pipe: PipeWriter, data: bytes | None) -> Waits[None]:
        try:
            if data:
                yield from pipe.sendall(data)
        except BrokenPipeError:
            pass  # the child did not want all of it
        finally:
            pipe.close()

    @types.coroutine
    def _drain(self, pipe: PipeReader, into: bytearray) -> Waits[None]:
        while chunk := (yield from pipe.recv(1 << 16)):
            into += chunk
        pipe.close()

    @types.coroutine
    def _wait_exit(self, timeout: float | None) -> Waits[None]:
        if self._try_reap():
            return
        _watcher(current_scheduler()).watch(self)
        yield from self._exited.wait(timeout)

    def _try_reap(self) -> bool:
        if self.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # Reaped by someone else (an os.wait() elsewhere): the status is
            # lost, as subprocess.Popen reports it.
            log.warning("child %d was reaped by someone else; its exit status is lost", self.pid)
            self._finish(0)
            return True
        if info is None:
            return False
        self._finish(info.si_status if info.si_code == os.CLD_EXITED else -info.si_status)
        return True

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        self._popen.returncode = returncode
        if self._watcher is not None:
            self._watcher.unwatch(self)
        os.close(self._pidfd)
        self._pidfd = -1
        self._exited.set()

    @types.coroutine
    def _stop(self) -> Waits[None]:
        """Kill the child and wait until it is reaped, for a thread whose
        wait was interrupted: its deadline (which may have passed) is
        lifted meanwhile. Interrupted again, it leaves the reaping to the
        scheduler (see ``_abandon``)."""
        if self._try_reap():
            return
        try:
            with CancelScope(shield=True):  # the caller's deadline or cancel must not cut the reaping short
                if self.kill_grace > 0:
                    self.terminate()
                    try:
                        yield from self._wait_exit(self.kill_grace)
                    except TimeoutError:
                        pass
                if self.returncode is None:
                    self.kill()
                    self._killed = True
                    yield from self._wait_exit(None)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """SIGKILL the child and have it reaped without anyone waiting: by
        the running scheduler's child watcher when it dies, or (no
        scheduler here) at once."""
        if self._try_reap():
            return
        self.kill()
        self._killed = True
        sched = current_scheduler()
        if sched is not None:
            _watcher(sched).watch(self)
        else:
            _reap_now(self)

    def close(self) -> None:
        """Close the pipes; kill a child that still runs (it is reaped as
        soon as it dies). Never waits in a scheduler; outside one it blocks
        until the killed child is gone, which is prompt."""
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        if self.returncode is None:
            self._abandon()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if self._pidfd >= 0 and self._watcher is None:
            os.close(self._pidfd)  # dropped unreaped: the Popen it holds reaps the child later
            self._pidfd = -1

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<Process pid={self.pid} {state} {self.args!r}>"


def _reap_now(proc: Process) -> None:
    """Block until ``proc`` (sent SIGKILL) is gone: only where no scheduler
    runs, or at a scheduler's end."""
    try:
        info = os.waitid(os.P_PIDFD, proc._pidfd, os.WEXITED)
    except ChildProcessError:
        proc._finish(0)
        return
    assert info is not None
    proc._finish(info.si_status if info.si_code == os.CLD_EXITED else -info.si_status)


class _ChildWatcher(Worker):
    """A scheduler's watch on its children's pidfds: a pidfd becomes
    readable when its child exits, and the callback reaps the child and
    wakes its waiters (``Process._exited``). Serves no system call. When
    the scheduler ends, children killed by an interrupted wait are reaped
    (they are dying); others stay unwatched and can be waited for again by
    a later scheduler."""

    def __init__(self) -> None:
        self._procs: dict[int, Process] = {}

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        self._sched = sched
        return {}

    def watch(self, proc: Process) -> None:
        if proc._watcher is self:
            return
        if proc._watcher is not None:  # a scheduler that ended without its children
            proc._watcher.unwatch(proc)
        proc._watcher = self
        self._procs[proc._pidfd] = proc
        # Level-triggered: the pidfd stays readable until it is closed.
        self._sched.watch_fd(proc._pidfd, select.EPOLLIN, lambda events: self._exited(proc))

    def _exited(self, proc: Process) -> None:
        proc._try_reap()

    def unwatch(self, proc: Process) -> None:
        if self._procs.pop(proc._pidfd, None) is not None:
            self._sched.unwatch_fd(proc._pidfd)
        proc._watcher = None

    def busy(self) -> bool:
        return bool(self._procs)

    def close(self) -> None:
        for proc in list(self._procs.values()):
            self.unwatch(proc)
            if proc._killed:
                _reap_now(proc)


def _watcher(sched: Scheduler | None) -> _ChildWatcher:
    if sched is None:
        raise RuntimeError("waiting for a child process needs a running threadlib scheduler")
    for w in sched.workers:
        if type(w) is _ChildWatcher:
            return w
    watcher = _ChildWatcher()
    sched.add_worker(watcher)
    return watcher


# ---------------------------------------------------------------------------
# Starting


@types.coroutine
def spawn_process(args: str | Sequence[str], stdin: Any = None, stdout: Any = None, stderr: Any = None, *,
                  cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                  pass_fds: Sequence[int] = (), start_new_session: bool = False, shell: bool = False,
                  kill_grace: float = 0.0) -> Waits[Process]:
    """Start ``args`` (a program and its arguments, or a command line with
    ``shell=True``) as a child ``Process``. ``stdin``, ``stdout`` and
    ``stderr`` take ``PIPE`` (a pipe: the process's ``stdin`` is then a
    ``PipeWriter``, its ``stdout``/``stderr`` ``PipeReader``s), ``DEVNULL``,
    ``STDOUT`` (stderr only), an fd or a file object, or None (inherit).
    ``cwd``, ``env``, ``pass_fds``, ``start_new_session`` and ``shell``
    are ``subprocess.Popen``'s. ``kill_grace`` (seconds) is how long an
    interrupted wait lets the child handle SIGTERM before SIGKILL (0: at
    once).

    Never suspends (fork and exec run in the scheduler, about a
    millisecond); a program that cannot be started raises what Popen
    raises (FileNotFoundError, PermissionError, ...) and leaves nothing
    open."""
    if kill_grace < 0:
        raise ValueError(f"kill_grace must be >= 0, got {kill_grace!r}")
    parent_ends: list[int] = []
    child_ends: list[int] = []

    def pipe_for(spec: Any, child_reads: bool) -> Any:
        if spec != PIPE:
            return spec
        r, w = os.pipe2(os.O_CLOEXEC)
        parent_ends.append(w if child_reads else r)
        child_ends.append(r if child_reads else w)
        return r if child_reads else w

    try:
        popen = subprocess.Popen(
            args, stdin=pipe_for(stdin, True), stdout=pipe_for(stdout, False), stderr=pipe_for(stderr, False),
            cwd=cwd, env=env, pass_fds=pass_fds, start_new_session=start_new_session, shell=shell)
    except BaseException:
        for fd in parent_ends:
            os.close(fd)
        raise
    finally:
        for fd in child_ends:
            os.close(fd)
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError:
        popen.kill()
        popen.wait()  # just killed: reaping it cannot take long
        for fd in parent_ends:
            os.close(fd)
        raise
    ends = iter(parent_ends)
    proc = Process(
        popen, pidfd,
        PipeWriter(next(ends)) if stdin == PIPE else None,
        PipeReader(next(ends)) if stdout == PIPE else None,
        PipeReader(next(ends)) if stderr == PIPE else None,
        kill_grace,
    )
    return proc
    yield  # a generator, like every call that may wait


@types.coroutine
def run(args: str | Sequence[str], input: bytes | None = None, timeout: float | None = None, check: bool = False,
        capture_output: bool = False, cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
        shell: bool = False, kill_grace: float = 0.0) -> Waits[subprocess.CompletedProcess[bytes]]:
    """Run ``args`` to its end, as ``subprocess.run`` does, without
    blocking the scheduler: feed it ``input`` (bytes; its stdin is then a
    pipe), collect ``stdout``/``stderr`` (``capture_output=True`` makes
    both pipes), wait, and return a ``subprocess.CompletedProcess`` with
    ``args``, ``returncode``, ``stdout`` and ``stderr`` (bytes, or None
    where not captured). ``check=True`` raises
    ``subprocess.CalledProcessError`` for a non-zero exit.

    ``timeout`` (seconds) kills the child once it passes, reaps it and
    raises ``subprocess.TimeoutExpired`` carrying the output read so far.
    An enclosing ``threadlib.timeout`` or a cancellation kills and reaps it
    likewise and raises ``TimeoutError``/``ThreadCancelled``. ``kill_grace``
    gives the child that long after SIGTERM before SIGKILL."""
    if input is not None and stdin is not None:
        raise ValueError("run(): stdin and input may not both be given")
    if capture_output:
        if stdout is not None or stderr is not None:
            raise ValueError("run(): stdout and stderr may not be given with capture_output=True")
        stdout = stderr = PIPE
    proc = yield from spawn_process(args, PIPE if input is not None else stdin, stdout, stderr, cwd=cwd, env=env,
                                    shell=shell, kill_grace=kill_grace)
    with proc:
        scope = _timeout(timeout)
        try:
            with scope:
                out, err = yield from proc.communicate(input)
        except TimeoutError:
            yield from proc._stop()
            if scope.expired:
                assert timeout is not None
                raise subprocess.TimeoutExpired(
                    proc.args, timeout, output=bytes(proc._out) if stdout == PIPE else None,
                    stderr=bytes(proc._err) if stderr == PIPE else None) from None
            raise
    assert proc.returncode is not None
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
