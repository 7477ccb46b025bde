"""TCP header and options: parse and build (RFC 9293 §3.1-3.2, RFC 7323,
RFC 2018).

`parse_segment` turns the TCP part of an IP packet into a `Segment` (plain
data, wire sequence numbers); `build_segment` does the reverse including the
checksum over the pseudo-header.  The common shapes (no options, or
NOP,NOP,Timestamps as Linux sends them) take a fast path.  `parse_tcp4`
checks and parses the stack's usual input (IPv4 without options carrying
TCP) in one call: iolib/_checksum.c's when it is built and THREADLIB_PURE
is unset, else `_parse_tcp4` here, its specification.  This module must
never interpret sequence numbers or keep state.
"""

from __future__ import annotations

import struct

from . import checksum as _checksum_mod
from .checksum import finish, ones_sum
from .ip import Malformed

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_OK = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

MAX_WSCALE = 14  # RFC 7323 §2.3

_HDR = struct.Struct("!HHIIBBHHH")
_HDR_NOCKS = struct.Struct("!HHIIBBH")
_TS = struct.Struct("!II")
_TS_PREFIX = b"\x01\x01\x08\x0a"


def flags_str(flags: int) -> str:
    """'SYN|ACK' style rendering, for messages and test failures."""
    names = [n for bit, n in ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"),
                              (ACK, "ACK"), (URG, "URG"), (ECE, "ECE"), (CWR, "CWR"))
             if flags & bit]
    return "|".join(names) or "0"


