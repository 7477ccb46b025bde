"""IP fragment reassembly for datagrams addressed to this host (RFC 791 §3.2,
RFC 1122 §3.3.2, RFC 8200 §4.5, RFC 5722, RFC 6946).

`Reassembler.add` takes one fragment (an `ip.IPFragment` from
`parse_ip(packet, fragments=True)`) and returns the whole datagram, as one
ordinary unfragmented IP packet, once its last hole is filled; the stack then
parses that packet again from the top, so checksums and demultiplexing are
exactly those of an unfragmented packet.  Fragments of one datagram are kept
as sorted, non-overlapping (start, end, data) intervals: because overlaps are
refused, the datagram is complete when the bytes held equal the length the
last fragment announced, and no hole list (RFC 815) is needed.

Policy, chosen here and documented in docs/tcp-conformance.md:
* Overlap discards the whole datagram, for IPv6 (RFC 5722 §4, a MUST) and
  for IPv4 alike: overlapping IPv4 fragments have no legitimate use and are
  how filters get fooled (RFC 1858 §4, RFC 3128).  A fragment whose end
  contradicts the last fragment's counts as an overlap.  The discarded
  datagram stays as a tombstone until its timer runs out, so its later
  fragments are dropped too instead of starting a new reassembly (RFC 5722
  §4: "including those not yet received").  An exact duplicate (same range,
  same bytes, same M flag) is dropped on its own (RFC 8200 §4.5).
* The timer starts at the first-arriving fragment: 30 s for IPv4 (Linux's
  value; RFC 791 suggests 15 s, RFC 1122 §3.3.2 60-120 s; shorter limits
  misassembly once the 16-bit Identification wraps, RFC 4963 §2) and 60 s
  for IPv6 (RFC 8200 §4.5).  `expire` returns the timed-out datagrams; the
  stack sends Time Exceeded when the offset-zero fragment had arrived.
* At most `max_datagrams` datagrams (tombstones included) and `max_bytes`
  of fragment data are held.  A fragment beyond either limit is dropped;
  nothing is evicted, so a flood cannot push out a datagram in progress.

This module never reads a clock (every call takes `now`), never builds
anything but the reassembled packet, and never raises anything but
`Malformed`, whose reason names the stats counter of the dropped fragment.
Its state is plain data so that a Stack stays deep-copyable and picklable.
"""

from __future__ import annotations

from bisect import bisect_left

from .checksum import finish, partial_sum
from .ip import _V6_SKIPPABLE, PROTO_ICMPV6, PROTO_TCP, IPFragment, Malformed

TIMEOUT4 = 30.0
TIMEOUT6 = 60.0
MAX_DATAGRAMS = 64
MAX_BYTES = 4 << 20
MAX_IP_LENGTH = 65535

# RFC 8200 §4.5 / RFC 7112: the first fragment must hold the whole header
# chain up to and including the upper-layer header; these are the shortest
# such headers we know (UDP 8, TCP 20, ICMPv6 type/code/checksum/body 8).
_UPPER_HEADER_LEN = {PROTO_TCP: 20, 17: 8, PROTO_ICMPV6: 8}
# RFC 4443 §2.4 (c): an ICMPv6 error quotes as much as fits in 1280 bytes.
_ICMP6_QUOTE = 1280 - 40 - 8


class Datagram:
    """One datagram being reassembled.  `frags` is sorted by start and
    never overlapping; `total` is the data length once the last fragment
    (M = 0) has arrived; `head`/`first_nh`/`nh_pos`/`quote` come from the
    offset-zero fragment.  `dead` marks a tombstone left by an overlap."""

    __slots__ = ("src", "dst", "deadline", "frags", "total", "received", "head", "first_nh",
                 "nh_pos", "quote", "dead")

    def __init__(self, src: bytes, dst: bytes, deadline: float):
        self.src = src
        self.dst = dst
        self.deadline = deadline
        self.frags = []
        self.total = None
        self.received = 0
        self.head = None
        self.first_nh = 0
        self.nh_pos = None
        self.quote = b""
        self.dead = False


