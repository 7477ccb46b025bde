"""IP fragment reassembly (RFC 791 §3.2, RFC 1122 §3.3.2, RFC 8200 §4.5,
RFC 5722, RFC 6946): exact fragments fed at exact times, and the exact
packets the stack answers with once the datagram is whole."""

import copy
import ipaddress
import pickle
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iolib.tcp import Stack
from iolib.tcp.checksum import checksum, verify
from iolib.tcp.fragments import Reassembler
from iolib.tcp.ip import Malformed, build_icmp, build_ip, parse_ip, pseudo_sum
from .testkit import ACK, ANY, PSH, REMOTE_ISS, RST, SYN, Harness, decode, seg

R = REMOTE_ISS + 1


def addr(a):
    return ipaddress.ip_address(a).packed


def frag4(whole: bytes, offset: int, end: int, ident: int = 0x1234, more=None) -> bytes:
    """The fragment of IPv4 packet `whole` (20-byte header) carrying data
    bytes offset:end; MF set unless it reaches the end."""
    if more is None:
        more = end < len(whole) - 20
    return raw4(whole, offset, whole[20:][offset:end], more, ident)


def raw4(whole: bytes, offset: int, data: bytes, more: bool, ident: int = 0x1234) -> bytes:
    """An IPv4 fragment with `whole`'s header and any data."""
    h = bytearray(whole[:20])
    h[2:4] = (20 + len(data)).to_bytes(2, "big")
    h[4:6] = ident.to_bytes(2, "big")
    h[6:8] = ((0x2000 if more else 0) | offset // 8).to_bytes(2, "big")
    h[10:12] = b"\0\0"
    h[10:12] = checksum(bytes(h)).to_bytes(2, "big")
    return bytes(h) + data


def frag6(whole: bytes, offset: int, end: int, ident: int = 0x89ABCDEF, more=None, ext=b"") -> bytes:
    """The fragment of IPv6 packet `whole` (no extension headers) carrying
    data bytes offset:end, with `ext` (a hop-by-hop header whose Next Header
    is 44) in front of the Fragment header when given."""
    if more is None:
        more = end < len(whole) - 40
    return raw6(whole, offset, whole[40:][offset:end], more, ident, ext)


def raw6(whole: bytes, offset: int, data: bytes, more: bool, ident: int = 0x89ABCDEF, ext=b"") -> bytes:
    fh = struct.pack("!BBHI", whole[6], 0, offset | more, ident)
    nh = 0 if ext else 44
    payload = ext + fh + data
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, whole[7], whole[8:24],
                       whole[24:40]) + payload


def split4(whole, cuts, **kw):
    bounds = [0, *cuts, len(whole) - 20]
    return [frag4(whole, a, b, **kw) for a, b in zip(bounds, bounds[1:])]


def split6(whole, cuts, **kw):
    bounds = [0, *cuts, len(whole) - 40]
    return [frag6(whole, a, b, **kw) for a, b in zip(bounds, bounds[1:])]


def feed(h, packets, t=None):
    for p in packets:
        h.stack.receive(h.now if t is None else t, p)


def established(v6=False, **kw):
    h = Harness(v6=v6, **kw)
    c = h.established_active(mss=1000)
    return h, c


def echo_request(h, payload):
    return build_icmp(addr(h.remote), addr(h.local), 128 if h.v6 else 8, 0, b"\x00\x07\x00\x01" + payload)


# ------------------------------------------------------------ reassembly

def test_in_order_fragments_of_a_data_segment_are_reassembled_and_acked():
    h, c = established()
    whole = h.packet(seg(ACK | PSH, R, c.iss + 1, 65535, bytes(range(256)) * 4))   # 1024 + 20 TCP
    feed(h, split4(whole, [504, 1000]))
    h.expect_none()
    assert h.stack.stats.fragments_in == 3 and h.stack.stats.reassembled == 1
    h.at(0.04)
    h.expect(seg(ACK, c.iss + 1, R + 1024, 65535))
    assert h.stack.recv(c, 5000) == bytes(range(256)) * 4
    assert h.stack._reasm.datagrams == {} and h.stack._reasm.buffered == 0


