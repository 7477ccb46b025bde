"""Helpers for packet-level tests of iolib.tcp, in the style of smoltcp's
socket/tcp.rs tests: build exact segments from a scripted remote host, feed
them at exact virtual times, and compare the segments the stack emits field
by field.

The stack under test is 10.0.0.1 (or fd00::1); the scripted remote is
10.0.0.2:REMOTE_PORT (or fd00::2).  Sequence numbers passed to `seg()` may be
unwrapped; they are reduced modulo 2**32.
"""

from __future__ import annotations

import ipaddress
import random

from iolib.tcp import Stack
from iolib.tcp.ip import PROTO_TCP, build_ip, parse_ip, pseudo_sum
from iolib.tcp.segment import (ACK, FIN, PSH, RST, SYN, URG, Segment, build_segment, flags_str,
                               opt_mss, opt_sack, opt_sack_ok, opt_timestamp, opt_wscale,
                               parse_segment)

__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "URG", "ANY", "seg", "Harness", "decode", "device_segments",
           "LOCAL4", "REMOTE4", "LOCAL6", "REMOTE6", "REMOTE_PORT", "REMOTE_ISS", "wire_pair"]

LOCAL4, REMOTE4 = "10.0.0.1", "10.0.0.2"
LOCAL6, REMOTE6 = "fd00::1", "fd00::2"
REMOTE_PORT = 4000
LISTEN_PORT = 80
REMOTE_ISS = 10000
M32 = 0xFFFFFFFF


class _Any:
    def __eq__(self, other):
        return True

    def __repr__(self):
        return "ANY"


ANY = _Any()


class Expected:
    """What a test expects one emitted segment to look like."""

    __slots__ = ("flags", "seq", "ack", "win", "payload", "mss", "ws", "sack_ok", "sack", "ts", "urg")

    def __init__(self, flags, seq, ack, win, payload, mss, ws, sack_ok, sack, ts, urg=None):
        self.urg = urg
        self.flags, self.seq, self.ack, self.win, self.payload = flags, seq, ack, win, payload
        self.mss, self.ws, self.sack_ok, self.sack, self.ts = mss, ws, sack_ok, sack, ts

    def __repr__(self):
        f = flags_str(self.flags) if isinstance(self.flags, int) else self.flags
        return (f"seg({f}, seq={self.seq}, ack={self.ack}, win={self.win}, "
                f"len={len(self.payload) if isinstance(self.payload, (bytes, bytearray)) else self.payload}"
                f", mss={self.mss}, ws={self.ws}, sack_ok={self.sack_ok}, sack={self.sack}, ts={self.ts})")


def _m(v):
    return v & M32 if isinstance(v, int) else v


def seg(flags, seq, ack=0, win=65535, payload=b"", *, mss=None, ws=None, sack_ok=False,
        sack=None, ts=None, urg=None) -> Expected:
    """A segment description, used both to inject and to expect.
    `sack` is a list of (left, right); `ts` is (tsval, tsecr)."""
    if sack is not None and sack is not ANY:
        sack = [(_m(a), _m(b)) for a, b in sack]
    if ts is not None and ts is not ANY:
        ts = (_m(ts[0]), _m(ts[1]))
    return Expected(flags, _m(seq), _m(ack), win, payload, mss, ws, sack_ok, sack, ts, urg)


def decode(packet) -> tuple:
    """(ip, Segment) of an emitted packet; asserts its checksums."""
    ip = parse_ip(packet)  # verifies the IPv4 header checksum
    assert ip.proto == PROTO_TCP, f"not TCP: proto {ip.proto}"
    body = packet[ip.start:ip.end]
    total = int.from_bytes(body, "big") << (8 if len(body) & 1 else 0)
    assert (total + pseudo_sum(ip.src, ip.dst, PROTO_TCP, len(body))) % 0xFFFF == 0, "bad TCP checksum"
    return ip, parse_segment(packet, ip.start, ip.end)


def device_segments(item) -> list:
    """What a device with checksum and segmentation offload makes of one
    item from `Stack(offload=True).take_packets()` (a virtio_net_hdr with
    NEEDS_CSUM, and GSO_TCPV4/6 for a nonzero gso_size): plain bytes pass
    unchanged; a `(packet, gso_size)` pair, whose TCP checksum field must
    hold the pseudo-header sum, becomes wire packets of at most gso_size
    payload bytes, each with its own sequence number, lengths and
    checksums, PSH and FIN kept only on the last."""
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
    for off in range(0, max(len(payload), 1), step):
        piece = payload[off:off + step]
        last = off + step >= len(payload)
        flags = tcp[13] if last else tcp[13] & ~(PSH | FIN)
        head = bytearray(tcp[:hlen])
        head[4:8] = ((seq + off) & M32).to_bytes(4, "big")
        head[13] = flags
        head[16:18] = b"\0\0"
        body = bytes(head) + piece
        total = int.from_bytes(body, "big") << (8 if len(body) & 1 else 0)
        cks = 0xFFFF - (total + pseudo_sum(ip.src, ip.dst, PROTO_TCP, len(body))) % 0xFFFF
        body = body[:16] + cks.to_bytes(2, "big") + body[18:]
        out.append(build_ip(ip.src, ip.dst, PROTO_TCP, body))
    return out


