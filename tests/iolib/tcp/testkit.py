"""Helpers for packet-level tests of iolib.tcp, in the style of smoltcp's
socket/tcp.rs tests: build exact segments from a scripted remote host, feed
them at exact virtual times, and compare the segments the stack emits field
by field.

Every field a peer would see is checked.  Each packet the stack emits,
whether a test looks at it or not, must be a well-formed datagram from the
stack's address: IP version, header length, TOS / traffic class and flow
label zero, lengths that match, DF set and ID 0 (RFC 6864 atomic datagram),
the stack's TTL / hop limit, no extension headers, both checksums, TCP
reserved bits zero, options that parse and pad to 32 bits, and an urgent
pointer of 0 without URG.  `expect()` then compares each segment with its
`seg()` description: addresses, ports, flags, numbers, window, payload,
urgent pointer and the options *in wire order* (kinds, lengths and NOP
padding).  Addresses, ports and TTL default to the harness's connection
(LOCAL:lport -> REMOTE:rport, the stack's TTL); an `expect` that leaves a
field open says so with ANY (an option set to ANY must still be present).

The stack under test is 10.0.0.1 (or fd00::1); the scripted remote is
10.0.0.2:REMOTE_PORT (or fd00::2).  Sequence numbers passed to `seg()` may be
unwrapped; they are reduced modulo 2**32.  This module must never decide
what the stack ought to send: only the tests say that.
"""

from __future__ import annotations

import ipaddress
import random
import struct

from iolib.tcp import Stack
from iolib.tcp.ip import PROTO_TCP, build_ip, parse_ip, pseudo_sum
from iolib.tcp.segment import (ACK, FIN, PSH, RST, SYN, URG, Segment, build_segment, flags_str,
                               opt_mss, opt_sack, opt_sack_ok, opt_timestamp, opt_wscale,
                               parse_segment)

__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "URG", "ANY", "seg", "Harness", "Wire", "decode",
           "device_segments", "option_layout", "LOCAL4", "REMOTE4", "LOCAL6", "REMOTE6",
           "REMOTE_PORT", "REMOTE_ISS", "wire_pair"]

LOCAL4, REMOTE4 = "10.0.0.1", "10.0.0.2"
LOCAL6, REMOTE6 = "fd00::1", "fd00::2"
REMOTE_PORT = 4000
LISTEN_PORT = 80
REMOTE_ISS = 10000
M32 = 0xFFFFFFFF


class _Any:
    """Matches anything: the explicit way for an expectation to leave a
    field open."""

    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0

    def __repr__(self):
        return "ANY"


ANY = _Any()


class Expected:
    """What a test expects one emitted segment to look like.  Addresses,
    ports and TTL left as None mean the harness's connection and the
    stack's TTL (still checked); ANY leaves a field open."""

    __slots__ = ("flags", "seq", "ack", "win", "payload", "mss", "ws", "sack_ok", "sack", "ts", "urg",
                 "src", "dst", "sport", "dport", "ttl")

    def __init__(self, flags, seq, ack, win, payload, mss, ws, sack_ok, sack, ts, urg=0,
                 src=None, dst=None, sport=None, dport=None, ttl=None):
        self.urg = urg
        self.flags, self.seq, self.ack, self.win, self.payload = flags, seq, ack, win, payload
        self.mss, self.ws, self.sack_ok, self.sack, self.ts = mss, ws, sack_ok, sack, ts
        self.src, self.dst, self.sport, self.dport, self.ttl = src, dst, sport, dport, ttl

    def __repr__(self):
        f = flags_str(self.flags) if isinstance(self.flags, int) else self.flags
        return (f"seg({f}, seq={self.seq}, ack={self.ack}, win={self.win}, "
                f"len={len(self.payload) if isinstance(self.payload, (bytes, bytearray)) else self.payload}"
                f", mss={self.mss}, ws={self.ws}, sack_ok={self.sack_ok}, sack={self.sack}, ts={self.ts}"
                f", urg={self.urg}, {self.src}:{self.sport} -> {self.dst}:{self.dport}, ttl={self.ttl})")


def _m(v):
    return v & M32 if isinstance(v, int) else v


