"""Socket-to-socket splicing: iolib.nbio.splice (the non-blocking steps and
the pipe pool) and threadlib.io.splice (the loops, proxy(), the copy fallback).

Everything runs on real kernel sockets in one process: the proxy, its
clients and its backends are threadlib threads on one scheduler. Data is a
random 1 MiB block repeated with a block counter in front (cheap to make,
never periodic), checked with sha256 at both ends.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import os
import select
import socket
import struct
import time

import pytest

import threadlib
from iolib.nbio import WOULD_BLOCK
from iolib.nbio import splice as nb
from threadlib.io import sockio
from threadlib.io import splice as tsplice
from threadlib.lowlevel import uring_unavailable_reason

from ...waiting import until

# linux/sockios.h: bytes in a socket's send queue not yet sent.
SIOCOUTQNSD = 0x894B

pytestmark = pytest.mark.skipif(not nb.AVAILABLE, reason="splice(2) is Linux-only")
URING_REASON = uring_unavailable_reason()

MiB = 1 << 20
_BLOCK = os.urandom(MiB)


def pattern(size: int, seed: int = 0):
    """Yield ``size`` bytes as memoryviews of at most 1 MiB: the random
    block with an 8-byte (seed, counter) prefix per block."""
    buf = bytearray(_BLOCK)
    i = 0
    left = size
    while left > 0:
        struct.pack_into("<II", buf, 0, seed, i)
        n = min(left, MiB)
        yield memoryview(buf)[:n]
        left -= n
        i += 1


def pattern_digest(size: int, seed: int = 0) -> str:
    h = hashlib.sha256()
    for chunk in pattern(size, seed):
        h.update(chunk)
    return h.hexdigest()


def open_fds() -> set[str]:
    """This process's open fds as "fd -> what" (so an fd number reused for
    something else counts as new)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass  # the directory's own fd, gone already
    return out


