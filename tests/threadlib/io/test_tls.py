"""threadlib.io.tls: TLS over any stream, against real TLS peers (Python's
ssl module in OS threads, openssl s_client, threadlib itself) with real
certificates made at test time by trustme, over kernel sockets and over the
user-level TCP stack on a TUN device in a namespace the test makes."""

from __future__ import annotations

import datetime
import hashlib
import os
import random
import socket
import ssl
import subprocess
import threading

import pytest
import trustme

import threadlib
from tests.threadlib.test_net_contract import Peer, finished, read_to_end
from threadlib.io import sockio, tls

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


class Certs:
    """A CA, a server certificate for localhost/127.0.0.1 (and the user
    stack's 10.77.0.2), a client certificate, and contexts using them."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("localhost", "127.0.0.1", "10.77.0.1", "10.77.0.2")
        self.client_cert = self.ca.issue_cert("client.example", common_name="client.example")

    def server(self, *, require_client_cert: bool = False, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def client(self, *, with_cert: bool = False, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if with_cert:
            self.client_cert.configure_cert(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture(scope="module")
def certs() -> Certs:
    return Certs()


def tls_client(certs: Certs, port: int, *, name: str = "localhost", **options) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=20)
    return certs.client(**options).wrap_socket(raw, server_hostname=name)


def kernel_tls_server(ctx: ssl.SSLContext, handler, small_buffers: bool = False):
    """A listening kernel socket whose first connection, wrapped in TLS, is
    given to ``handler`` in an OS thread: (port, Peer). ``small_buffers``:
    4 KiB socket buffers, and a transport EOF without close_notify raises."""
    srv = socket.socket()
    if small_buffers:
        _small_buffers(srv)
    srv.bind((HOST, 0))
    srv.listen(4)
    srv.settimeout(20)

    def serve():
        with srv:
            raw, _ = srv.accept()
            with ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=not small_buffers) as conn:
                return handler(conn)

    return srv.getsockname()[1], Peer(serve)


# ---------------------------------------------------------------------------
# The basics, both sides


def test_server_side_echo_with_version_cipher_and_alpn(certs):
    def client(port):
        with tls_client(certs, port, alpn=["h2", "http/1.1"]) as s:
            s.sendall(b"hello")
            reply = s.recv(100)
            return reply, s.selected_alpn_protocol(), s.version()

    def main():
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=certs.server(alpn=["http/1.1"]))
        assert isinstance(listener, tls.TlsListener)
        peer = Peer(client, listener.address[1])
        conn, addr = yield from listener.accept(timeout=10)
        with conn, listener:
            assert not conn.handshake_done and conn.peer_address == addr  # lazy: nothing read yet
            data = yield from conn.recv(100, timeout=10)
            assert conn.handshake_done and conn.server_side
            yield from conn.sendall(data.upper())
            ours = conn.version(), conn.cipher()[1], conn.selected_alpn_protocol(), conn.getpeercert()
        return ours, (yield from finished(peer))

    (version, cipher_proto, alpn, peercert), (reply, their_alpn, their_version) = threadlib.run(main())
    assert reply == b"HELLO"
    assert version == their_version == cipher_proto == "TLSv1.3"
    assert alpn == their_alpn == "http/1.1"
    assert peercert is None  # no client certificate was asked for


def test_client_side_connect_verifies_and_sends_sni(certs):
    seen_names = []
    server_ctx = certs.server()
    server_ctx.sni_callback = lambda sslobj, name, ctx: seen_names.append(name)

    def echo(conn):
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.unwrap()  # close_notify back (ssl.SSLSocket.close sends none)

    def main():
        port, peer = kernel_tls_server(server_ctx, echo)
        conn = yield from sockio.kernel.connect((HOST, port), timeout=10, ssl=certs.client(),
                                                server_hostname="localhost")
        with conn:
            assert isinstance(conn, tls.TlsStream) and conn.handshake_done
            assert conn.server_hostname == "localhost" and not conn.server_side
            cert = conn.getpeercert()
            yield from conn.sendall(b"ping")
            reply = yield from conn.recv(100, timeout=10)
            conn.shutdown(socket.SHUT_WR)  # close_notify: the server's recv returns b""
            assert (yield from conn.recv(100, timeout=10)) == b""
        yield from finished(peer)
        return cert, reply

    cert, reply = threadlib.run(main())
    assert reply == b"ping" and seen_names == ["localhost"]
    assert ("DNS", "localhost") in cert["subjectAltName"]


def mutual_tls(certs, client_ctx, server_side, client_side):
    """A listener asking for client certificates; ``server_side(conn)``
    serves the one connection in a thread while ``client_side(client)``
    runs on a client made with ``client_ctx``: both results."""
    def main():
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=certs.server(require_client_cert=True))

        def server():
            conn, _ = yield from listener.accept(timeout=10)
            with conn:
                return (yield from server_side(conn))

        srv = yield from threadlib.spawn(server())
        client = yield from sockio.kernel.connect((HOST, listener.address[1]), timeout=10, ssl=client_ctx)
        with client, listener:
            theirs = yield from client_side(client)
            return (yield from srv.join()), theirs

    return threadlib.run(main())


def test_mutual_tls_gives_each_side_the_others_certificate(certs):
    def server_side(conn):
        yield from conn.do_handshake(timeout=10)
        yield from conn.sendall(b"hi")
        return conn.getpeercert()

    def client_side(client):
        assert (yield from client.recv(10, timeout=10)) == b"hi"
        return client.getpeercert()

    client_cert, server_cert = mutual_tls(certs, certs.client(with_cert=True), server_side, client_side)
    assert ("IP Address", "127.0.0.1") in server_cert["subjectAltName"]
    assert dict(x[0] for x in client_cert["subject"])["commonName"] == "client.example"


def test_a_client_without_the_required_certificate_is_refused(certs):
    def server_side(conn):
        with pytest.raises(ssl.SSLError) as info:
            yield from conn.recv(10, timeout=10)
        return tls.describe_error(info.value)

    def client_side(client):
        # TLS 1.3: the client's handshake ends before the server checks; the refusal arrives as an alert.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            yield from client.recv(10, timeout=10)

    reason, _ = mutual_tls(certs, certs.client(), server_side, client_side)
    assert "certificate" in reason


def test_both_ends_in_one_scheduler_concurrent_recv_and_sendall(certs):
    """8 MiB each way over one TLS connection between two threadlib
    streams: on each, one thread reads while another writes."""
    size = 8 << 20
    a_data = random.Random(1).randbytes(size)
    b_data = random.Random(2).randbytes(size)

    def pump(conn, data):
        def writer():
            yield from conn.sendall(data, timeout=60)
            conn.shutdown(socket.SHUT_WR)

        w = yield from threadlib.spawn(writer())
        digest, total, buf = hashlib.sha256(), 0, bytearray(1 << 16)
        while n := (yield from conn.recv_into(buf, timeout=60)):
            digest.update(memoryview(buf)[:n])
            total += n
        yield from w.join()
        conn.close()
        return digest.hexdigest(), total

    def main():
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=certs.server())
        client = yield from threadlib.spawn(
            sockio.kernel.connect((HOST, listener.address[1]), timeout=10, ssl=certs.client()))
        conn, _ = yield from listener.accept(timeout=10)
        listener.close()
        a = yield from threadlib.spawn(pump(conn, a_data))
        b = yield from threadlib.spawn(pump((yield from client.join()), b_data))
        return (yield from threadlib.join_all([a, b]))

    (a_got, a_total), (b_got, b_total) = threadlib.run(main())
    assert (a_got, a_total) == (hashlib.sha256(b_data).hexdigest(), size)
    assert (b_got, b_total) == (hashlib.sha256(a_data).hexdigest(), size)


def test_wrap_over_a_socketpair_and_async_def(certs):
    """``wrap`` needs only the Stream contract (here a Unix socketpair), and
    ``await`` works like ``yield from``."""

    async def side(stream, **options):
        conn = await tls.wrap(stream, **options)
        async with conn:
            await conn.sendall(b"from " + (b"server" if conn.server_side else b"client"))
            return await conn.recv_exactly(11, timeout=10)

    def main():
        a, b = sockio.socketpair()
        s = yield from threadlib.spawn(side(a, context=certs.server(), server_side=True))
        c = yield from threadlib.spawn(side(b, context=certs.client(), server_hostname="localhost"))
        return (yield from threadlib.join_all([s, c]))

    assert threadlib.run(main()) == [b"from client", b"from server"]


def test_unwrap_hands_back_the_transport_and_the_cleartext_after_it(certs):
    def handler(conn):
        assert conn.recv(100) == b"secret"
        raw = conn.unwrap()  # answers our close_notify with its own
        raw.sendall(b"plain after tls")
        return raw.recv(100)

    def main():
        port, peer = kernel_tls_server(certs.server(), handler)
        conn = yield from sockio.kernel.connect((HOST, port), timeout=10, ssl=certs.client())
        yield from conn.sendall(b"secret")
        transport, trailing = yield from conn.unwrap(timeout=10)
        assert conn.closed and not transport.closed
        with transport:
            rest = trailing
            while len(rest) < len(b"plain after tls"):
                rest += yield from transport.recv(100, timeout=10)
            yield from transport.sendall(b"plain reply")
            with pytest.raises(OSError):
                yield from conn.recv(10)
        return rest, (yield from finished(peer))

    assert threadlib.run(main()) == (b"plain after tls", b"plain reply")


def test_close_sends_close_notify_and_a_ragged_eof_is_an_error_unless_allowed(certs):
    def strict_reader(conn):
        return read_to_end(conn)

    def ragged_closer(conn):
        conn.sendall(b"cut")
        conn.shutdown(socket.SHUT_RDWR)  # ssl.SSLSocket.shutdown: no close_notify, only the TCP FIN

    def main():
        # Our close: the peer (suppress_ragged_eofs=False) sees a clean end.
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=certs.server())
        port = listener.address[1]

        def strict_client():
            raw = socket.create_connection((HOST, port), timeout=20)
            with certs.client().wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
                s.sendall(b"x")
                return read_to_end(s)

        peer = Peer(strict_client)
        conn, _ = yield from listener.accept(timeout=10)
        assert (yield from conn.recv(1, timeout=10)) == b"x"
        yield from conn.sendall(b"all of it")
        conn.close()
        clean = yield from finished(peer)

        # The peer's FIN without close_notify.
        results = []
        for ragged_eof in (False, True):
            port2, peer2 = kernel_tls_server(certs.server(), ragged_closer)
            out = yield from sockio.kernel.connect((HOST, port2), timeout=10)
            conn2 = yield from tls.wrap(out, certs.client(), server_hostname="localhost", ragged_eof=ragged_eof)
            with conn2:
                assert (yield from conn2.recv_exactly(3, timeout=10)) == b"cut"
                try:
                    results.append((yield from conn2.recv(10, timeout=10)))
                except ssl.SSLEOFError as exc:
                    results.append(tls.describe_error(exc))
            yield from finished(peer2)
        listener.close()
        return clean, results

    clean, (strict, tolerant) = threadlib.run(main())
    assert clean == b"all of it"
    assert "without a TLS close_notify" in strict and tolerant == b""


def test_half_close_both_ways(certs):
    """Our shutdown(SHUT_WR) sends close_notify + FIN and we read on; the
    peer's close_notify ends our reads while we write on (TLS 1.3)."""
    def handler(conn):
        request = read_to_end(conn)  # ends at our close_notify
        conn.sendall(b"reply to " + request)
        conn.unwrap()  # its close_notify (ours arrived already: no wait)
        return request

    def main():
        port, peer = kernel_tls_server(certs.server(), handler)
        conn = yield from sockio.kernel.connect((HOST, port), timeout=10, ssl=certs.client())
        with conn:
            yield from conn.sendall(b"question")
            conn.shutdown(socket.SHUT_WR)
            with pytest.raises(BrokenPipeError):
                yield from conn.sendall(b"more")
            reply = b""
            while chunk := (yield from conn.recv(4, timeout=10)):
                reply += chunk
            assert (yield from conn.recv_into(bytearray(4), timeout=10)) == 0
        return reply, (yield from finished(peer))

    assert threadlib.run(main()) == (b"reply to question", b"question")


