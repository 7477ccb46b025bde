"""Happy Eyeballs (RFC 8305) and per-network resolution: the order of
attempts, host tables and resolvers, and real races on the kernel's stack
and on the user-level stack, with an address that never answers made real
inside a network namespace the test creates (a TUN device nobody reads:
every packet routed to it is silently dropped)."""

from __future__ import annotations

import os
import socket

import pytest

import threadlib
from threadlib.io import happy_eyeballs, sockio
from threadlib.io.happy_eyeballs import HostTable, interleave
from threadlib.lowlevel import WaitWrite

from ..fds import make_epoll, open_fds
from ...waiting import until

V4, V6 = socket.AF_INET, socket.AF_INET6
root_only = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                               reason="needs root and /dev/net/tun (network namespace, TUN device)")


def attempt_threads(sched) -> list:
    return [t for t in sched.threads() if t.name.startswith("connect ")]


# ---------------------------------------------------------------------------
# The order of attempts


def test_interleave_puts_ipv6_first_then_alternates_keeping_each_familys_order():
    addrs = [(V4, ("192.0.2.1", 80)), (V4, ("192.0.2.2", 80)), (V4, ("192.0.2.3", 80)),
             (V6, ("2001:db8::1", 80)), (V6, ("2001:db8::2", 80)), (V4, ("192.0.2.1", 80))]
    assert interleave(addrs) == [
        (V6, ("2001:db8::1", 80)), (V4, ("192.0.2.1", 80)), (V6, ("2001:db8::2", 80)),
        (V4, ("192.0.2.2", 80)), (V4, ("192.0.2.3", 80)),
    ]
    assert interleave([(V4, ("192.0.2.1", 80))]) == [(V4, ("192.0.2.1", 80))]
    assert interleave([]) == []


# ---------------------------------------------------------------------------
# Resolvers and host tables


def test_host_table_resolves_names_literals_and_falls_back():
    looked_up = []

    def fallback(host, port):
        looked_up.append(host)
        return sockio.resolve("127.0.0.1", port)

    def main():
        net = sockio.KernelNetwork(hosts={"Svc.Example": ["::1", "127.0.0.1"], "one": "10.1.2.3"},
                                   resolver=fallback)
        assert (yield from net.resolve("svc.example.", 80)) == [(V6, ("::1", 80)), (V4, ("127.0.0.1", 80))]
        assert (yield from net.resolve("ONE", 8)) == [(V4, ("10.1.2.3", 8))]
        assert (yield from net.resolve("::1", 9)) == [(V6, ("::1", 9))]
        assert (yield from net.resolve("elsewhere", 7)) == [(V4, ("127.0.0.1", 7))]
        assert looked_up == ["elsewhere"]
        strict = sockio.KernelNetwork(resolver=HostTable({"a": "127.0.0.1"}))
        with pytest.raises(socket.gaierror, match="'nowhere' is not in the host table"):
            yield from strict.resolve("nowhere", 1)
        with pytest.raises(socket.gaierror):
            yield from strict.connect(("nowhere", 1), timeout=5)

    threadlib.run(main())


def test_host_table_refuses_entries_that_are_not_addresses():
    with pytest.raises(ValueError, match="'web': 'localhost' is not an IP address"):
        sockio.KernelNetwork(hosts={"web": ["127.0.0.1", "localhost"]})
    with pytest.raises(ValueError, match="'web' has no address"):
        HostTable({"web": []})


def test_the_default_network_still_resolves_through_the_system():
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        with listener:
            conn = yield from sockio.connect(("localhost", listener.address[1]), timeout=5)
            with conn:
                assert conn.peer_address[0] in ("127.0.0.1", "::1")

    threadlib.run(main())


# ---------------------------------------------------------------------------
# Races on loopback (no privileges needed)


def test_a_failed_attempt_starts_the_next_at_once():
    """::1 refuses (nothing listens there); the IPv4 attempt must start on
    that failure, not after the attempt delay, which here is longer than
    the whole connect may take."""
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        port = listener.address[1]
        net = sockio.KernelNetwork(hosts={"svc": ["127.0.0.1", "::1"]})
        conn = yield from net.connect(("svc", port), timeout=10, happy_eyeballs_delay=600)
        with conn, listener:
            assert conn.peer_address[:2] == ("127.0.0.1", port)
            server, _ = yield from listener.accept(timeout=5)
            server.close()

    threadlib.run(main())


