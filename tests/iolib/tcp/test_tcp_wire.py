"""Wire formats: checksum, sequence arithmetic, IP and TCP headers and options
(RFC 1071, RFC 9293 §3.1-3.4, RFC 791, RFC 8200)."""

import os
import random
import struct
from pathlib import Path

import pytest

import iolib
from iolib.tcp import checksum as checksum_module
from iolib.tcp import segment as segment_module
from iolib.tcp.checksum import checksum, ones_sum, partial_sum, verify
from iolib.tcp.ip import (PROTO_TCP, Malformed, build_icmp, build_ip, ipv4_header, parse_icmp_error,
                          parse_ip, pseudo_sum)
from iolib.tcp.segment import (ACK, SYN, build_segment, opt_mss, opt_sack, opt_sack_ok,
                               flags_str, opt_timestamp, opt_wscale, parse_segment)
from iolib.tcp.seq import MOD, seq_add, seq_diff, seq_ge, seq_gt, seq_le, seq_lt, unwrap, wrap


def reference_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word: the slow, obviously right version."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 21, 1459, 1460, 9000])
def test_checksum_matches_rfc1071_reference(n):
    rng = random.Random(n)
    for _ in range(20):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        got, ref = checksum(data), reference_checksum(data)
        # 0x0000 and 0xFFFF are the two zeros of one's-complement arithmetic.
        assert got == ref or {got, ref} == {0, 0xFFFF}
        if n % 2 == 0:
            assert verify(data + got.to_bytes(2, "big"))


def test_checksum_of_all_ones_and_zero_sum_cases():
    assert reference_checksum(b"\xff\xff") in (0, 0xFFFF)
    assert checksum(b"\xff\xff") == 0xFFFF   # never writes 0 (UDP-safe)
    assert verify(b"\x00\x01\xff\xfe")


def test_partial_sums_add_across_split_points():
    data = bytes(range(256)) * 5
    whole = partial_sum(data)
    assert (partial_sum(data[:100]) + partial_sum(data[100:])) % 0xFFFF == whole % 0xFFFF


def reference_sum(data: bytes) -> int:
    """The big-endian 16-bit word sum, word by word, modulo 0xFFFF."""
    if len(data) % 2:
        data += b"\0"
    return sum(w for (w,) in struct.iter_unpack("!H", data)) % 0xFFFF


def compiled_ones_sum():
    """iolib/_checksum.c's ones_sum, whichever one the package chose
    (THREADLIB_PURE), so that both are tested in both modes."""
    if not any(Path(iolib.__file__).parent.glob("_checksum.*.so")):
        pytest.skip("iolib/_checksum.c is not built here (no C compiler at install)")
    from iolib import _checksum
    return _checksum.ones_sum


ONES_SUMS = [pytest.param(lambda: checksum_module._ones_sum, id="pure"), pytest.param(compiled_ones_sum, id="compiled")]


@pytest.mark.parametrize("get_impl", ONES_SUMS)
def test_ones_sum_of_regions_matches_the_word_by_word_sum(get_impl):
    impl = get_impl()
    rng = random.Random(7)
    sizes = list(range(0, 40)) + [1459, 1460, 1500, 9001, 65536]
    for n in sizes:
        data = rng.randbytes(n)
        assert impl(data) == reference_sum(data)
        for start in range(0, min(n, 8) + 1, 2):
            end = rng.randint(start, n)
            assert impl(data, start, end) == reference_sum(data[start:end])
            assert impl(memoryview(data), start, end) == impl(bytearray(data), start, end)
    # Sums that wrap many times: all ones (the one's-complement zero) and
    # long buffers that must not overflow an accumulator.
    assert impl(b"\xff" * 100_001) == reference_sum(b"\xff" * 100_001)
    big = rng.randbytes(5_000_000)
    assert impl(big) == int.from_bytes(big, "big") % 0xFFFF


@pytest.mark.parametrize("get_impl", ONES_SUMS)
@pytest.mark.parametrize("start, end", [(-2, 4), (4, 2), (0, 11), (12, 12)])
def test_ones_sum_refuses_a_region_outside_the_buffer(get_impl, start, end):
    impl = get_impl()
    with pytest.raises(ValueError, match=r"region \[-?\d+:\d+\] is not within the 10-byte buffer"):
        impl(bytes(10), start, end)