def test_timeouts_leave_the_stream_usable_and_handshake_resumes(certs):
    go = threading.Event()

    def client(port):
        with tls_client(certs, port) as s:
            go.wait(20)
            s.sendall(b"late")
            return s.recv(10)

    def main():
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=certs.server())
        with listener:
            peer = Peer(client, listener.address[1])
            conn, _ = yield from listener.accept(timeout=10)
            with conn:
                with pytest.raises(TimeoutError) as info:
                    yield from conn.recv(100, timeout=0.05)
                assert not isinstance(info.value, tls.HandshakeTimeout)
                go.set()
                data = yield from conn.recv(100, timeout=10)
                yield from conn.sendall(b"ok")
            return data, (yield from finished(peer))

    assert threadlib.run(main()) == (b"late", b"ok")


# ---------------------------------------------------------------------------
# Bad input: each is named, closed, and disturbs nobody else


def serve_with_failures(certs, bad_client, handshake_timeout=10.0):
    """A TLS echo server on the kernel network: one thread per connection,
    handshake failures collected as (peer, reason). ``bad_client(port)``
    runs in an OS thread; meanwhile a good client must be served. Returns
    (failures, what the bad client saw, what the good client got)."""
    failures = []

    def handle(conn, peer):
        with conn:
            try:
                yield from conn.do_handshake()
            except (OSError, TimeoutError) as exc:
                failures.append((peer, tls.describe_error(exc), exc))
                return
            while data := (yield from conn.recv(100, timeout=10)):
                yield from conn.sendall(data)

    def good_client(port):
        with tls_client(certs, port) as s:
            s.sendall(b"good")
            return s.recv(100)

    def main():
        plain = yield from sockio.kernel.listen((HOST, 0))
        listener = tls.TlsListener(plain, certs.server(), handshake_timeout=handshake_timeout)
        port = listener.address[1]

        def accept_loop():
            while True:
                conn, peer = yield from listener.accept()
                yield from threadlib.spawn(handle(conn, peer))

        acceptor = yield from threadlib.spawn(accept_loop())
        bad = Peer(bad_client, port)
        # The bad client has connected (its first action); the good one is
        # served while the bad one is pending, and again after it failed.
        good = Peer(good_client, port)
        first = yield from finished(good)
        seen = yield from finished(bad)
        again = yield from finished(Peer(good_client, port))
        yield from acceptor.cancel()
        listener.close()
        return failures, seen, (first, again)

    return threadlib.run(main())


