"""Connection opening: RFC 9293 §3.5, §3.10.1, §3.10.7.1-3; option
negotiation (RFC 9293 §3.7.1, RFC 7323, RFC 2018); ISNs (RFC 6528); ports;
listen queues."""

import random

import pytest

from iolib.tcp import (EV_ACCEPT, EV_CONNECTED, EV_ERROR, EV_REFUSED, EV_WRITABLE, AddressInUse,
                       ConnectionRefused, ConnectionTimedOut, NetUnreachable, Stack)
from .testkit import ACK, ANY, FIN, PSH, REMOTE_ISS, REMOTE_PORT, RST, SYN, Harness, seg

M = 0xFFFFFFFF


def tsv(c, now):
    return (int(now * 1000) + c.ts_offset) & M


def test_active_open_sends_syn_with_mss_sack_timestamps_and_window_scale():
    """MUST-14, SHLD-5: MSS in the SYN, computed from the MTU (MUST-67)."""
    h = Harness()
    c = h.connect()
    assert c.state == "SYN-SENT"
    h.expect(seg(SYN, c.iss, 0, 65535, mss=1460, ws=3, sack_ok=True, ts=(tsv(c, 0), 0)))


def test_active_open_negotiates_peer_options():
    h = Harness()
    c = h.connect()
    h.out()
    h.at(0.05)
    h.send(seg(SYN | ACK, REMOTE_ISS, c.iss + 1, 1000, mss=1200, ws=5, sack_ok=True, ts=(500, tsv(c, 0))))
    h.expect(seg(ACK, c.iss + 1, REMOTE_ISS + 1, 262144 >> 3, ts=(tsv(c, 0.05), 500)))
    assert c.state == "ESTABLISHED"
    assert (c.snd_wscale, c.rcv_wscale, c.ts_ok, c.sack_ok) == (5, 3, True, True)
    assert c.smss == 1200 - 12          # MUST-16: effective MSS minus timestamp option
    assert c.snd_wnd == 1000            # the window in a SYN is never scaled (RFC 7323 §2.2)
    assert c.rtt.srtt == pytest.approx(0.05)
    assert h.kinds(c) == [EV_CONNECTED, EV_WRITABLE]


def test_peer_without_options_turns_them_off_and_default_mss_is_536():
    """MUST-15: without an MSS option the send MSS is 536 (IPv4)."""
    h = Harness()
    c = h.established_active()
    assert (c.ts_ok, c.sack_ok, c.snd_wscale, c.rcv_wscale, c.smss) == (False, False, 0, 0, 536)
    h.stack.send(h.now, c, b"a" * 600)
    h.expect(seg(ACK, c.iss + 1, REMOTE_ISS + 1, 65535, b"a" * 536))   # Nagle holds the rest
    h.send(seg(ACK, REMOTE_ISS + 1, c.iss + 537, 65535))
    h.expect(seg(ACK | 0x08, c.iss + 537, REMOTE_ISS + 1, 65535, b"a" * 64))


def test_ipv6_default_send_mss_is_1220():
    h = Harness(v6=True)
    c = h.established_active()
    assert c.smss == 1220
    h2 = Harness(v6=True)
    c2 = h2.connect()
    (syn,) = h2.out()
    assert syn.mss == 1440      # MTU 1500 - 40 (IPv6) - 20 (TCP)


def test_passive_open_answers_only_the_options_offered():
    h = Harness()
    h.listener = h.stack.listen(80)
    h.send(seg(SYN, REMOTE_ISS, 0, 8192, mss=1000))
    (synack,) = h.expect(seg(SYN | ACK, ANY, REMOTE_ISS + 1, 65535, mss=1460))
    h.send(seg(ACK, REMOTE_ISS + 1, synack.seq + 1, 8192))
    c = h.stack.accept(h.listener)
    assert c.state == "ESTABLISHED" and c.smss == 1000 and not c.ts_ok and not c.sack_ok
    assert h.kinds(h.listener) == [EV_ACCEPT]


def test_passive_open_with_every_option():
    h = Harness()
    h.listener = h.stack.listen(80)
    h.send(seg(SYN, REMOTE_ISS, 0, 65535, mss=1460, ws=7, sack_ok=True, ts=(1000, 0)))
    conn = h.stack.connections()[0]
    h.expect(seg(SYN | ACK, conn.iss, REMOTE_ISS + 1, 65535, mss=1460, ws=3, sack_ok=True,
                 ts=(tsv(conn, 0), 1000)))
    h.send(seg(ACK, REMOTE_ISS + 1, conn.iss + 1, 512, ts=(1001, tsv(conn, 0))))
    assert h.stack.accept(h.listener) is conn
    assert conn.snd_wnd == 512 << 7     # scaled from the first non-SYN segment on
    assert conn.ts_recent == 1001