def seg(flags, seq, ack=0, win=65535, payload=b"", *, mss=None, ws=None, sack_ok=False,
        sack=None, ts=None, urg=0, src=None, dst=None, sport=None, dport=None, ttl=None) -> Expected:
    """A segment description, used both to inject and to expect.
    `sack` is a list of (left, right); `ts` is (tsval, tsecr).  `src`,
    `dst`, `sport`, `dport` default to the harness's connection (the
    remote's side when injecting, the stack's when expecting)."""
    if sack is not None and sack is not ANY:
        sack = [(_m(a), _m(b)) for a, b in sack]
    if ts is not None and ts is not ANY:
        ts = (_m(ts[0]), _m(ts[1]))
    return Expected(flags, _m(seq), _m(ack), win, payload, mss, ws, sack_ok, sack, ts, urg,
                    src, dst, sport, dport, ttl)


def _one_sum(data) -> int:
    total = int.from_bytes(data, "big") << (8 if len(data) & 1 else 0)
    return total


def decode(packet) -> tuple:
    """(ip, Segment) of an emitted packet; asserts its checksums."""
    ip = parse_ip(packet)  # verifies the IPv4 header checksum
    assert ip.proto == PROTO_TCP, f"not TCP: proto {ip.proto}"
    body = packet[ip.start:ip.end]
    assert (_one_sum(body) + pseudo_sum(ip.src, ip.dst, PROTO_TCP, len(body))) % 0xFFFF == 0, "bad TCP checksum"
    return ip, parse_segment(packet, ip.start, ip.end)


def option_layout(options: bytes) -> list:
    """The options area as a peer walks it: [(kind, length)], NOP as
    (1, 1) and each EOL/padding byte as (0, 1), so that order, alignment
    and padding all show."""
    out, i = [], 0
    while i < len(options):
        kind = options[i]
        if kind in (0, 1):
            out.append((kind, 1))
            i += 1
            continue
        assert i + 1 < len(options), f"option {kind} truncated in {options.hex()}"
        length = options[i + 1]
        assert length >= 2 and i + length <= len(options), f"option {kind} length {length} in {options.hex()}"
        out.append((kind, length))
        i += length
    return out


class Wire:
    """What a peer sees of one emitted packet: the IP header fields, the
    TCP segment and its raw options."""

    __slots__ = ("version", "src", "dst", "ttl", "ident", "df", "seg", "options")

    def __init__(self, version, src, dst, ttl, ident, df, seg, options):
        self.version, self.src, self.dst, self.ttl = version, src, dst, ttl
        self.ident, self.df, self.seg, self.options = ident, df, seg, options

    def __repr__(self):
        return f"<Wire v{self.version} {self.src} -> {self.dst} ttl={self.ttl} {self.seg!r}>"


def check_ip_header(packet, *, ttl: int) -> None:
    """The IP header of a packet the stack emitted, as the stack must build
    it: no IP options or extension headers, TOS / traffic class and flow
    label 0, lengths matching the packet, DF set, MF clear, offset and ID 0
    (RFC 6864: an atomic datagram), TTL / hop limit `ttl`, protocol TCP."""
    version = packet[0] >> 4
    if version == 4:
        vihl, tos, total, ident, frag, got_ttl, proto = struct.unpack_from("!BBHHHBB", packet, 0)
        assert vihl == 0x45, f"IPv4 version/IHL byte {vihl:#x}: expected 0x45 (no IP options)"
        assert tos == 0, f"IPv4 TOS {tos}"
        assert total == len(packet), f"IPv4 total length {total} for a {len(packet)}-byte packet"
        assert ident == 0, f"IPv4 ID {ident}: the stack sends atomic datagrams with ID 0"
        assert frag == 0x4000, f"IPv4 flags/offset {frag:#06x}: expected DF only"
    else:
        assert version == 6, f"IP version {version}"
        vtcfl, plen, proto, got_ttl = struct.unpack_from("!IHBB", packet, 0)
        assert vtcfl == 0x60000000, f"IPv6 traffic class / flow label {vtcfl:#010x}: expected 0"
        assert plen == len(packet) - 40, f"IPv6 payload length {plen} for a {len(packet)}-byte packet"
    assert proto == PROTO_TCP, f"IP protocol {proto}: expected TCP (no extension headers)"
    assert got_ttl == ttl, f"TTL / hop limit {got_ttl}, expected {ttl}"


