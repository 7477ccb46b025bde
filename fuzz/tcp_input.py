"""Fuzz target: the user-level TCP/IP stack's input path (iolib.tcp), as
the TUN worker drives it: whole IP packets into ``Stack.receive``, user
calls and time in between.

Input: a configuration byte (bit 0: a stack with checksum/segmentation
offload, bit 1: a 576-byte MTU), then records, each an op byte and its
operands:

* ``op % 8 == 0``: a raw packet (2-byte length, bytes), handed over with
  ``checksum_ok`` = bit 3 of op (a device that vouches for the checksum);
* ``1``: a packet whose IPv4 header, TCP, ICMP and ICMPv6 checksums the
  harness fixes first; ``2``: the same, and its TCP sequence, ack and SACK
  edges (or the sequence number an ICMP error quotes) count from the
  matching connection's initial numbers (so the fuzzer can complete
  handshakes and name segments whose ISN it cannot predict);
* ``3``: time passes (operand byte x 50 ms) and the timers run;
* ``4``, ``5``, ``6``: the user sends (operand x 37 bytes), reads
  everything and accepts, or closes / shuts down / aborts a connection;
* ``7``: a new active open (IPv4 or IPv6, by op bit 3).

The stack starts with listeners on ports 80 (IPv4 and IPv6) and 81
(backlog 1) and one active open to 10.0.0.2:5000.

Invariants: nothing raises but the ``TcpError`` the user calls document;
each packet is dropped with at most one ``dropped_*`` count, and a packet
dropped as malformed, with a bad checksum, not for us, martian or of an
unknown protocol draws no answer; no RST answers a RST; the only ICMP sent
in answer to a packet is an echo reply to an echo request, carrying its
data; every packet sent comes from one of our addresses, to no multicast,
broadcast or unspecified one, parses, has correct checksums (unless
offloaded), fits the MTU (unless segmentation is offloaded) and belongs to
a connection the stack has or had, or is the RST answering the input; every
connection keeps its sequence-space invariants; deadlines are numbers.
A fragment that completes a datagram is answered as the whole datagram
would be (RFC 8200 §4.5, RFC 791 §3.2: fragmentation is invisible to
TCP and ICMP), so the harness keeps its own copy of the fragments the
stack took, for as long as the stack holds their datagram, and checks
that the stack completes only a datagram those fragments fill.

This module must never read a clock: time is the input's.
"""

from __future__ import annotations

import ipaddress
import math
import struct

from iolib.packetio import internet_checksum
from iolib.tcp import (CLOSE_WAIT, CLOSED, CLOSING, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, LAST_ACK,
                       SYN_RECEIVED, SYN_SENT, TIME_WAIT, Stack, TcpError)
from iolib.tcp.ip import IPFragment, Malformed, parse_ip
from iolib.tcp.segment import RST, parse_segment

INSTRUMENT = ["iolib"]

LOCAL_V4, LOCAL_V6 = "10.0.0.1", "fd00::1"
PEER_V4, PEER_V6 = "10.0.0.2", "fd00::2"
_LOCAL = {ipaddress.ip_address(LOCAL_V4).packed, ipaddress.ip_address(LOCAL_V6).packed}
_PEERS = (PEER_V4, PEER_V6)
STATES = {CLOSED, SYN_SENT, SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING,
          LAST_ACK, TIME_WAIT}
# Drops that must draw no answer at all (a closed port's RST is counted
# as dropped_no_connection and is an answer the RFC asks for).
_SILENT_DROPS = ("dropped_malformed", "dropped_bad_checksum", "dropped_not_for_us", "dropped_martian",
                 "dropped_unknown_protocol", "dropped_fragment", "dropped_fragment_overlap",
                 "dropped_fragment_duplicate", "dropped_fragment_limit", "dropped_no_timestamp")