def test_bad_ack_in_syn_sent_gets_reset_and_connection_survives():
    """RFC 9293 §3.10.7.3: SEG.ACK =< ISS or > SND.NXT -> <SEQ=SEG.ACK><CTL=RST>."""
    h = Harness()
    c = h.connect()
    h.out()
    h.send(seg(SYN | ACK, REMOTE_ISS, c.iss + 7, 1000))
    h.expect(seg(RST, c.iss + 7, 0, 0))
    h.send(seg(SYN | ACK, REMOTE_ISS, c.iss, 1000))
    h.expect(seg(RST, c.iss, 0, 0))
    assert c.state == "SYN-SENT"


def test_rst_with_acceptable_ack_in_syn_sent_refuses_the_connection():
    """MUST-12: the user learns of the refusal."""
    h = Harness()
    c = h.connect()
    h.out()
    h.send(seg(RST | ACK, 0, c.iss + 1, 0))
    h.expect_none()
    assert c.state == "CLOSED"
    assert EV_REFUSED in h.kinds(c)
    with pytest.raises(ConnectionRefused, match=rf"connection to 10\.0\.0\.2 port {REMOTE_PORT} refused"):
        h.stack.recv(c)
    assert h.stack.connections() == []


def test_rst_without_ack_in_syn_sent_is_ignored():
    h = Harness()
    c = h.connect()
    h.out()
    h.send(seg(RST, 0, 0, 0))
    assert c.state == "SYN-SENT"


def test_simultaneous_open():
    """MUST-10 and RFC 9293 figure 8."""
    h = Harness()
    c = h.connect()
    h.out()
    h.send(seg(SYN, REMOTE_ISS, 0, 4000, mss=1000))
    assert c.state == "SYN-RECEIVED" and not c.passive   # MUST-11: remembers it was active
    # Same SYN options again; the peer sent no window scale, so ours is 0 now.
    h.expect(seg(SYN | ACK, c.iss, REMOTE_ISS + 1, 65535, mss=1460, ws=0, sack_ok=True, ts=ANY))
    h.send(seg(SYN | ACK, REMOTE_ISS, c.iss + 1, 4000, mss=1000))
    assert c.state == "ESTABLISHED"
    h.expect(seg(ACK, c.iss + 1, REMOTE_ISS + 1, 65535))
    assert EV_CONNECTED in h.kinds(c)


def test_simultaneous_open_reset_reports_refused():
    """MUST-11: an active open that went through SYN-RECEIVED reports a RST
    as a refusal instead of returning to LISTEN."""
    h = Harness()
    c = h.connect()
    h.out()
    h.send(seg(SYN, REMOTE_ISS, 0, 4000))
    h.out()
    h.send(seg(RST, REMOTE_ISS + 1, 0, 0))
    assert c.state == "CLOSED" and isinstance(c.error, ConnectionRefused)


def test_passive_syn_received_reset_returns_to_listen():
    """MUST-11: a passive open goes back to LISTEN silently."""
    h = Harness()
    lst = h.stack.listen(80)
    h.send(seg(SYN, REMOTE_ISS, 0, 4000))
    h.out()
    h.send(seg(RST, REMOTE_ISS + 1, 0, 0))
    assert h.stack.connections() == [] and lst.syn_count == 0
    assert h.stack.accept(lst) is None
    h.send(seg(SYN, REMOTE_ISS + 50, 0, 4000))   # the listener still works
    (synack,) = h.out()
    assert synack.flags == SYN | ACK


def test_lost_synack_is_resent_on_duplicate_syn_and_on_timeout():
    h = Harness()
    h.stack.listen(80)
    h.send(seg(SYN, REMOTE_ISS, 0, 4000))
    (first,) = h.out()
    h.send(seg(SYN, REMOTE_ISS, 0, 4000))
    h.expect(seg(SYN | ACK, first.seq, REMOTE_ISS + 1, 65535, mss=1460))
    h.at(1.0)                                     # initial RTO (RFC 6298 2.1)
    h.expect(seg(SYN | ACK, first.seq, REMOTE_ISS + 1, 65535, mss=1460))


def test_unacceptable_ack_in_syn_received_gets_reset():
    h = Harness()
    h.stack.listen(80)
    h.send(seg(SYN, REMOTE_ISS, 0, 4000))
    (synack,) = h.out()
    h.send(seg(ACK, REMOTE_ISS + 1, synack.seq + 5, 4000))
    h.expect(seg(RST, synack.seq + 5, 0, 0))


