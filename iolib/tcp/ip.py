"""IPv4 and IPv6 headers and the ICMP/ICMPv6 messages the stack needs.

Parsing checks every length and checksum field and raises `Malformed` with a
short reason; the stack counts the reason and drops the packet.  Building
returns whole packets as `bytes`.  Fragments are refused (reason "fragment")
unless the caller asks for them, in which case their header fields come back
as an `IPFragment` for `fragments.Reassembler`.  This module must never keep
state or look at TCP beyond the first eight bytes quoted in an ICMP error.
"""

from __future__ import annotations

import struct

from .checksum import finish, partial_sum, verify

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_ICMPV6 = 58

# IPv6 extension headers we can step over (RFC 8200 §4); fragment (44) is
# reported separately.
_V6_SKIPPABLE = frozenset((0, 43, 60))
_V6_FRAGMENT = 44

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_V6_FRAG = struct.Struct("!BBHI")


class Malformed(ValueError):
    """A packet that cannot be accepted; `reason` names the stats counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class IPPacket:
    """The parts of an IP packet the stack dispatches on."""

    __slots__ = ("version", "src", "dst", "proto", "start", "end", "hop_limit")

    def __init__(self, version, src, dst, proto, start, end, hop_limit):
        self.version = version
        self.src = src          # packed address bytes (4 or 16)
        self.dst = dst
        self.proto = proto      # upper-layer protocol number
        self.start = start      # offset of the upper-layer payload
        self.end = end          # end of the payload (trailing link padding excluded)
        self.hop_limit = hop_limit


class IPFragment(IPPacket):
    """One fragment (RFC 791 §2.3, RFC 8200 §4.5).  `start:end` is the
    fragment's data; `proto` is the upper-layer protocol for IPv4 and the
    Fragment header's Next Header for IPv6.  `head` is everything in front
    of the data for IPv4 (the header) and the Unfragmentable Part for IPv6
    (up to, not including, the Fragment header); for IPv6, `nh_pos` is
    where in `head` the Next Header field naming the Fragment header sits."""

    __slots__ = ("ident", "offset", "more", "head", "nh_pos")

    def __init__(self, version, src, dst, proto, start, end, hop_limit, ident, offset, more, head,
                 nh_pos):
        super().__init__(version, src, dst, proto, start, end, hop_limit)
        self.ident = ident
        self.offset = offset    # in bytes, not 8-byte units
        self.more = more        # the M / MF flag
        self.head = head
        self.nh_pos = nh_pos


def parse_ip(packet, fragments: bool = False) -> IPPacket:
    """Parse the IP header of a whole packet (RFC 791 §3.1, RFC 8200 §3).
    A fragment raises Malformed("fragment") unless `fragments`, when it
    comes back as an IPFragment."""
    n = len(packet)
    if n < 1:
        raise Malformed("malformed", "empty packet")
    version = packet[0] >> 4
    if version == 4:
        if n < 20:
            raise Malformed("malformed", "IPv4 header truncated")
        vihl, _tos, total, _ident, frag, ttl, proto, _cks, src, dst = _V4.unpack_from(packet, 0)
        ihl = (vihl & 15) * 4
        if ihl < 20 or ihl > n:
            raise Malformed("malformed", "IPv4 header length")
        if total < ihl or total > n:
            raise Malformed("malformed", "IPv4 total length")
        if not verify(packet[:ihl]):
            raise Malformed("bad_checksum", "IPv4 header")
        if frag & 0x3FFF:  # MF set or a non-zero offset
            if not fragments:
                raise Malformed("fragment", "IPv4 fragment")
            return IPFragment(4, src, dst, proto, ihl, total, ttl, _ident, (frag & 0x1FFF) * 8,
                              bool(frag & 0x2000), packet[:ihl], None)
        return IPPacket(4, src, dst, proto, ihl, total, ttl)
    if version == 6:
        if n < 40:
            raise Malformed("malformed", "IPv6 header truncated")
        _vtcfl, plen, nxt, hops, src, dst = _V6.unpack_from(packet, 0)
        end = 40 + plen
        if end > n:
            raise Malformed("malformed", "IPv6 payload length")
        off = 40
        nh_pos = 6
        while nxt in _V6_SKIPPABLE:
            if off + 8 > end:
                raise Malformed("malformed", "IPv6 extension header truncated")
            nh_pos = off
            nxt, hlen = packet[off], (packet[off + 1] + 1) * 8
            off += hlen
            if off > end:
                raise Malformed("malformed", "IPv6 extension header length")
        if nxt == _V6_FRAGMENT:
            if not fragments:
                raise Malformed("fragment", "IPv6 fragment")
            # RFC 8200 §4.5: Next Header, reserved, offset (13 bits) + res + M, ident.
            if off + 8 > end:
                raise Malformed("malformed", "IPv6 fragment header truncated")
            nxt, _res, offm, ident = _V6_FRAG.unpack_from(packet, off)
            return IPFragment(6, src, dst, nxt, off + 8, end, hops, ident, offm & 0xFFF8,
                              bool(offm & 1), packet[:off], nh_pos)
        return IPPacket(6, src, dst, nxt, off, end, hops)
    raise Malformed("malformed", f"IP version {version}")


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = 64) -> bytes:
    """A 20-byte IPv4 header with DF set (RFC 791, RFC 6864 atomic datagram)."""
    total = 20 + payload_len
    hdr = _V4.pack(0x45, 0, total, 0, 0x4000, ttl, proto, 0, src, dst)
    return hdr[:10] + finish(partial_sum(hdr)).to_bytes(2, "big") + hdr[12:]


def ipv6_header(src: bytes, dst: bytes, next_header: int, payload_len: int, hop_limit: int = 64) -> bytes:
    return _V6.pack(0x60000000, payload_len, next_header, hop_limit, src, dst)


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Partial sum of the IPv4 or IPv6 pseudo-header; the two have the same
    one's-complement sum (RFC 9293 §3.1, RFC 8200 §8.1)."""
    return int.from_bytes(src + dst, "big") + proto + length


