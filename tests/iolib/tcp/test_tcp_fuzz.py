"""Property-based fuzzing (hypothesis, bounded): parsers and the whole stack
take random and mutated packets without an exception escaping; malformed
and bad-checksum packets are counted and dropped; random segment streams
and user calls keep the connection invariants."""

import copy
import ipaddress
import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from iolib.tcp import Stack, TcpError
from iolib.tcp.ip import PROTO_TCP, IPFragment, Malformed, parse_icmp_error, parse_ip, pseudo_sum
from iolib.tcp.segment import flags_str, parse_segment
from .testkit import ACK, FIN, PSH, REMOTE_ISS, RST, SYN, URG, Harness, seg

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATES = {"CLOSED", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2",
          "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT"}


def dropped(stats):
    return sum(v for k, v in stats.as_dict().items() if k.startswith("dropped_"))


@FUZZ
@given(st.binary(max_size=200))
def test_parsers_raise_only_malformed(data):
    try:
        ip = parse_ip(data)
    except Malformed as e:
        assert e.reason in ("malformed", "bad_checksum", "fragment")
        return
    for fn in (lambda: parse_segment(data, ip.start, ip.end), lambda: parse_icmp_error(ip, data)):
        try:
            fn()
        except Malformed:
            pass


@FUZZ
@given(st.binary(min_size=20, max_size=80))
def test_tcp_header_parser_raises_only_malformed(data):
    try:
        s = parse_segment(data, 0, len(data))
    except Malformed:
        return
    assert 0 <= s.seq < 2 ** 32 and 0 <= s.wnd < 2 ** 16


@FUZZ
@given(st.binary(max_size=120))
def test_random_bytes_into_a_stack_are_counted_not_raised(data):
    s = Stack(["10.0.0.1/24", "fd00::1/64"], rng=1)
    s.listen(80)
    st_ = s.stats
    s.receive(0.0, data)
    # Every packet is accounted for: dropped with a reason, or handled.
    assert dropped(st_) + st_.segments_in + st_.icmp_echo_replies + st_.icmp_errors + st_.fragments_in >= 1
    assert dropped(st_) <= 1


def _valid_packet(h, i):
    kinds = [seg(SYN, REMOTE_ISS, 0, 1000, mss=1400, ws=2, sack_ok=True, ts=(1, 0)),
             seg(ACK, REMOTE_ISS + 1, 0, 1000, b"payload-" * 10),
             seg(ACK | FIN, REMOTE_ISS + 1, 0, 1000, sack=[(5, 10)])]
    return h.packet(kinds[i % 3])


def _fix_checksums(pkt: bytearray) -> None:
    """Make a mutated packet's IPv4 header and TCP checksums right again
    (when its length fields still allow), so that the mutation reaches the
    TCP state machine instead of the checksum check."""
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        total = int.from_bytes(pkt[2:4], "big")
        if not 20 <= ihl <= total <= len(pkt):
            return
        pkt[10:12] = b"\0\0"
        pkt[10:12] = (0xFFFF - _one_sum(pkt[:ihl]) % 0xFFFF).to_bytes(2, "big")
        start, end, src, dst, proto = ihl, total, pkt[12:16], pkt[16:20], pkt[9]
    elif pkt[0] >> 4 == 6 and len(pkt) >= 40:
        start, end, src, dst, proto = 40, 40 + int.from_bytes(pkt[4:6], "big"), pkt[8:24], pkt[24:40], pkt[6]
        if end > len(pkt):
            return
    else:
        return
    if proto != PROTO_TCP or end - start < 18:
        return
    pkt[start + 16:start + 18] = b"\0\0"
    cks = 0xFFFF - (_one_sum(pkt[start:end]) + pseudo_sum(bytes(src), bytes(dst), PROTO_TCP, end - start)) % 0xFFFF
    pkt[start + 16:start + 18] = cks.to_bytes(2, "big")


def _one_sum(data) -> int:
    return int.from_bytes(data, "big") << (8 if len(data) & 1 else 0)