def test_syn_retransmission_backs_off_until_the_user_timeout():
    """RFC 6298 (5.5) backoff capped at max_rto; MUST-20/22/23: the SYN gives
    up after R2 = user_timeout (default 300 s >= 3 minutes)."""
    h = Harness()
    c = h.connect()
    h.out()
    times = []
    t = 0.0
    for _ in range(100):  # bounded: a deadline that stops moving fails here
        if c.state == "CLOSED" or t >= 400:
            break
        d = h.stack.next_deadline()
        h.at(d)
        t = d
        for s in h.out():
            assert s.flags == SYN and s.seq == c.iss
            times.append(t)
    assert times == [1, 3, 7, 15, 31, 63, 123, 183, 243]
    assert t == 300.0
    assert isinstance(c.error, ConnectionTimedOut)
    assert EV_ERROR in h.kinds(c)


def test_user_timeout_is_settable_for_syn():
    """MUST-21: the application sets R2."""
    h = Harness()
    c = h.connect(user_timeout=5)
    h.out()
    h.at(10)
    assert c.state == "CLOSED" and isinstance(c.error, ConnectionTimedOut)


def test_segments_to_a_closed_port_get_resets():
    """RFC 9293 §3.10.7.1 (CLOSED state)."""
    h = Harness()
    h.send(seg(SYN, REMOTE_ISS, 0, 4000, b"hey"))
    h.expect(seg(RST | ACK, 0, REMOTE_ISS + 4, 0))
    h.send(seg(ACK, 5, 777, 4000))
    h.expect(seg(RST, 777, 0, 0))
    h.send(seg(RST, 5, 777, 0))
    h.expect_none()
    assert h.stack.stats.rst_sent == 2
    assert (h.stack.stats.dropped_no_connection, h.stack.stats.packets_in) == (3, 3)



@pytest.mark.parametrize("flags, payload, occupies", [
    (FIN, b"", 1), (FIN | PSH, b"bye", 4), (SYN | FIN, b"", 2), (SYN | FIN, b"xy", 4), (PSH, b"data", 4),
])
def test_a_reset_to_a_closed_port_acknowledges_all_the_sequence_space_the_segment_took(flags, payload, occupies):
    """RFC 9293 §3.10.7.1: without ACK, <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>,
    where SEG.LEN counts SYN and FIN as one each."""
    h = Harness()
    h.send(seg(flags, REMOTE_ISS, 0, 4000, payload))
    h.expect(seg(RST | ACK, 0, REMOTE_ISS + occupies, 0))

def test_ack_to_listener_gets_reset_and_rst_is_ignored():
    """RFC 9293 §3.10.7.2."""
    h = Harness()
    h.stack.listen(80)
    h.send(seg(ACK, 5, 999, 4000))
    h.expect(seg(RST, 999, 0, 0))
    h.send(seg(RST, 5, 0, 0))
    h.send(seg(0, 5, 0, 0, b"no flags"))
    h.expect_none()


def test_syn_queue_and_accept_queue_limits():
    h = Harness()
    lst = h.stack.listen(80, backlog=2, syn_backlog=2)
    for port in (5001, 5002, 5003):
        h.send(seg(SYN, REMOTE_ISS, 0, 4000), sport=port)
    assert [(s.flags, s.sport, s.dport) for s in h.out()] == [(SYN | ACK, 80, 5001), (SYN | ACK, 80, 5002)]
    assert h.stack.stats.syn_queue_overflow == 1
    for c in h.stack.connections():
        h.send(seg(ACK, REMOTE_ISS + 1, c.iss + 1, 4000), sport=c.rport)
    assert lst.syn_count == 0 and len(lst.queue) == 2
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), sport=5004)
    h.expect_none()
    assert h.stack.stats.accept_queue_overflow == 1
    a1, a2 = h.stack.accept(lst), h.stack.accept(lst)
    assert {a1.rport, a2.rport} == {5001, 5002} and h.stack.accept(lst) is None


def test_one_listener_accepts_many_connections_on_one_port():
    """MUST-42."""
    h = Harness()
    lst = h.stack.listen(80)
    for port in range(6000, 6010):
        h.send(seg(SYN, REMOTE_ISS, 0, 4000), sport=port)
        (synack,) = h.expect(seg(SYN | ACK, ANY, REMOTE_ISS + 1, 65535, mss=1460, dport=port))
        h.send(seg(ACK, REMOTE_ISS + 1, synack.seq + 1, 4000), sport=port)
    got = []
    while (c := h.stack.accept(lst)) is not None:
        got.append(c.rport)
    assert got == list(range(6000, 6010))