def test_out_of_order_fragments_of_a_syn_are_reassembled_and_answered():
    h = Harness()
    h.stack.listen(80)
    whole = h.packet(seg(SYN, REMOTE_ISS, 0, 5000, mss=1200, sack_ok=True, ts=(77, 0), ws=3))
    parts = split4(whole, [8, 16, 24])          # 40-byte TCP header in four pieces
    feed(h, [parts[3], parts[1], parts[0], parts[2]])
    (c,) = h.stack.connections()
    h.expect(seg(SYN | ACK, c.iss, R, 65535, mss=1460, sack_ok=True, ts=(ANY, 77), ws=3))
    assert c.state == "SYN-RECEIVED" and c.snd_wnd == 5000


def test_duplicate_fragments_are_dropped_alone():
    h, c = established()
    whole = h.packet(seg(ACK, R, c.iss + 1, 65535, b"d" * 1000))
    a, b, d = split4(whole, [400, 800])
    st_ = h.stack.stats
    segments = st_.segments_in
    feed(h, [b, b, a, b, d])
    assert (st_.dropped_fragment_duplicate, st_.reassembled, st_.segments_in) == (2, 1, segments + 1)
    h.at(0.04)
    h.expect(seg(ACK, c.iss + 1, R + 1000, 65535))
    feed(h, [d])          # a late duplicate starts a new datagram, which times out
    assert len(h.stack._reasm.datagrams) == 1


def test_reassembled_tcp_segment_checksum_is_verified():
    h, c = established()
    whole = bytearray(h.packet(seg(ACK, R, c.iss + 1, 65535, b"e" * 1000)))
    whole[-1] ^= 0x40                         # payload bit flip after the TCP checksum was set
    feed(h, split4(bytes(whole), [504]))
    assert h.stack.stats.reassembled == 1 and h.stack.stats.dropped_bad_checksum == 1
    h.at(1)
    h.expect_none()


@pytest.mark.parametrize("v6", [False, True])
def test_fragmented_echo_request_is_answered(v6):
    h = Harness(v6=v6)
    payload = bytes(i & 0xFF for i in range(3000))
    whole = echo_request(h, payload)
    split = split6 if v6 else split4
    feed(h, reversed(split(whole, [1480, 2960])))
    (reply,) = h.stack.take_packets()
    ip = parse_ip(reply)
    body = reply[ip.start:ip.end]
    assert (ip.src, ip.dst) == (addr(h.local), addr(h.remote))
    assert body[0] == (129 if v6 else 0) and body[4:] == b"\x00\x07\x00\x01" + payload
    assert verify(body, pseudo_sum(ip.src, ip.dst, 58, len(body)) if v6 else 0)
    assert h.stack.stats.icmp_echo_replies == 1


@pytest.mark.parametrize("v6", [False, True])
def test_fragmented_segment_to_a_closed_port_is_reset_once_whole(v6):
    """RFC 9293 §3.10.7.1 on the reassembled segment: no answer to the
    first fragment; the last draws <SEQ=0><ACK=SEG.SEQ+SEG.LEN><RST,ACK>,
    SEG.LEN counting the SYN and every data byte of every fragment; a
    fragmented RST draws nothing (fuzz/tcp_input's crasher
    closed-port-rst-to-reassembled-ipv6-syn)."""
    h = Harness(v6=v6)
    split = split6 if v6 else split4
    first, last = split(h.packet(seg(SYN, REMOTE_ISS, 0, 65535, b"q" * 40)), [32])
    feed(h, [first])
    h.expect_none()
    feed(h, [last])
    h.expect(seg(RST | ACK, 0, REMOTE_ISS + 41, 0))
    feed(h, split(h.packet(seg(RST | ACK, 5, 777, 0, b"r" * 16)), [24], ident=7))
    h.expect_none()
    assert (h.stack.stats.reassembled, h.stack.stats.rst_sent) == (2, 1)


def test_fragments_for_another_host_are_not_buffered():
    h = Harness()
    whole = build_ip(addr(h.remote), addr("10.0.0.9"), 1, b"x" * 100)
    feed(h, split4(whole, [48]))
    assert h.stack.stats.dropped_not_for_us == 2 and h.stack.stats.fragments_in == 0


# ------------------------------------------------------------ overlaps