def test_ones_sum_is_the_compiled_helper_when_it_is_built():
    built = any(Path(iolib.__file__).parent.glob("_checksum.*.so"))
    pure = os.environ.get("THREADLIB_PURE", "") not in ("", "0")
    if not built:
        pytest.skip("iolib/_checksum.c is not built here (no C compiler at install)")
    assert checksum_module.COMPILED is (not pure)
    assert (ones_sum is checksum_module._ones_sum) is pure



@pytest.mark.parametrize("n", [0, 1, 7, 20, 1500])
def test_a_partial_sum_passed_in_counts_as_bytes_in_front(n):
    """RFC 1071 §2: sums of pieces add, so a pseudo-header given as its
    partial sum checksums like its bytes placed before the data."""
    rng = random.Random(n)
    front = bytes(rng.randrange(256) for _ in range(12))
    data = bytes(rng.randrange(256) for _ in range(n))
    assert checksum(data, partial_sum(front)) == checksum(front + data)
    stamped = data + (b"\0" if n & 1 else b"") + checksum(data + (b"\0" if n & 1 else b""), partial_sum(front)).to_bytes(2, "big")
    assert verify(stamped, partial_sum(front)) and not verify(stamped, partial_sum(front) + 1)


def test_flags_are_named_one_by_one_in_header_order():
    """RFC 9293 §3.1 control bits (and RFC 3168's ECE, CWR), as messages show them."""
    names = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]
    for bit, name in enumerate(names):
        assert flags_str(1 << bit) == name
    assert flags_str(0) == "0" and flags_str(0xFF) == "SYN|FIN|RST|PSH|ACK|URG|ECE|CWR"

def test_sequence_comparisons_wrap_modulo_2_32():
    top = MOD - 10
    assert seq_lt(top, 5) and seq_gt(5, top)
    assert seq_le(7, 7) and seq_ge(7, 7)
    assert seq_diff(5, top) == 15 and seq_diff(top, 5) == -15
    assert seq_add(top, 20) == 10
    assert not seq_lt(0, 0x80000001) or seq_lt(0, 0x7FFFFFFF)



@pytest.mark.parametrize("a", [0, 1, 0x7FFFFFFF, 0x80000000, MOD - 1])
def test_every_comparison_agrees_with_the_signed_distance_one_step_either_side(a):
    """RFC 9293 §3.4: a < b when b - a, modulo 2**32, is below 2**31; the
    four comparisons at distances -2..2 around any point, across the wrap."""
    for d in (-2, -1, 0, 1, 2):
        b = seq_add(a, d)
        assert seq_diff(b, a) == d
        assert (seq_lt(b, a), seq_le(b, a), seq_gt(b, a), seq_ge(b, a)) == (d < 0, d <= 0, d > 0, d >= 0), d

def test_unwrap_picks_the_nearest_value_across_the_wrap():
    ref = (1 << 32) * 3 + MOD - 100      # an unwrapped number just below a wrap
    assert unwrap(50, ref) == ref + 150
    assert unwrap(wrap(ref - 1000), ref) == ref - 1000
    assert wrap(unwrap(12345, ref)) == 12345


def test_ipv4_header_roundtrip_and_checksum():
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    pkt = build_ip(src, dst, PROTO_TCP, b"x" * 40, ttl=33)
    ip = parse_ip(pkt)
    assert (ip.version, ip.src, ip.dst, ip.proto, ip.start, ip.end, ip.hop_limit) == \
        (4, src, dst, PROTO_TCP, 20, 60, 33)
    assert verify(pkt[:20])
    bad = bytearray(pkt)
    bad[8] ^= 1
    with pytest.raises(Malformed) as e:
        parse_ip(bytes(bad))
    assert e.value.reason == "bad_checksum"


def test_ipv4_options_are_skipped():
    """RFC 9293 MUST-50: IP options TCP does not understand are ignored."""
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    payload = b"hello"
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(payload), 0, 0x4000, 64, 6, 0, src, dst))
    hdr += b"\x01\x01\x01\x00"   # NOP NOP NOP EOL
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    ip = parse_ip(bytes(hdr) + payload)
    assert ip.start == 24 and ip.end == 24 + len(payload)


def test_ipv4_trailing_link_padding_is_excluded():
    pkt = build_ip(bytes(4), bytes([1, 2, 3, 4]), PROTO_TCP, b"abc") + b"\0" * 10
    assert parse_ip(pkt).end == 23