def test_every_address_failing_raises_one_error_naming_them_all():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()

    def main():
        net = sockio.KernelNetwork(hosts={"svc": ["127.0.0.1", "::1"]})
        yield from make_epoll()
        before = open_fds()
        with pytest.raises(OSError) as info:
            yield from net.connect(("svc", port), timeout=10)
        assert open_fds() == before
        return info.value

    error = threadlib.run(main())
    assert isinstance(error, ConnectionRefusedError)  # both refused: still the contract's error
    message = str(error)
    assert f"svc:{port}" in message and f"[::1]:{port}" in message and f"127.0.0.1:{port}" in message
    assert message.index("[::1]") < message.index("127.0.0.1")  # IPv6 was tried first
    assert isinstance(error.__cause__, ExceptionGroup)
    assert [type(e) for e in error.__cause__.exceptions] == [ConnectionRefusedError, ConnectionRefusedError]


def test_connect_first_with_plain_attempts_reports_mixed_errors_and_closes_late_winners():
    """The algorithm on its own, with attempts that are plain generators:
    errno of the first failure when they differ, and a second success in
    the same instant closed, not leaked."""
    closed = []

    class Conn:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    def attempt(address):
        host = address[1][0]
        yield from threadlib.sleep(0)
        if host.startswith("bad"):
            raise (ConnectionRefusedError(111, "refused") if host == "bad6" else OSError(113, "no route"))
        return Conn(host)

    def main():
        with pytest.raises(OSError) as info:
            yield from happy_eyeballs.connect_first([(V4, ("bad4", 1)), (V6, ("bad6", 1))], attempt, 0)
        assert type(info.value) is ConnectionRefusedError and info.value.errno == 111
        assert "[bad6]" not in str(info.value)  # no colon in the host: printed plainly
        won = yield from happy_eyeballs.connect_first([(V4, ("a", 1)), (V6, ("b", 1))], attempt, 0)
        return won.name

    # delay 0: both attempts start before either finishes; both succeed in
    # the same pass, the first (IPv6 "b") wins, the other closes itself.
    assert threadlib.run(main()) == "b"
    assert closed == ["a"]


def test_bad_delay_is_refused_with_a_clear_error():
    def main():
        net = sockio.KernelNetwork(hosts={"svc": ["127.0.0.1", "::1"]})
        with pytest.raises(ValueError, match="happy_eyeballs_delay must be >= 0 or None, got -1"):
            yield from net.connect(("svc", 1), happy_eyeballs_delay=-1)

    threadlib.run(main())


# ---------------------------------------------------------------------------
# An address that never answers (root: a namespace with a TUN sink)


BLACKHOLE = "fd77:9::2"


@pytest.fixture
def sink_netns():
    """A namespace whose route to fd77:9::/64 leads into a TUN device that
    nobody reads: SYNs sent there vanish, so connects to BLACKHOLE hang."""
    from iolib.netns import temporary_netns
    from iolib.packetio import TunDevice

    with temporary_netns("he") as ns:
        device = TunDevice("tlsink0", netns=ns.name, addresses=["fd77:9::1/64"])
        try:
            yield ns
        finally:
            device.close()


def run_in(ns, main):
    """Run ``main`` on a new scheduler in an OS thread inside ``ns``, so the
    sockets it makes live there; returns (result, the scheduler)."""
    from threadlib.lowlevel import Scheduler

    sched = Scheduler()
    return ns.run(sched.run, main), sched


@root_only
@pytest.mark.timeout(60)
def test_kernel_network_wins_with_the_answering_address_and_closes_the_hung_attempt(sink_netns):
    def main():
        sched = threadlib.current_scheduler()
        yield from make_epoll()
        before = open_fds()
        listener = yield from sockio.listen(("127.0.0.1", 0))
        port = listener.address[1]
        net = sockio.KernelNetwork(hosts={"svc": [BLACKHOLE, "127.0.0.1"]})
        with listener:
            conn = yield from net.connect(("svc", port), timeout=20)
            with conn:
                assert conn.peer_address[:2] == ("127.0.0.1", port)
                assert conn.family == V4
                assert open_fds() == before | {listener.fileno(), conn.fileno()}  # the IPv6 socket was closed
                assert attempt_threads(sched) == []  # and its attempt ended
                server, peer = yield from listener.accept(timeout=5)
                with server:
                    yield from conn.sendall(b"ping")
                    assert (yield from server.recv(10)) == b"ping"
        assert open_fds() == before

    run_in(sink_netns, main)