def test_overlapping_ipv4_fragments_discard_the_datagram_and_its_later_fragments():
    h, c = established()
    whole = h.packet(seg(ACK, R, c.iss + 1, 65535, b"o" * 1000))
    first, last = split4(whole, [512])
    overlap = frag4(whole, 504, 520)
    feed(h, [first, overlap, last])
    st_ = h.stack.stats
    assert (st_.dropped_fragment_overlap, st_.reassembled, h.stack._reasm.buffered) == (2, 0, 0)
    h.at(1)
    h.expect_none()
    h.at(30)                                  # the tombstone goes silently: no Time Exceeded
    assert h.stack._reasm.datagrams == {} and h.stack.take_packets() == []
    assert st_.reassembly_timeouts == 0


def test_same_range_with_different_bytes_is_an_overlap():
    h = Harness()
    whole = echo_request(h, b"p" * 100)
    forged = whole[:-1] + b"q"
    feed(h, [frag4(whole, 48, 108), frag4(forged, 48, 108), frag4(whole, 0, 48)])
    assert h.stack.stats.dropped_fragment_overlap == 2 and h.stack.take_packets() == []


def test_a_fragment_beyond_the_announced_end_discards_the_datagram():
    h = Harness()
    whole = echo_request(h, b"p" * 100)
    feed(h, [frag4(whole, 48, 108), raw4(whole, 112, b"x" * 8, more=True)])
    assert h.stack.stats.dropped_fragment_overlap == 1
    feed(h, [frag4(whole, 0, 48)])
    assert h.stack.stats.dropped_fragment_overlap == 2 and h.stack.take_packets() == []


def test_ipv6_overlap_discards_the_datagram_rfc5722():
    h = Harness(v6=True)
    whole = echo_request(h, b"6" * 200)
    feed(h, [frag6(whole, 0, 104), frag6(whole, 96, 208)])
    assert h.stack.stats.dropped_fragment_overlap == 1 and h.stack._reasm.buffered == 0
    feed(h, [frag6(whole, 104, 208)])
    assert h.stack.stats.dropped_fragment_overlap == 2 and h.stack.take_packets() == []


# ------------------------------------------------------------ timeouts

def test_missing_fragment_times_out_at_exactly_30s_with_time_exceeded_v4():
    h = Harness()
    h.at(1.0)
    whole = echo_request(h, b"t" * 200)
    first = frag4(whole, 0, 104)
    feed(h, [first])
    h.at(5.0)
    feed(h, [frag4(whole, 104, 192)])          # the timer runs from the first arrival
    assert h.stack.next_deadline() == 31.0 and h.stack._reasm.buffered == 192
    h.at(30.999)
    assert h.stack.take_packets() == [] and h.stack._reasm.buffered == 192
    h.at(31.0)
    assert h.stack._reasm.datagrams == {} and h.stack._reasm.buffered == 0
    assert h.stack.next_deadline() is None
    (icmp,) = h.stack.take_packets()
    ip = parse_ip(icmp)
    body = icmp[ip.start:ip.end]
    assert (ip.src, ip.dst, ip.proto) == (addr(h.local), addr(h.remote), 1)
    assert body[:2] == b"\x0b\x01" and body[4:8] == bytes(4) and body[8:] == first[:28]
    assert verify(body)
    st_ = h.stack.stats
    assert (st_.reassembly_timeouts, st_.icmp_time_exceeded_sent) == (1, 1)


def test_missing_first_fragment_times_out_without_icmp():
    """RFC 792 / RFC 8200 §4.5: Time Exceeded only when fragment zero arrived."""
    h = Harness()
    feed(h, [frag4(echo_request(h, b"t" * 200), 104, 208)])
    h.at(30.0)
    assert h.stack._reasm.datagrams == {} and h.stack.take_packets() == []
    assert h.stack.stats.reassembly_timeouts == 1 and h.stack.stats.icmp_time_exceeded_sent == 0


@pytest.mark.parametrize("v6", [False, True])
def test_no_time_exceeded_about_an_icmp_error(v6):
    """RFC 1122 §3.2.2, RFC 4443 §2.4 (e.1)."""
    h = Harness(v6=v6)
    err = build_icmp(addr(h.remote), addr(h.local), 1 if v6 else 3, 0, bytes(4) + b"q" * 200)
    feed(h, [(frag6 if v6 else frag4)(err, 0, 104)])
    h.at(60.0)
    assert h.stack.stats.reassembly_timeouts == 1 and h.stack.take_packets() == []