def fd_kinds(fds) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for entry in fds:
        target = entry.split(" -> ", 1)[1]
        kind = target.split(":")[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def fds_before() -> set[str]:
    gc.collect()  # sockets other tests dropped must not close during ours
    return open_fds()


# ---------------------------------------------------------------------------
# helpers on threadlib


def send_pattern(conn, size: int, seed: int, half_close: bool = True):
    h = hashlib.sha256()
    for chunk in pattern(size, seed):
        h.update(chunk)
        yield from conn.sendall(chunk)
    if half_close:
        conn.shutdown(socket.SHUT_WR)
    return h.hexdigest()


def recv_all(conn, chunk: int = MiB):
    h = hashlib.sha256()
    n = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    while True:
        got = yield from conn.recv_into(buf)
        if not got:
            return n, h.hexdigest()
        h.update(view[:got])
        n += got


def start_proxy(backend_address, fallback=False, chunk_size=None, results=None, clients=None,
                handlers=None):
    """A listener whose every connection is proxied to backend_address by
    threadlib.io.splice.proxy; returns (listener, acceptor thread).  The
    proxy's client-side sockets are appended to `clients` and the threads
    serving each connection (which end once both sockets are closed) to
    `handlers`, if given."""
    listener = yield from sockio.listen(("127.0.0.1", 0))

    def one(client):
        if clients is not None:
            clients.append(client)
        upstream = yield from sockio.connect(backend_address)
        try:
            result = yield from tsplice.proxy(client, upstream, chunk_size, fallback=fallback)
            if results is not None:
                results.append(result)
        finally:
            client.close()
            upstream.close()

    def accept_loop():
        while True:
            client, _ = yield from listener.accept()
            handler = yield from threadlib.spawn(one(client))
            if handlers is not None:
                handlers.append(handler)

    acceptor = yield from threadlib.spawn(accept_loop())
    return listener, acceptor


def bidirectional(size_up: int, size_down: int, fallback: bool = False, chunk_size=None):
    """Client sends size_up, backend sends size_down, at the same time,
    through one proxied connection; returns what each side saw."""
    results = []
    out = {}

    def main():
        backend = yield from sockio.listen(("127.0.0.1", 0))
        listener, acceptor = yield from start_proxy(backend.address, fallback, chunk_size, results)

        def backend_side():
            conn, _ = yield from backend.accept()
            with conn:
                sender = yield from threadlib.spawn(send_pattern(conn, size_down, 2))
                out["backend_got"] = yield from recv_all(conn)
                out["backend_sent"] = yield from sender.join()

        b = yield from threadlib.spawn(backend_side())
        conn = yield from sockio.connect(listener.address)
        with conn:
            sender = yield from threadlib.spawn(send_pattern(conn, size_up, 1))
            out["client_got"] = yield from recv_all(conn)
            out["client_sent"] = yield from sender.join()
        yield from b.join()
        yield from until(lambda: results, what="the proxy's result")
        yield from acceptor.cancel()
        listener.close()
        backend.close()

    threadlib.run(main())
    return out, results[0]


# ---------------------------------------------------------------------------
# iolib.nbio.splice: the steps


def test_pipe_pair_steps_report_which_side_would_block():
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    for s in (a, b, c, d):
        s.setblocking(False)
    with nb.PipePair(64 * 1024) as pipe:
        assert pipe.capacity >= 64 * 1024 and pipe.clean
        # Empty source: SRC.
        assert pipe.fill_from(b.fileno(), MiB) is WOULD_BLOCK
        assert pipe.blocked == nb.SRC
        # Empty pipe: nothing to drain.
        assert pipe.drain_to(d.fileno()) is WOULD_BLOCK and pipe.blocked == nb.PIPE_EMPTY
        a.send(b"hello")
        assert pipe.fill_from(b.fileno(), MiB) == 5 and pipe.fill == 5 and pipe.blocked is None
        assert pipe.pending() == 5 and not pipe.clean
        assert pipe.drain_to(d.fileno()) == 5 and pipe.fill == 0 and pipe.clean
        assert c.recv(10) == b"hello"
        # End of file: 0.
        a.shutdown(socket.SHUT_WR)
        assert pipe.fill_from(b.fileno(), MiB) == 0
    for s in (a, b, c, d):
        s.close()


def test_pipe_full_is_told_apart_from_an_empty_socket():
    """Pipe capacity counts slots, not bytes: a one-page pipe holds one
    Unix-socket message however small. EAGAIN then means "pipe full"
    while the socket is still readable, and fill_from says so."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    for s in (a, b, c, d):
        s.setblocking(False)
    with nb.PipePair(4096) as pipe:
        assert pipe.capacity == 4096
        for i in range(3):
            a.send(b"m%d" % i)
        assert pipe.fill_from(b.fileno(), MiB) == 2  # one message, one slot
        assert pipe.fill_from(b.fileno(), MiB) is WOULD_BLOCK
        assert pipe.blocked == nb.PIPE_FULL and not pipe.writable()
        assert pipe.fill == 2  # only 2 bytes, yet full
        assert pipe.drain_to(d.fileno()) == 2 and pipe.writable()
        assert pipe.fill_from(b.fileno(), MiB) == 2
        assert pipe.drain_to(d.fileno()) == 2
        assert pipe.fill_from(b.fileno(), MiB) == 2
        assert pipe.drain_to(d.fileno()) == 2
        assert pipe.fill_from(b.fileno(), MiB) is WOULD_BLOCK and pipe.blocked == nb.SRC
        assert c.recv(100) == b"m0m1m2"
    for s in (a, b, c, d):
        s.close()


def test_destination_full_is_reported_and_a_failed_drain_leaves_the_pipe_dirty():
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    for s in (a, b, c, d):
        s.setblocking(False)
    d.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pipe = nb.PipePair(MiB)
    payload = os.urandom(256 * 1024)
    sent = 0
    while sent < len(payload):
        try:
            sent += a.send(payload[sent:])
        except BlockingIOError:
            break
    assert pipe.fill_from(b.fileno(), MiB) > 0
    while pipe.drain_to(d.fileno()) is not WOULD_BLOCK:
        pass
    assert pipe.blocked == nb.DST and pipe.fill > 0
    c.close()  # the destination's peer goes away with bytes still in the pipe
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        while pipe.drain_to(d.fileno()) is not WOULD_BLOCK:
            pass
    assert pipe.dirty and not pipe.clean
    pool = nb.PipePool(MiB)
    assert pool.put(pipe) is False and pipe.rfd == -1  # closed, never pooled
    assert pool.closed_dirty == 1 and len(pool) == 0
    for s in (a, b, d):
        s.close()


def test_pool_reuses_clean_pipes_and_checks_the_kernel_before_keeping_one():
    forgotten = []
    pool = nb.PipePool(64 * 1024, max_idle=2, forget=forgotten.append)
    p1, p2, p3 = pool.get(), pool.get(), pool.get()
    assert pool.created == 3
    assert pool.put(p1) and pool.put(p2)
    assert not pool.put(p3)  # over max_idle: closed
    assert p3.rfd == -1 and len(forgotten) == 2
    again = pool.get()
    assert again is p2 and pool.reused == 1
    # Clean by its own count, but bytes really sit in the pipe: refused.
    os.write(again.wfd, b"stray")
    assert again.fill == 0 and again.pending() == 5
    assert not pool.put(again) and again.rfd == -1
    # A pool inherited across fork never hands out the parent's pipes.
    pool._pid = -1
    fresh = pool.get()
    assert fresh is not p1 and p1.rfd == -1
    pool._pid = os.getpid()
    fresh.close()
    pool.close()
    assert len(pool) == 0


def test_no_pipe_to_be_had_means_copying_instead(monkeypatch):
    def no_pipe(self):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(nb.PipePool, "get", no_pipe)
    out, result = bidirectional(2 * MiB + 1, MiB)
    assert out["backend_got"] == (2 * MiB + 1, out["client_sent"])
    assert out["client_got"] == (MiB, out["backend_sent"])
    assert not result.zero_copy and result.error is None


def test_zero_copy_tells_which_path_is_used():
    a, b = sockio.socketpair()
    try:
        assert tsplice.AVAILABLE
        assert tsplice.zero_copy(a, b)
        assert not tsplice.zero_copy(a, b, fallback=True)
        assert not tsplice.zero_copy(a, object())  # not a sockio.Stream: copy loop
        assert not tsplice.zero_copy(FakeStream(a), b)
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------
# threadlib.io.splice: one direction


def test_splice_one_direction_over_unix_and_tcp_sockets():
    def main():
        out = {}
        for kind in ("unix", "tcp"):
            if kind == "unix":
                src_w, src = sockio.socketpair()
                dst, dst_r = sockio.socketpair()
            else:
                lst = yield from sockio.listen(("127.0.0.1", 0))
                src_w = yield from sockio.connect(lst.address)
                src, _ = yield from lst.accept()
                dst = yield from sockio.connect(lst.address)
                dst_r, _ = yield from lst.accept()
                lst.close()
            size = 3 * MiB + 12345
            sender = yield from threadlib.spawn(send_pattern(src_w, size, 7))
            stats = tsplice.Transfer()
            mover = yield from threadlib.spawn(tsplice.splice(src, dst, 64 * 1024, half_close=True, stats=stats))
            got = yield from recv_all(dst_r)
            moved = yield from mover.join()
            expect = yield from sender.join()
            out[kind] = (moved, got, expect, stats.zero_copy, stats.eof)
            for s in (src_w, src, dst, dst_r):
                s.close()
        return out

    for kind, (moved, (n, digest), expect, zc, eof) in threadlib.run(main()).items():
        assert moved == n == 3 * MiB + 12345, kind
        assert digest == expect, kind
        assert zc and eof, kind


def test_a_full_pipe_with_a_readable_source_never_waits_on_the_source():
    """Many small Unix-socket messages and a one-slot pipe: every fill
    after the first would hit "pipe full" if the loop filled twice. The
    transfer must finish without waiting on anything (the source is
    readable throughout, the destination has room)."""
    def main():
        yield from threadlib.sleep(0)
        pool = tsplice.pipe_pool(pipe_size=4096)
        assert pool.size == 4096
        src_w, src = sockio.socketpair()
        dst, dst_r = sockio.socketpair()
        for i in range(200):
            src_w.socket.send(b"%03d" % i)
        src_w.shutdown(socket.SHUT_WR)
        stats = tsplice.Transfer()
        with threadlib.timeout(10):  # a loop that waits on the source here stalls
            moved = yield from tsplice.splice(src, dst, stats=stats)
        dst.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := (yield from dst_r.recv(65536)):
            data += chunk
        for s in (src_w, src, dst, dst_r):
            s.close()
        return moved, stats.waits, data

    moved, waits, data = threadlib.run(main())
    assert moved == 600 and data == b"".join(b"%03d" % i for i in range(200))
    assert waits == 0


def test_the_loop_does_not_spin_waiting():
    """64 MiB through the splice path: the number of waits stays far below
    the number of pipe loads (the pipe-full spin made it tens of
    thousands per GiB)."""
    out, result = bidirectional(64 * MiB, 0)
    assert out["backend_got"] == (64 * MiB, out["client_sent"])
    assert result.zero_copy
    assert result.a_to_b.waits < 2000, result.a_to_b


# ---------------------------------------------------------------------------
# proxy(): both directions, half-close, resets


@pytest.mark.parametrize("size", [0, 1, 65535, MiB + 7, 16 * MiB + 3])
@pytest.mark.parametrize("fallback", [False, True], ids=["splice", "copy"])
def test_proxy_is_byte_exact_both_ways_at_once(size, fallback):
    down = size // 2 + 1 if size else 0
    out, result = bidirectional(size, down, fallback=fallback)
    assert out["backend_got"] == (size, out["client_sent"])
    assert out["client_got"] == (down, out["backend_sent"])
    assert out["client_sent"] == pattern_digest(size, 1)
    assert result.a_to_b.bytes == size and result.b_to_a.bytes == down
    assert result.error is None and result.a_to_b.eof and result.b_to_a.eof
    assert result.zero_copy is (not fallback)


def test_proxy_256_mib_both_ways_at_once():
    size = 256 * MiB
    out, result = bidirectional(size, size)
    assert out["backend_got"] == (size, pattern_digest(size, 1)) == (size, out["client_sent"])
    assert out["client_got"] == (size, pattern_digest(size, 2)) == (size, out["backend_sent"])
    assert result.zero_copy and result.error is None


def test_fallback_forced_gives_the_same_bytes_as_splice():
    seen = {}
    for fallback in (False, True):
        out, result = bidirectional(5 * MiB + 99, 3 * MiB + 1, fallback=fallback, chunk_size=100_000)
        seen[fallback] = (out["backend_got"], out["client_got"], result.zero_copy)
    assert seen[False][:2] == seen[True][:2]
    assert seen[False][0] == (5 * MiB + 99, pattern_digest(5 * MiB + 99, 1))
    assert seen[False][1] == (3 * MiB + 1, pattern_digest(3 * MiB + 1, 2))
    assert seen[False][2] is True and seen[True][2] is False


class FakeStream:
    """A connection that is not a sockio.Stream (like a tcpsockio one):
    only the generic methods, each of which may wait."""

    def __init__(self, inner):
        self.inner = inner

    def recv_into(self, buffer, nbytes=0, timeout=None):
        return (yield from self.inner.recv_into(buffer, nbytes))

    def sendall(self, data, timeout=None):
        return (yield from self.inner.sendall(data))

    def shutdown(self, how=socket.SHUT_WR):
        self.inner.shutdown(how)

    def close(self):
        self.inner.close()


def test_proxy_between_a_kernel_socket_and_another_kind_uses_the_copy_loop():
    def main():
        a_peer, a = sockio.socketpair()
        b, b_peer = sockio.socketpair()
        fb = FakeStream(b)
        assert not tsplice.zero_copy(a, fb)
        t = yield from threadlib.spawn(tsplice.proxy(a, fb))
        s1 = yield from threadlib.spawn(send_pattern(a_peer, 2 * MiB + 5, 1))
        s2 = yield from threadlib.spawn(send_pattern(b_peer, MiB, 2))
        got_b = yield from recv_all(b_peer)
        got_a = yield from recv_all(a_peer)
        result = yield from t.join()
        sent1, sent2 = (yield from s1.join()), (yield from s2.join())
        for s in (a_peer, a, b, b_peer):
            s.close()
        return got_b, got_a, sent1, sent2, result

    got_b, got_a, sent1, sent2, result = threadlib.run(main())
    assert got_b == (2 * MiB + 5, sent1) and got_a == (MiB, sent2)
    assert not result.zero_copy and result.error is None


def test_half_close_is_passed_on_and_the_other_direction_carries_on():
    """The client sends a request and shuts down its sending side; the
    backend reads to end of file, *then* answers and closes: the answer
    must still come back through the proxy."""
    for fallback in (False, True):
        results = []

        def main():
            backend = yield from sockio.listen(("127.0.0.1", 0))
            listener, acceptor = yield from start_proxy(backend.address, fallback, None, results)

            def backend_side():
                conn, _ = yield from backend.accept()
                request = b""
                while chunk := (yield from conn.recv(65536)):
                    request += chunk
                # The client's EOF arrived while our sending side is open.
                yield from conn.sendall(b"got %d bytes" % len(request))
                yield from threadlib.sleep(0.05)
                yield from conn.sendall(b"; bye")
                conn.close()

            b = yield from threadlib.spawn(backend_side())
            conn = yield from sockio.connect(listener.address)
            yield from conn.sendall(b"x" * 100_000)
            conn.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := (yield from conn.recv(65536, timeout=5)):
                reply += chunk
            conn.close()
            yield from b.join()
            yield from until(lambda: results, what="the proxy's result")
            yield from acceptor.cancel()
            listener.close()
            backend.close()
            return reply

        assert threadlib.run(main()) == b"got 100000 bytes; bye"
        (result,) = results
        assert result.error is None and result.a_to_b.eof and result.b_to_a.eof
        assert (result.a_to_b.bytes, result.b_to_a.bytes) == (100_000, 21)


def test_small_messages_are_not_held_back():
    """Request/response ping-pong through the splice path: SPLICE_F_MORE
    on the last chunk would cork the proxy's socket, holding each answer
    back (~200 ms) unsent.  Checked without a clock: each answer must reach
    the client before anything sits unsent in the proxy's socket to it
    (SIOCOUTQNSD: bytes queued but not yet sent)."""
    proxy_sides = []

    def unsent(sock):
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0" * 4))[0]

    def main():
        backend = yield from sockio.listen(("127.0.0.1", 0))
        listener, acceptor = yield from start_proxy(backend.address, clients=proxy_sides)

        def echo():
            conn, _ = yield from backend.accept()
            with conn:
                while data := (yield from conn.recv(100)):
                    yield from conn.sendall(data)

        yield from threadlib.spawn(echo())
        conn = yield from sockio.connect(listener.address)
        for i in range(50):
            yield from conn.sendall(b"ping %02d" % i)
            # Let the proxy and the echo run until the answer is readable;
            # corked, it would sit unsent in the proxy's socket instead.
            for _ in range(100_000):
                if select.select([conn], [], [], 0)[0]:
                    break
                if proxy_sides and unsent(proxy_sides[0]):
                    raise AssertionError(f"answer {i} held back unsent in the proxy's socket")
                yield from threadlib.sleep(0.0001)
            assert (yield from conn.recv_exactly(7, timeout=30)) == b"ping %02d" % i
        conn.close()
        yield from acceptor.cancel()
        listener.close()
        backend.close()

    threadlib.run(main())
    assert len(proxy_sides) == 1


@pytest.mark.parametrize("who", ["backend", "client"])
@pytest.mark.parametrize("fallback", [False, True], ids=["splice", "copy"])
@pytest.mark.parametrize("io", ["default", "uring"])
def test_a_reset_mid_stream_ends_the_pair_and_leaks_nothing(who, fallback, io, monkeypatch):
    # With io="uring" the scheduler idles in an io_uring ring: a socket
    # closed while its poll request's wake-up was being handled once stayed
    # open in the kernel (the request held it), so the reset never left
    # and this test hung.
    if io == "uring":
        if URING_REASON is not None:
            pytest.skip(f"io_uring unavailable here: {URING_REASON}")
        monkeypatch.setenv("THREADLIB_IO", "uring")
    """One peer resets while data flows both ways: proxy() returns with the
    error (it does not hang on the other direction), every socket and pipe
    is closed, and no fd is left behind: dirty pipes are closed, clean ones
    wait in the pool, which is closed with the scheduler."""
    before = fds_before()
    seen = {}

    def main():
        results, handlers = [], []
        received = {"client": 0, "backend": 0}
        backend = yield from sockio.listen(("127.0.0.1", 0))
        listener, acceptor = yield from start_proxy(backend.address, fallback, None, results,
                                                    handlers=handlers)
        pool = tsplice.pipe_pool()
        mid_run = {}

        def endless(conn, seed):
            try:
                while True:
                    for chunk in pattern(8 * MiB, seed):
                        yield from conn.sendall(chunk)
            except OSError as exc:
                return exc

        def drain(conn, side):
            try:
                while chunk := (yield from conn.recv(MiB)):
                    received[side] += len(chunk)
            except OSError as exc:
                return exc

        def flowing_both_ways():
            # Mid-stream: a few MiB have come through in each direction.
            return (yield from until(lambda: min(received.values()) >= 4 * MiB,
                                     what="data flowing both ways through the proxy"))

        def reset(conn):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

        def backend_side():
            conn, _ = yield from backend.accept()
            w = yield from threadlib.spawn(endless(conn, 2))
            r = yield from threadlib.spawn(drain(conn, "backend"))
            if who == "backend":
                yield from flowing_both_ways()
                yield from w.cancel()
                yield from r.cancel()
                reset(conn)
            else:
                yield from threadlib.join_all([w, r])
                conn.close()

        b = yield from threadlib.spawn(backend_side())
        conn = yield from sockio.connect(listener.address)
        w = yield from threadlib.spawn(endless(conn, 1))
        r = yield from threadlib.spawn(drain(conn, "client"))
        if who == "client":
            yield from flowing_both_ways()
            yield from w.cancel()
            yield from r.cancel()
            reset(conn)
        else:
            yield from threadlib.join_all([w, r])
            conn.close()
        with threadlib.timeout(30):
            yield from b.join()
            # The proxy's thread has returned its result and closed both its sockets.
            yield from threadlib.join_all(handlers)
        assert len(results) == 1
        mid_run["fds"] = open_fds()
        mid_run["pooled"] = len(pool)

        # The next pair on this scheduler takes its pipes from the pool: had
        # a dirty pipe gone back, its stranded bytes would show up here.
        def backend_again():
            conn, _ = yield from backend.accept()
            with conn:
                got = yield from recv_all(conn)
                yield from conn.sendall(repr(got).encode())

        b2 = yield from threadlib.spawn(backend_again())
        conn = yield from sockio.connect(listener.address)
        with conn, threadlib.timeout(10):
            sent = yield from send_pattern(conn, 3 * MiB, 5)
            reply = yield from conn.recv(1000)
        yield from b2.join()
        seen["again"] = (reply, repr((3 * MiB, sent)).encode())
        yield from acceptor.cancel()
        listener.close()
        backend.close()
        seen["result"] = results[0]
        seen.update(mid_run)

    threadlib.run(main())
    result = seen["result"]
    assert isinstance(result.error, (ConnectionResetError, BrokenPipeError)), result
    assert result.a_to_b.bytes > 0 and result.b_to_a.bytes > 0
    # While the scheduler ran: only the two listeners, the scheduler's own
    # fds, and the clean pipes in the pool (2 fds each) were left.
    extra = seen["fds"] - before
    kinds = fd_kinds(extra)
    assert kinds.get("socket", 0) <= 2 + 2, kinds  # 2 listeners (+ scheduler wake-up fds)
    assert kinds.get("pipe", 0) == 2 * seen["pooled"], kinds
    reply, expected = seen["again"]
    assert reply == expected
    # After: nothing at all.
    assert open_fds() - before == set()


def test_cancelling_proxy_ends_both_directions_and_closes_dirty_pipes():
    before = fds_before()

    def main():
        a_peer, a = sockio.socketpair()
        b, b_peer = sockio.socketpair()
        pool = tsplice.pipe_pool()
        # Nobody reads b_peer: a->b fills b's buffers and sits with bytes
        # in its pipe, waiting for b to be writable.
        t = yield from threadlib.spawn(tsplice.proxy(a, b))
        s = yield from threadlib.spawn(send_pattern(a_peer, 64 * MiB, 1))

        def all_full():
            # b cannot take more and neither can a_peer: every buffer on the
            # way, the proxy's pipe included, holds bytes.
            return not select.select([], [b, a_peer], [], 0)[1]

        # Full at two looks with the poller run between them: not a moment
        # before the proxy had its turn to fill its pipe.
        yield from until(lambda: all_full(), what="the a->b path full")
        yield from threadlib.sleep(0.01)
        yield from until(lambda: all_full(), what="the a->b path full")
        yield from t.cancel()
        assert t.state == "cancelled"
        yield from s.cancel()
        for sock in (a_peer, a, b, b_peer):
            sock.close()
        return pool.closed_dirty, len(pool)

    closed_dirty, pooled = threadlib.run(main())
    assert closed_dirty >= 1  # the a->b pipe had bytes in it: closed, not pooled
    assert pooled <= 1
    assert open_fds() - before == set()


def test_500_concurrent_proxied_connections():
    n = 500
    size = 64 * 1024

    def main():
        from apps.proxy import ProxyServer

        backend = yield from sockio.listen(("127.0.0.1", 0), backlog=1024)
        server = ProxyServer(backend.address, connect_timeout=10)
        listener = yield from sockio.listen(("127.0.0.1", 0), backlog=1024)
        acceptor = yield from threadlib.spawn(server.accept_loop(listener))
        all_connected = threadlib.Event()
        connected = [0]
        peak = [0]

        def echo(conn):
            with conn:
                while data := (yield from conn.recv(65536)):
                    yield from conn.sendall(data)

        def backend_loop():
            while True:
                conn, _ = yield from backend.accept()
                yield from threadlib.spawn(echo(conn))

        def client(i):
            conn = yield from sockio.connect(listener.address, timeout=10)
            with conn:
                # One round trip: the proxy has accepted and connected this
                # one. Nobody starts before all n are proxied at once.
                yield from conn.sendall(b"hi")
                assert (yield from conn.recv_exactly(2)) == b"hi"
                connected[0] += 1
                if connected[0] == n:
                    peak[0] = len(server.active)
                    all_connected.set()
                yield from all_connected.wait()
                sender = yield from threadlib.spawn(send_pattern(conn, size, i))
                got = yield from recv_all(conn, 65536)
                sent = yield from sender.join()
                return got == (size, sent)

        b = yield from threadlib.spawn(backend_loop())
        with threadlib.timeout(120):
            clients = []
            for i in range(n):
                clients.append((yield from threadlib.spawn(client(i))))
            oks = yield from threadlib.join_all(clients)
            yield from server.drain(None)
        yield from acceptor.cancel()
        yield from b.cancel()
        listener.close()
        backend.close()
        return oks, peak[0], server

    oks, peak, server = threadlib.run(main())
    assert all(oks) and len(oks) == n
    assert peak == n  # all 500 were in flight through the proxy at once
    assert server.finished == n and server.bytes_up == server.bytes_down == n * (size + 2)
