"""Property-based fuzzing (hypothesis, bounded): parsers and the whole stack
take random and mutated packets without an exception escaping; malformed
and bad-checksum packets are counted and dropped; random segment streams
and user calls keep the connection invariants."""

import copy
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iolib.tcp import Stack, TcpError
from iolib.tcp.ip import Malformed, parse_icmp_error, parse_ip
from iolib.tcp.segment import parse_segment
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


@FUZZ
@given(st.integers(0, 2), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                   min_size=1, max_size=6))
def test_mutated_packets_are_dropped_or_handled(which, flips):
    h = Harness()
    h.stack.listen(80)
    pkt = bytearray(_valid_packet(h, which))
    for pos, val in flips:
        pkt[pos % len(pkt)] ^= val or 1
    stats = h.stack.stats
    before = dropped(stats)
    h.stack.receive(0.0, bytes(pkt))
    try:
        parse_ip(bytes(pkt), True)   # a fragment is buffered, not dropped
    except Malformed:
        assert dropped(stats) == before + 1
        return
    h.stack.take_packets()
    h.stack.timer(10.0)


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