def test_plaintext_http_on_the_tls_port(certs):
    def bad(port):
        with socket.create_connection((HOST, port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return read_to_end(s)

    failures, seen, goods = serve_with_failures(certs, bad)
    assert goods == (b"good", b"good")
    [(peer, reason, exc)] = failures
    assert isinstance(exc, ssl.SSLError) and reason == "a plaintext HTTP request on the TLS port"
    assert b"HTTP" not in seen  # closed, not answered


@pytest.mark.parametrize("hello, expected", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "without a TLS close_notify"),  # truncated ClientHello, then EOF
    (os.urandom(0) + b"\x00" * 64, "not a TLS handshake"),                                 # garbage
])
def test_truncated_or_garbage_client_hello(certs, hello, expected):
    def bad(port):
        with socket.create_connection((HOST, port), timeout=20) as s:
            s.sendall(hello)
            s.shutdown(socket.SHUT_WR)
            return read_to_end(s)

    failures, _, goods = serve_with_failures(certs, bad)
    assert goods == (b"good", b"good")
    [(peer, reason, exc)] = failures
    assert isinstance(exc, ssl.SSLError) and expected in reason, reason


def test_a_client_stalling_mid_handshake_is_cut_by_the_handshake_timeout(certs):
    def bad(port):
        with socket.create_connection((HOST, port), timeout=20) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then silence
            return read_to_end(s)  # ends when the server gives up

    failures, seen, goods = serve_with_failures(certs, bad, handshake_timeout=1.5)
    assert goods == (b"good", b"good")
    [(peer, reason, exc)] = failures
    assert isinstance(exc, tls.HandshakeTimeout)
    assert reason == f"TLS handshake with {peer[0]}:{peer[1]} not finished within 1.5 s"
    assert seen == b""


