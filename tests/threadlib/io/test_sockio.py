"""sockio over real kernel sockets: TCP v4/v6, UDP, Unix, errors, EMFILE,
and 5,000 concurrent connections echoing byte-exact."""

import errno
import hashlib
import logging
import os
import re
import resource
import socket
import tempfile

import pytest

import threadlib
from threadlib.io import sockio
from tests.waiting import until


def echo_handler(conn):
    with conn:
        while True:
            data = yield from conn.recv(65536)
            if not data:
                return
            yield from conn.sendall(data)


def start_echo_server(host="127.0.0.1"):
    listener = yield from sockio.listen((host, 0))

    def accept_loop():
        while True:
            conn, _ = yield from listener.accept()
            yield from threadlib.spawn(echo_handler(conn))

    acceptor = yield from threadlib.spawn(accept_loop())
    return listener, acceptor


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcp_echo_roundtrip_and_addresses(host):
    def main():
        listener, acceptor = yield from start_echo_server(host)
        conn = yield from sockio.connect(listener.address, timeout=5)
        assert conn.peer_address[:2] == listener.address
        assert conn.local_address[0] == host
        payload = os.urandom(300_000)  # bigger than the socket buffers: exercises WaitWrite
        sender = yield from threadlib.spawn(conn.sendall(payload))
        got = bytearray()
        while len(got) < len(payload):
            buf = bytearray(65536)
            n = yield from conn.recv_into(buf)
            assert n > 0
            got += buf[:n]
        yield from sender.join()
        assert bytes(got) == payload
        conn.shutdown(socket.SHUT_WR)
        assert (yield from conn.recv(10)) == b""  # server saw EOF and closed
        conn.close()
        yield from acceptor.cancel()
        listener.close()

    threadlib.run(main())


def test_5000_concurrent_connections_echo_byte_exact():
    n_conns = 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * n_conns + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        if min(need, hard) < need:
            pytest.skip(f"fd limit {hard} too low for {n_conns} connections")

    def client(address, i):
        conn = yield from sockio.connect(address, timeout=30)
        with conn:
            msg = hashlib.sha256(str(i).encode()).digest() * (1 + i % 7)
            for _ in range(3):
                yield from conn.sendall(msg)
                got = yield from conn.recv_exactly(len(msg), timeout=30)
                if got != msg:
                    return False
        return True

    def main():
        listener, acceptor = yield from start_echo_server()
        clients = []
        for i in range(n_conns):
            clients.append((yield from threadlib.spawn(client(listener.address, i))))
        results = yield from threadlib.join_all(clients)
        yield from acceptor.cancel()
        listener.close()
        return results

    results = threadlib.run(main())
    assert len(results) == n_conns and all(results)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except ValueError:
        pass


def test_connect_refused_and_timeout_errors_are_standard():
    def main():
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        with pytest.raises(ConnectionRefusedError):
            yield from sockio.connect(("127.0.0.1", port), timeout=5)

        # A listener whose backlog is full makes connect wait: the timeout fires.
        raw = socket.socket()
        raw.bind(("127.0.0.1", 0))
        raw.listen(0)
        fillers = []
        try:
            with pytest.raises(TimeoutError):
                for _ in range(64):
                    fillers.append((yield from sockio.connect(raw.getsockname(), timeout=0.2)))
        finally:
            for f in fillers:
                f.close()
            raw.close()

    threadlib.run(main())


def test_peer_reset_raises_connection_reset():
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        client = yield from sockio.connect(listener.address)
        server, _ = yield from listener.accept()
        # SO_LINGER 0 makes close() send RST
        import struct

        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with pytest.raises(ConnectionResetError):
            yield from server.recv(10)
        server.close()
        listener.close()

    threadlib.run(main())


def test_write_to_closed_peer_raises_broken_pipe():
    def main():
        a, b = sockio.socketpair()
        b.close()
        with pytest.raises(BrokenPipeError):
            for _ in range(100):
                yield from a.sendall(b"x" * 65536)
        a.close()

    threadlib.run(main())


def test_closing_a_socket_wakes_its_waiting_reader_with_ebadf():
    def main():
        a, b = sockio.socketpair()

        def reader():
            return (yield from a.recv(10))

        t = yield from threadlib.spawn(reader())
        yield from threadlib.sleep(0)
        a.close()
        with pytest.raises(OSError) as info:
            yield from t.join()
        assert info.value.errno == errno.EBADF
        b.close()

    threadlib.run(main())