def build_ip(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    if len(src) == 4:
        return ipv4_header(src, dst, proto, len(payload), ttl) + payload
    return ipv6_header(src, dst, proto, len(payload), ttl) + payload


# ---------------------------------------------------------------- ICMP

ICMP_ECHO_REPLY = 0
ICMP_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP6_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129


def icmp_checksum_ok(ip: IPPacket, packet) -> bool:
    body = packet[ip.start:ip.end]
    if ip.version == 4:
        return verify(body)
    return verify(body, pseudo_sum(ip.src, ip.dst, PROTO_ICMPV6, len(body)))


def build_icmp(src: bytes, dst: bytes, icmp_type: int, code: int, rest: bytes) -> bytes:
    """A whole IP packet carrying one ICMP (v4) or ICMPv6 (v6) message;
    `rest` is everything after the 4-byte type/code/checksum."""
    if len(src) == 4:
        body = bytes((icmp_type, code, 0, 0)) + rest
        cks = finish(partial_sum(body))
        body = body[:2] + cks.to_bytes(2, "big") + body[4:]
        return ipv4_header(src, dst, PROTO_ICMP, len(body)) + body
    body = bytes((icmp_type, code, 0, 0)) + rest
    cks = finish(partial_sum(body) + pseudo_sum(src, dst, PROTO_ICMPV6, len(body)))
    body = body[:2] + cks.to_bytes(2, "big") + body[4:]
    return ipv6_header(src, dst, PROTO_ICMPV6, len(body)) + body


# The ICMP and ICMPv6 errors TCP heeds, by type, as IcmpError kinds; all
# other types are not about a connection.  ICMP has no type for "too big":
# it is an unreachable with code 4.
_ICMP4_ERRORS = {ICMP_UNREACH: "unreachable", ICMP_TIME_EXCEEDED: "time_exceeded"}
_ICMP6_ERRORS = {ICMP6_UNREACH: "unreachable", ICMP6_PACKET_TOO_BIG: "too_big",
                 ICMP6_TIME_EXCEEDED: "time_exceeded"}


class IcmpError:
    """An ICMP error quoting one of our own TCP segments (RFC 792, RFC 4443)."""

    __slots__ = ("kind", "code", "mtu", "src", "dst", "sport", "dport", "seq")

    def __init__(self, kind, code, mtu, src, dst, sport, dport, seq):
        self.kind = kind    # "unreachable", "too_big", "time_exceeded"
        self.code = code
        self.mtu = mtu      # next-hop MTU for "too_big", else 0
        self.src = src      # quoted packet's source: our address
        self.dst = dst
        self.sport = sport  # our port
        self.dport = dport
        self.seq = seq      # quoted sequence number (wire value)


def parse_icmp_error(ip: IPPacket, packet) -> IcmpError | None:
    """The quoted TCP segment of an ICMP/ICMPv6 error, or None when the
    message is not an error about TCP.  Raises Malformed on truncation."""
    body = packet[ip.start:ip.end]
    if len(body) < 8:
        raise Malformed("malformed", "ICMP header truncated")
    t, code = body[0], body[1]
    v4 = ip.version == 4
    kind = (_ICMP4_ERRORS if v4 else _ICMP6_ERRORS).get(t)
    if kind is None:
        return None
    if v4 and t == ICMP_UNREACH and code == 4:
        kind = "too_big"  # fragmentation needed and DF set (RFC 1191)
    # The next-hop MTU: 16 bits at offset 6 in ICMP (RFC 1191), 32 at 4 in ICMPv6.
    mtu = int.from_bytes(body[6 if v4 else 4:8], "big") if kind == "too_big" else 0
    quoted = body[8:]
    if v4:
        if len(quoted) < 28:
            raise Malformed("malformed", "ICMP quote truncated")
        if quoted[0] >> 4 != 4:
            raise Malformed("malformed", "ICMP quote not IPv4")
        ihl = (quoted[0] & 15) * 4
        if quoted[9] != PROTO_TCP:
            return None
        if len(quoted) < ihl + 8:
            raise Malformed("malformed", "ICMP quote truncated")
        src, dst = bytes(quoted[12:16]), bytes(quoted[16:20])
        tcp = quoted[ihl:ihl + 8]
    else:
        if len(quoted) < 48:
            raise Malformed("malformed", "ICMPv6 quote truncated")
        if quoted[0] >> 4 != 6 or quoted[6] != PROTO_TCP:
            return None
        src, dst = bytes(quoted[8:24]), bytes(quoted[24:40])
        tcp = quoted[40:48]
    sport, dport, seq = struct.unpack("!HHI", tcp)
    return IcmpError(kind, code, mtu, src, dst, sport, dport, seq)