@pytest.mark.parametrize("problem", ["expired", "wrong host", "unknown CA"])
def test_the_client_refuses_a_bad_certificate_naming_why(certs, problem):
    if problem == "expired":
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        cert = certs.ca.issue_cert("localhost", "127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=1))
    elif problem == "wrong host":
        cert = certs.ca.issue_cert("other.example")
    else:
        cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)

    def handler(conn):
        return conn.recv(10)

    def main():
        srv = socket.socket()
        srv.bind((HOST, 0))
        srv.listen(1)
        srv.settimeout(20)

        def server():
            with srv:
                raw, _ = srv.accept()
                with raw, server_ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False) as conn:
                    with pytest.raises(ssl.SSLError):
                        conn.do_handshake()  # our alert arrives here

        peer = Peer(server)
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            yield from sockio.kernel.connect((HOST, srv.getsockname()[1]), timeout=10, ssl=certs.client(),
                                             server_hostname="localhost")
        yield from finished(peer)
        return info.value

    exc = threadlib.run(main())
    message = {"expired": "certificate has expired", "wrong host": "Hostname mismatch",
               "unknown CA": "unable to get local issuer certificate"}[problem]
    assert message in exc.verify_message and message in tls.describe_error(exc)


def test_a_connect_timeout_bounds_the_handshake_too(certs):
    """A server that accepts TCP but never speaks TLS: connect(ssl=...,
    timeout=) raises TimeoutError and closes the connection."""
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(1)

    def main():
        with pytest.raises(TimeoutError):
            yield from sockio.kernel.connect((HOST, srv.getsockname()[1]), timeout=0.3, ssl=certs.client())
        raw, _ = srv.accept()
        with raw:
            raw.settimeout(10)
            hello = read_to_end(raw)  # the client gave up: FIN after its ClientHello
        return hello

    try:
        hello = threadlib.run(main())
    finally:
        srv.close()
    assert hello[:1] == b"\x16"  # a TLS handshake record