def test_missing_fragment_times_out_at_exactly_60s_with_time_exceeded_v6():
    h = Harness(v6=True)
    whole = echo_request(h, b"t" * 200)
    first = frag6(whole, 0, 104)
    feed(h, [first])
    h.at(59.999)
    assert h.stack.take_packets() == [] and len(h.stack._reasm.datagrams) == 1
    h.at(60.0)
    (icmp,) = h.stack.take_packets()
    ip = parse_ip(icmp)
    body = icmp[ip.start:ip.end]
    assert body[:2] == b"\x03\x01" and body[8:] == first
    assert verify(body, pseudo_sum(ip.src, ip.dst, 58, len(body)))
    assert h.stack._reasm.buffered == 0


def test_next_deadline_is_the_earlier_of_connection_and_reassembly_timers():
    h, c = established()
    h.stack.send(h.now, c, b"x")            # RTO armed at about 1 s
    h.out()
    feed(h, [frag4(echo_request(h, b"t" * 200), 104, 208)])
    assert h.stack.next_deadline() < 30
    h.stack.abort(h.now, c)
    h.out()
    assert h.stack.next_deadline() == 30.0


# ------------------------------------------------------------ limits

def test_concurrent_datagram_limit():
    h = Harness(frag_max_datagrams=2)
    wholes = [echo_request(h, bytes([i]) * 100) for i in range(3)]
    for i, w in enumerate(wholes):
        feed(h, [frag4(w, 0, 48, ident=i)])
    assert h.stack.stats.dropped_fragment_limit == 1 and len(h.stack._reasm.datagrams) == 2
    feed(h, [frag4(wholes[0], 48, 108, ident=0)])
    assert len(h.stack.take_packets()) == 1
    feed(h, [frag4(wholes[2], 0, 48, ident=2)])   # room again
    assert len(h.stack._reasm.datagrams) == 2


def test_buffered_bytes_limit():
    h = Harness(frag_max_bytes=1000)
    w1, w2 = echo_request(h, b"a" * 1200), echo_request(h, b"b" * 100)
    feed(h, [frag4(w1, 0, 800, ident=1), frag4(w1, 800, 1208, ident=1), frag4(w2, 0, 104, ident=2),
             frag4(w2, 0, 104, ident=3)])
    st_ = h.stack.stats
    assert st_.dropped_fragment_limit == 2 and h.stack._reasm.buffered == 904
    h.at(30.0)
    assert h.stack._reasm.buffered == 0
    feed(h, [frag4(w1, 0, 800, ident=4)])
    assert h.stack._reasm.buffered == 800


def test_zero_datagram_limit_turns_reassembly_off():
    h = Harness(frag_max_datagrams=0)
    feed(h, split4(echo_request(h, b"z" * 100), [48]))
    assert h.stack.stats.dropped_fragment_limit == 2 and h.stack.take_packets() == []


def test_stack_rejects_bad_limits():
    from iolib.tcp import BadArgument
    with pytest.raises(BadArgument):
        Stack(["10.0.0.1/24"], frag_max_bytes=-1)


# ------------------------------------------------------------ IPv6 specifics

def test_ipv6_fragments_of_a_data_segment_are_reassembled_and_acked():
    h, c = established(v6=True)
    whole = h.packet(seg(ACK, R, c.iss + 1, 65535, b"6" * 1000))
    feed(h, reversed(split6(whole, [512])))
    h.at(0.04)
    h.expect(seg(ACK, c.iss + 1, R + 1000, 65535))
    assert h.stack.recv(c, 5000) == b"6" * 1000


def test_ipv6_fragment_header_after_a_hop_by_hop_header():
    h = Harness(v6=True)
    whole = echo_request(h, b"h" * 100)
    hbh = bytes([44, 0, 1, 4, 0, 0, 0, 0])          # PadN; next header: Fragment
    feed(h, [frag6(whole, 0, 56, ext=hbh), frag6(whole, 56, 108, ext=hbh)])
    (reply,) = h.stack.take_packets()
    assert reply[40:42] == b"\x81\x00" and reply[48:] == b"h" * 100


