"""The simulated disk: a per-host file system that serves ``fileio``.

A simulated host has a ``SimDisk`` for its whole life (it outlives
crashes) and, per boot, a ``SimDiskWorker`` on its scheduler. The worker
serves the system calls ``threadlib.io.fileio`` makes of Linux AIO
(``AioRead``, ``AioWrite``, ``AioFsync``, ``AioClose``) and offers the
metadata calls fileio makes inline (open, fstat, ftruncate, stat) as its
``filesystem``, so a program's ``fileio.open``/``pread``/``pwrite``/``fsync``
run unchanged on the simulated host and reach no real file.

Every file has two versions: what a program reads (the page cache: every
completed write) and what survives a crash (its content at its last
fsync). ``host.crash()`` drops the first: a file never fsynced is gone, an
fsynced one comes back as it was at that fsync. Each request completes
after the disk's latency (``DiskParams``), in simulated time; each may
fail with ``EIO``, drawn from the disk's own stream of the seed (and
listed in the world's fault schedule as ``disk:HOST#N:eio``, so a
shrinker can remove it) or planned with ``host.fail_disk``.

Nothing here opens a real fd, reads a clock (the host's scheduler clock
only) or draws from a random source other than the disk's stream.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import posixpath
import random
import stat as _stat
from typing import TYPE_CHECKING, Any, Callable

from .._kernel import Scheduler, Thread, Worker
from .._kernel.worker import Handler
from ..io.aioworker import AioClose, AioFsync, AioRead, AioWrite

if TYPE_CHECKING:
    from .fabric import FaultSchedule
    from .trace import Trace

_FIRST_FD = 1000  # simulated descriptors: numbers no test would mistake for real ones
_OPS = ("read", "write", "fsync")


class DiskParams:
    """How a simulated disk behaves: ``latency`` seconds per read or write
    plus a uniform draw from ``[0, jitter)``, ``fsync_latency`` seconds per
    fsync, and ``eio``, the probability that a request fails with EIO.
    ``ValueError`` names a bad one."""

    __slots__ = ("latency", "jitter", "fsync_latency", "eio")

    def __init__(self, latency: float = 0.0001, jitter: float = 0.0, fsync_latency: float = 0.002,
                 eio: float = 0.0) -> None:
        for name, value in (("latency", latency), ("jitter", jitter), ("fsync_latency", fsync_latency)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"disk: {name} must be a finite number of seconds >= 0, got {value!r}")
        if isinstance(eio, bool) or not isinstance(eio, (int, float)) or not 0 <= eio <= 1:
            raise ValueError(f"disk: eio must be a probability in [0, 1], got {eio!r}")
        self.latency = float(latency)
        self.jitter = float(jitter)
        self.fsync_latency = float(fsync_latency)
        self.eio = float(eio)

    def as_dict(self) -> dict[str, float]:
        """The parameters by name (what ``DiskParams(**d)`` takes)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return "DiskParams(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


class _Node:
    """One file: what reads see (``data``) and what a crash leaves
    (``durable``; None: the file itself is not durable yet)."""

    __slots__ = ("data", "durable")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable: bytes | None = None