# ---------------------------------------------------------------------------
# Other real clients


def s_client(port: int, ca_file, *options: str) -> subprocess.Popen:
    """``openssl s_client`` connected to our port, trusting ``ca_file``; its
    stdin and (merged) output are pipes."""
    return subprocess.Popen(["openssl", "s_client", "-connect", f"{HOST}:{port}", "-CAfile", str(ca_file), *options],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_openssl_s_client_sees_verification_sni_and_alpn(certs, tmp_path):
    ca_file = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca_file))
    names = []
    ctx = certs.server(alpn=["h2", "http/1.1"])
    ctx.sni_callback = lambda sslobj, name, _: names.append(name)

    def main():
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=ctx)
        port = listener.address[1]
        proc = s_client(port, ca_file, "-servername", "localhost", "-verify_return_error", "-alpn", "http/1.1",
                        "-ign_eof")
        conn, _ = yield from listener.accept(timeout=10)
        with conn, listener:
            yield from conn.sendall(b"greetings from threadlib\n")
            proc.stdin.write(b"hello from openssl\n")
            proc.stdin.close()
            got = yield from conn.recv(100, timeout=10)
        out = yield from threadlib.blocking(proc.stdout.read)
        proc.wait(20)
        return got, out.decode(errors="replace")

    got, out = threadlib.run(main())
    assert got == b"hello from openssl\n"
    assert "greetings from threadlib" in out
    assert "Verify return code: 0 (ok)" in out and "ALPN protocol: http/1.1" in out, out
    assert names == ["localhost"]


