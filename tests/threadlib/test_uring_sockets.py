"""Completion-based sockets on the io_uring worker, against real sockets:
on a scheduler built from ``uring_workers()`` sockio's streams receive
through one multishot IORING_OP_RECV each into provided buffers (or a
request per wait) and finish a ``sendall`` through IORING_OP_SEND,
its listeners take connections through one multishot accept; a recv
cancelled while its request is in flight loses no byte; a feature the
kernel lacks (or ``THREADLIB_URING_DISABLE`` names) falls back to the
readiness path, alone, with one log line naming it."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import threadlib
from tests import REPO_ROOT
from tests.waiting import until
from threadlib.io import sockio
from threadlib.lowlevel import Scheduler, UringWorker, uring_unavailable_reason, uring_workers

REASON = uring_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"io_uring unavailable here: {REASON}")


def uring_scheduler() -> Scheduler:
    sched = Scheduler(workers=uring_workers())
    assert isinstance(sched.worker(UringWorker), UringWorker)
    return sched


def features() -> frozenset[str]:
    return UringWorker().features


needs_recv_send = pytest.mark.skipif(REASON is None and "recv_send" not in features(),
                                     reason="this kernel's io_uring has no IORING_OP_RECV/SEND")
needs_multishot_accept = pytest.mark.skipif(REASON is None and "multishot_accept" not in features(),
                                            reason="this kernel's io_uring has no multishot accept")


def ring_info() -> dict[str, object]:
    """The kernel's own account of the scheduler's ring (/proc fdinfo):
    SqHead (entries it has taken) and the ops of its pending requests."""
    fd = threadlib.current_scheduler().worker(UringWorker).poller.fileno()
    with open(f"/proc/self/fdinfo/{fd}") as f:
        text = f.read()
    info: dict[str, object] = {"ops": []}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("SqHead", "SqTail", "CqHead", "CqTail"):
            info[key] = int(value)
        elif line.startswith("  op="):
            info["ops"].append(int(line.split("op=")[1].split(",")[0]))  # type: ignore[union-attr]
    return info


def submitted() -> bool:
    info = ring_info()
    return info["SqHead"] == info["SqTail"]


def reaped() -> bool:
    info = ring_info()
    return submitted() and info["CqHead"] == info["CqTail"]


IORING_OP_ACCEPT = 13
IORING_OP_RECV = 27


@needs_recv_send
@needs_multishot_accept
def test_sockets_on_a_uring_scheduler_move_bytes_exactly_through_completions():
    payload = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)  # 8 MiB: sendall must wait

    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        assert type(listener) is sockio.UringListener

        def server():
            conn, _ = yield from listener.accept()
            assert type(conn) is sockio.UringStream
            with conn:
                got = bytearray()
                buf = bytearray(50_000)
                while True:
                    n = yield from conn.recv_into(buf)
                    if n == 0:
                        break
                    got += buf[:n]
                yield from conn.sendall(bytes(got))  # 8 MiB back: more than the socket buffers hold

        srv = yield from threadlib.spawn(server())
        conn = yield from sockio.connect(listener.address)
        assert type(conn) is sockio.UringStream
        yield from conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        echoed = bytearray()
        while chunk := (yield from conn.recv(1 << 20)):
            echoed += chunk
        conn.close()
        yield from srv.join()
        listener.close()
        return bytes(echoed)

    assert uring_scheduler().run(main()) == payload


@needs_multishot_accept
def test_one_multishot_accept_request_takes_every_connection():
    n = 40

    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0), backlog=n)
        clients = []

        def acceptor():
            taken = []
            for _ in range(n):
                conn, addr = yield from listener.accept()
                assert addr[0] == "127.0.0.1"
                taken.append(conn)
            return taken

        first = yield from threadlib.spawn(acceptor())
        # The acceptor waits: the ring holds its one accept request.
        yield from until(lambda: ring_info()["ops"].count(IORING_OP_ACCEPT) == 1, what="the accept request")
        before = ring_info()["SqHead"]
        for _ in range(n):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(listener.address)
            clients.append(c)
        taken = yield from first.join()
        after = ring_info()["SqHead"]
        assert len(taken) == n
        # No new accept per connection: the one request delivered all of them.
        assert after - before <= 2, (before, after)
        peers = sorted(c.getsockname()[1] for c in clients)
        assert sorted(t.peer_address[1] for t in taken) == peers
        for t in taken:
            t.close()
        for c in clients:
            c.close()
        listener.close()

    uring_scheduler().run(main())


@needs_multishot_accept
def test_a_cancelled_accept_leaves_the_connection_for_the_next():
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        waiting = yield from threadlib.spawn(listener.accept())
        yield from until(lambda: ring_info()["ops"].count(IORING_OP_ACCEPT) == 1, what="the accept request")
        client = socket.create_connection(listener.address)
        # Cancel at once: the multishot request may already have taken the
        # connection (it is then queued for the next accept) or not.
        yield from waiting.cancel()
        conn, addr = yield from listener.accept(timeout=10)
        assert addr == client.getsockname()
        client.sendall(b"here")
        assert (yield from conn.recv(10, timeout=10)) == b"here"
        conn.close()
        client.close()
        listener.close()

    uring_scheduler().run(main())


@needs_recv_send
def test_recvs_cancelled_while_in_flight_lose_and_reorder_no_byte():
    # A reader waits in a ring recv; the peer sends a chunk (the kernel's
    # recv request takes it and posts its completion as the send returns);
    # the reader is cancelled after 0..3 scheduler passes: before its
    # completion was reaped (the request's bytes have no reader), after
    # it was reaped but before the reader ran, or after it returned. Every
    # byte must come out, in order, through the recvs that follow, whether
    # they adopt the cancelled request or find what it left.
    rounds = 150

    def main():
        a, b = sockio.socketpair()
        assert type(a) is sockio.UringStream
        peer = b.socket
        peer.setblocking(True)
        sent = bytearray()
        received = bytearray()
        for i in range(rounds):
            reader = yield from threadlib.spawn(a.recv(1000))
            # The reader waits and the kernel has its recv request.
            yield from until(lambda: reader.waiting_on is not None and submitted(), what="the recv submitted")
            chunk = hashlib.sha256(str(i).encode()).digest() * (1 + i % 3)
            peer.sendall(chunk)
            sent += chunk
            for _ in range(i % 4):
                yield from threadlib.sleep(0)
            if not (yield from reader.cancel()):  # it had ended: its recv returned
                received += reader.result()
            if i % 2:
                # Let the scheduler reap the request's completion before the
                # next recv (which otherwise adopts the request in flight).
                yield from until(reaped, what="the completions reaped")
            # Drain what is there now (bounded: at most what was sent).
            while len(received) < len(sent):
                got = yield from a.recv(7, timeout=10)
                received += got
        a.close()
        b.close()
        return bytes(sent), bytes(received)

    sent, received = uring_scheduler().run(main())
    assert received == sent


@needs_recv_send
def test_a_timed_out_recv_keeps_what_arrives_late_for_the_next_recv():
    def main():
        a, b = sockio.socketpair()
        with pytest.raises(TimeoutError):
            yield from a.recv(100, timeout=0.01)
        b.socket.send(b"late")
        b.socket.send(b" and more")
        got = b""
        while len(got) < len(b"late and more"):
            got += yield from a.recv(3, timeout=10)
        assert got == b"late and more"
        b.close()
        assert (yield from a.recv(10, timeout=10)) == b""
        a.close()

    uring_scheduler().run(main())


@needs_recv_send
def test_closing_a_socket_with_a_recv_in_flight_really_closes_it():
    def main():
        a, b = sockio.socketpair()
        reader = yield from threadlib.spawn(a.recv(10))
        yield from until(lambda: ring_info()["ops"].count(IORING_OP_RECV) == 1, what="the recv request")
        a.close()
        with pytest.raises(OSError):
            yield from reader.join()
        # The ring's request held the socket; it is cancelled at close, so
        # the peer sees the end of the stream.
        assert (yield from b.recv(10, timeout=10)) == b""
        b.close()

    uring_scheduler().run(main())


_FEATURE_CHILD = textwrap.dedent("""
    import logging
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    from threadlib.io import sockio
    from threadlib.lowlevel import Scheduler, uring_workers
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        a, b = sockio.socketpair()
        b.socket.send(b"x")
        got = yield from a.recv(1)
        print(type(listener).__name__, type(a).__name__, got.decode())
    for _ in range(2):  # a second scheduler says nothing new
        Scheduler(workers=uring_workers()).run(main())