_DROPS = tuple(name for name in Stack(LOCAL_V4 + "/24").stats.__slots__ if name.startswith("dropped_"))
_MASK = 0xFFFFFFFF
OP_RAW, OP_FIXED, OP_RELATIVE, OP_TIME, OP_SEND, OP_RECV, OP_CLOSE, OP_CONNECT = range(8)


# -- encoding records (for seeds and tests) ------------------------------------

def packet_record(packet: bytes, op: int = OP_RELATIVE) -> bytes:
    """One packet record: ``op`` (OP_RAW, OP_FIXED or OP_RELATIVE, with
    flags in the high bits), the length, the packet."""
    return bytes((op,)) + struct.pack("!H", len(packet)) + packet


def call_record(op: int, operand: int = 0) -> bytes:
    """A time, send, receive, close or connect record."""
    return bytes((op, operand & 0xFF)) if op in (OP_TIME, OP_SEND) else bytes((op,))


# -- fixing checksums and sequence numbers -----------------------------------

def _transport(packet: bytearray) -> tuple[int, int, int, bytes, bytes] | None:
    """(protocol, start, end, src, dst) of an unfragmented packet without
    IPv6 extension headers, as far as the bytes allow; None otherwise."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        ihl = (packet[0] & 0xF) * 4
        if ihl < 20 or ihl > n or struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:
            return None
        end = min(struct.unpack_from("!H", packet, 2)[0], n)
        return packet[9], ihl, max(end, ihl), bytes(packet[12:16]), bytes(packet[16:20])
    if n >= 40 and packet[0] >> 4 == 6:
        end = min(40 + struct.unpack_from("!H", packet, 4)[0], n)
        return packet[6], 40, end, bytes(packet[8:24]), bytes(packet[24:40])
    return None


def _relative_to(stack: Stack, packet: bytearray, where: tuple[int, int, int, bytes, bytes]) -> None:
    proto, start, end, src, dst = where
    if proto in (1, 58):
        _quote_relative_to(stack, packet, start + 8, end)
        return
    if proto != 6 or end - start < 20:
        return
    sport, dport = struct.unpack_from("!HH", packet, start)
    conn = _connection(stack, (dst, dport, src, sport))
    if conn is None:
        return
    seq, ack = struct.unpack_from("!II", packet, start + 4)
    struct.pack_into("!II", packet, start + 4, (conn.irs + seq) & _MASK, (conn.iss + ack) & _MASK)
    # SACK blocks name our sequence space too.
    pos, options_end = start + 20, min(start + (packet[start + 12] >> 4) * 4, end)
    while pos < options_end:
        kind = packet[pos]
        if kind == 0:
            break
        if kind == 1:
            pos += 1
            continue
        if pos + 1 >= options_end or packet[pos + 1] < 2:
            break
        size = packet[pos + 1]
        if kind == 5:
            for edge in range(pos + 2, min(pos + size, options_end) - 3, 4):
                struct.pack_into("!I", packet, edge, (conn.iss + struct.unpack_from("!I", packet, edge)[0]) & _MASK)
        pos += size


def _quote_relative_to(stack: Stack, packet: bytearray, start: int, end: int) -> None:
    """The sequence number in the TCP header an ICMP error quotes counts
    from the quoted connection's ISS."""
    quoted = _transport(packet[start:end])
    if quoted is None or quoted[0] != 6 or quoted[1] + 8 > end - start:
        return
    at = start + quoted[1]
    sport, dport, seq = struct.unpack_from("!HHI", packet, at)
    conn = _connection(stack, (quoted[3], sport, quoted[4], dport))
    if conn is not None:
        struct.pack_into("!I", packet, at + 4, (conn.iss + seq) & _MASK)


def _connection(stack: Stack, key: tuple) -> object | None:
    for conn in stack.connections():
        if conn.key == key:
            return conn
    return None