def check_tcp_header(packet, start: int, segment: Segment) -> bytes:
    """The TCP header bits parse_segment does not keep: reserved bits zero,
    options that parse to the end of the header, no urgent pointer without
    URG.  Returns the raw options."""
    offset_byte = packet[start + 12]
    assert offset_byte & 0x0F == 0, f"TCP reserved bits set: {offset_byte:#04x}"
    hlen = (offset_byte >> 4) * 4
    options = bytes(packet[start + 20:start + hlen])
    option_layout(options)
    if not segment.flags & URG:
        assert segment.urg == 0, f"urgent pointer {segment.urg} without URG"
    return options


def device_segments(item) -> list:
    """What a device with checksum and segmentation offload makes of one
    item from `Stack(offload=True).take_packets()` (a virtio_net_hdr with
    NEEDS_CSUM, and GSO_TCPV4/6 for a nonzero gso_size): plain bytes pass
    unchanged; a `(packet, gso_size)` pair, whose TCP checksum field must
    hold the pseudo-header sum, becomes wire packets of at most gso_size
    payload bytes, each with its own sequence number, lengths and
    checksums, PSH and FIN kept only on the last.  Each piece keeps the
    original IP header fields (TTL, TOS, DF) and, as Linux's GSO does for
    IPv4 without FIXEDID, an ID counting up from the original's."""
    if not isinstance(item, tuple):
        return [item]
    packet, gso_size = item
    ip = parse_ip(packet)
    assert ip.proto == PROTO_TCP, f"offloaded packet is not TCP: proto {ip.proto}"
    tcp = packet[ip.start:ip.end]
    field = int.from_bytes(tcp[16:18], "big")
    assert field == pseudo_sum(ip.src, ip.dst, PROTO_TCP, len(tcp)) % 0xFFFF, "checksum field is not the pseudo-header sum"
    hlen = (tcp[12] >> 4) * 4
    payload = tcp[hlen:]
    step = gso_size or max(len(payload), 1)
    assert gso_size == 0 or len(payload) > gso_size, f"gso_size {gso_size} on a {len(payload)}-byte payload"
    seq = int.from_bytes(tcp[4:8], "big")
    out = []
    for index, off in enumerate(range(0, max(len(payload), 1), step)):
        piece = payload[off:off + step]
        last = off + step >= len(payload)
        flags = tcp[13] if last else tcp[13] & ~(PSH | FIN)
        head = bytearray(tcp[:hlen])
        head[4:8] = ((seq + off) & M32).to_bytes(4, "big")
        head[13] = flags
        head[16:18] = b"\0\0"
        body = bytes(head) + piece
        cks = 0xFFFF - (_one_sum(body) + pseudo_sum(ip.src, ip.dst, PROTO_TCP, len(body))) % 0xFFFF
        body = body[:16] + cks.to_bytes(2, "big") + body[18:]
        iphead = bytearray(packet[:ip.start])
        if ip.version == 4:
            iphead[2:4] = (ip.start + len(body)).to_bytes(2, "big")
            iphead[4:6] = ((int.from_bytes(iphead[4:6], "big") + index) & 0xFFFF).to_bytes(2, "big")
            iphead[10:12] = b"\0\0"
            iphead[10:12] = (0xFFFF - _one_sum(bytes(iphead)) % 0xFFFF).to_bytes(2, "big")
        else:
            iphead[4:6] = (len(iphead) - 40 + len(body)).to_bytes(2, "big")
        out.append(bytes(iphead) + body)
    return out


def _fields(s: Segment):
    ts = None if s.tsval is None else (s.tsval, s.tsecr)
    return (s.flags, s.seq, s.ack, s.wnd, bytes(s.payload), s.mss, s.wscale, s.sack_ok,
            s.sack and [tuple(b) for b in s.sack], ts, s.urg)


def _efields(e: Expected):
    return (e.flags, e.seq, e.ack, e.win, e.payload, e.mss, e.ws, e.sack_ok, e.sack, e.ts, e.urg)