def _tcp_checksum_ok(ip, pkt) -> bool:
    body = pkt[ip.start:ip.end]
    return (_one_sum(body) + pseudo_sum(ip.src, ip.dst, PROTO_TCP, len(body))) % 0xFFFF == 0


def _rfc9293_reply(ip, s):
    """What RFC 9293 says a stack with one listener on port 80 and no
    connection sends for segment `s` (§3.10.7.1 CLOSED, §3.10.7.2 LISTEN):
    (flags, seq or None for any, ack), or None for nothing."""
    source = ipaddress.ip_address(ip.src)
    if source.is_multicast or source.is_unspecified or source == ipaddress.ip_address("255.255.255.255"):
        return None                                   # MUST-63: no reply to a martian
    if s.flags & RST:
        return None
    if s.flags & ACK:
        return (RST, s.ack, 0)
    if s.dport == 80:
        return (SYN | ACK, None, (s.seq + 1) & 0xFFFFFFFF) if s.flags & SYN else None
    return (RST | ACK, 0, (s.seq + s.seg_len) & 0xFFFFFFFF)


@FUZZ
@given(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                   min_size=1, max_size=6), st.booleans(), st.booleans())
def test_mutated_packets_are_dropped_or_handled(which, flips, fix_checksums, v6):
    """Whatever a mutation does, the packet is counted once; one that is
    refused leaves no trace; one that is still a valid TCP segment to us
    gets exactly the reply RFC 9293 gives for LISTEN / CLOSED, addressed
    back to where it came from, and the stack's state matches that reply."""
    h = Harness(v6=v6)
    h.stack.listen(80)
    pkt = bytearray(_valid_packet(h, which))
    for pos, val in flips:
        pkt[pos % len(pkt)] ^= val or 1
    if fix_checksums:
        _fix_checksums(pkt)
    pkt = bytes(pkt)
    stats = h.stack.stats
    before = stats.as_dict()
    h.stack.receive(0.0, pkt)
    grew = {k: v - before[k] for k, v in stats.as_dict().items() if v != before[k]}
    assert grew.pop("packets_in") == 1
    try:
        ip = parse_ip(pkt, True)
    except Malformed as e:
        # Counted once: for what is wrong with it, or (the stack looks at
        # the destination first) as not for us.
        event("refused by the IP parser")
        assert grew in ({"dropped_" + e.reason: 1}, {"dropped_not_for_us": 1}), (grew, e)
        h.expect_none()
        return
    ours = ipaddress.ip_address(ip.dst) == ipaddress.ip_address(h.local)
    if not ours:
        event("not for us")
        assert grew == {"dropped_not_for_us": 1}
        h.expect_none()
        return
    if isinstance(ip, IPFragment):
        # One fragment never completes a datagram: buffered or dropped.
        event("a fragment")
        assert grew.get("fragments_in") == 1 or set(grew) <= {"dropped_fragment_limit", "dropped_malformed"}
        h.expect_none()
        return
    if ip.proto != PROTO_TCP:
        # Not TCP: counted as an ICMP message or dropped, never answered with TCP.
        event("not TCP")
        assert sum(grew.values()) >= 1
        assert all(parse_ip(p).proto != PROTO_TCP for p in h.stack.take_packets())
        return
    if not _tcp_checksum_ok(ip, pkt):
        event("bad TCP checksum")
        assert grew == {"dropped_bad_checksum": 1}
        h.expect_none()
        return
    try:
        s = parse_segment(pkt, ip.start, ip.end)
    except Malformed:
        event("bad TCP header")
        assert grew == {"dropped_malformed": 1}
        h.expect_none()
        return
    assert grew.pop("segments_in") == 1
    reply = _rfc9293_reply(ip, s)
    event(f"valid TCP segment, reply {reply and flags_str(reply[0])}")
    source = str(ipaddress.ip_address(ip.src))
    h.flows.add((s.dport, source, s.sport))
    if reply is None:
        h.expect_none()
        assert h.stack.connections() == []
        return
    flags, seq, ack = reply
    (got,) = h.out_wire()
    assert (got.dst, got.seg.sport, got.seg.dport) == (source, s.dport, s.sport), got
    assert (got.seg.flags, got.seg.ack) == (flags, ack), got
    if flags & RST:
        assert got.seg.seq == seq and got.seg.payload == b"" and got.options == b"", got
        assert h.stack.connections() == []
    else:
        (conn,) = h.stack.connections()
        assert conn.state == "SYN-RECEIVED" and got.seg.seq == conn.iss
        # The SYN-ACK is retransmitted from the same sequence number until
        # the handshake completes or gives up.
        h.at(1.5)
        (again,) = h.out()
        assert (again.flags, again.seq, again.ack) == (SYN | ACK, conn.iss, ack)
    copy.deepcopy(h.stack)