def _pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def fix_checksums(packet: bytearray) -> None:
    """Make the IPv4 header checksum and the TCP/ICMP/ICMPv6 checksum right."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        ihl = (packet[0] & 0xF) * 4
        if 20 <= ihl <= len(packet):
            packet[10:12] = b"\0\0"
            packet[10:12] = struct.pack("!H", internet_checksum(packet[:ihl]))
    where = _transport(packet)
    if where is None:
        return
    proto, start, end, src, dst = where
    offset = {6: 16, 1: 2, 58: 2}.get(proto)
    if offset is None or end - start < offset + 2:
        return
    if proto == 1 and len(src) != 4 or proto == 58 and len(src) != 16:
        return  # ICMP over IPv6 or ICMPv6 over IPv4: no checksum rule to follow
    packet[start + offset:start + offset + 2] = b"\0\0"
    pseudo = b"" if proto == 1 else _pseudo_header(src, dst, proto, end - start)
    packet[start + offset:start + offset + 2] = struct.pack("!H", internet_checksum(pseudo + packet[start:end]))


# -- checking what comes out -------------------------------------------------

def _checksums_ok(ip: object, packet: bytes) -> bool:
    proto, start, end = ip.proto, ip.start, ip.end
    if ip.version == 4 and internet_checksum(packet[:start]) != 0:
        return False
    pseudo = b"" if proto == 1 else _pseudo_header(ip.src, ip.dst, proto, end - start)
    return internet_checksum(pseudo + packet[start:end]) == 0


def _check_output(stack: Stack, items: list, known: set, answering: tuple | None) -> list:
    """Assert the rules every packet sent keeps; returns (ip, segment or
    None, packet) for each."""
    checked = []
    for item in items:
        offloaded = isinstance(item, tuple)
        packet, gso_size = item if offloaded else (item, 0)
        assert isinstance(packet, bytes), f"output {type(packet).__name__}, not bytes"
        assert gso_size or len(packet) <= stack.mtu, f"a {len(packet)}-byte packet over a {stack.mtu} MTU"
        try:
            ip = parse_ip(packet)
        except Malformed as exc:
            raise AssertionError(f"the stack sent a packet it cannot parse itself: {exc}") from None
        assert ip.src in _LOCAL, f"sent from {ipaddress.ip_address(ip.src)}"
        dst = ipaddress.ip_address(ip.dst)
        assert not (dst.is_multicast or dst.is_unspecified or ip.dst == b"\xff" * 4), f"sent to {dst}"
        assert offloaded or _checksums_ok(ip, packet), "bad checksum on a packet sent"
        segment = None
        if ip.proto == 6:
            segment = parse_segment(packet, ip.start, ip.end)
            key = (ip.src, segment.sport, ip.dst, segment.dport)
            assert key in known or key == answering, f"a segment for no connection: {segment!r}"
        checked.append((ip, segment, packet))
    return checked


def _check_connections(stack: Stack) -> None:
    for c in stack.connections():
        assert c.state in STATES, f"state {c.state!r}"
        if c.state == CLOSED:
            continue
        assert c.snd_una <= c.snd_nxt <= c.snd_max, f"snd_una {c.snd_una} snd_nxt {c.snd_nxt} snd_max {c.snd_max}"
        assert c.snd_base - 1 <= c.snd_una <= c.snd_base + len(c.sndbuf) + 1, "send buffer out of step"
        assert c.rcv_adv >= c.rcv_nxt, f"rcv_adv {c.rcv_adv} < rcv_nxt {c.rcv_nxt}"
        assert len(c.rcvbuf) <= c.options.rcvbuf + (1 << c.rcv_wscale), "receive buffer over its limit"
        previous_end = c.rcv_nxt
        for start, end, data in c.ooo:
            assert previous_end < start < end and end - start == len(data), "out-of-order queue not sorted/disjoint"
            previous_end = end
    for listener in stack.listeners():
        assert 0 <= listener.syn_count and len(listener.queue) <= listener.backlog, "listener queues"
    deadline = stack.next_deadline()
    assert deadline is None or not math.isnan(deadline), "NaN deadline"


def _whole_packet(first: IPFragment, data: bytes) -> bytes:
    """The unfragmented packet a datagram's offset-zero fragment and its
    reassembled data make (the harness's own reassembly, not the stack's)."""
    head = bytearray(first.head)
    if first.version == 4:
        head[2:4] = struct.pack("!H", len(head) + len(data))
        head[6:8] = head[10:12] = b"\0\0"
        head[10:12] = struct.pack("!H", internet_checksum(head))
    else:
        head[first.nh_pos] = first.proto
        head[4:6] = struct.pack("!H", len(head) - 40 + len(data))
    return bytes(head) + data


def _reassembled(fragments: list) -> bytes | None:
    """The whole packet ``fragments`` ((IPFragment, data) pairs, any order)
    fill without a hole or an overlap, or None."""
    pieces = sorted(fragments, key=lambda piece: piece[0].offset)
    at = 0
    for frag, data in pieces:
        if frag.offset != at:
            return None
        at += len(data)
    if not pieces or pieces[-1][0].more:
        return None
    return _whole_packet(pieces[0][0], b"".join(data for _frag, data in pieces))


def _what_answers(packet: bytes) -> tuple:
    """(the connection key a RST may answer, the source of a RST, an echo
    request's data) for a whole packet, each None where it has none."""
    try:
        ip = parse_ip(packet)
        if ip.proto == 6:
            seg = parse_segment(packet, ip.start, ip.end)
            return (ip.dst, seg.dport, ip.src, seg.sport), (ip.src if seg.flags & RST else None), None
        body = packet[ip.start:ip.end]
        if len(body) >= 4 and body[0] == (8 if ip.version == 4 else 128):
            return None, None, body[4:]
    except Malformed:
        pass
    return None, None, None


def _reassembly_key(frag: IPFragment) -> tuple:
    # The stack's own keying (RFC 791 §3.2, RFC 8200 §4.5).
    if frag.version == 4:
        return frag.src, frag.dst, frag.proto, frag.ident
    return frag.src, frag.dst, frag.ident


class _Run:
    """One input's stack, clock and the connections it has had."""

    def __init__(self, config: int) -> None:
        self.stack = Stack([LOCAL_V4 + "/24", LOCAL_V6 + "/64"], rng=14, offload=bool(config & 1),
                           mtu=576 if config & 2 else 1500)
        self.now = 0.0
        self.stack.listen(80)
        self.stack.listen(81, backlog=1, syn_backlog=1)
        self.known: set = set()
        self.accepted: list = []
        # The fragments the stack took, per datagram it still holds.
        self.fragments: dict = {}
        self.call(self.stack.connect, self.now, PEER_V4, 5000)
        self.settle(None)

    def call(self, fn: object, *args: object) -> object:
        try:
            return fn(*args)
        except TcpError:
            return None  # what the user calls document

    def remember(self) -> None:
        self.known.update(c.key for c in self.stack.connections())

    def settle(self, answering: tuple | None) -> list:
        self.remember()
        # Forget the fragments of datagrams the stack no longer holds
        # (completed, or timed out; a discarded one stays as a tombstone).
        for key in set(self.fragments) - set(self.stack._reasm.datagrams):
            del self.fragments[key]
        out = _check_output(self.stack, self.stack.take_packets(), self.known, answering)
        self.stack.take_events()
        _check_connections(self.stack)
        return out

    def receive(self, packet: bytes, checksum_ok: bool) -> None:
        stack = self.stack
        stats = stack.stats
        before = {name: getattr(stats, name) for name in _DROPS}
        reassembled = stats.reassembled
        try:
            frag = parse_ip(packet, True)
        except Malformed:
            frag = None
        if frag.__class__ is not IPFragment:
            frag = None
        answering, rst_from, echo_data = _what_answers(packet)
        self.remember()
        stack.receive(self.now, packet, checksum_ok)
        grown = [name for name in _DROPS if getattr(stats, name) != before[name]]
        assert len(grown) <= 1 and all(getattr(stats, n) == before[n] + 1 for n in grown), f"drop counts {grown}"
        if frag is not None:
            answering, rst_from, echo_data = self.reassemble(frag, packet, grown, stats.reassembled - reassembled)
        out = self.settle(answering)
        if any(name in _SILENT_DROPS for name in grown):
            assert not out, f"a packet dropped ({grown[0]}) was answered"
        for ip, segment, sent in out:
            if segment is not None:
                assert not (segment.flags & RST and ip.dst == rst_from), "a RST answered a RST"
            else:
                body = sent[ip.start:ip.end]
                reply_type = 0 if ip.version == 4 else 129
                assert body[0] == reply_type and echo_data is not None, f"ICMP type {body[0]} sent in answer"
                assert body[4:] == echo_data, "an echo reply that does not carry the request's data"

    def reassemble(self, frag: IPFragment, packet: bytes, grown: list, completed: int) -> tuple:
        """Keep ``frag`` if the stack took it; when the stack completed its
        datagram with it, what answers that datagram (``_what_answers``)."""
        piece = (frag, packet[frag.start:frag.end])
        if not frag.more and frag.offset == 0:
            held = [piece]  # an atomic fragment stands alone (RFC 6946 §4)
        else:
            held = self.fragments.setdefault(_reassembly_key(frag), [])
            if completed or not grown:
                held.append(piece)
        if not completed:
            return None, None, None
        whole = _reassembled(held)
        assert completed == 1 and whole is not None, "the stack completed a datagram its fragments do not fill"
        return _what_answers(whole)

    def step(self, op: int, data: bytes, pos: int) -> int:
        kind, flags = op & 7, op >> 3
        stack = self.stack
        conns = [c for c in stack.connections() if c.state != CLOSED]
        if kind in (OP_RAW, OP_FIXED, OP_RELATIVE):
            length = int.from_bytes(data[pos:pos + 2], "big")
            packet = bytearray(data[pos + 2:pos + 2 + length])
            pos += 2 + length
            if kind == OP_RELATIVE:
                where = _transport(packet)
                if where is not None:
                    _relative_to(stack, packet, where)
            if kind != OP_RAW:
                fix_checksums(packet)
            self.receive(bytes(packet), kind == OP_RAW and bool(flags & 1))
            return pos
        operand = data[pos] if pos < len(data) else 0
        if kind == OP_TIME:
            self.now += operand * 0.05
            stack.timer(self.now)
            pos += 1
        elif kind == OP_SEND:
            if conns:
                self.call(stack.send, self.now, conns[flags % len(conns)], b"s" * (operand * 37))
            pos += 1
        elif kind == OP_RECV:
            for listener in stack.listeners():
                while (conn := self.call(stack.accept, listener)) is not None:
                    self.accepted.append(conn)
            for conn in conns:
                while self.call(stack.recv, conn, 65536, self.now):
                    pass
        elif kind == OP_CLOSE:
            if conns:
                conn = conns[(flags >> 2) % len(conns)]
                how = flags & 3
                if how == 0:
                    self.call(stack.close, self.now, conn)
                elif how == 3:
                    self.call(stack.abort, self.now, conn)
                else:
                    self.call(stack.shutdown, self.now, conn, "w" if how == 1 else "r")
        elif kind == OP_CONNECT:
            self.call(stack.connect, self.now, _PEERS[flags & 1], 5000 + (flags >> 1))
        self.settle(None)
        return pos


def TestOneInput(data: bytes) -> None:
    """Run the records of ``data`` against a fresh stack, checking as it goes."""
    if not data:
        return
    run = _Run(data[0])
    pos = 1
    steps = 0
    while pos < len(data) and steps < 64:
        op = data[pos]
        pos = run.step(op, data, pos + 1)
        steps += 1
    run.now += 300.0
    run.stack.timer(run.now)
    run.settle(None)