_NAMES = ("flags", "seq", "ack", "win", "payload", "mss", "ws", "sack_ok", "sack", "ts", "urg")


def _expected_options(e: Expected) -> bytes:
    """The options area the harness would build for `e`, in the canonical
    order (MSS, SACK-permitted, timestamps, window scale, SACK blocks, each
    with the NOP alignment Linux uses), with 0 for a value left ANY."""
    def value(v):
        return 0 if v is ANY else v
    opts = b""
    if e.mss is not None:
        opts += opt_mss(value(e.mss))
    if e.sack_ok:
        opts += opt_sack_ok()
    if e.ts is not None:
        ts = (0, 0) if e.ts is ANY else e.ts
        opts += opt_timestamp(value(ts[0]), value(ts[1]))
    if e.ws is not None:
        opts += opt_wscale(value(e.ws))
    if e.sack:
        opts += opt_sack([(0, 0)] if e.sack is ANY else [(value(a), value(b)) for a, b in e.sack])
    if len(opts) & 3:
        opts += b"\0" * (4 - (len(opts) & 3))
    return opts


def _layout_matches(actual: list, expected: list, sack_open: bool) -> bool:
    if not sack_open:
        return actual == expected
    # sack=ANY: any number of blocks, but the option is where it belongs.
    return [(k, 0 if k == 5 else n) for k, n in actual] == [(k, 0 if k == 5 else n) for k, n in expected]


def assert_seg(actual: Segment, expected: Expected, index: int = 0) -> None:
    """Compare the TCP fields of one emitted segment with its description
    (the options' wire layout and the addressing are compared by
    `assert_wire`)."""
    a, e = _fields(actual), _efields(expected)
    diffs = [f"{n}: got {_show(n, x)}, expected {_show(n, y)}"
             for n, x, y in zip(_NAMES, a, e) if not (y == x)]
    assert not diffs, f"segment {index}: {actual!r}\n  " + "\n  ".join(diffs)


def assert_wire(wire: Wire, expected: Expected, index: int = 0) -> None:
    """Everything a peer sees of one emitted packet against its description:
    addresses, ports, TTL, the options' order and padding, then every TCP
    field."""
    diffs = [f"{name}: got {got!r}, expected {want!r}"
             for name, got, want in (("src", wire.src, expected.src), ("dst", wire.dst, expected.dst),
                                     ("sport", wire.seg.sport, expected.sport),
                                     ("dport", wire.seg.dport, expected.dport),
                                     ("ttl", wire.ttl, expected.ttl))
             if not (want == got)]
    got_layout, want_layout = option_layout(wire.options), option_layout(_expected_options(expected))
    if not _layout_matches(got_layout, want_layout, expected.sack is ANY):
        diffs.append(f"option layout: got {got_layout}, expected {want_layout}")
    assert not diffs, f"segment {index}: {wire!r}\n  " + "\n  ".join(diffs)
    assert_seg(wire.seg, expected, index)


def _show(name, v):
    if name == "flags" and isinstance(v, int):
        return flags_str(v)
    if name == "payload" and isinstance(v, (bytes, bytearray)) and len(v) > 16:
        return f"<{len(v)} bytes {bytes(v[:8])!r}...>"
    return repr(v)