@FUZZ
@given(st.binary(min_size=1, max_size=60), st.integers(0, 59))
def test_bad_tcp_checksum_is_counted(payload, pos):
    h = Harness()
    h.stack.listen(80)
    pkt = bytearray(h.packet(seg(ACK, 1, 2, 100, payload)))
    pkt[20 + 20 + pos % len(payload)] ^= 0x5A
    h.stack.receive(0.0, bytes(pkt))
    assert h.stack.stats.dropped_bad_checksum == 1 and h.stack.take_packets() == []


flag_sets = st.sampled_from([ACK, ACK | PSH, ACK | FIN, SYN, SYN | ACK, RST, RST | ACK, FIN, 0,
                             ACK | URG, SYN | FIN, ACK | PSH | FIN])
segments = st.tuples(
    flag_sets,
    st.integers(-70000, 70000),            # seq offset from the expected one
    st.integers(-70000, 70000),            # ack offset from our SND.NXT
    st.integers(0, 65535),                 # window
    st.integers(0, 3000),                  # payload length
    st.booleans(),                         # with a timestamp
    st.floats(0, 2.0),                     # time step
    st.sampled_from(["none", "send", "recv", "close", "shutdown", "abort", "timer"]),
)


@FUZZ
@given(st.lists(segments, min_size=1, max_size=25), st.booleans())
def test_random_segment_streams_keep_invariants(script, options):
    h = Harness()
    kw = {"mss": 1000, "sack_ok": True, "ts": (100, 0), "ws": 3} if options else {"mss": 1000}
    c = h.established_active(**kw)
    rng = random.Random(len(script))
    tsval = 100
    for flags, dseq, dack, win, plen, with_ts, dt, call in script:
        h.at(h.now + dt)
        tsval += 1
        s = seg(flags, (c.rcv_nxt + dseq) & 0xFFFFFFFF, (c.snd_nxt + dack) & 0xFFFFFFFF, win,
                rng.randbytes(plen) if plen <= 1400 else b"", ts=(tsval, 0) if with_ts else None)
        h.send(s)
        try:
            if call == "send":
                h.stack.send(h.now, c, b"u" * rng.randrange(1, 5000))
            elif call == "recv":
                h.stack.recv(c, 4096, now=h.now)
            elif call == "close":
                h.stack.close(h.now, c)
            elif call == "shutdown":
                h.stack.shutdown(h.now, c, rng.choice(["r", "w", "rw"]))
            elif call == "abort":
                h.stack.abort(h.now, c)
            elif call == "timer":
                h.at(h.now + 100)
        except TcpError:
            pass     # errors the API documents (reset, closed, ...) are fine
        h.out()
        assert c.state in STATES
        if c.state != "CLOSED":
            assert c.snd_una <= c.snd_nxt <= c.snd_max
            assert c.snd_base - 1 <= c.snd_una <= c.snd_base + len(c.sndbuf) + 1
            assert c.rcv_adv >= c.rcv_nxt
            assert len(c.rcvbuf) <= c.options.rcvbuf + (1 << c.rcv_wscale)
            assert all(s0 > c.rcv_nxt for s0, _e, _d in c.ooo)
        d = h.stack.next_deadline()
        assert d is None or d == d          # never NaN
    copy.deepcopy(h.stack)                  # state stays plain data whatever happened