def test_ipv6_atomic_fragment_is_processed_at_once():
    """RFC 6946 §4: offset 0 and M 0 is a whole packet; no state kept."""
    h = Harness(v6=True)
    whole = echo_request(h, b"a" * 20)
    feed(h, [frag6(whole, 0, len(whole) - 40, more=False)] * 2)
    assert len(h.stack.take_packets()) == 2 and h.stack._reasm.datagrams == {}


def test_ipv6_first_fragment_must_hold_the_upper_layer_header():
    """RFC 8200 §4.5 / RFC 7112."""
    h, c = established(v6=True)
    whole = h.packet(seg(ACK, R, c.iss + 1, 65535, b"u" * 100))
    dst_opts = bytes([6, 1]) + bytes([1, 12]) + bytes(12)  # 16-byte Destination Options
    inner = bytearray(whole[:40] + dst_opts + whole[40:])
    inner[6] = 60
    inner[4:6] = (len(inner) - 40).to_bytes(2, "big")
    feed(h, [frag6(bytes(inner), 0, 24)])          # options + 8 of the 20 TCP header bytes
    assert h.stack.stats.dropped_malformed == 1 and h.stack._reasm.datagrams == {}


def test_nested_fragment_header_in_a_reassembled_datagram_is_refused():
    h = Harness(v6=True)
    inner = frag6(echo_request(h, b"n" * 40), 0, 24, ident=1)   # itself a fragment
    feed(h, split6(inner, [16], ident=2))
    assert h.stack.stats.reassembled == 1 and h.stack.stats.dropped_fragment == 1


# ------------------------------------------------------------ malformed

def _bad_fragments():
    h4, h6 = Harness(), Harness(v6=True)
    w4, w6 = echo_request(h4, b"m" * 100), echo_request(h6, b"m" * 100)
    return [
        ("v4 middle not a multiple of 8", frag4(w4, 0, 50)),
        ("v6 middle not a multiple of 8", frag6(w6, 0, 50)),
        ("v4 empty", frag4(w4, 8, 8, more=True)),
        ("v4 beyond 65535", raw4(w4, 65512, b"m" * 8, more=False)),     # 20 + 65520 > 65535
        ("v6 beyond 65535", raw6(w6, 65528, b"m" * 8, more=False)),
    ]


@pytest.mark.parametrize("name,packet", _bad_fragments(), ids=[n for n, _p in _bad_fragments()])
def test_malformed_fragments_are_counted_and_dropped(name, packet):
    h = Harness(v6=name.startswith("v6"))
    h.stack.receive(0, packet)
    assert h.stack.stats.dropped_malformed == 1 and h.stack._reasm.datagrams == {}
    assert h.stack._reasm.buffered == 0


def test_v6_fragment_ending_at_65535_is_accepted():
    h = Harness(v6=True)
    feed(h, [raw6(echo_request(h, b"m" * 100), 65528, b"m" * 7, more=False)])
    assert h.stack.stats.dropped_malformed == 0 and h.stack._reasm.buffered == 7


# ------------------------------------------------------------ plain data

@pytest.mark.parametrize("clone", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))])
def test_half_reassembled_datagram_survives_deepcopy_and_pickle(clone):
    h, c = established()
    whole = h.packet(seg(ACK, R, c.iss + 1, 65535, b"c" * 1000))
    a, b = split4(whole, [504])
    feed(h, [b])
    twin = clone(h.stack)
    for s in (h.stack, twin):
        s.receive(0.01, a)
        s.timer(0.05)
    (p1,), (p2,) = h.stack.take_packets(), twin.take_packets()
    assert p1 == p2 and decode(p1)[1].ack == (R + 1000) & 0xFFFFFFFF
    assert twin.stats.as_dict() == h.stack.stats.as_dict()