class Segment:
    """One TCP segment as seen on the wire (sequence numbers are 32-bit)."""

    __slots__ = ("sport", "dport", "seq", "ack", "flags", "wnd", "urg",
                 "payload", "mss", "wscale", "sack_ok", "sack", "tsval", "tsecr")

    def __init__(self, sport=0, dport=0, seq=0, ack=0, flags=0, wnd=0, urg=0,
                 payload=b"", mss=None, wscale=None, sack_ok=False, sack=None,
                 tsval=None, tsecr=None):
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.wnd = wnd
        self.urg = urg
        self.payload = payload
        self.mss = mss          # MSS option value or None
        self.wscale = wscale    # window-scale shift or None
        self.sack_ok = sack_ok  # SACK-permitted seen
        self.sack = sack        # list of (left, right) wire edges, or None
        self.tsval = tsval      # timestamp value or None
        self.tsecr = tsecr

    @property
    def seg_len(self) -> int:
        """Sequence space occupied: payload plus one for each of SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def __repr__(self) -> str:
        parts = [f"{self.sport}->{self.dport}", flags_str(self.flags),
                 f"seq={self.seq}", f"ack={self.ack}", f"wnd={self.wnd}"]
        if self.payload:
            parts.append(f"len={len(self.payload)}")
        if self.mss is not None:
            parts.append(f"mss={self.mss}")
        if self.wscale is not None:
            parts.append(f"ws={self.wscale}")
        if self.sack_ok:
            parts.append("sackOK")
        if self.sack:
            parts.append(f"sack={self.sack}")
        if self.tsval is not None:
            parts.append(f"ts={self.tsval}/{self.tsecr}")
        return f"<Segment {' '.join(parts)}>"


def _parse_options(seg: Segment, opts) -> None:
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise Malformed("malformed", "TCP option truncated")
        length = opts[i + 1]
        if length < 2 or i + length > n:
            raise Malformed("malformed", f"TCP option {kind} length {length}")
        body = opts[i + 2:i + length]
        if kind == OPT_MSS:
            if length != 4:
                raise Malformed("malformed", "MSS option length")
            seg.mss = int.from_bytes(body, "big")
        elif kind == OPT_WSCALE:
            if length != 3:
                raise Malformed("malformed", "window scale option length")
            seg.wscale = min(body[0], MAX_WSCALE)  # RFC 7323 §2.3: clamp and use 14
        elif kind == OPT_SACK_OK:
            if length != 2:
                raise Malformed("malformed", "SACK-permitted option length")
            seg.sack_ok = True
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                raise Malformed("malformed", "SACK option length")
            seg.sack = [struct.unpack_from("!II", body, j) for j in range(0, length - 2, 8)]
        elif kind == OPT_TIMESTAMP:
            if length != 10:
                raise Malformed("malformed", "timestamp option length")
            seg.tsval, seg.tsecr = _TS.unpack_from(body, 0)
        # Unknown options are skipped, as RFC 9293 §3.1 requires.
        i += length


def parse_segment(buf, start: int, end: int) -> Segment:
    """Parse buf[start:end] as a TCP segment.  The checksum is checked by the
    caller, which knows the pseudo-header."""
    if end - start < 20:
        raise Malformed("malformed", "TCP header truncated")
    sport, dport, seq, ack, off, flags, wnd, _cks, urg = _HDR.unpack_from(buf, start)
    hlen = (off >> 4) * 4
    if hlen < 20 or start + hlen > end:
        raise Malformed("malformed", "TCP data offset")
    seg = Segment(sport, dport, seq, ack, flags, wnd, urg, bytes(buf[start + hlen:end]))
    if hlen == 32 and buf[start + 20:start + 24] == _TS_PREFIX:
        seg.tsval, seg.tsecr = _TS.unpack_from(buf, start + 24)
    elif hlen > 20:
        _parse_options(seg, buf[start + 20:start + hlen])
    return seg


_V4_FAST = struct.Struct("!BBHHHBB")

# parse_tcp4's answers other than None and a tuple.
TCP4_NOT_LOCAL = 1
TCP4_BAD_CHECKSUM = 2
TCP4_MALFORMED = 3


def _parse_tcp4(packet: bytes, local, checksum_ok: bool):
    """The stack's per-packet fast path in one call, and the specification
    of iolib/_checksum.c's ``parse_tcp4``, which must do exactly this.

    For ``packet`` (bytes) that is an IPv4 packet without options carrying
    a whole, unfragmented TCP segment (40 <= total length <= its size):
    ``TCP4_NOT_LOCAL`` if its destination is not in ``local``;
    ``TCP4_BAD_CHECKSUM`` if the IP header's checksum fails or, unless
    ``checksum_ok``, the TCP checksum over ``packet[:total]``;
    ``TCP4_MALFORMED`` for a TCP data offset outside the segment; else
    ``(src, dst, ttl, total, sport, dport, seq, ack, flags, wnd, urg,
    payload, hlen, tsval, tsecr)``, where tsval and tsecr are None unless
    the options are exactly NOP, NOP, Timestamps (others are left to the
    caller: ``packet[40:20 + hlen]``). Any other packet: None."""
    n = len(packet)
    if n < 40 or packet[0] != 0x45:
        return None
    _vihl, _tos, total, _ident, frag, ttl, proto = _V4_FAST.unpack_from(packet, 0)
    if proto != 6 or frag & 0x3FFF or not 40 <= total <= n:
        return None
    dst = packet[16:20]
    if dst not in local:
        return TCP4_NOT_LOCAL
    if ones_sum(packet, 0, 20):
        return TCP4_BAD_CHECKSUM
    # The valid IP header sums to zero, so the packet's sum is the TCP
    # segment's: add the pseudo-header's addresses, protocol and length.
    if not checksum_ok and (ones_sum(packet, 0, total) + ones_sum(packet, 12, 20) + 6 + total - 20) % 0xFFFF:
        return TCP4_BAD_CHECKSUM
    sport, dport, seq, ack, off, flags, wnd, _cks, urg = _HDR.unpack_from(packet, 20)
    hlen = (off >> 4) * 4
    if hlen < 20 or 20 + hlen > total:
        return TCP4_MALFORMED
    tsval = tsecr = None
    if hlen == 32 and packet[40:44] == _TS_PREFIX:
        tsval, tsecr = _TS.unpack_from(packet, 44)
    return (packet[12:16], dst, ttl, total, sport, dport, seq, ack, flags, wnd, urg, packet[20 + hlen:total],
            hlen, tsval, tsecr)


def _load_parse_tcp4():
    # The compiled one when the compiled sum is in use (THREADLIB_PURE
    # unset) and the built module has it; else the specification.
    if _checksum_mod.COMPILED:
        from .. import _checksum  # type: ignore[attr-defined]
        compiled = getattr(_checksum, "parse_tcp4", None)
        if compiled is not None:
            return compiled
    return _parse_tcp4


parse_tcp4 = _load_parse_tcp4()


# ---------------------------------------------------------------- building

def opt_mss(mss: int) -> bytes:
    return struct.pack("!BBH", OPT_MSS, 4, mss)


def opt_wscale(shift: int) -> bytes:
    return bytes((OPT_NOP, OPT_WSCALE, 3, shift))


def opt_sack_ok() -> bytes:
    return bytes((OPT_NOP, OPT_NOP, OPT_SACK_OK, 2))


def opt_timestamp(tsval: int, tsecr: int) -> bytes:
    return _TS_PREFIX + _TS.pack(tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)


def opt_sack(blocks) -> bytes:
    """NOP,NOP,SACK with (left, right) wire edges."""
    out = bytearray((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks)))
    for left, right in blocks:
        out += struct.pack("!II", left & 0xFFFFFFFF, right & 0xFFFFFFFF)
    return bytes(out)


def build_segment(sport: int, dport: int, seq: int, ack: int, flags: int, wnd: int,
                  options: bytes = b"", payload: bytes = b"", pseudo: int = 0,
                  urg: int = 0) -> bytes:
    """A TCP segment with its checksum.  `pseudo` is the pseudo-header
    partial sum *without* the length, which is added here."""
    if len(options) & 3:
        options += b"\x00" * (4 - (len(options) & 3))
    if len(options) > 40:
        raise ValueError(f"TCP options are {len(options)} bytes, at most 40 fit")
    hlen = 20 + len(options)
    fixed = _HDR_NOCKS.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                            (hlen // 4) << 4, flags, wnd)
    # Word order does not matter to a one's-complement sum, so the header
    # without its checksum/urgent words and the options are summed as they
    # stand (both are 16-bit aligned).
    total = int.from_bytes(fixed + options, "big") + urg + pseudo + hlen + len(payload)
    if payload:
        total += ones_sum(payload)
    return b"".join((fixed, finish(total).to_bytes(2, "big"), urg.to_bytes(2, "big"),
                     options, payload))