@pytest.mark.parametrize("mutate,reason", [
    (lambda p: p[:10], "malformed"),
    (lambda p: b"\x75" + p[1:], "malformed"),                  # version 7
    (lambda p: p[:2] + (400).to_bytes(2, "big") + p[4:], "malformed"),   # total > buffer
])
def test_malformed_ipv4_is_named(mutate, reason):
    pkt = build_ip(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), PROTO_TCP, b"x" * 30)
    with pytest.raises(Malformed) as e:
        parse_ip(mutate(pkt))
    assert e.value.reason == reason


def test_ipv4_fragments_are_refused():
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    hdr = bytearray(ipv4_header(src, dst, PROTO_TCP, 8))
    hdr[6:8] = (0x2000).to_bytes(2, "big")   # MF
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    with pytest.raises(Malformed) as e:
        parse_ip(bytes(hdr) + b"\0" * 8)
    assert e.value.reason == "fragment"


def test_ipv6_header_and_extension_headers():
    src, dst = bytes(15) + b"\1", bytes(15) + b"\2"
    pkt = build_ip(src, dst, PROTO_TCP, b"y" * 20)
    ip = parse_ip(pkt)
    assert (ip.version, ip.proto, ip.start, ip.end) == (6, PROTO_TCP, 40, 60)
    # A hop-by-hop options header (8 bytes) in front of TCP is stepped over.
    hbh = bytes([PROTO_TCP, 0, 1, 4, 0, 0, 0, 0])
    pkt2 = struct.pack("!IHBB16s16s", 0x60000000, 28, 0, 64, src, dst) + hbh + b"y" * 20
    ip2 = parse_ip(pkt2)
    assert (ip2.proto, ip2.start, ip2.end) == (PROTO_TCP, 48, 68)
    frag = struct.pack("!IHBB16s16s", 0x60000000, 8, 44, 64, src, dst) + bytes(8)
    with pytest.raises(Malformed) as e:
        parse_ip(frag)
    assert e.value.reason == "fragment"



def test_ipv6_extension_header_bounds_are_checked_naming_the_fault():
    """RFC 8200 §4: an extension header must lie inside the payload; one
    that ends exactly at the payload's end is fine."""
    src, dst = bytes(15) + b"\1", bytes(15) + b"\2"

    def v6(nxt, body):
        return struct.pack("!IHBB16s16s", 0x60000000, len(body), nxt, 64, src, dst) + body

    no_next = 59                                                  # RFC 8200 §4.7
    exact = parse_ip(v6(0, bytes([no_next, 1]) + bytes(14)))      # 16-byte hop-by-hop, nothing after
    assert (exact.proto, exact.start, exact.end) == (no_next, 56, 56)
    for packet, detail in [
        (v6(0, bytes([PROTO_TCP, 2]) + bytes(14)), "IPv6 extension header length"),   # claims 24 bytes
        (v6(0, bytes([PROTO_TCP, 0, 0, 0])), "IPv6 extension header truncated"),
        (v6(44, bytes([PROTO_TCP, 0, 0, 0])), "IPv6 fragment header truncated"),
    ]:
        with pytest.raises(Malformed, match=detail) as e:
            parse_ip(packet, fragments=True)
        assert e.value.reason == "malformed"


@pytest.mark.parametrize("options", [b"", bytes([1]), bytes([1, 1]), bytes([3, 3, 7]), opt_mss(1400)])
def test_built_options_are_padded_to_32_bits_and_a_segment_checksums_on_its_own(options):
    """RFC 9293 §3.1: the header ends on a 32-bit boundary (options padded
    with zeros); without a pseudo-header sum the checksum covers the
    segment and its length only (the length is the one pseudo-header
    field build_segment adds itself)."""
    tcp = build_segment(1, 2, 3, 4, ACK, 100, options, b"odd")
    hlen = (tcp[12] >> 4) * 4
    assert hlen == 20 + (len(options) + 3) // 4 * 4 == len(tcp) - 3
    assert tcp[20:20 + len(options)] == options and not any(tcp[20 + len(options):hlen])
    assert verify(tcp, len(tcp))
    assert parse_segment(tcp, 0, len(tcp)).payload == b"odd"