# ------------------------------------------------------------ properties

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.integers(9, 3000), st.data())
def test_random_splits_and_orders_reassemble_to_the_original(n, data):
    v6 = data.draw(st.booleans())
    src, dst = (addr("fd00::2"), addr("fd00::1")) if v6 else (addr("10.0.0.2"), addr("10.0.0.1"))
    whole = bytearray(build_ip(src, dst, 17, bytes(i * 7 & 0xFF for i in range(n))))
    if not v6:            # reassembly clears DF and keeps frag4's ident
        whole[4:8] = b"\x12\x34\0\0"
        whole[10:12] = b"\0\0"
        whole[10:12] = checksum(bytes(whole[:20])).to_bytes(2, "big")
    whole = bytes(whole)
    units = (n + 7) // 8
    cuts = sorted(data.draw(st.sets(st.integers(1, units - 1), max_size=12))) if units > 1 else []
    if not cuts and not v6:
        cuts = [1]        # offset 0 with MF clear is no IPv4 fragment at all
    bounds = [0, *(u * 8 for u in cuts), n]
    frags = [(frag6 if v6 else frag4)(whole, a, b) for a, b in zip(bounds, bounds[1:])]
    frags += data.draw(st.lists(st.sampled_from(frags), max_size=3))      # duplicates
    frags = data.draw(st.permutations(frags))
    r = Reassembler()
    out = []
    for p in frags:
        try:
            res = r.add(0.0, parse_ip(p, True), p)
        except Malformed as e:
            assert e.reason == "fragment_duplicate"
            continue
        if res is not None:
            out.append(res)
    # Duplicates arriving after completion start a new datagram (or, for
    # an IPv6 atomic fragment, are whole again).
    assert out and all(o == whole for o in out)
    assert r.buffered == sum(dg.received for dg in r.datagrams.values())


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 8191), st.booleans(),
                          st.integers(0, 3), st.binary(max_size=64)), min_size=1, max_size=20))
def test_random_fragments_never_raise_and_are_accounted(script):
    s = Stack(["10.0.0.1/24", "fd00::1/64"], rng=1, frag_max_datagrams=4, frag_max_bytes=300)
    s.listen(80)
    now = 0.0
    for v6, ident, off, more, proto_i, payload in script:
        proto = (6, 1, 58, 17)[proto_i]
        if v6:
            fh = struct.pack("!BBHI", proto, 0, (off * 8) & 0xFFF8 | more, ident)
            p = struct.pack("!IHBB16s16s", 0x60000000, 8 + len(payload), 44, 64,
                            addr("fd00::2"), addr("fd00::1")) + fh + payload
        else:
            hdr = bytearray(build_ip(addr("10.0.0.2"), addr("10.0.0.1"), proto, payload)[:20])
            hdr[4:6] = ident.to_bytes(2, "big")
            hdr[6:8] = ((0x2000 if more else 0) | off).to_bytes(2, "big")
            hdr[10:12] = b"\0\0"
            hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
            p = bytes(hdr) + payload
        before = {k: v for k, v in s.stats.as_dict().items() if k.startswith("dropped_")}
        s.receive(now, p)
        after = {k: v for k, v in s.stats.as_dict().items() if k.startswith("dropped_")}
        assert sum(after.values()) - sum(before.values()) <= 1
        r = s._reasm
        assert 0 <= r.buffered <= 300 and len(r.datagrams) <= 4
        assert r.buffered == sum(dg.received for dg in r.datagrams.values())
        s.take_packets()
        now += 3.0
        s.timer(now)
    copy.deepcopy(s)


def test_parse_ip_reports_fragment_fields_only_when_asked():
    h4, h6 = Harness(), Harness(v6=True)
    f4 = raw4(echo_request(h4, b"x" * 20), 1480, b"y" * 16, more=True, ident=0xBEEF)
    f6 = raw6(echo_request(h6, b"x" * 20), 2960, b"y" * 16, more=False, ident=0xDEADBEEF)
    for p in (f4, f6):
        with pytest.raises(Malformed, match="fragment"):
            parse_ip(p)
    a, b = parse_ip(f4, True), parse_ip(f6, True)
    assert (a.ident, a.offset, a.more, a.proto, a.start, a.end, a.head) == \
        (0xBEEF, 1480, True, 1, 20, 36, f4[:20])
    assert (b.ident, b.offset, b.more, b.proto, b.start, b.end, b.head, b.nh_pos) == \
        (0xDEADBEEF, 2960, False, 58, 48, 64, f6[:40], 6)