def test_listen_conflicts_raise_address_in_use():
    s = Stack(["10.0.0.1/24", "10.0.0.3/24"], rng=1)
    s.listen(80, address="10.0.0.1")
    s.listen(80, address="10.0.0.3")
    with pytest.raises(AddressInUse):
        s.listen(80, address="10.0.0.1")
    with pytest.raises(AddressInUse):
        s.listen(80)


def test_ephemeral_ports_come_from_the_seeded_rng_and_never_collide():
    ports = []
    for _ in range(2):
        s = Stack(["10.0.0.1/24"], rng=random.Random(42))
        ports.append([s.connect(0, "10.0.0.2", 80).lport for _ in range(300)])
    assert ports[0] == ports[1]                      # deterministic
    assert len(set(ports[0])) == 300                 # distinct
    assert all(49152 <= p <= 65535 for p in ports[0])
    other = Stack(["10.0.0.1/24"], rng=random.Random(43))
    assert [other.connect(0, "10.0.0.2", 80).lport for _ in range(5)] != ports[0][:5]


def test_isn_follows_rfc6528_clock_plus_keyed_hash():
    """MUST-8: a 4 µs clock component; SHLD-1: a keyed PRF, so another key
    (seed) gives unrelated ISNs (MUST-9: not computable from outside)."""
    a = Stack(["10.0.0.1/24"], rng=random.Random(1))
    i0 = a._isn(0.0, b"\n\0\0\1", 1000, b"\n\0\0\2", 80)
    i1 = a._isn(1.0, b"\n\0\0\1", 1000, b"\n\0\0\2", 80)
    assert (i1 - i0) & M == 250000
    assert a._isn(0.0, b"\n\0\0\1", 1001, b"\n\0\0\2", 80) != i0
    b = Stack(["10.0.0.1/24"], rng=random.Random(2))
    assert b._isn(0.0, b"\n\0\0\1", 1000, b"\n\0\0\2", 80) != i0


def test_connect_errors_name_the_problem():
    """MUST-46: OPEN to an invalid (multicast/broadcast/unspecified) address
    is rejected; no address of the family -> NetUnreachable."""
    s = Stack(["10.0.0.1/24"], rng=1)
    with pytest.raises(NetUnreachable, match="IPv6"):
        s.connect(0, "fd00::2", 80)
    for bad in ("224.0.0.1", "255.255.255.255", "0.0.0.0"):
        with pytest.raises(NetUnreachable):
            s.connect(0, bad, 80)
    with pytest.raises(ValueError, match="remote address"):
        s.connect(0, "not-an-ip", 80)
    with pytest.raises(ValueError, match="remote port"):
        s.connect(0, "10.0.0.2", 70000)
    with pytest.raises(ValueError, match="unknown TCP option"):
        s.connect(0, "10.0.0.2", 80, nagle=False)


def test_source_address_selection_and_explicit_local_address():
    """MUST-43/44/45: the local address is optional in OPEN; otherwise the
    address on the peer's prefix is used."""
    s = Stack(["10.0.0.1/24", "192.168.5.1/24", "fd00::1/64"], rng=1)
    assert s.connect(0, "192.168.5.9", 80).local[0] == "192.168.5.1"
    assert s.connect(0, "10.0.0.9", 80).local[0] == "10.0.0.1"
    assert s.connect(0, "172.16.0.1", 80).local[0] == "10.0.0.1"   # off-prefix: first v4
    assert s.connect(0, "fd00::9", 80).local[0] == "fd00::1"
    assert s.connect(0, "10.0.0.9", 80, local_addr="192.168.5.1").local[0] == "192.168.5.1"
    with pytest.raises(ValueError, match="not ours"):
        s.connect(0, "10.0.0.9", 80, local_addr="10.9.9.9")


def test_syn_from_invalid_source_or_to_foreign_address_is_dropped():
    """MUST-63 and MUST-57."""
    h = Harness()
    h.stack.listen(80)
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), src="224.0.0.5")
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), dst="10.0.0.255")
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), dst="224.0.0.1")
    h.expect_none()
    st = h.stack.stats
    assert (st.dropped_martian, st.dropped_not_for_us) == (1, 2)


def test_configurable_ttl():
    """MUST-49."""
    from iolib.tcp.ip import parse_ip
    s = Stack(["10.0.0.1/24"], rng=1, ttl=17)
    s.connect(0, "10.0.0.2", 80)
    (pkt,) = s.take_packets()
    assert parse_ip(pkt).hop_limit == 17