def test_tcp_header_roundtrip_with_every_option():
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    opts = opt_mss(1460) + opt_sack_ok() + opt_timestamp(7, 9) + opt_wscale(7) + opt_sack([(100, 200)])
    tcp = build_segment(1234, 80, 0xFFFFFFF0, 42, SYN | ACK, 5000, opts, b"data!",
                        int.from_bytes(src + dst, "big") + PROTO_TCP)
    # MUST-2/MUST-3: the checksum covers pseudo-header, header and data.
    assert verify(tcp, pseudo_sum(src, dst, PROTO_TCP, len(tcp)))
    s = parse_segment(tcp, 0, len(tcp))
    assert (s.sport, s.dport, s.seq, s.ack, s.flags, s.wnd) == (1234, 80, 0xFFFFFFF0, 42, SYN | ACK, 5000)
    assert (s.mss, s.sack_ok, s.tsval, s.tsecr, s.wscale) == (1460, True, 7, 9, 7)
    assert s.sack == [(100, 200)]
    assert s.payload == b"data!"
    assert len(tcp) % 2 == 1 and (len(tcp) - 5) % 4 == 0   # MUST-69: options padded to 32 bits


def test_unknown_options_are_skipped_and_alignment_does_not_matter():
    """MUST-5/6/64: options anywhere, unknown kinds skipped by length, no
    alignment assumptions."""
    raw = bytes([1, 99, 5, 0xAA, 0xBB, 0xCC, 2, 4, 0x05, 0xB4, 3, 3, 2, 0])  # NOP, unknown(5), MSS, WS, EOL
    tcp = build_segment(1, 2, 3, 4, ACK, 5, raw)
    s = parse_segment(tcp, 0, len(tcp))
    assert (s.mss, s.wscale) == (1460, 2)


@pytest.mark.parametrize("opts", [
    bytes([2, 0, 0, 0]),           # MUST-7: zero length
    bytes([2, 1, 0, 0]),           # length 1
    bytes([8, 10, 0, 0]),          # timestamp running past the header
    bytes([2, 3, 5, 0]),           # MSS with the wrong length
    bytes([5, 3, 0, 0]),           # SACK with a partial block
    bytes([1, 1, 1, 2]),           # kind without a length byte at the end
])
def test_illegal_option_lengths_raise_malformed(opts):
    tcp = build_segment(1, 2, 3, 4, ACK, 5, opts)
    with pytest.raises(Malformed) as e:
        parse_segment(tcp, 0, len(tcp))
    assert e.value.reason == "malformed"


def test_window_scale_above_14_is_clamped():
    tcp = build_segment(1, 2, 3, 4, SYN, 5, opt_wscale(20))
    assert parse_segment(tcp, 0, len(tcp)).wscale == 14


def test_truncated_tcp_header_and_bad_data_offset():
    tcp = build_segment(1, 2, 3, 4, ACK, 5)
    with pytest.raises(Malformed):
        parse_segment(tcp, 0, 19)
    bad = bytearray(tcp)
    bad[12] = 0xF0   # data offset 60 > segment
    with pytest.raises(Malformed):
        parse_segment(bytes(bad), 0, len(bad))
    bad[12] = 0x40   # data offset 16 < 20
    with pytest.raises(Malformed):
        parse_segment(bytes(bad), 0, len(bad))


def test_icmp_error_quote_parsing_v4_and_v6():
    me, peer = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    inner = build_ip(me, peer, PROTO_TCP, build_segment(5555, 80, 777, 0, SYN, 100))
    pkt = build_icmp(peer, me, 3, 3, b"\0\0\0\0" + inner[:28])
    ip = parse_ip(pkt)
    err = parse_icmp_error(ip, pkt)
    assert (err.kind, err.code, err.src, err.dst, err.sport, err.dport, err.seq) == \
        ("unreachable", 3, me, peer, 5555, 80, 777)
    me6, peer6 = bytes(15) + b"\1", bytes(15) + b"\2"
    inner6 = build_ip(me6, peer6, PROTO_TCP, build_segment(5555, 80, 778, 0, SYN, 100))
    pkt6 = build_icmp(peer6, me6, 2, 0, (1280).to_bytes(4, "big") + inner6[:48])
    err6 = parse_icmp_error(parse_ip(pkt6), pkt6)
    assert (err6.kind, err6.mtu, err6.seq) == ("too_big", 1280, 778)