class Reassembler:
    """All datagrams in reassembly, keyed by (src, dst, protocol, ident) for
    IPv4 (RFC 791 §3.2) and (src, dst, ident) for IPv6 (RFC 8200 §4.5)."""

    __slots__ = ("max_datagrams", "max_bytes", "timeout4", "timeout6", "datagrams", "buffered")

    def __init__(self, max_datagrams: int = MAX_DATAGRAMS, max_bytes: int = MAX_BYTES,
                 timeout4: float = TIMEOUT4, timeout6: float = TIMEOUT6):
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout4 = timeout4
        self.timeout6 = timeout6
        self.datagrams: dict = {}
        self.buffered = 0      # fragment data bytes held, over all datagrams

    def add(self, now: float, frag: IPFragment, packet: bytes) -> bytes | None:
        """Take one fragment; the reassembled packet when it completes one."""
        start, end = frag.offset, frag.offset + frag.end - frag.start
        length = end - start
        if length == 0:
            raise Malformed("malformed", "empty fragment")
        if frag.more and length & 7:
            # RFC 8200 §4.5; for IPv4, offsets count 8-octet units (RFC 791
            # §3.1), so a short non-last fragment leaves a hole nothing fills.
            raise Malformed("malformed", "fragment length not a multiple of 8")
        v4 = frag.version == 4
        # The reassembled packet's length field must hold: 65535 at most
        # (RFC 8200 §4.5; for IPv4 this is the "ping of death" check).
        if len(frag.head) - (0 if v4 else 40) + end > MAX_IP_LENGTH:
            raise Malformed("malformed", "fragment ends beyond 65535")
        if start == 0 and not v4:
            _check_first_v6(frag, packet)
            if not frag.more:
                # RFC 6946 §4: an atomic fragment is processed on its own.
                return _build(frag.head, frag.nh_pos, frag.proto, packet[frag.start:frag.end])
        key = (frag.src, frag.dst, frag.proto, frag.ident) if v4 else (frag.src, frag.dst, frag.ident)
        dg = self.datagrams.get(key)
        if dg is None:
            if len(self.datagrams) >= self.max_datagrams:
                raise Malformed("fragment_limit", "too many datagrams in reassembly")
            if self.buffered + length > self.max_bytes:
                raise Malformed("fragment_limit", "reassembly buffer full")
            dg = Datagram(frag.src, frag.dst, now + (self.timeout4 if v4 else self.timeout6))
            self.datagrams[key] = dg
        elif dg.dead:
            raise Malformed("fragment_overlap", "fragment of a discarded datagram")
        elif self.buffered + length > self.max_bytes:
            raise Malformed("fragment_limit", "reassembly buffer full")
        data = packet[frag.start:frag.end]
        frags = dg.frags
        total = dg.total
        last = not frag.more
        i = bisect_left(frags, (start,))
        if i < len(frags) and frags[i][0] == start and frags[i][1] == end \
                and frags[i][2] == data and last == (total == end):
            raise Malformed("fragment_duplicate", "duplicate fragment")
        if (last and (total is not None and total != end or frags and frags[-1][1] > end)) \
                or (total is not None and end > total) \
                or (i > 0 and frags[i - 1][1] > start) \
                or (i < len(frags) and frags[i][0] < end):
            self._discard(dg)
            raise Malformed("fragment_overlap", "overlapping fragment")
        frags.insert(i, (start, end, data))
        dg.received += length
        self.buffered += length
        if last:
            dg.total = total = end
        if start == 0:
            dg.head = frag.head
            dg.first_nh = frag.proto
            dg.nh_pos = frag.nh_pos
            # RFC 792 quotes the header and 64 bits of data; RFC 4443 §3.3
            # as much of the packet as fits.
            dg.quote = packet[:min(frag.end, frag.start + 8 if v4 else _ICMP6_QUOTE)]
        if dg.received != total:
            return None
        del self.datagrams[key]
        self.buffered -= total
        return _build(dg.head, dg.nh_pos, dg.first_nh, b"".join(f[2] for f in frags))

    def _discard(self, dg: Datagram) -> None:
        self.buffered -= dg.received
        dg.frags = []
        dg.received = 0
        dg.quote = b""
        dg.head = None
        dg.dead = True

    def next_deadline(self) -> float | None:
        if not self.datagrams:
            return None
        return min(dg.deadline for dg in self.datagrams.values())

    def expire(self, now: float) -> list:
        """Forget every datagram whose timer ran out at or before `now`;
        returns the live (not tombstoned) ones, oldest first."""
        gone = [k for k, dg in self.datagrams.items() if dg.deadline <= now]
        out = []
        for k in gone:
            dg = self.datagrams.pop(k)
            if not dg.dead:
                self.buffered -= dg.received
                out.append(dg)
        return out


def _check_first_v6(frag: IPFragment, packet: bytes) -> None:
    """RFC 8200 §4.5 (RFC 7112): the first fragment must contain every
    extension header and the upper-layer header.  (We drop it without the
    ICMPv6 Parameter Problem the RFC suggests.)"""
    nxt, off, end = frag.proto, frag.start, frag.end
    while nxt in _V6_SKIPPABLE:
        if off + 2 > end:
            raise Malformed("malformed", "first fragment lacks the header chain")
        nxt, off = packet[off], off + (packet[off + 1] + 1) * 8
    if off + _UPPER_HEADER_LEN.get(nxt, 0) > end:
        raise Malformed("malformed", "first fragment lacks the upper-layer header")


def _build(head: bytes, nh_pos, next_header: int, data: bytes) -> bytes:
    """The reassembled packet: the offset-zero fragment's header with the
    fragmentation fields removed (RFC 791 §3.2; RFC 8200 §4.5: the
    Unfragmentable Part, its last Next Header taken from the Fragment
    header, Payload Length recomputed)."""
    hdr = bytearray(head)
    if nh_pos is None:
        hdr[2:4] = (len(hdr) + len(data)).to_bytes(2, "big")
        hdr[6:8] = b"\0\0"
        hdr[10:12] = b"\0\0"
        hdr[10:12] = finish(partial_sum(bytes(hdr))).to_bytes(2, "big")
    else:
        hdr[nh_pos] = next_header
        hdr[4:6] = (len(hdr) - 40 + len(data)).to_bytes(2, "big")
    return bytes(hdr) + data