@pytest.mark.parametrize("read", ["recv", "recv_into"])
def test_half_close_loses_none_of_the_input_waiting_to_be_read(certs, read):
    """shutdown(SHUT_WR) while the peer's records wait unread (one half
    read, more behind it): they are all read after it, then the end.
    (CPython's unwrap, under close_notify, would read on and drop them.)"""
    data = random.Random(5).randbytes(200_000)
    all_sent = threading.Event()

    def handler(conn):
        conn.sendall(data)
        all_sent.set()
        assert read_to_end(conn) == b""  # ends at our close_notify
        conn.unwrap()

    def main():
        port, peer = kernel_tls_server(certs.server(), handler)
        conn = yield from sockio.kernel.connect((HOST, port), timeout=10, ssl=certs.client())
        with conn:
            yield from conn.do_handshake(timeout=10)
            assert (yield from threadlib.blocking(all_sent.wait, 10))
            got = bytearray((yield from conn.recv(10, timeout=10)))
            assert conn.ssl_object.pending() > 0  # the rest of a record is decrypted, unread
            conn.shutdown(socket.SHUT_WR)
            buf = bytearray(7000)
            while True:
                if read == "recv":
                    chunk = yield from conn.recv(7000, timeout=10)
                else:
                    chunk = buf[:(yield from conn.recv_into(buf, timeout=10))]
                if not chunk:
                    break
                got += chunk
        yield from finished(peer)
        return bytes(got)

    got = threadlib.run(main())
    assert len(got) == len(data) and got == data


def test_renegotiation_is_refused(certs, tmp_path):
    """A TLS 1.2 client asking to renegotiate (s_client's "R" command) is
    refused: the client reports it, and our read fails on its alert."""
    ca_file = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca_file))

    def main():
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=certs.server())
        # Interactive mode (no -ign_eof/-quiet): "R" on a line of its own renegotiates.
        proc = s_client(listener.address[1], ca_file, "-tls1_2")
        conn, _ = yield from listener.accept(timeout=10)
        with conn, listener:
            proc.stdin.write(b"before\n")
            proc.stdin.flush()
            assert (yield from conn.recv(100, timeout=10)) == b"before\n"
            assert conn.version() == "TLSv1.2"
            proc.stdin.write(b"R\n")
            proc.stdin.flush()
            with pytest.raises(ssl.SSLError) as info:
                yield from conn.recv(100, timeout=10)
            proc.stdin.close()
        out = yield from threadlib.blocking(proc.stdout.read)
        proc.stdout.close()
        proc.wait(20)
        return info.value, out.decode(errors="replace")

    exc, out = threadlib.run(main())
    assert "RENEGOTIATING" in out and "no renegotiation" in out, out
    assert "handshake failure" in str(exc)