def test_udp_sendto_recvfrom_v4_and_v6():
    def main():
        for host in ("127.0.0.1", "::1"):
            server = yield from sockio.udp(bind=(host, 0))
            client = yield from sockio.udp(family=server.family)
            yield from client.sendto(b"ping", server.local_address)
            data, addr = yield from server.recvfrom(100, timeout=5)
            assert data == b"ping"
            yield from server.sendto(b"pong", addr)
            assert (yield from client.recv(100, timeout=5)) == b"pong"
            server.close()
            client.close()

    threadlib.run(main())


def test_unix_stream_sockets():
    def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "sock")
            listener = yield from sockio.unix_listen(path)

            def serve_one():
                conn, _ = yield from listener.accept()
                yield from echo_handler(conn)

            t = yield from threadlib.spawn(serve_one())
            conn = yield from sockio.unix_connect(path, timeout=5)
            yield from conn.sendall(b"over unix")
            assert (yield from conn.recv_exactly(9)) == b"over unix"
            conn.close()
            yield from t.join()
            listener.close()

    threadlib.run(main())


def test_sendfile_sends_a_real_file_zero_copy():
    data = os.urandom(1_000_000)
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()

        def main():
            a, b = sockio.socketpair()

            def reader():
                got = bytearray()
                while True:
                    chunk = yield from b.recv(65536)
                    if not chunk:
                        return bytes(got)
                    got += chunk

            r = yield from threadlib.spawn(reader())
            sent = yield from a.sendfile(f, offset=10, count=len(data) - 10)
            a.shutdown()
            got = yield from r.join()
            a.close()
            b.close()
            return sent, got

        sent, got = threadlib.run(main())
    assert sent == len(data) - 10 and got == data[10:]


