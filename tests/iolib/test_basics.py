"""iolib's small mechanisms, on real fds: epoll, nbio's would-block
markers, and chunk's buffers."""

import ctypes
import os
import socket

import pytest

from iolib import chunk, nbio
from iolib.epoll import EPOLLIN, EPOLLOUT, Epoll


def test_epoll_reports_readiness_and_never_blocks_with_zero_timeout():
    a, b = socket.socketpair()
    ep = Epoll()
    try:
        ep.register(a.fileno(), EPOLLIN)
        assert ep.poll(0) == []
        b.send(b"x")
        assert ep.poll(1) == [(a.fileno(), EPOLLIN)]
        ep.modify(a.fileno(), EPOLLOUT)
        assert ep.poll(0) == [(a.fileno(), EPOLLOUT)]
        ep.unregister(a.fileno())
        a.close()
        ep.unregister(12345)  # unknown or closed fds are ignored
    finally:
        ep.close()
        b.close()
    assert ep.closed


def test_nbio_returns_would_block_instead_of_raising():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        assert nbio.recv(a, 10) is nbio.WOULD_BLOCK
        assert not nbio.WOULD_BLOCK
        assert nbio.send(b, b"hello") == 5
        assert nbio.recv(a, 10) == b"hello"
        buf = bytearray(4)
        assert nbio.recv_into(a, buf) is nbio.WOULD_BLOCK
        # fill the send buffer: send eventually says WOULD_BLOCK
        sent = 0
        while (n := nbio.send(b, b"z" * 65536)) is not nbio.WOULD_BLOCK:
            sent += n
        assert sent > 0
        b.close()
        while nbio.recv(a, 1 << 20):
            pass
        assert nbio.recv(a, 10) == b""  # EOF is data, not WOULD_BLOCK
    finally:
        a.close()


def test_nbio_connect_and_accept():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    client = socket.socket()
    client.setblocking(False)
    try:
        assert nbio.accept(listener) is nbio.WOULD_BLOCK
        result = nbio.connect(client, listener.getsockname())
        assert result is None or result is nbio.WOULD_BLOCK
        import select

        select.select([], [client], [], 5)
        nbio.connect_result(client, listener.getsockname())  # no error
        select.select([listener], [], [], 5)
        fd, addr = nbio.accept(listener)
        os.close(fd)
        assert addr == client.getsockname()
    finally:
        client.close()
        listener.close()
    refused = socket.socket()
    refused.setblocking(False)
    try:
        # the listener is closed now: nothing listens on its port
        with pytest.raises(ConnectionRefusedError):
            if nbio.connect(refused, ("127.0.0.1", port)) is nbio.WOULD_BLOCK:
                import select

                select.select([], [refused], [], 5)
                nbio.connect_result(refused, ("127.0.0.1", port))
    finally:
        refused.close()


def test_aligned_buffer_is_page_aligned_and_checks_arguments():
    buf = chunk.AlignedBuffer(5000)
    try:
        assert buf.size == 8192 and len(buf.view) == 8192
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf.view))
        assert address % chunk.PAGE_SIZE == 0
        buf.view[:5] = b"hello"
        assert bytes(buf.view[:5]) == b"hello"
    finally:
        buf.close()
    with pytest.raises(ValueError, match="positive"):
        chunk.AlignedBuffer(0)
    with pytest.raises(ValueError, match="power of two"):
        chunk.AlignedBuffer(100, alignment=3000)
    assert chunk.align_up(4097, 4096) == 8192 and chunk.align_down(4097, 4096) == 4096


def test_chunk_views_and_splits_without_copying():
    data = bytearray(b"0123456789")
    whole = chunk.Chunk(data, 2, 6)
    head, tail = whole.split(4)
    assert bytes(head) == b"2345" and bytes(tail) == b"67"
    data[2] = ord("X")  # a view, not a copy
    assert bytes(head) == b"X345"
    with pytest.raises(ValueError, match="outside"):
        chunk.Chunk(data, 8, 5)


def test_buffer_pool_recycles_and_bounds_what_it_keeps():
    pool = chunk.BufferPool(size=1024, keep=2)
    a, b, c = pool.take(), pool.take(), pool.take()
    for buf in (a, b, c):
        pool.give(buf)
    assert pool.take() is not None and len(pool._free) == 1  # only 2 were kept
    pool.give(bytearray(10))  # wrong size: not kept
    assert len(pool._free) == 1