@pytest.mark.parametrize("v6, icmp_type, code, kind, mtu", [
    (False, 3, 4, "too_big", 1400),        # fragmentation needed: v4's "too big"
    (False, 3, 1, "unreachable", 0),
    (False, 11, 0, "time_exceeded", 0),
    (False, 0, 0, None, 0),                # echo reply: not an error
    (False, 5, 0, None, 0),                # redirect: not heeded
    (True, 1, 4, "unreachable", 0),
    (True, 2, 0, "too_big", 1400),
    (True, 3, 0, "time_exceeded", 0),
    (True, 129, 0, None, 0),               # echo reply: not an error
])
def test_icmp_error_kinds(v6, icmp_type, code, kind, mtu):
    n = 16 if v6 else 4
    me, peer = bytes(n - 1) + b"\1", bytes(n - 1) + b"\2"
    inner = build_ip(me, peer, PROTO_TCP, build_segment(5555, 80, 779, 0, SYN, 100))
    # The MTU field: the low 16 of the 32 bits after the ICMP checksum, all 32 in ICMPv6.
    pkt = build_icmp(peer, me, icmp_type, code, (1400).to_bytes(4, "big") + inner[:48 if v6 else 28])
    err = parse_icmp_error(parse_ip(pkt), pkt)
    if kind is None:
        assert err is None
    else:
        assert (err.kind, err.code, err.mtu, err.src, err.sport, err.seq) == (kind, code, mtu, me, 5555, 779)


# ---------------------------------------------------------------- the receive fast path in one call

def compiled_parse_tcp4():
    """iolib/_checksum.c's parse_tcp4, in both modes (see compiled_ones_sum)."""
    compiled_ones_sum()
    from iolib import _checksum
    return _checksum.parse_tcp4


def _tcp4_packets(rng: random.Random) -> list[bytes]:
    """Valid IPv4/TCP packets of every option shape, then each damaged in
    the ways a link or an attacker would: flipped bits anywhere, cut
    short, padded, other versions, protocols, fragments, data offsets."""
    src, dst = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
    shapes = [b"", opt_timestamp(7, 9), opt_mss(1460) + opt_wscale(7) + opt_sack_ok() + opt_timestamp(1, 0),
              opt_sack([(100, 200), (300, 400)]), opt_timestamp(5, 6) + opt_sack([(1, 2)]), b"\x01\x01\x08\x0a"]
    valid = []
    for options in shapes:
        for size in (0, 1, 2, 3, 536, 1460):
            payload = rng.randbytes(size)
            tcp = build_segment(rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 32),
                                rng.randrange(1 << 32), rng.choice([ACK, SYN, ACK | 0x08, 0x3F]), rng.randrange(1 << 16),
                                options, payload, pseudo_sum(src, dst, PROTO_TCP, 0), urg=rng.choice([0, 1, 0xFFFF]))
            valid.append(ipv4_header(src, dst, PROTO_TCP, len(tcp), 64) + tcp)
    elsewhere = bytes([10, 0, 0, 9])  # a valid packet for another host
    tcp = build_segment(1, 2, 3, 4, ACK, 5, b"", b"x", pseudo_sum(src, elsewhere, PROTO_TCP, 0))
    valid.append(ipv4_header(src, elsewhere, PROTO_TCP, len(tcp), 64) + tcp)
    packets = list(valid)
    for packet in valid:
        packets.append(packet + bytes(rng.randrange(1, 8)))  # link padding beyond the total length
        packets.append(packet[:rng.randrange(0, len(packet))])
        for _ in range(12):
            damaged = bytearray(packet)
            at = rng.randrange(0, min(len(packet), 60)) if rng.random() < 0.8 else rng.randrange(len(packet))
            damaged[at] ^= 1 << rng.randrange(8)
            packets.append(bytes(damaged))
        for at, value in ((0, 0x46), (0, 0x65), (9, 17), (6, 0x20), (7, 1), (32, 0x40), (32, 0x10), (32, 0xF0)):
            damaged = bytearray(packet)
            damaged[at] = value
            packets.append(bytes(damaged))
    return packets


@pytest.mark.parametrize("get_impl", [pytest.param(lambda: segment_module._parse_tcp4, id="pure"),
                                      pytest.param(compiled_parse_tcp4, id="compiled")])