@root_only
@pytest.mark.timeout(60)
def test_the_module_level_connect_races_too(sink_netns):
    """``sockio.connect`` is the default network's ``connect``; its
    resolver is swapped for a host table for the length of the test."""
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        port = listener.address[1]
        saved = sockio.kernel.resolver
        sockio.kernel.resolver = HostTable({"svc": [BLACKHOLE, "127.0.0.1"]})
        try:
            conn = yield from sockio.connect(("svc", port), timeout=20)
        finally:
            sockio.kernel.resolver = saved
        with conn, listener:
            assert conn.peer_address[:2] == ("127.0.0.1", port)

    run_in(sink_netns, main)


@root_only
@pytest.mark.timeout(60)
def test_timeout_covers_the_race_names_the_addresses_and_leaks_nothing(sink_netns):
    def main():
        net = sockio.KernelNetwork(hosts={"svc": [BLACKHOLE, "fd77:9::3"]})
        sched = threadlib.current_scheduler()
        yield from make_epoll()
        before = open_fds()
        with pytest.raises(TimeoutError) as info:
            yield from net.connect(("svc", 80), timeout=0.6, happy_eyeballs_delay=0.1)
        assert f"[{BLACKHOLE}]:80" in str(info.value) and "[fd77:9::3]:80" in str(info.value)
        assert open_fds() == before
        assert attempt_threads(sched) == []

    run_in(sink_netns, main)


@root_only
@pytest.mark.timeout(60)
def test_no_delay_means_one_attempt_after_the_other(sink_netns):
    """With happy_eyeballs_delay=None the answering address is never tried
    while the first attempt hangs: the connect times out."""
    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        net = sockio.KernelNetwork(hosts={"svc": [BLACKHOLE, "127.0.0.1"]})
        with listener:
            with pytest.raises(TimeoutError, match=rf"tried \[{BLACKHOLE}\]:\d+\)"):
                yield from net.connect(("svc", listener.address[1]), timeout=0.6, happy_eyeballs_delay=None)
            with pytest.raises(TimeoutError):
                yield from listener.accept(timeout=0)  # nobody connected

    run_in(sink_netns, main)


@root_only
@pytest.mark.timeout(60)
def test_cancelling_a_racing_connect_closes_every_attempt(sink_netns):
    def main():
        net = sockio.KernelNetwork(hosts={"svc": [BLACKHOLE, "fd77:9::3", "fd77:9::4"]})
        sched = threadlib.current_scheduler()
        yield from make_epoll()
        before = open_fds()
        racer = yield from threadlib.spawn(net.connect(("svc", 80), happy_eyeballs_delay=0.05))
        yield from until(lambda: sum(isinstance(t.waiting_on, WaitWrite) for t in attempt_threads(sched)) == 3,
                         what="all three attempts hanging in their handshakes")
        assert len(open_fds() - before) == 3
        assert (yield from racer.cancel()) is True
        assert open_fds() == before
        assert attempt_threads(sched) == []

    run_in(sink_netns, main)


@root_only
@pytest.mark.timeout(60)
def test_user_network_races_too():
    """The user-level stack: fd77::99 is on the stack's prefix, but the
    kernel side (forwarding off) drops what is sent to it, silently."""
    from iolib.netns import temporary_netns
    from threadlib.io import tcpsockio

    with temporary_netns("heu") as ns:
        net = tcpsockio.open_network(tun="tlhe0", netns=ns.name, seed=3,
                                     hosts={"svc": ["fd77::99", "10.77.0.1"]})
        try:
            server = ns.run(socket.socket, V4, socket.SOCK_STREAM)
            server.bind(("10.77.0.1", 0))
            server.listen(4)
            port = server.getsockname()[1]

            def main():
                conn = yield from net.connect(("svc", port), timeout=20)
                with conn:
                    assert conn.peer_address[:2] == ("10.77.0.1", port)
                    peers = [c.raddr for c in net.stack.connections() if c.state != "CLOSED"]
                    assert "fd77::99" not in peers, peers  # the lost attempt was reset
                    assert attempt_threads(threadlib.current_scheduler()) == []
                    yield from conn.sendall(b"hi")
                    yield from net.drain(5)

            threadlib.run(main())
            accepted, _ = server.accept()
            accepted.settimeout(5)
            assert accepted.recv(10) == b"hi"
            accepted.close()
            server.close()
        finally:
            net.close()