def test_accepted_connections_take_the_listeners_options():
    """A listener's options (from `listen()` and from `set_options` on the
    listener) are those of the connections it accepts later; connections
    already accepted keep theirs.  Seen on the wire: the delayed-ACK time."""
    h = Harness(ack_delay=0.04)
    h.listener = h.stack.listen(80, ack_delay=0.2)
    first = h.established_passive()
    h.stack.set_options(h.listener, ack_delay=0.3)
    h.rport = REMOTE_PORT + 1
    second = h.established_passive()
    start = h.now
    for conn, port in ((first, REMOTE_PORT), (second, REMOTE_PORT + 1)):
        h.rport = port
        h.send(seg(ACK, REMOTE_ISS + 1, conn.iss + 1, 65535, b"x"))
    h.expect_none()
    h.at(start + 0.199)
    h.expect_none()
    h.at(start + 0.2)
    h.rport = REMOTE_PORT
    h.expect(seg(ACK, first.iss + 1, REMOTE_ISS + 2, 65535))
    h.at(start + 0.299)
    h.expect_none()
    h.at(start + 0.3)
    h.rport = REMOTE_PORT + 1
    h.expect(seg(ACK, second.iss + 1, REMOTE_ISS + 2, 65535))


# ------------------------------------------------------------ connection options

def test_connection_option_defaults_are_the_documented_ones():
    """docs/tcp-conformance.md lists every `ConnOptions` default."""
    assert Stack(["10.0.0.1/24"], rng=1).options.as_dict() == {
        "nodelay": False, "keepalive": False, "keepidle": 7200.0, "keepintvl": 75.0, "keepcnt": 9,
        "user_timeout": 300.0, "sndbuf": 262144, "rcvbuf": 262144, "sack": True, "timestamps": True,
        "window_scaling": True, "ack_delay": 0.04, "min_rto": 1.0, "max_rto": 60.0, "initial_rto": 1.0,
        "msl": 30.0, "fin_wait2_timeout": 60.0, "initial_window": 0,
    }


FLOORS = [("keepidle", 0.001), ("keepintvl", 0.001), ("keepcnt", 1), ("user_timeout", 0.001),
          ("sndbuf", 1), ("rcvbuf", 256), ("ack_delay", 0.0), ("min_rto", 0.001), ("max_rto", 0.001),
          ("initial_rto", 0.001), ("msl", 0.0), ("fin_wait2_timeout", 0.0), ("initial_window", 0)]


@pytest.mark.parametrize("name, floor", FLOORS)
def test_a_numeric_option_takes_its_documented_floor_and_refuses_less_naming_it(name, floor):
    h = Harness()
    c = h.established_active()
    h.stack.set_options(c, **{name: floor})
    assert getattr(c.options, name) == floor
    below = floor - (1 if isinstance(floor, int) else 0.0005)
    with pytest.raises(ValueError, match=rf"TCP option {name} must be >= {floor}, got"):
        h.stack.set_options(c, **{name: below})
    with pytest.raises(ValueError, match=rf"TCP option {name} must be >= {floor}"):
        Stack(["10.0.0.1/24"], rng=1, **{name: below})
    assert getattr(c.options, name) == floor                     # the refused value was not applied


@pytest.mark.parametrize("name, value, complaint", [
    ("keepidle", True, "must be a number"), ("keepcnt", "9", "must be a number"),
    ("msl", None, "must be a number"), ("keepcnt", 2.5, "must be an integer"),
    ("nodelay", 1, "must be a bool"), ("sack", "yes", "must be a bool"),
    ("no_such_option", 1, "unknown TCP option 'no_such_option'"),
])
def test_an_option_of_the_wrong_kind_is_refused_naming_it(name, value, complaint):
    h = Harness()
    c = h.established_active()
    before = c.options.as_dict()
    with pytest.raises(ValueError, match=complaint):
        h.stack.set_options(c, keepalive=True, **{name: value})
    assert c.options.as_dict() == before                          # nothing half-applied


@pytest.mark.parametrize("mtu", [575, 65536])
def test_an_mtu_outside_576_to_65535_is_refused_naming_it(mtu):
    with pytest.raises(ValueError, match=rf"mtu must be in 576\.\.65535, got {mtu}"):
        Stack(["10.0.0.1/24"], rng=1, mtu=mtu)
    assert Stack(["10.0.0.1/24"], rng=1, mtu=65535).mtu == 65535
