"""The network contract (threadlib.net), one conformance suite run against
every network: the kernel's (sockio.kernel, on loopback) and the user-level
stack's (tcpsockio.UserNetwork, on a TUN device in a namespace the test
makes). The other end is always a plain kernel socket driven from an OS
thread, so each network is judged against the same reference peer.

A new network (simulated, TLS-wrapped) joins by adding a fixture param.
The TLS params ("kernel+tls", "user+tls") run each network under
``threadlib.io.tls.TlsNetwork`` with certificates trustme makes; their
reference peer wraps its kernel sockets with Python's ssl module (the
handshake happens at the peer's first read or write, as ours does at our
first), and the few peer steps TLS changes (a half-close is close_notify,
one OS thread cannot read and write one ssl socket at once) go through the
helpers ``shut_wr`` and ``send_and_read_to_end``.
"""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest

import threadlib
from threadlib import net as contract
from threadlib.io import sockio


@dataclass
class Subject:
    """A network under test and how the reference peer reaches it."""

    network: Any
    host: str                                  # where the network listens and is reached
    peer_host: str                             # where reference listeners bind
    peer_socket: Callable[[], socket.socket]   # a kernel socket that can reach ``host``
    peer_tls: Any = None                       # (server context, client context) of a TLS reference peer


def _tls_contexts(*hosts: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: one certificate for ``hosts``, trusted by the client."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def _with_tls(s: Subject) -> Subject:
    from threadlib.io import tls

    server, client = _tls_contexts(s.host, s.peer_host)
    return Subject(tls.TlsNetwork(s.network, server, client), s.host, s.peer_host, s.peer_socket,
                   peer_tls=(server, client))


@pytest.fixture(params=["kernel", "user", "kernel+tls", "user+tls"])
def subject(request):
    base, _, wrapped = request.param.partition("+")
    if base == "kernel":
        s = Subject(sockio.kernel, "127.0.0.1", "127.0.0.1",
                    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        yield _with_tls(s) if wrapped else s
        return
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("the user-level network needs root and /dev/net/tun")
    from iolib.netns import temporary_netns
    from threadlib.io import tcpsockio

    with temporary_netns("tlnc") as ns:
        network = tcpsockio.open_network(tun="tlnc0", netns=ns.name, seed=11)
        try:
            s = Subject(network, "10.77.0.2", "10.77.0.1",
                        lambda: ns.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM))
            yield _with_tls(s) if wrapped else s
        finally:
            network.close()


class Peer(threading.Thread):
    """Reference-peer code in an OS thread; ``value`` re-raises its error."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # handed to the test
            self.error = exc

    @property
    def value(self) -> Any:
        self.join(30)
        assert not self.is_alive(), "reference peer did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def finished(peer: Peer) -> Any:
    """From a threadlib thread: wait for the peer without blocking the scheduler."""
    yield from threadlib.blocking(peer.join, 30)
    return peer.value


def connect_peer(s: Subject, port: int) -> socket.socket:
    sock = s.peer_socket()
    sock.settimeout(20)
    sock.connect((s.host, port))
    if s.peer_tls is not None:
        sock = s.peer_tls[1].wrap_socket(sock, server_hostname=s.host, do_handshake_on_connect=False)
    return sock


def listen_peer(s: Subject) -> tuple[socket.socket, int]:
    sock = s.peer_socket()
    sock.bind((s.peer_host, 0))
    sock.listen(4)
    sock.settimeout(20)
    port = sock.getsockname()[1]
    if s.peer_tls is not None:  # accept() gives TLS sockets
        sock = s.peer_tls[0].wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    return sock, port


def shut_wr(sock: socket.socket) -> None:
    """The peer's half-close: FIN, or over TLS close_notify then FIN (an
    ssl socket's own shutdown() sends no close_notify; its unwrap() sends
    one, and returns at once when ours has arrived already)."""
    if isinstance(sock, ssl.SSLSocket):
        sock.unwrap()
    sock.shutdown(socket.SHUT_WR)


def send_and_read_to_end(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and half-close while reading to the end. A plain socket
    does it with a sender thread; an ssl socket cannot be read and written
    from two OS threads at once, so it is driven non-blocking from one,
    bounded to 60 s."""
    if not isinstance(sock, ssl.SSLSocket):
        sender = Peer(lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        got = read_to_end(sock)
        sender.value
        return got
    sock.setblocking(False)
    view, sent, shut, eof, parts = memoryview(data), 0, False, False, []
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while not (eof and shut):
            assert time.monotonic() < deadline, "TLS duplex transfer did not finish in 60 s"
            try:
                while not eof:
                    chunk = sock.recv(1 << 16)
                    eof = not chunk
                    parts.append(chunk)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLZeroReturnError:  # close_notify, after ours was sent
                eof = True
            try:
                if sent < len(view):
                    sent += sock.send(view[sent:sent + (1 << 16)])
                elif not shut:
                    try:
                        sock.unwrap()
                    except ssl.SSLWantReadError:
                        pass  # our close_notify is out; theirs is still to come
                    shut = True
                    # The FIN alone: ssl.SSLSocket.shutdown would also drop TLS for reads.
                    socket.socket.shutdown(sock, socket.SHUT_WR)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            sel.modify(sock, selectors.EVENT_READ | (0 if shut else selectors.EVENT_WRITE))
            sel.select(1.0)
    return b"".join(parts)


def read_to_end(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def test_networks_streams_and_listeners_satisfy_the_protocols(subject):
    assert isinstance(subject.network, contract.Network)
    assert isinstance(subject.network.name, str) and subject.network.name

    def main():
        listener = yield from subject.network.listen((subject.host, 0))
        peer = Peer(lambda port: connect_peer(subject, port).close(), listener.address[1])
        conn, _ = yield from listener.accept(timeout=10)
        kinds = isinstance(listener, contract.Listener), isinstance(conn, contract.Stream)
        conn.close()
        listener.close()
        yield from finished(peer)
        assert conn.closed and listener.closed
        return kinds

    assert threadlib.run(main()) == (True, True)


def test_resolve_gives_the_literal_back(subject):
    def main():
        return (yield from subject.network.resolve(subject.host, 80))

    family, sockaddr = threadlib.run(main())[0]
    assert family == socket.AF_INET and sockaddr[:2] == (subject.host, 80)


def test_echo_both_ways_and_addresses(subject):
    """Accepted and connected streams echo; every address is the one the
    other side sees."""
    server, server_port = listen_peer(subject)

    def echo_server():
        conn, addr = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
        return addr

    def client(port):
        sock = connect_peer(subject, port)
        with sock:
            sock.sendall(b"ping")
            reply = sock.recv(100)
            return sock.getsockname(), sock.getpeername(), reply

    def main():
        listener = yield from subject.network.listen((subject.host, 0))
        host, port = listener.address
        assert host == subject.host and port > 0
        peer = Peer(client, port)
        conn, addr = yield from listener.accept(timeout=10)
        with conn:
            assert conn.local_address[:2] == (subject.host, port)
            assert conn.peer_address[:2] == addr[:2]
            data = yield from conn.recv(100, timeout=10)
            yield from conn.sendall(data.upper())
            client_local, client_peer, reply = yield from finished(peer)
        assert client_local[:2] == addr[:2] and client_peer[:2] == (subject.host, port)
        assert reply == b"PING"
        listener.close()

        echo = Peer(echo_server)
        out = yield from subject.network.connect((subject.peer_host, server_port), timeout=10)
        with out:
            assert out.peer_address[:2] == (subject.peer_host, server_port)
            yield from out.sendall(b"hello")
            got = yield from out.recv(100, timeout=10)
            buf = bytearray(16)
            yield from out.sendall(b"into")
            n = yield from out.recv_into(buf, timeout=10)
            local = out.local_address
        return got, bytes(buf[:n]), local, (yield from finished(echo))

    got, into, local, seen_by_server = threadlib.run(main())
    server.close()
    assert got == b"hello" and into == b"into"
    assert local[:2] == seen_by_server[:2]


def test_half_close_each_way(subject):
    """Our shutdown(SHUT_WR) delivers EOF while we keep reading; the peer's
    FIN makes recv return b"" and recv_into 0, while we keep writing."""
    def peer_side(port):
        sock = connect_peer(subject, port)
        with sock:
            request = read_to_end(sock)           # ends at our FIN
            sock.sendall(b"reply to " + request)
            shut_wr(sock)
            return request

    def main():
        listener = yield from subject.network.listen((subject.host, 0))
        peer = Peer(peer_side, listener.address[1])
        conn, _ = yield from listener.accept(timeout=10)
        with conn, listener:
            yield from conn.sendall(b"question")
            conn.shutdown(socket.SHUT_WR)
            parts = []
            while chunk := (yield from conn.recv(4, timeout=10)):
                parts.append(chunk)
            assert (yield from conn.recv_into(bytearray(8), timeout=10)) == 0
            return b"".join(parts), (yield from finished(peer))

    reply, request = threadlib.run(main())
    assert request == b"question" and reply == b"reply to question"


def test_reset_and_refused(subject):
    """A peer's abortive close raises ConnectionResetError at our read; a
    connect to a port nobody listens on raises ConnectionRefusedError."""
    closed, closed_port = listen_peer(subject)
    closed.close()  # the port is now free: nobody listens on it

    def resetting_peer(port):
        sock = connect_peer(subject, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.recv(1)   # wait for our go
        sock.close()   # linger 0: RST

    def main():
        listener = yield from subject.network.listen((subject.host, 0))
        peer = Peer(resetting_peer, listener.address[1])
        conn, _ = yield from listener.accept(timeout=10)
        with conn, listener:
            yield from conn.sendall(b"!")
            yield from finished(peer)
            with pytest.raises(ConnectionResetError):
                while (yield from conn.recv(100, timeout=10)):
                    pass
        with pytest.raises(ConnectionRefusedError):
            yield from subject.network.connect((subject.peer_host, closed_port), timeout=10)

    threadlib.run(main())


def test_timeouts_leave_the_stream_usable(subject):
    """recv and accept raise TimeoutError at their deadline; nothing is lost:
    data that arrives afterwards is read by the next call."""
    go = threading.Event()

    def slow_peer(port):
        sock = connect_peer(subject, port)
        with sock:
            go.wait(20)
            sock.sendall(b"late")
            return read_to_end(sock)

    def main():
        listener = yield from subject.network.listen((subject.host, 0))
        with listener:
            with pytest.raises(TimeoutError):
                yield from listener.accept(timeout=0.05)
            peer = Peer(slow_peer, listener.address[1])
            conn, _ = yield from listener.accept(timeout=10)
            with conn:
                with pytest.raises(TimeoutError):
                    yield from conn.recv(100, timeout=0.05)
                with pytest.raises(TimeoutError):
                    with threadlib.timeout(0.05) as scope:
                        yield from conn.recv(100)
                assert scope.expired
                go.set()
                data = yield from conn.recv(100, timeout=10)
                yield from conn.sendall(b"ok")
        return data, (yield from finished(peer))

    assert threadlib.run(main()) == (b"late", b"ok")


def test_large_transfer_both_ways_byte_exact(subject):
    """8 MiB each way at once (one thread reads while another writes the
    same stream); close right after sendall still delivers every byte."""
    size = 8 << 20
    ours = random.Random(1).randbytes(size)
    theirs = random.Random(2).randbytes(size)

    def peer_side(port):
        sock = connect_peer(subject, port)
        with sock:
            got = send_and_read_to_end(sock, theirs)
            return hashlib.sha256(got).hexdigest(), len(got)

    def main():
        listener = yield from subject.network.listen((subject.host, 0))
        peer = Peer(peer_side, listener.address[1])
        conn, _ = yield from listener.accept(timeout=10)
        listener.close()

        def writer():
            yield from conn.sendall(ours, timeout=60)
            conn.shutdown(socket.SHUT_WR)

        w = yield from threadlib.spawn(writer())
        digest, total, buf = hashlib.sha256(), 0, bytearray(1 << 16)
        while n := (yield from conn.recv_into(buf, timeout=60)):
            digest.update(memoryview(buf)[:n])
            total += n
        yield from w.join()
        conn.close()
        return digest.hexdigest(), total, (yield from finished(peer))

    digest, total, (peer_digest, peer_total) = threadlib.run(main())
    assert (digest, total) == (hashlib.sha256(theirs).hexdigest(), size)
    assert (peer_digest, peer_total) == (hashlib.sha256(ours).hexdigest(), size)


def test_close_after_sendall_delivers_everything(subject):
    data = random.Random(3).randbytes(1 << 20)

    def peer_side(port):
        with connect_peer(subject, port) as sock:
            return read_to_end(sock)

    def main():
        listener = yield from subject.network.listen((subject.host, 0))
        peer = Peer(peer_side, listener.address[1])
        conn, _ = yield from listener.accept(timeout=10)
        listener.close()
        yield from conn.sendall(data, timeout=30)
        conn.close()
        return (yield from finished(peer))

    assert threadlib.run(main()) == data
