"""An in-memory ``threadlib.net.Stream`` whose peer is a script, so the
code under test runs its real read and write paths without a socket.

``ScriptedStream(next_chunk)`` answers each ``recv`` with what
``next_chunk()`` returns (``b""`` is the peer's EOF, and stays so), keeps
every byte written in ``written``, and records what a stream must never see:
a write after its own ``shutdown(SHUT_WR)`` or after ``close``. No call ever
waits: each returns at once through a generator, as a ready socket would.
It must never be used outside a fuzz target or a test.
"""

from __future__ import annotations

import errno
import os
import socket
import types
from typing import Any, Callable

import threadlib


class ScriptedStream:
    """A ``threadlib.net.Stream`` fed by ``next_chunk`` and writing to memory."""

    def __init__(self, next_chunk: Callable[[], bytes], peer: Any = ("192.0.2.7", 40000)) -> None:
        self._next_chunk = next_chunk
        self._peer = peer
        self._rest = b""
        self._eof = False
        self.written = bytearray()
        self.write_shut = False
        self.read_shut = False
        self._closed = False
        self.misuse: list[str] = []  # what the code under test did that a stream forbids
        self.closed_event = threadlib.Event()

    @property
    def local_address(self) -> Any:
        """A fixed documentation address."""
        return ("192.0.2.1", 80)

    @property
    def peer_address(self) -> Any:
        """The address given at construction."""
        return self._peer

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def _take(self, max_bytes: int) -> bytes:
        if self._closed:
            self.misuse.append("read after close")
            raise OSError(errno.EBADF, "the stream is closed")
        if not self._rest and not self._eof:
            chunk = self._next_chunk()
            if chunk:
                self._rest = bytes(chunk)
            else:
                self._eof = True
        data, self._rest = self._rest[:max_bytes], self._rest[max_bytes:]
        return data

    @types.coroutine
    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Any:
        """The next bytes of the script, ``b""`` at its end."""
        return self._take(max_bytes)
        yield  # a generator that never waits

    @types.coroutine
    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> Any:
        """Like ``recv``, into ``buffer``."""
        view = memoryview(buffer).cast("B")
        data = self._take(nbytes or len(view))
        view[:len(data)] = data
        return len(data)
        yield

    def _put(self, data: Any) -> int:
        if self._closed:
            self.misuse.append("write after close")
            raise OSError(errno.EBADF, "the stream is closed")
        if self.write_shut:
            self.misuse.append("write after shutdown(SHUT_WR)")
            raise BrokenPipeError(errno.EPIPE, "write after shutdown")
        view = memoryview(data).cast("B")
        self.written += view
        return len(view)

    @types.coroutine
    def send(self, data: Any, timeout: float | None = None) -> Any:
        """Takes all of ``data``."""
        return self._put(data)
        yield

    @types.coroutine
    def sendall(self, data: Any, timeout: float | None = None) -> Any:
        """Takes all of ``data``."""
        self._put(data)
        return None
        yield

    @types.coroutine
    def sendfile(self, fd: int, offset: int = 0, count: int | None = None, timeout: float | None = None) -> Any:
        """Copies ``count`` bytes of ``fd`` from ``offset`` (fewer at its end)."""
        if count is None:
            count = os.fstat(fd).st_size - offset
        sent = 0
        while sent < count:
            piece = os.pread(fd, count - sent, offset + sent)
            if not piece:
                break
            sent += self._put(piece)
        return sent
        yield

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Half-close: no more writes (SHUT_WR) or reads (SHUT_RD)."""
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self.write_shut = True
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self.read_shut = True

    def close(self) -> None:
        """Close; wakes whoever waits on ``closed_event``."""
        self._closed = True
        self.closed_event.set()

    def __enter__(self) -> ScriptedStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def chunks_of(data: bytes, size: int) -> Callable[[], bytes]:
    """A ``next_chunk`` giving ``data`` in ``size``-byte pieces (all at once for 0)."""
    pieces = [data] if size <= 0 else [data[i:i + size] for i in range(0, len(data), size)]
    pieces.reverse()

    def next_chunk() -> bytes:
        return pieces.pop() if pieces else b""

    return next_chunk