class SimDisk:
    """A host's disk: files by path (a flat namespace: no directories to
    make), their cached and durable versions, the fault decisions. It
    lives as long as the host; ``crash()`` keeps only what was fsynced."""

    def __init__(self, host: str, params: DiskParams, seed: Any, faults: FaultSchedule, trace: Trace,
                 now: Callable[[], float]) -> None:
        self.host = host
        self.params = params
        self.rng = random.Random(f"{seed}/disk/{host}")
        self._faults = faults
        self._trace = trace
        self._now = now
        self._files: dict[str, _Node] = {}
        self._requests = 0  # requests decided: the N in a fault's id
        self._planned: list[tuple[str | None, int]] = []  # fail_disk: (op or None, count)

    # -- what a scenario may look at ----------------------------------------------
    def paths(self) -> list[str]:
        """The files that exist now, in the order they were made."""
        return list(self._files)

    def contents(self, path: str, durable: bool = False) -> bytes | None:
        """What a read of ``path`` returns now (or, ``durable=True``, what
        would be left after a crash); None if there is no such file."""
        node = self._files.get(_normal(path))
        if node is None:
            return None
        return node.durable if durable else bytes(node.data)

    def fail(self, count: int = 1, op: str | None = None) -> None:
        """The next ``count`` requests (of ``op``: "read", "write" or
        "fsync"; None: any) fail with EIO."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"disk of {self.host}: count must be a positive int, got {count!r}")
        if op is not None and op not in _OPS:
            raise ValueError(f"disk of {self.host}: op must be one of {_OPS} or None, got {op!r}")
        self._planned.append((op, count))
        self._trace.event("disk-fail-planned", self._now(), self.host, op, count)

    def state_digest(self) -> str:
        """A digest of every file's two versions (for snapshots' checks)."""
        h = hashlib.blake2b(digest_size=16)
        for path, node in self._files.items():
            h.update(repr((path, len(node.data), node.durable is not None)).encode())
            h.update(node.data)
            h.update(node.durable or b"")
        h.update(repr((self._requests, self._planned, self.rng.getstate())).encode())
        return h.hexdigest()

    # -- the host's side ---------------------------------------------------------------
    def crash(self) -> None:
        """Lose what was not fsynced: files never fsynced vanish, the
        others go back to their content at their last fsync."""
        for path in list(self._files):
            node = self._files[path]
            if node.durable is None:
                del self._files[path]
            else:
                node.data = bytearray(node.durable)

    def decide(self, op: str) -> tuple[float, bool]:
        """A request's delay (seconds) and whether it fails with EIO. Each
        request draws the same two numbers whatever is decided."""
        p = self.params
        self._requests += 1
        spread = self.rng.random()
        roll = self.rng.random()
        delay = p.fsync_latency if op == "fsync" else p.latency + spread * p.jitter
        failed = False
        for i, (which, count) in enumerate(self._planned):
            if which is None or which == op:
                failed = True
                if count > 1:
                    self._planned[i] = (which, count - 1)
                else:
                    del self._planned[i]
                break
        if not failed and p.eio and roll < p.eio:
            failed = self._faults.allow(f"disk:{self.host}#{self._requests}:eio")
        return delay, failed


def _normal(path: str) -> str:
    return posixpath.normpath(path) if path else path


def _regular_stat(size: int) -> os.stat_result:
    return os.stat_result((_stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, 0, 0, 0))


class SimFileSystem:
    """One boot's view of a ``SimDisk``: the open-file table. What
    ``fileio`` calls inline for metadata (``open``, ``fstat``,
    ``ftruncate``, ``stat``); errors are the ``OSError``s the real calls
    raise."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self._open: dict[int, tuple[str, _Node, bool]] = {}
        self._next_fd = _FIRST_FD

    def open(self, path: str, flags: int, perms: int = 0o644) -> int:
        """A simulated descriptor of ``path`` opened with ``os.open`` flags."""
        disk = self.disk
        name = _normal(path)
        if not name:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        node = disk._files.get(name)
        if node is None:
            if not flags & os.O_CREAT:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            node = disk._files[name] = _Node()
        elif flags & os.O_CREAT and flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        if flags & os.O_TRUNC:
            node.data = bytearray()
        fd = self._next_fd
        self._next_fd += 1
        self._open[fd] = (name, node, flags & os.O_ACCMODE != os.O_RDONLY)
        disk._trace.event("disk-open", disk._now(), disk.host, name, fd, flags)
        return fd

    def node(self, fd: int) -> tuple[str, _Node, bool]:
        """The open file behind ``fd`` (``OSError(EBADF)`` if none)."""
        entry = self._open.get(fd)
        if entry is None:
            raise OSError(errno.EBADF, f"fd {fd} is not open on the simulated disk of {self.disk.host}")
        return entry

    def fstat(self, fd: int) -> os.stat_result:
        """``os.fstat``: a regular file of the current size."""
        return _regular_stat(len(self.node(fd)[1].data))

    def ftruncate(self, fd: int, size: int) -> None:
        """``os.ftruncate``: cut or zero-extend (not durable until fsync)."""
        _name, node, writable = self.node(fd)
        if not writable:
            raise OSError(errno.EINVAL, "ftruncate on a read-only descriptor")
        if size < len(node.data):
            del node.data[size:]
        else:
            node.data.extend(bytes(size - len(node.data)))

    def stat(self, path: str) -> os.stat_result:
        """``os.stat`` of a path on this disk."""
        node = self.disk._files.get(_normal(path))
        if node is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return _regular_stat(len(node.data))

    def close(self, fd: int) -> None:
        """Forget ``fd``."""
        self.node(fd)
        del self._open[fd]