def test_accept_survives_running_out_of_fds(caplog):
    """EMFILE makes accept back off and retry; the server keeps serving."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    caplog.set_level(logging.WARNING)

    def backed_off():
        return [r for r in caplog.records if "retrying in" in r.getMessage()]

    def main():
        listener, acceptor = yield from start_echo_server()
        hog = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            try:
                while True:
                    hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            # One fd free for the client socket: the server's accept gets EMFILE.
            os.close(hog.pop())
            raw = socket.create_connection(listener.address)
            (first, *_) = yield from until(backed_off, what="accept backing off on EMFILE")
            assert os.strerror(errno.EMFILE) in first.getMessage()
            for fd in hog[:10]:
                os.close(fd)
            del hog[:10]
            def talk():
                raw.settimeout(5)
                raw.sendall(b"still alive")
                return raw.recv(100)

            # a blocking client must not run on the scheduler's OS thread
            assert (yield from threadlib.blocking(talk)) == b"still alive"
            raw.close()
        finally:
            for fd in hog:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        yield from acceptor.cancel()
        listener.close()

    threadlib.run(main())


def test_connect_resolves_names_on_the_blocking_pool():
    def main():
        listener, acceptor = yield from start_echo_server()
        conn = yield from sockio.connect(("localhost", listener.address[1]), timeout=5)
        yield from conn.sendall(b"by name")
        assert (yield from conn.recv_exactly(7, timeout=5)) == b"by name"
        conn.close()
        yield from acceptor.cancel()
        listener.close()

    threadlib.run(main())


def test_a_failed_connect_leaves_no_stale_wait_on_its_fd_number():
    """The fd of a refused connect is reused by the next socket; waiting on
    that new socket must work (the IO worker forgot the old registration)."""

    def main():
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
        probe.close()
        listener, acceptor = yield from start_echo_server()
        for _ in range(20):
            with pytest.raises(ConnectionRefusedError):
                yield from sockio.connect(("127.0.0.1", closed_port), timeout=5)
            conn = yield from sockio.connect(listener.address, timeout=5)
            yield from conn.sendall(b"ping")
            assert (yield from conn.recv_exactly(4, timeout=5)) == b"ping"
            conn.close()
        yield from acceptor.cancel()
        listener.close()

    threadlib.run(main())


def test_completed_at_call_tells_a_sendall_the_socket_took_at_once_from_one_that_must_wait():
    from threadlib.net import completed_at_call

    def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        ours, theirs = sockio.Stream(a), sockio.Stream(b)
        small = ours.sendall(b"hello")
        assert completed_at_call(small)
        yield from small  # does nothing more
        assert (yield from theirs.recv(100)) == b"hello"
        big = b"x" * (64 << 20)  # more than any socket buffer takes at once
        pending = ours.sendall(big)
        assert not completed_at_call(pending)
        reader = yield from threadlib.spawn(_read_exactly(theirs, len(big)))
        yield from pending  # the rest goes as the reader drains
        assert (yield from reader.join()) == len(big)
        assert not completed_at_call(threadlib.sleep(0))  # a call that has not run yet
        ours.close()
        theirs.close()

    threadlib.run(main)


@pytest.mark.parametrize("how", ["positional", "keyword"])
def test_a_sendall_with_a_timeout_completes_at_once_or_times_out_having_sent_a_prefix(how):
    """The send timeout given by position or by name (the web server names
    it at every send): a sendall the socket takes at once is complete at
    the call; one a peer that does not read never lets finish raises
    TimeoutError after the timeout, and what was sent is a prefix."""
    from threadlib.net import completed_at_call

    def send(stream, data, timeout):
        return stream.sendall(data, timeout) if how == "positional" else stream.sendall(data, timeout=timeout)

    def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        ours, theirs = sockio.Stream(a), sockio.Stream(b)
        small = send(ours, b"hello", 5)
        assert completed_at_call(small)
        yield from small
        assert (yield from theirs.recv(100)) == b"hello"
        big = bytes(range(256)) * (64 << 12)  # 64 MiB: more than the socket buffers take
        started = threadlib.now()
        with pytest.raises(TimeoutError):
            yield from send(ours, big, 0.05)
        waited = threadlib.now() - started
        got = bytearray()
        while True:
            try:
                chunk = theirs.socket.recv(1 << 20)
            except BlockingIOError:
                break
            got += chunk
        ours.close()
        theirs.close()
        return waited, bytes(got), big

    waited, got, big = threadlib.run(main)
    assert 0.05 <= waited < 5
    assert 0 < len(got) < len(big) and big.startswith(got)


def _read_exactly(stream, n):
    got = 0
    while got < n:
        data = yield from stream.recv(1 << 20)
        assert data
        got += len(data)
    return got


@pytest.mark.parametrize("host, shown", [("127.0.0.1", "127.0.0.1:{port}"), ("::1", "[::1]:{port}")])
def test_listening_on_a_taken_port_names_the_address_and_port(host, shown):
    def main():
        first = yield from sockio.listen((host, 0))
        port = first.address[1]
        try:
            with pytest.raises(OSError, match=rf"cannot listen on {re.escape(shown.format(port=port))}: ") as e:
                yield from sockio.listen((host, port))
            assert e.value.errno == errno.EADDRINUSE
        finally:
            first.close()
        return "refused"

    assert threadlib.run(main()) == "refused"


@pytest.mark.parametrize("nodelay", [True, False])
def test_accepted_streams_have_nagle_off_unless_the_listener_says_otherwise(nodelay):
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0), nodelay=nodelay)
        client = yield from sockio.connect(listener.address)
        conn, _ = yield from listener.accept()
        try:
            return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            for s in (conn, client, listener):
                s.close()

    assert bool(threadlib.run(main())) is nodelay


@pytest.mark.parametrize("offset", [0, 1000])
def test_sendfile_from_an_offset_without_a_count_sends_the_rest_of_the_file(offset):
    content = bytes(range(256)) * 400  # 102,400 bytes
    with tempfile.TemporaryFile() as f:
        f.write(content)
        f.flush()

        def main():
            a, b = sockio.socketpair()
            with a, b:
                def reader():
                    got = bytearray()
                    while True:
                        chunk = yield from b.recv(1 << 16)
                        if not chunk:
                            return bytes(got)
                        got += chunk

                r = yield from threadlib.spawn(reader())
                with threadlib.timeout(10):
                    sent = yield from a.sendfile(f, offset=offset)
                    a.shutdown()
                    return sent, (yield from r.join())

        assert threadlib.run(main()) == (len(content) - offset, content[offset:])


def test_shutting_down_a_closed_stream_raises_but_a_disconnected_one_does_not():
    a, b = sockio.socketpair()
    b.close()
    a.shutdown()  # the peer is gone: no error (ENOTCONN, where the kernel says so, is not one)
    a.close()
    with pytest.raises(OSError) as e:
        a.shutdown()
    assert e.value.errno == errno.EBADF


@pytest.mark.parametrize("into", [False, True])
def test_a_read_that_fills_its_buffer_leaves_the_rest_readable_at_once(into):
    # The reader waits first (its edge is used up), then 20 bytes come: a
    # 10-byte read may have left more behind, so the next read must try
    # the socket, not wait for an edge that will not come.
    def main():
        a, b = sockio.socketpair()
        with a, b:
            def read10():
                if into:
                    buf = bytearray(10)
                    n = yield from a.recv_into(buf)
                    return bytes(buf[:n])
                return (yield from a.recv(10))

            def reader():
                with threadlib.timeout(5):
                    return [(yield from read10()), (yield from read10())]

            r = yield from threadlib.spawn(reader())
            yield from threadlib.sleep(0)  # it waits now
            b.socket.sendall(b"0123456789abcdefghij")
            return (yield from r.join())

    assert threadlib.run(main()) == [b"0123456789", b"abcdefghij"]


def test_a_connected_datagram_socket_sends_and_says_how_much_went():
    def main():
        server = yield from sockio.udp(bind=("127.0.0.1", 0))
        client = yield from sockio.udp()
        with server, client:
            client.connect(server.local_address)
            sent = yield from client.send(b"datagram")
            with threadlib.timeout(5):
                data, _ = yield from server.recvfrom()
            return sent, data

    assert threadlib.run(main()) == (8, b"datagram")


@pytest.mark.parametrize("into", [False, True])
def test_the_end_that_comes_with_the_last_data_is_read_at_once(into):
    # The reader waits; the peer's last data and its end come as one
    # event.  A short read then must not make the next read wait for an
    # event that will not come: it returns the end at once.
    def main():
        a, b = sockio.socketpair()
        with a, b:
            def read():
                if into:
                    buf = bytearray(100)
                    n = yield from a.recv_into(buf)
                    return bytes(buf[:n])
                return (yield from a.recv(100))

            def reader():
                with threadlib.timeout(5):
                    return [(yield from read()), (yield from read())]

            r = yield from threadlib.spawn(reader())
            yield from threadlib.sleep(0)  # it waits now
            b.socket.send(b"last words")
            b.socket.shutdown(socket.SHUT_WR)
            return (yield from r.join())

    assert threadlib.run(main()) == [b"last words", b""]


def test_a_read_cancelled_or_timed_out_while_it_waits_consumes_nothing():
    # A thread waiting in recv is cancelled, another's wait ends in its
    # scope's timeout, an async def thread's too: the bytes sent after are
    # all read by the next recv, none lost to the withdrawn waits.
    def main():
        a, b = sockio.socketpair()

        def reader():
            return (yield from a.recv(10))

        async def async_reader():
            return await a.recv(10)

        t = yield from threadlib.spawn(reader())
        yield from threadlib.sleep(0)
        assert (yield from t.cancel()) is True
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0.01):
                yield from a.recv(10)
        t = yield from threadlib.spawn(async_reader())
        yield from threadlib.sleep(0)
        assert (yield from t.cancel()) is True
        yield from b.sendall(b"kept")
        got = yield from a.recv(10)
        a.close()
        b.close()
        return got

    assert threadlib.run(main()) == b"kept"


def test_a_read_can_be_driven_as_a_generator_can():
    # What a recv returns is driven by yield from, await, or by hand with
    # send/throw/close, as a generator is: at once when data is there, one
    # wait otherwise; an exception thrown at the wait comes out; once done
    # it returns None; a value sent before it starts is refused.
    def main():
        a, b = sockio.socketpair()
        yield from b.sendall(b"one")
        first = a.recv(10)
        assert (yield from first) == b"one"
        assert (yield from first) is None
        fresh = a.recv(10)
        with pytest.raises(TypeError):
            fresh.send(1)
        waiting = a.recv(10)
        wait = waiting.send(None)  # nothing to read: the WaitRead it yields
        assert type(wait).__name__ == "WaitRead" and wait.fd == a.fileno()
        with pytest.raises(KeyError, match="thrown"):
            waiting.throw(KeyError("thrown"))
        closed = a.recv(10)
        closed.close()
        yield from b.sendall(b"two")
        assert (yield from closed) is None

        async def awaited():
            return await a.recv(10)

        got = yield from threadlib.spawn(awaited())
        a.close()
        b.close()
        return (yield from got.join())

    assert threadlib.run(main()) == b"two"


def test_a_read_past_the_arguments_it_takes_fails_as_the_python_read_does():
    # Bad arguments fail alike compiled and pure: a negative size when the
    # read runs, an unknown keyword or too many arguments at the call.
    def main():
        a, b = sockio.socketpair()
        with pytest.raises(ValueError, match="negative buffersize"):
            yield from a.recv(-1)
        with pytest.raises(TypeError):
            a.recv(10, None, None)
        with pytest.raises(TypeError):
            a.recv(10, size=3)
        yield from b.sendall(b"ok")
        got = yield from a.recv(max_bytes=10, timeout=5)
        a.close()
        b.close()
        return got

    assert threadlib.run(main()) == b"ok"
