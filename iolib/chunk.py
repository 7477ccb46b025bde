"""Buffers: memoryview slicing, a buffer pool, and page-aligned buffers.

A Chunk is a window (offset, length) on a larger buffer, sliced without
copying. AlignedBuffer is mmap-backed, so its address is page aligned, as
O_DIRECT and Linux AIO require (a bytearray's address is not). BufferPool
recycles fixed-size buffers so hot loops do not allocate. Nothing here does
IO or holds a lock.
"""

from __future__ import annotations

import mmap
from typing import Any

PAGE_SIZE = mmap.PAGESIZE


class AlignedBuffer:
    """A writable, page-aligned buffer of at least ``size`` bytes (rounded up
    to ``alignment``). Supports the buffer protocol through ``view``."""

    __slots__ = ("_map", "size", "view")

    def __init__(self, size: int, alignment: int = PAGE_SIZE) -> None:
        if size <= 0:
            raise ValueError(f"buffer size must be positive, got {size}")
        if alignment <= 0 or alignment & (alignment - 1) or PAGE_SIZE % alignment:
            raise ValueError(f"alignment must be a power of two dividing {PAGE_SIZE}, got {alignment}")
        rounded = -(-size // alignment) * alignment
        self._map = mmap.mmap(-1, rounded, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.size = rounded
        self.view = memoryview(self._map)

    def __len__(self) -> int:
        return self.size

    def __buffer__(self, flags: int) -> memoryview:  # Python 3.12+ buffer protocol
        return self.view

    def close(self) -> None:
        self.view.release()
        self._map.close()


def align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


class Chunk:
    """``length`` bytes at ``offset`` in ``buffer``, viewed without copying."""

    __slots__ = ("buffer", "offset", "length")

    def __init__(self, buffer: Any, offset: int = 0, length: int | None = None) -> None:
        total = len(buffer)
        if length is None:
            length = total - offset
        if offset < 0 or length < 0 or offset + length > total:
            raise ValueError(f"chunk [{offset}, {offset}+{length}) outside a buffer of {total} bytes")
        self.buffer = buffer
        self.offset = offset
        self.length = length

    def view(self) -> memoryview:
        return memoryview(self.buffer)[self.offset : self.offset + self.length]

    def split(self, n: int) -> tuple["Chunk", "Chunk"]:
        """The first ``n`` bytes and the rest, both still views of the buffer."""
        n = max(0, min(n, self.length))
        return Chunk(self.buffer, self.offset, n), Chunk(self.buffer, self.offset + n, self.length - n)

    def __len__(self) -> int:
        return self.length

    def __bytes__(self) -> bytes:
        return bytes(self.view())


class BufferPool:
    """Fixed-size bytearrays handed out and taken back; at most ``keep``
    free buffers are retained, so a burst does not pin memory forever."""

    __slots__ = ("size", "keep", "_free")

    def __init__(self, size: int = 65536, keep: int = 64) -> None:
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        if len(buffer) == self.size and len(self._free) < self.keep:
            self._free.append(buffer)