def test_parse_tcp4_answers_as_parse_ip_and_parse_segment_do(get_impl):
    impl = get_impl()
    local = {bytes([10, 0, 0, 1])}
    rng = random.Random(11)
    seen = set()
    for packet in _tcp4_packets(rng):
        for checksum_ok in (False, True):
            got = impl(packet, local, checksum_ok)
            # What the general path makes of the same packet.
            try:
                ip = parse_ip(packet)
            except Malformed:
                ip = None
            if ip is None or ip.version != 4 or ip.start != 20 or ip.proto != PROTO_TCP or packet[0] != 0x45:
                # A damaged IP header may still have the fast path's shape:
                # refused for its destination (checked first) or checksum.
                if got == segment_module.TCP4_NOT_LOCAL:
                    assert packet[16:20] not in local
                elif got is not None:
                    assert got == segment_module.TCP4_BAD_CHECKSUM, packet.hex()
                seen.add("other" if got is None else "bad")
                continue
            if ip.dst not in local:
                assert got == segment_module.TCP4_NOT_LOCAL
                seen.add("not-local")
                continue
            tcp_ok = verify(packet[ip.start:ip.end], pseudo_sum(ip.src, ip.dst, PROTO_TCP, ip.end - ip.start))
            if not (tcp_ok or checksum_ok):
                assert got == segment_module.TCP4_BAD_CHECKSUM
                seen.add("bad")
                continue
            try:
                seg = parse_segment(packet, ip.start, ip.end)
            except Malformed:
                hlen = (packet[32] >> 4) * 4
                if hlen < 20 or 20 + hlen > ip.end:
                    assert got == segment_module.TCP4_MALFORMED
                    seen.add("malformed")
                    continue
                seg = None  # bad options: the caller parses them
            src, dst, ttl, total, sport, dport, seq, ack, flags, wnd, urg, payload, hlen, tsval, tsecr = got
            assert (src, dst, ttl, total) == (ip.src, ip.dst, ip.hop_limit, ip.end)
            if seg is not None:
                assert (sport, dport, seq, ack, flags, wnd, urg, payload) == (
                    seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.wnd, seg.urg, seg.payload)
                if tsval is not None:
                    assert (tsval, tsecr) == (seg.tsval, seg.tsecr) and hlen == 32
            seen.add("parsed")
    assert seen == {"other", "bad", "not-local", "malformed", "parsed"}


def test_compiled_parse_tcp4_matches_its_specification_byte_for_byte():
    compiled = compiled_parse_tcp4()
    rng = random.Random(5)
    locals_ = [set(), {bytes([10, 0, 0, 1])}, frozenset({bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])})]
    for packet in _tcp4_packets(rng):
        for local in locals_:
            for checksum_ok in (False, True):
                assert compiled(packet, local, checksum_ok) == segment_module._parse_tcp4(packet, local, checksum_ok), (
                    packet.hex())
    with pytest.raises(TypeError):
        compiled(bytearray(40), set(), False)


def test_the_stack_uses_the_compiled_parse_tcp4_when_it_is_built():
    built = any(Path(iolib.__file__).parent.glob("_checksum.*.so"))
    pure = os.environ.get("THREADLIB_PURE", "") not in ("", "0")
    if not built:
        pytest.skip("iolib/_checksum.c is not built here (no C compiler at install)")
    assert (segment_module.parse_tcp4 is segment_module._parse_tcp4) is pure


@pytest.mark.parametrize("offset_words, counter", [(4, "dropped_malformed"), (15, "dropped_malformed"),
                                                   (5, "segments_in")])
def test_the_stack_counts_a_bad_tcp_data_offset_on_its_fast_path(offset_words, counter):
    # A valid IPv4 packet (both checksums right) whose TCP data offset is
    # below 5 words or beyond the segment: counted as malformed, once.
    from iolib.tcp import Stack

    stack = Stack(["10.0.0.1/24"], rng=random.Random(1))
    src, dst = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
    tcp = bytearray(build_segment(4000, 9, 1, 0, ACK, 100, b"", b"", pseudo_sum(src, dst, PROTO_TCP, 0)))
    tcp[12] = offset_words << 4
    tcp[16:18] = b"\0\0"
    tcp[16:18] = checksum(bytes(tcp), pseudo_sum(src, dst, PROTO_TCP, len(tcp))).to_bytes(2, "big")
    before = stack.stats.as_dict()
    stack.receive(0.0, ipv4_header(src, dst, PROTO_TCP, len(tcp), 64) + bytes(tcp))
    grew = {k: v - before[k] for k, v in stack.stats.as_dict().items() if v != before[k]}
    grew.pop("packets_in")
    grew.pop("rst_sent", None)  # the well-formed one reaches no listener and is answered with a RST
    assert counter in grew and grew[counter] == 1
    if counter == "dropped_malformed":
        assert grew == {"dropped_malformed": 1}