def _fields(s: Segment):
    ts = None if s.tsval is None else (s.tsval, s.tsecr)
    return (s.flags, s.seq, s.ack, s.wnd, bytes(s.payload), s.mss, s.wscale, s.sack_ok,
            s.sack and [tuple(b) for b in s.sack], ts)


def _efields(e: Expected):
    return (e.flags, e.seq, e.ack, e.win, e.payload, e.mss, e.ws, e.sack_ok, e.sack, e.ts)


_NAMES = ("flags", "seq", "ack", "win", "payload", "mss", "ws", "sack_ok", "sack", "ts")


def assert_seg(actual: Segment, expected: Expected, index: int = 0) -> None:
    a, e = _fields(actual), _efields(expected)
    if expected.urg is not None:
        assert actual.urg == expected.urg, f"segment {index}: urgent pointer {actual.urg} != {expected.urg}"
    diffs = [f"{n}: got {_show(n, x)}, expected {_show(n, y)}"
             for n, x, y in zip(_NAMES, a, e) if not (y == x)]
    assert not diffs, f"segment {index}: {actual!r}\n  " + "\n  ".join(diffs)


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

    # -- time
    def at(self, t: float) -> None:
        """Move the virtual clock to `t` and run due timers."""
        assert t >= self.now
        self.now = t
        d = self.stack.next_deadline()
        while d is not None and d <= t:
            self.stack.timer(t)
            d2 = self.stack.next_deadline()
            if d2 == d:
                break
            d = d2

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
        s = ipaddress.ip_address(src or self.remote).packed
        d = ipaddress.ip_address(dst or self.local).packed
        tcp = build_segment(sport or self.rport, dport or self.lport, e.seq, e.ack, e.flags,
                            e.win, opts, e.payload, int.from_bytes(s + d, "big") + PROTO_TCP,
                            urg=e.urg or 0)
        return build_ip(s, d, PROTO_TCP, tcp)

    def send(self, e: Expected, **kw) -> None:
        """Deliver a segment from the remote to the stack at the current time."""
        self.stack.receive(self.now, self.packet(e, **kw))

    # -- observation
    def out(self) -> list:
        """The wire segments sent since the last call (offloaded packets
        are cut as the device would; see out_offloaded())."""
        segs = []
        for item in self.stack.take_packets():
            for p in device_segments(item):
                ip, s = decode(p)
                assert ip.src == ipaddress.ip_address(self.local).packed
                segs.append(s)
        self.events += self.stack.take_events()
        return segs

    def out_offloaded(self) -> list:
        """`(Segment, gso_size)` for each packet an offloading stack sent,
        before the device cuts it (the checksum field is checked to hold
        the pseudo-header sum)."""
        got = []
        for item in self.stack.take_packets():
            assert isinstance(item, tuple), f"expected a (packet, gso_size) pair, got {item!r:.60}"
            device_segments(item)
            packet, gso_size = item
            ip = parse_ip(packet)
            got.append((parse_segment(packet, ip.start, ip.end), gso_size))
        self.events += self.stack.take_events()
        return got

    def expect(self, *expected: Expected) -> list:
        got = self.out()
        assert len(got) == len(expected), \
            f"expected {len(expected)} segments, got {len(got)}:\n  " + "\n  ".join(map(repr, got))
        for i, (a, e) in enumerate(zip(got, expected)):
            assert_seg(a, e, i)
        return got

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
        return c

    def established_active(self, remote_iss=REMOTE_ISS, win=65535, **synack_opts):
        """Active open completed: returns the connection (our SYN and ACK
        consumed from the output)."""
        c = self.connect()
        self.out()
        self.send(seg(SYN | ACK, remote_iss, c.iss + 1, win, **synack_opts))
        got = self.out()
        assert [s.flags for s in got] == [ACK], got
        self.take_events()
        return c

    def established_passive(self, remote_iss=REMOTE_ISS, win=65535, backlog=8, **syn_opts):
        """Passive open completed and accepted: returns the connection."""
        if self.listener is None:
            self.listener = self.stack.listen(self.lport, backlog=backlog)
        self.send(seg(SYN, remote_iss, 0, win, **syn_opts))
        (synack,) = self.out()
        assert synack.flags == SYN | ACK, synack
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