# ---------------------------------------------------------------------------
# Over the user-level TCP/IP stack


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                    reason="the user-level stack needs root and /dev/net/tun")
def test_tls_over_the_user_level_stack_both_directions(certs):
    from iolib.netns import temporary_netns
    from threadlib.io import tcpsockio

    data = random.Random(5).randbytes(1 << 20)
    with temporary_netns("tltls") as ns:
        net = tcpsockio.open_network(tun="tltls0", netns=ns.name, seed=3)
        try:
            def client(port):
                raw = ns.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
                raw.settimeout(20)
                raw.connect(("10.77.0.2", port))
                with certs.client().wrap_socket(raw, server_hostname="10.77.0.2") as s:
                    s.sendall(data)
                    return hashlib.sha256(read_to_end(s)).hexdigest()

            def kernel_server():
                srv = ns.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
                srv.bind(("10.77.0.1", 0))
                srv.listen(1)
                srv.settimeout(20)

                def serve():
                    with srv:
                        raw, _ = srv.accept()
                        with certs.server().wrap_socket(raw, server_side=True) as conn:
                            conn.sendall(conn.recv(100).upper())
                            conn.unwrap()

                return srv.getsockname()[1], Peer(serve)

            def main():
                listener = yield from net.listen(("10.77.0.2", 0), ssl=certs.server())
                peer = Peer(client, listener.address[1])
                conn, _ = yield from listener.accept(timeout=10)
                with conn, listener:
                    got = b""
                    while len(got) < len(data):
                        got += yield from conn.recv(65536, timeout=20)
                    yield from conn.sendall(got, timeout=20)
                echoed = yield from finished(peer)

                port, server = kernel_server()
                out = yield from net.connect(("10.77.0.1", port), timeout=10, ssl=certs.client())
                with out:
                    yield from out.sendall(b"over the user stack")
                    reply = yield from out.recv(100, timeout=10)
                    assert (yield from out.recv(100, timeout=10)) == b""
                yield from finished(server)
                yield from net.drain()
                return echoed, reply

            echoed, reply = threadlib.run(main())
        finally:
            net.close()
    assert echoed == hashlib.sha256(data).hexdigest()
    assert reply == b"OVER THE USER STACK"


def test_bad_arguments_are_named(certs):
    a, b = socket.socketpair()
    try:
        with pytest.raises(TypeError, match="ssl.SSLContext"):
            tls.TlsStream(sockio.Stream(a), "not a context")
        with pytest.raises(ValueError, match="server_hostname"):
            tls.TlsStream(sockio.Stream(a), certs.server(), server_side=True, server_hostname="x")
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------
# Writes the transport cannot take at once


def _small_buffers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


def small_buffer_connection(certs, handler):
    """Our TLS stream to a kernel ssl server that gives its connection to
    ``handler`` in an OS thread (strict about close_notify), with 4 KiB
    socket buffers at both ends so writes soon wait: (stream, Peer)."""
    port, peer = kernel_tls_server(certs.server(), handler, small_buffers=True)
    raw = socket.create_connection((HOST, port), timeout=20)
    _small_buffers(raw)
    conn = yield from tls.wrap(sockio.Stream(raw), certs.client(), server_hostname="localhost")
    return conn, peer


def blocked_writing(thread):
    """Wait until ``thread`` waits for room in a socket (the peer does not read)."""
    from threadlib.lowlevel import WaitWrite

    for _ in range(2000):  # bounded: 20 s
        if isinstance(thread.waiting_on, WaitWrite):
            return
        yield from threadlib.sleep(0.01)
    raise AssertionError(f"{thread} never waited for room; it waits in {thread.waiting_on}")


def test_close_with_a_full_transport_still_sends_close_notify(certs):
    """close() never waits: when the transport is full, a thread sends the
    rest and close_notify once the peer reads, and the peer sees a clean
    end after every byte."""
    data = random.Random(7).randbytes(2 << 20)
    go = threading.Event()

    def handler(conn):
        go.wait(20)
        return read_to_end(conn)  # raises at a transport EOF without close_notify

    def main():
        conn, peer = yield from small_buffer_connection(certs, handler)
        writer = yield from threadlib.spawn(conn.sendall(data))
        yield from blocked_writing(writer)  # the peer does not read yet
        yield from writer.cancel()  # an interrupted write: its encrypted rest stays queued
        conn.close()                # returns at once; the queued bytes and close_notify follow
        assert conn.closed
        go.set()
        return (yield from finished(peer))

    got = threadlib.run(main())
    # The cancelled sendall sent a prefix of the data (everything it had
    # encrypted), and the stream ended cleanly after it.
    assert 0 < len(got) < len(data) and data.startswith(got)