class Harness:
    """One Stack under test plus a scripted remote host."""

    def __init__(self, v6: bool = False, seed: int = 7, mtu: int = 1500, **options):
        self.v6 = v6
        self.local = LOCAL6 if v6 else LOCAL4
        self.remote = REMOTE6 if v6 else REMOTE4
        self.stack = Stack([self.local + ("/64" if v6 else "/24")], rng=random.Random(seed),
                           mtu=mtu, **options)
        self.now = 0.0
        self.lport = LISTEN_PORT
        self.rport = REMOTE_PORT
        self.events = []
        self.listener = None
        self.last_wire = []
        # (local port, remote address, remote port) of every flow the remote
        # has sent on or the stack was asked to open: whatever the stack
        # sends must belong to one of them, which catches swapped ports or
        # addresses even where a test looks at other fields only.
        self.flows = set()

    # -- time
    def at(self, t: float) -> None:
        """Move the virtual clock to `t` and run due timers."""
        assert t >= self.now
        self.now = t
        d = self.stack.next_deadline()
        for _ in range(10000):  # bounded: timers that keep coming due fail here instead of hanging
            if d is None or d > t:
                return
            self.stack.timer(t)
            d2 = self.stack.next_deadline()
            if d2 == d:
                return
            d = d2
        raise AssertionError(f"timers keep coming due at {t}: next deadline {d}")

    def advance(self, dt: float) -> None:
        self.at(self.now + dt)

    # -- injection
    def packet(self, e: Expected, *, src=None, dst=None, sport=None, dport=None) -> bytes:
        opts = b""
        if e.mss is not None:
            opts += opt_mss(e.mss)
        if e.sack_ok:
            opts += opt_sack_ok()
        if e.ts is not None:
            opts += opt_timestamp(*e.ts)
        if e.ws is not None:
            opts += opt_wscale(e.ws)
        if e.sack:
            opts += opt_sack(e.sack)
        s = ipaddress.ip_address(src or e.src or self.remote).packed
        d = ipaddress.ip_address(dst or e.dst or self.local).packed
        sport, dport = sport or e.sport or self.rport, dport or e.dport or self.lport
        tcp = build_segment(sport, dport, e.seq, e.ack, e.flags, e.win, opts, e.payload,
                            int.from_bytes(s + d, "big") + PROTO_TCP, urg=e.urg or 0)
        self.flows.add((dport, str(ipaddress.ip_address(s)), sport))
        return build_ip(s, d, PROTO_TCP, tcp, ttl=e.ttl or 64)

    def send(self, e: Expected, **kw) -> None:
        """Deliver a segment from the remote to the stack at the current time."""
        self.stack.receive(self.now, self.packet(e, **kw))

    # -- observation
    def out_wire(self) -> list:
        """Every packet sent since the last call, as a `Wire` each, after
        the header checks every emitted packet must pass (offloaded
        packets are checked as the stack built them, then cut as the
        device would; see out_offloaded())."""
        wires = []
        ttl = self.stack.ttl
        for item in self.stack.take_packets():
            check_ip_header(item[0] if isinstance(item, tuple) else item, ttl=ttl)
            for p in device_segments(item):
                ip, s = decode(p)
                src, dst = ipaddress.ip_address(ip.src), ipaddress.ip_address(ip.dst)
                assert src == ipaddress.ip_address(self.local), f"sent from {src}, not the stack's {self.local}"
                options = check_tcp_header(p, ip.start, s)
                assert (s.sport, str(dst), s.dport) in self.flows, \
                    f"{s!r} to {dst} belongs to no flow the remote opened or the stack was asked to open"
                ident = int.from_bytes(p[4:6], "big") if ip.version == 4 else None
                df = bool(p[6] & 0x40) if ip.version == 4 else None
                wires.append(Wire(ip.version, str(src), str(dst), ip.hop_limit, ident, df, s, options))
        self.events += self.stack.take_events()
        self.last_wire = wires
        return wires

    def out(self) -> list:
        """The TCP segments sent since the last call (each packet checked
        as out_wire() does; `last_wire` keeps their IP side)."""
        return [w.seg for w in self.out_wire()]

    def out_offloaded(self) -> list:
        """`(Segment, gso_size)` for each packet an offloading stack sent,
        before the device cuts it (the checksum field is checked to hold
        the pseudo-header sum)."""
        got = []
        for item in self.stack.take_packets():
            assert isinstance(item, tuple), f"expected a (packet, gso_size) pair, got {item!r:.60}"
            packet, gso_size = item
            check_ip_header(packet, ttl=self.stack.ttl)
            device_segments(item)
            ip = parse_ip(packet)
            got.append((parse_segment(packet, ip.start, ip.end), gso_size))
        self.events += self.stack.take_events()
        return got

    def _resolved(self, e: Expected) -> Expected:
        """`e` with its defaults filled in from the harness's connection."""
        r = Expected(e.flags, e.seq, e.ack, e.win, e.payload, e.mss, e.ws, e.sack_ok, e.sack, e.ts, e.urg,
                     e.src, e.dst, e.sport, e.dport, e.ttl)
        if r.src is None:
            r.src = self.local
        if r.dst is None:
            r.dst = self.remote
        if r.sport is None:
            r.sport = self.lport
        if r.dport is None:
            r.dport = self.rport
        if r.ttl is None:
            r.ttl = self.stack.ttl
        for name in ("src", "dst"):
            value = getattr(r, name)
            if value is not ANY:
                setattr(r, name, str(ipaddress.ip_address(value)))
        return r

    def expect(self, *expected: Expected) -> list:
        """Take what the stack sent and compare it, segment by segment and
        field by field, with `expected`; returns the segments."""
        got = self.out_wire()
        assert len(got) == len(expected), \
            f"expected {len(expected)} segments, got {len(got)}:\n  " + "\n  ".join(map(repr, got))
        for i, (a, e) in enumerate(zip(got, expected)):
            assert_wire(a, self._resolved(e), i)
        return [w.seg for w in got]

    def expect_none(self) -> None:
        got = self.out()
        assert not got, "expected no segments, got:\n  " + "\n  ".join(map(repr, got))

    def take_events(self) -> list:
        self.out_events = self.events + self.stack.take_events()
        self.events = []
        return [(h, k) for h, k in self.out_events]

    def kinds(self, handle) -> list:
        return [k for h, k in self.take_events() if h is handle]

    # -- canned openings (options off unless asked, to keep segments short)
    def connect(self, **kw):
        c = self.stack.connect(self.now, self.remote, self.rport, **kw)
        self.lport = c.lport
        self.flows.add((c.lport, str(ipaddress.ip_address(self.remote)), self.rport))
        return c

    def _addressed(self, wire: Wire, flags: int) -> Segment:
        """Check that `wire` is a `flags` segment of the harness's
        connection (addresses, ports, TTL) and return its segment."""
        want = self._resolved(seg(flags, 0))
        got = (wire.src, wire.dst, wire.seg.sport, wire.seg.dport, wire.ttl, wire.seg.flags)
        assert got == (want.src, want.dst, want.sport, want.dport, want.ttl, flags), \
            f"{wire!r} is not a {flags_str(flags)} from {want.src}:{want.sport} to {want.dst}:{want.dport}"
        return wire.seg

    def established_active(self, remote_iss=REMOTE_ISS, win=65535, **synack_opts):
        """Active open completed: returns the connection (our SYN and ACK
        checked and consumed from the output)."""
        c = self.connect()
        (syn,) = self.out_wire()
        assert self._addressed(syn, SYN).seq == c.iss
        self.send(seg(SYN | ACK, remote_iss, c.iss + 1, win, **synack_opts))
        got = self.out_wire()
        assert len(got) == 1, got
        ack = self._addressed(got[0], ACK)
        assert (ack.seq, ack.ack) == ((c.iss + 1) & M32, (remote_iss + 1) & M32), ack
        self.take_events()
        return c

    def established_passive(self, remote_iss=REMOTE_ISS, win=65535, backlog=8, **syn_opts):
        """Passive open completed and accepted: returns the connection."""
        if self.listener is None:
            self.listener = self.stack.listen(self.lport, backlog=backlog)
        self.send(seg(SYN, remote_iss, 0, win, **syn_opts))
        got = self.out_wire()
        assert len(got) == 1, got
        synack = self._addressed(got[0], SYN | ACK)
        assert synack.ack == (remote_iss + 1) & M32, synack
        ack_ts = None
        if synack.tsval is not None:
            ack_ts = (syn_opts["ts"][0] + 1, synack.tsval)
        self.send(seg(ACK, remote_iss + 1, synack.seq + 1, win, ts=ack_ts))
        c = self.stack.accept(self.listener)
        assert c is not None
        self.expect_none()
        self.take_events()
        return c


def wire_pair(seed=1, **opts):
    """Two stacks, 10.0.0.1 and 10.0.0.2, for end-to-end tests."""
    a = Stack(["10.0.0.1/24"], rng=random.Random(seed), **opts)
    b = Stack(["10.0.0.2/24"], rng=random.Random(seed + 1000), **opts)
    return a, b