class SimDiskWorker(Worker):
    """Serves ``fileio``'s AIO system calls from a ``SimDisk`` on a
    simulated host: each completes after the disk's latency (a timer on
    the host's clock) or fails with EIO. A request whose thread is
    cancelled or timed out is dropped (it never reaches the disk).
    ``filesystem`` is what fileio uses for the inline metadata calls."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self.filesystem = SimFileSystem(disk)
        self._pending: dict[Any, list[Any]] = {}  # syscall -> its timer

    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Serve the Aio* calls of ``sched``."""
        self._sched = sched
        return {AioRead: self._read, AioWrite: self._write, AioFsync: self._fsync, AioClose: self._close}

    def _start(self, thread: Thread, sc: Any, op: str, finish: Callable[[], Any]) -> None:
        try:
            self.filesystem.node(sc.fd)
        except OSError as exc:
            self._sched.throw(thread, exc)
            return
        delay, failed = self.disk.decide(op)
        sched = self._sched
        sched.suspend(thread, sc)
        self._pending[sc] = sched.call_at(sched.clock.now() + delay, self._complete, (thread, sc, op, failed, finish))

    def _complete(self, job: tuple[Thread, Any, str, bool, Callable[[], Any]]) -> None:
        thread, sc, op, failed, finish = job
        del self._pending[sc]
        disk = self.disk
        if failed:
            disk._trace.event("disk-eio", disk._now(), disk.host, op, sc.fd)
            self._sched.throw(thread, OSError(errno.EIO, os.strerror(errno.EIO)))
            return
        try:
            result = finish()
        except OSError as exc:
            self._sched.throw(thread, exc)
            return
        self._sched.resume(thread, result)

    def _read(self, thread: Thread, sc: AioRead) -> None:
        def finish() -> int:
            name, node, _writable = self.filesystem.node(sc.fd)
            buf = memoryview(sc.buf).cast("B")
            got = node.data[sc.offset:sc.offset + len(buf)]
            buf[:len(got)] = got
            self.disk._trace.event("disk-read", self.disk._now(), self.disk.host, name, sc.offset, len(got))
            return len(got)
        self._start(thread, sc, "read", finish)

    def _write(self, thread: Thread, sc: AioWrite) -> None:
        def finish() -> int:
            name, node, writable = self.filesystem.node(sc.fd)
            if not writable:
                raise OSError(errno.EBADF, "write on a read-only descriptor")
            src = bytes(memoryview(sc.buf).cast("B"))
            end = sc.offset + len(src)
            if len(node.data) < sc.offset:
                node.data.extend(bytes(sc.offset - len(node.data)))
            node.data[sc.offset:end] = src
            self.disk._trace.packet(src, "disk-write", self.disk._now(), self.disk.host, name, sc.offset)
            return len(src)
        self._start(thread, sc, "write", finish)

    def _fsync(self, thread: Thread, sc: AioFsync) -> None:
        def finish() -> int:
            name, node, _writable = self.filesystem.node(sc.fd)
            node.durable = bytes(node.data)
            self.disk._trace.event("disk-fsync", self.disk._now(), self.disk.host, name, len(node.data))
            return 0
        self._start(thread, sc, "fsync", finish)

    def _close(self, thread: Thread, sc: AioClose) -> None:
        try:
            self.filesystem.close(sc.fd)
        except OSError as exc:
            self._sched.throw(thread, exc)
            return
        self._sched.resume(thread)

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """A cancelled or timed-out request is dropped: it never completes."""
        timer = self._pending.pop(syscall, None)
        if timer is not None:
            self._sched.cancel_call(timer)

    def busy(self) -> bool:
        """Whether a request is still to complete."""
        return bool(self._pending)

    def __repr__(self) -> str:
        return f"<SimDiskWorker {self.disk.host} pending={len(self._pending)}>"


__all__ = ["DiskParams", "SimDisk", "SimDiskWorker", "SimFileSystem"]