def test_an_interrupted_sendall_leaves_the_stream_usable(certs):
    """A sendall cut by its timeout keeps what it encrypted queued: the
    next write sends it first, and the peer reads a prefix of the data
    followed by the next message, with no TLS error."""
    data = random.Random(8).randbytes(4 << 20)
    go = threading.Event()

    def handler(conn):
        go.wait(20)
        got = bytearray()
        while not got.endswith(b"THE END"):
            chunk = conn.recv(1 << 16)
            assert chunk, "the stream ended early"
            got += chunk
        conn.sendall(b"ok")
        conn.unwrap()
        return bytes(got)

    def main():
        conn, peer = yield from small_buffer_connection(certs, handler)
        with conn:
            with pytest.raises(TimeoutError):
                yield from conn.sendall(data, timeout=0.3)
            go.set()
            yield from conn.sendall(b"THE END", timeout=20)
            assert (yield from conn.recv(10, timeout=20)) == b"ok"
        return (yield from finished(peer))

    got = threadlib.run(main())
    head = got[:-len(b"THE END")]
    assert 0 < len(head) < len(data) and data.startswith(head)


def test_shutdown_with_a_full_transport_finishes_in_the_background(certs):
    data = random.Random(9).randbytes(2 << 20)
    go = threading.Event()

    def handler(conn):
        go.wait(20)
        got = read_to_end(conn)  # ends at our close_notify, after all of it
        conn.sendall(b"got %d" % len(got))
        conn.unwrap()
        return got

    def main():
        conn, peer = yield from small_buffer_connection(certs, handler)
        with conn:
            writer = yield from threadlib.spawn(conn.sendall(data))
            yield from blocked_writing(writer)
            conn.shutdown(socket.SHUT_WR)  # the writer holds the lock: it sends close_notify and the FIN after
            go.set()
            yield from writer.join()
            reply = yield from conn.recv(100, timeout=20)
            assert (yield from conn.recv(100, timeout=20)) == b""
        return reply, (yield from finished(peer))

    reply, got = threadlib.run(main())
    assert got == data and reply == b"got %d" % len(data)


def test_a_green_thread_uses_a_tls_stream_with_plain_calls(certs):
    from threadlib.frontends import green

    def client(port):
        conn = green.wrap(green.call(sockio.kernel.connect((HOST, port), timeout=10, ssl=certs.client())))
        with conn:
            conn.sendall(b"green")
            return conn.recv(100)

    def handler(conn):
        conn.sendall(conn.recv(100).upper())
        conn.unwrap()

    def main():
        port, peer = kernel_tls_server(certs.server(), handler)
        t = yield from threadlib.spawn(green.thread(client, port))
        reply = yield from t.join()
        yield from finished(peer)
        return reply

    assert threadlib.run(main()) == b"GREEN"


def test_a_key_update_the_peer_asks_for_is_answered_while_reading(certs, tmp_path):
    """openssl s_client's "K" sends a TLS 1.3 KeyUpdate asking us to update
    too: a read on our side meets it and must write our own KeyUpdate (a
    read that writes), after which data still flows both ways."""
    ca_file = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca_file))

    def until(proc, marker):
        seen = []
        for line in proc.stdout:  # bounded by the test's timeout; s_client prints the marker or ends
            seen.append(line)
            if marker in line:
                return b"".join(seen)
        raise AssertionError(f"s_client never printed {marker!r}: {b''.join(seen)!r}")

    def main():
        listener = yield from sockio.kernel.listen((HOST, 0), ssl=certs.server())
        proc = s_client(listener.address[1], ca_file, "-tls1_3")
        conn, _ = yield from listener.accept(timeout=10)
        with conn, listener:
            reader = yield from threadlib.spawn(conn.recv(100, timeout=20))
            proc.stdin.write(b"K\n")  # alone on its line and in its read: a command
            proc.stdin.flush()
            yield from threadlib.blocking(until, proc, b"KEYUPDATE")
            proc.stdin.write(b"after\n")
            proc.stdin.flush()
            got = yield from reader.join()
            yield from conn.sendall(b"reply after the key update\n")
            out = yield from threadlib.blocking(until, proc, b"reply after the key update")
            proc.stdin.close()
        proc.wait(20)
        return got, out.decode(errors="replace")

    got, out = threadlib.run(main())
    assert got == b"after\n" and "reply after the key update" in out