""")


@pytest.mark.parametrize("off, expected", [
    ("", "UringListener UringStream x"),
    ("multishot_accept", "Listener UringStream x"),
    ("recv_send", "UringListener Stream x"),
    ("recv_send,multishot_accept", "Listener Stream x"),
    ("multishot_recv", "UringListener UringStream x"),
])
def test_each_socket_feature_falls_back_alone_and_says_so_once(off, expected):
    have = features()
    env = dict(os.environ, THREADLIB_URING_DISABLE=off, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", _FEATURE_CHILD], env=env, capture_output=True, text=True,
                         timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    missing = {n for n in off.split(",") if n} | ({"recv_send", "multishot_accept", "multishot_recv"} - have)
    if "recv_send" in missing:
        expected = expected.replace("UringStream", "Stream")
    if "multishot_accept" in missing:
        expected = expected.replace("UringListener", "Listener")
    assert out.stdout.splitlines() == [expected] * 2
    logs = [line for line in out.stderr.splitlines() if line.startswith("LOG")]
    said = missing - {"multishot_recv"} if "recv_send" in missing else missing  # said with recv_send
    assert len(logs) == len(said), out.stderr  # one line per feature left out, once per process
    for name in filter(None, off.split(",")):
        fallback = ("a recv that waits submits a request each time" if name == "multishot_recv"
                    else "sockets use readiness for it")
        assert f"LOG threadlib: io_uring without {name} (disabled by THREADLIB_URING_DISABLE); {fallback}" in logs, \
            out.stderr


def test_a_bad_feature_name_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("THREADLIB_URING_DISABLE", "recv_send,zerocopy")
    with pytest.raises(ValueError, match=r"THREADLIB_URING_DISABLE must be 'all' or a comma list of "
                                         r"recv_send, multishot_accept, multishot_recv, "
                                         r"got 'recv_send,zerocopy' \(zerocopy unknown\)"):
        UringWorker()


needs_multishot_recv = pytest.mark.skipif(REASON is None and "multishot_recv" not in features(),
                                          reason="this kernel's io_uring has no multishot receive")


@needs_multishot_recv
def test_one_multishot_receive_takes_every_arrival_in_order_with_no_new_request():
    """The first recv that waits arms one multishot receive; what arrives
    later, whether a thread waits or not, is taken from the provided
    buffers in order, and later recvs get it with no new request."""
    def main():
        a, b = sockio.socketpair()
        assert type(a) is sockio.UringStream
        reader = yield from threadlib.spawn(a.recv(100))
        yield from until(lambda: ring_info()["ops"].count(IORING_OP_RECV) == 1, what="the recv request")
        token = a._rx.token
        b.socket.send(b"first")
        assert (yield from reader.join()) == b"first"
        for word in (b" second", b" third", b" fourth"):  # nobody waits: taken ahead
            b.socket.send(word)
        yield from until(lambda: a._rx.leftover == b" second third fourth", what="the arrivals taken ahead")
        assert (yield from a.recv(8)) == b" second "
        assert (yield from a.recv(100)) == b"third fourth"
        b.socket.send(b"!")
        assert (yield from a.recv(100, timeout=10)) == b"!"
        assert a._rx.token == token  # the same request all along
        assert ring_info()["ops"].count(IORING_OP_RECV) == 1
        b.close()
        assert (yield from a.recv(100, timeout=10)) == b""
        a.close()

    uring_scheduler().run(main())


@needs_multishot_recv
def test_a_multishot_receive_stops_taking_ahead_of_a_slow_reader_and_loses_nothing():
    """A reader that does not read is not a reason to hold the sender's
    bytes in this process: past RECV_AHEAD_BYTES the request stops, the
    kernel's socket buffer and TCP's window hold the rest, and a later
    reader gets every byte in order."""
    from threadlib._kernel.uring import RECV_AHEAD_BYTES, RECV_BUFFER_BYTES, RECV_BUFFERS

    # What one pass can take before the stop reaches the kernel: every
    # provided buffer once. 32 MiB is more than that and the kernel's
    # socket buffers together.
    most = RECV_AHEAD_BYTES + RECV_BUFFERS * RECV_BUFFER_BYTES
    payload = hashlib.sha256(b"ahead").digest() * (32 * 1024 * 1024 // 32)

    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        client = yield from sockio.connect(listener.address)
        conn, _ = yield from listener.accept()
        with pytest.raises(TimeoutError):
            yield from conn.recv(1, timeout=0.01)  # arms the multishot receive
        sender = yield from threadlib.spawn(client.sendall(payload))
        yield from until(lambda: not conn._rx.token, what="the receive to stop")
        taken = len(conn._rx.leftover)
        assert RECV_AHEAD_BYTES <= taken <= most
        yield from threadlib.sleep(0.05)
        assert len(conn._rx.leftover) == taken  # stopped: the rest waits in the kernel
        assert not sender.done
        got = bytearray()
        while len(got) < len(payload):
            got += yield from conn.recv(1 << 20, timeout=10)
        yield from sender.join()
        for s in (client, conn, listener):
            s.close()
        return bytes(got)

    assert uring_scheduler().run(main()) == payload


@needs_multishot_recv
def test_more_arrivals_at_once_than_provided_buffers_lose_nothing(monkeypatch):
    """50 connections get data in one pass through a ring of only 2
    provided buffers: the receives that find none end (ENOBUFS), are armed
    again when their reader waits (the kernel took many more receive
    entries than there are connections), and every byte arrives, in
    order."""
    from threadlib._kernel import uring

    monkeypatch.setattr(uring, "RECV_BUFFERS", 2)  # the worker's buffer ring: 2 buffers
    count = 50

    def main():
        pairs = [sockio.socketpair() for _ in range(count)]
        readers = []
        for a, _ in pairs:
            readers.append((yield from threadlib.spawn(read_all(a, 3 * 5))))
        yield from until(lambda: ring_info()["ops"].count(IORING_OP_RECV) == count, what="every receive armed")
        armed = ring_info()["SqHead"]
        for round_ in range(3):
            for i, (_, b) in enumerate(pairs):
                b.socket.send(f"{round_}{i:04d}".encode())
        got = []
        for t in readers:
            got.append((yield from t.join()))
        rearmed = ring_info()["SqHead"] - armed
        for a, b in pairs:
            a.close()
            b.close()
        return got, rearmed

    def read_all(conn, size):
        data = b""
        while len(data) < size:
            data += yield from conn.recv(100, timeout=10)
        return data

    got, rearmed = uring_scheduler().run(main())
    assert got == [b"".join(f"{r}{i:04d}".encode() for r in range(3)) for i in range(count)]
    assert rearmed > count  # receives ended for want of a buffer and were armed again


@needs_multishot_recv
def test_splice_after_a_recv_on_a_uring_stream_copies_in_order():
    """A stream whose ring holds bytes (or a receive that takes the next
    ones) is copied through its own recv, not spliced past the ring."""
    from threadlib.io import splice as tsplice

    def main():
        a, b = sockio.socketpair()
        c, d = sockio.socketpair()
        b.socket.send(b"head ")
        assert (yield from a.recv(5)) == b"head "
        with pytest.raises(TimeoutError):
            yield from a.recv(1, timeout=0.01)  # the multishot receive is armed
        b.socket.send(b"body one, ")
        b.socket.send(b"body two")
        assert not tsplice.zero_copy(a, c)
        b.shutdown(socket.SHUT_WR)
        moved = yield from tsplice.splice(a, c, half_close=True)
        got = b""
        while chunk := (yield from d.recv(100, timeout=10)):
            got += chunk
        for s in (a, b, c, d):
            s.close()
        return moved, got

    assert uring_scheduler().run(main()) == (len(b"body one, body two"), b"body one, body two")
