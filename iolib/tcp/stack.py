"""The stack: one host's addresses, listeners, connections and counters.

`Stack` is the sans-IO entry point.  Whole IP packets go in through
`receive(now, packet)`; user requests come in through `connect`, `send`,
`recv`, `close`, ...; time passes through `timer(now)`.  What the stack wants
done comes out through `take_packets()` (IP packets for the device),
`take_events()` (`(handle, kind)` pairs telling the runtime whom to wake) and
`next_deadline()`.  The stack demultiplexes TCP segments to connections
(RFC 9293 §3.10.7), answers listeners (SYN queue and accept queue limits),
sends RSTs for closed ports, picks ephemeral ports (RFC 6056-style, from the
seeded rng) and initial sequence numbers (RFC 6528), answers ICMP/ICMPv6
echo, routes ICMP errors to the connection they quote, and reassembles IP
fragments (fragments.py) before any of that.

With `offload=True` it speaks to a device with checksum and segmentation
offload (a TUN with a virtio_net_hdr): its TCP packets carry up to 64 KiB
of whole segments with the checksum left to the device, and packets the
device vouches for (`receive(..., checksum_ok=True)`) are not checked.

It never reads a clock, a device or a global random source: the same inputs,
times and seed give the same outputs, and `copy.deepcopy` / `pickle` of a
stack mid-transfer yields a twin that continues identically.  Malformed
packets never raise: they are counted in `stack.stats` and dropped.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import random
import socket

from . import connection as C
from .checksum import ones_sum
from .connection import Connection
from .errors import AddressInUse, BadArgument, InvalidState, NetUnreachable
from .fragments import MAX_BYTES, MAX_DATAGRAMS, Reassembler
from .ip import (ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_TIME_EXCEEDED, ICMP_ECHO_REPLY,
                 ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, IPFragment,
                 IPPacket, Malformed, build_icmp, icmp_checksum_ok, ipv4_header, ipv6_header,
                 parse_icmp_error, parse_ip)
from .options import ConnOptions
from .segment import (ACK, RST, SYN, TCP4_BAD_CHECKSUM, TCP4_NOT_LOCAL, Segment, build_segment, parse_segment,
                      parse_tcp4)
from .segment import _parse_options as parse_options
from .seq import HALF, MASK, unwrap
from .timers import INF

EPHEMERAL_LOW = 49152   # RFC 6335 dynamic range
EPHEMERAL_HIGH = 65535
CHALLENGE_ACK_LIMIT = 1000   # per second and stack (RFC 5961 §7; Linux's default)


class Stats:
    """Stack-wide counters.  Every dropped packet increments exactly one
    `dropped_*` counter."""

    __slots__ = (
        "packets_in", "segments_in",
        "dropped_malformed", "dropped_bad_checksum", "dropped_fragment", "dropped_not_for_us",
        "dropped_unknown_protocol", "dropped_martian", "dropped_no_connection",
        "dropped_no_timestamp", "syn_queue_overflow", "accept_queue_overflow",
        "paws_dropped", "out_of_window", "out_of_order", "rst_sent", "challenge_acks",
        "dupacks_in", "retransmits", "fast_retransmits", "rto_timeouts", "window_probes",
        "keepalive_probes", "icmp_echo_replies", "icmp_errors", "icmp_ignored",
        "connections_opened", "connections_accepted",
        # IP reassembly: fragments taken in, datagrams completed or timed out
        # (the dropped_fragment_* counters count single fragment packets).
        "fragments_in", "reassembled", "reassembly_timeouts", "icmp_time_exceeded_sent",
        "dropped_fragment_overlap", "dropped_fragment_duplicate", "dropped_fragment_limit",
    )

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return "Stats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if v) + ")"


def _quotes_icmp_error(dg) -> bool:
    """Whether a datagram's first fragment carries an ICMP error, about which
    no ICMP error may be sent (RFC 1122 §3.2.2, RFC 4443 §2.4 (e.1))."""
    v4 = len(dg.src) == 4
    pos = len(dg.head) + (0 if v4 else 8)     # past the IPv6 Fragment header
    if pos >= len(dg.quote):
        return False
    if v4:
        return dg.first_nh == PROTO_ICMP and dg.quote[pos] in (3, 4, 5, 11, 12)
    return dg.first_nh == PROTO_ICMPV6 and dg.quote[pos] < 128


class Listener:
    """A passive-open endpoint (RFC 9293 LISTEN).  `queue` holds established
    connections not yet accepted; `syn_count` counts SYN-RECEIVED ones."""

    __slots__ = ("stack", "addr", "port", "backlog", "syn_backlog", "queue", "syn_count",
                 "closed", "options")

    def __init__(self, stack, addr, port, backlog, syn_backlog, options):
        self.stack = stack
        self.addr = addr          # packed bytes, or None for every local address
        self.port = port
        self.backlog = backlog
        self.syn_backlog = syn_backlog
        self.queue = []
        self.syn_count = 0
        self.closed = False
        self.options = options

    state = property(lambda self: C.CLOSED if self.closed else C.LISTEN)

    @property
    def local(self):
        return (str(ipaddress.ip_address(self.addr)) if self.addr else None, self.port)

    def __repr__(self) -> str:
        return f"<Listener {self.local} queued={len(self.queue)} syn={self.syn_count}>"


def _parse_address(a):
    if isinstance(a, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return a
    if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_interface(a)
    if isinstance(a, str):
        try:
            return ipaddress.ip_interface(a)
        except ValueError:
            raise BadArgument(f"not an IP address: {a!r}") from None
    raise BadArgument(f"not an IP address: {a!r}")


def _packed(addr, what: str) -> bytes:
    if isinstance(addr, bytes) and len(addr) in (4, 16):
        return addr
    try:
        return ipaddress.ip_address(addr).packed
    except ValueError:
        raise BadArgument(f"{what} is not an IP address: {addr!r}") from None


def _check_port(port, what: str, allow_zero: bool = False) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not (0 if allow_zero else 1) <= port <= 65535:
        raise BadArgument(f"{what} must be an integer port in 1..65535, got {port!r}")
    return port


_SHUT = {"r": socket.SHUT_RD, "w": socket.SHUT_WR, "rw": socket.SHUT_RDWR,
         "read": socket.SHUT_RD, "write": socket.SHUT_WR, "both": socket.SHUT_RDWR,
         socket.SHUT_RD: socket.SHUT_RD, socket.SHUT_WR: socket.SHUT_WR,
         socket.SHUT_RDWR: socket.SHUT_RDWR}


class Stack:
    """A user-level TCP/IP host.  See the module docstring; all public
    methods are documented in docs/tcp-conformance.md's API section too."""

    def __init__(self, addresses, rng=None, *, mtu: int = 1500, ttl: int = 64, offload: bool = False,
                 frag_max_datagrams: int = MAX_DATAGRAMS, frag_max_bytes: int = MAX_BYTES, **options):
        if isinstance(addresses, (str, bytes)) or not hasattr(addresses, "__iter__"):
            addresses = [addresses]
        self.interfaces = [_parse_address(a) for a in addresses]
        if not self.interfaces:
            raise BadArgument("a Stack needs at least one local address")
        self._local = {i.ip.packed for i in self.interfaces}
        if rng is None:
            rng = random.Random(0)
        elif isinstance(rng, int) and not isinstance(rng, bool):
            rng = random.Random(rng)
        elif not hasattr(rng, "getrandbits"):
            raise BadArgument(f"rng must be a random.Random or an int seed, got {rng!r}")
        self.rng = rng
        if not 576 <= mtu <= 65535:
            raise BadArgument(f"mtu must be in 576..65535, got {mtu!r}")
        self.mtu = mtu
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 255:
            raise BadArgument(f"ttl must be in 1..255, got {ttl!r}")
        self.ttl = ttl   # RFC 9293 MUST-49: configurable TTL / hop limit
        if not isinstance(offload, bool):
            raise BadArgument(f"offload must be a bool, got {offload!r}")
        self.offload = offload
        for name, v in (("frag_max_datagrams", frag_max_datagrams), ("frag_max_bytes", frag_max_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadArgument(f"{name} must be a non-negative integer, got {v!r}")
        self._reasm = Reassembler(frag_max_datagrams, frag_max_bytes)
        self.options = ConnOptions(**options)
        self.stats = Stats()
        self._isn_key = rng.getrandbits(128).to_bytes(16, "big")   # RFC 6528 secret
        self._conns: dict = {}
        self._listeners: dict = {}
        self._packets: list = []
        self._events: list = []
        self._heap: list = []
        self._heap_n = 0
        self._challenge_window = -INF
        self._challenge_count = 0

    # ------------------------------------------------------------ output

    def take_packets(self) -> list:
        """Whole IP packets to write to the device, oldest first.

        With `offload=True`, every TCP segment a connection sends comes as
        a `(packet, gso_size)` pair instead: its TCP checksum field holds
        only the pseudo-header sum, for the device to complete, and a
        nonzero `gso_size` means the packet is larger than the MTU and the
        device must cut its payload into `gso_size`-byte segments (what a
        virtio_net_hdr with NEEDS_CSUM and GSO_TCPV4/6 asks of Linux).
        Other packets (RSTs for closed ports, ICMP) stay plain bytes."""
        out = self._packets
        if not out:
            return []
        pkts = out[:]
        out.clear()   # connections hold this very list
        return pkts

    def take_events(self) -> list:
        """`(handle, kind)` pairs since the last call; kinds are the EV_*
        strings of iolib.tcp.connection.  Events are edge-triggered: after
        'readable', read until recv() returns None."""
        ev = self._events
        if not ev:
            return []
        out = ev[:]
        ev.clear()
        return out

    def connection_states(self) -> dict:
        """How many connections the stack holds in each TCP state, e.g.
        ``{"ESTABLISHED": 3, "TIME-WAIT": 1}`` (listeners not counted):
        what ``ss -s`` tells of the kernel, so that a caller can see that
        connections its peers abandoned were reclaimed."""
        counts: dict = {}
        for conn in self._conns.values():
            counts[conn.state] = counts.get(conn.state, 0) + 1
        return counts

    def next_deadline(self) -> float | None:
        """When timer() must next be called (absolute, same clock as `now`);
        None when no timer is pending.  A deadline in the past means now."""
        d = self._conn_deadline()
        if self._reasm.datagrams:
            r = self._reasm.next_deadline()
            if d is None or r < d:
                return r
        return d

    def _conn_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            d, _n, conn = heap[0]
            if conn._sched == d and conn.state != C.CLOSED:
                actual = conn.deadline()
                if actual <= d:
                    return d
                # The deadline moved later since this entry was queued.
                heapq.heappop(heap)
                conn._sched = INF
                self._after(conn)
                continue
            heapq.heappop(heap)
            if conn._sched == d:
                conn._sched = INF
        return None

    def timer(self, now: float) -> None:
        """Run every connection timer due at or before `now`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, _n, conn = heapq.heappop(heap)
            if conn._sched != d:
                continue   # superseded by an earlier deadline
            conn._sched = INF
            if conn.state == C.CLOSED:
                continue
            conn.on_timer(now)
            self._after(conn)
        if self._reasm.datagrams:
            self._expire_fragments(now)

    def _expire_fragments(self, now: float) -> None:
        """RFC 1122 §3.3.2 / RFC 8200 §4.5: an incomplete datagram is dropped
        when its timer runs out, with an ICMP Time Exceeded, code 1, to its
        source if the offset-zero fragment had arrived (RFC 792, RFC 4443
        §3.3) -- but never to a multicast or unspecified source (RFC 1122
        §3.2.2, RFC 4443 §2.4 (e))."""
        for dg in self._reasm.expire(now):
            self.stats.reassembly_timeouts += 1
            if dg.quote and not self._martian(dg.src) and not _quotes_icmp_error(dg):
                t = ICMP_TIME_EXCEEDED if len(dg.src) == 4 else ICMP6_TIME_EXCEEDED
                self._packets.append(build_icmp(dg.dst, dg.src, t, 1, bytes(4) + dg.quote))
                self.stats.icmp_time_exceeded_sent += 1

    def _after(self, conn: Connection) -> None:
        # Lazy timer heap: push only when the connection's deadline moved
        # earlier than the entry already queued; a later deadline is found
        # when the old entry pops (timer() then re-queues it).
        # conn.deadline() inlined: this runs after every segment and call.
        t = conn.t_rtx
        if conn.t_dack < t:
            t = conn.t_dack
        if conn.t_keep < t:
            t = conn.t_keep
        if conn.t_rack < t:
            t = conn.t_rack
        if t < conn._sched and conn.state != C.CLOSED:
            conn._sched = t
            self._heap_n += 1
            heapq.heappush(self._heap, (t, self._heap_n, conn))
        elif t == INF and conn._sched != INF and conn.state == C.CLOSED:
            conn._sched = INF

    def _queue_ip(self, src: bytes, dst: bytes, tcp: bytes) -> None:
        if len(src) == 4:
            self._packets.append(ipv4_header(src, dst, PROTO_TCP, len(tcp), self.ttl) + tcp)
        else:
            self._packets.append(ipv6_header(src, dst, PROTO_TCP, len(tcp), self.ttl) + tcp)

    def _remove(self, conn: Connection) -> None:
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]

    def _challenge_ack_allowed(self, now: float) -> bool:
        if now - self._challenge_window >= 1.0:
            self._challenge_window = now
            self._challenge_count = 0
        self._challenge_count += 1
        return self._challenge_count <= CHALLENGE_ACK_LIMIT

    # ------------------------------------------------------------ input

    def receive(self, now: float, packet, checksum_ok: bool = False) -> None:
        """Take one whole IPv4 or IPv6 packet (no link header).

        `checksum_ok=True` says the device vouches for the transport
        checksum (a virtio_net_hdr with NEEDS_CSUM or DATA_VALID: the
        packet comes from the local kernel, whose TCP left the checksum
        for the "hardware" to fill in), so it is not checked again; such
        packets may be larger than the MTU (segmentation offload)."""
        stats = self.stats
        stats.packets_in += 1
        if type(packet) is not bytes:
            packet = bytes(packet)
        # Fast path: IPv4 without options carrying TCP, checked and parsed
        # in one call (compiled, or segment._parse_tcp4): the same checks
        # as parse_ip() + _receive_tcp(), in the same order.
        fast = parse_tcp4(packet, self._local, checksum_ok)
        if fast is not None:
            if fast.__class__ is int:
                if fast == TCP4_NOT_LOCAL:
                    stats.dropped_not_for_us += 1
                elif fast == TCP4_BAD_CHECKSUM:
                    stats.dropped_bad_checksum += 1
                else:
                    stats.dropped_malformed += 1
                return
            src, dst, ttl, total, sport, dport, seq, ack, flags, wnd, urg, payload, hlen, tsval, tsecr = fast
            seg = Segment(sport, dport, seq, ack, flags, wnd, urg, payload)
            if tsval is not None:
                seg.tsval = tsval
                seg.tsecr = tsecr
            elif hlen > 20:
                try:
                    parse_options(seg, packet[40:20 + hlen])
                except Malformed as e:
                    name = "dropped_" + e.reason
                    setattr(stats, name, getattr(stats, name) + 1)
                    return
            stats.segments_in += 1
            conn = self._conns.get((dst, seg.dport, src, seg.sport))
            if conn is not None and conn.state != C.TIME_WAIT:
                conn.on_segment(now, seg)
                # conn.deadline() inlined: this is the per-segment path.
                t = conn.t_rtx
                if conn.t_dack < t:
                    t = conn.t_dack
                if conn.t_keep < t:
                    t = conn.t_keep
                if conn.t_rack < t:
                    t = conn.t_rack
                if t < conn._sched:
                    self._after(conn)
                return
            self._demux_tcp(now, IPPacket(4, src, dst, PROTO_TCP, 20, total, ttl), seg)
            return
        try:
            ip = parse_ip(packet, True)
            if ip.dst not in self._local:
                stats.dropped_not_for_us += 1
                return
            if ip.__class__ is IPFragment:
                stats.fragments_in += 1
                packet = self._reasm.add(now, ip, packet)
                if packet is None:
                    return
                stats.reassembled += 1
                # The whole datagram goes through the checks an unfragmented
                # packet gets; a Fragment header inside it is refused.  The
                # device vouched for the last fragment only.
                ip = parse_ip(packet)
                checksum_ok = False
            proto = ip.proto
            if proto == PROTO_TCP:
                self._receive_tcp(now, ip, packet, checksum_ok)
            elif proto == PROTO_ICMP and ip.version == 4 or proto == PROTO_ICMPV6 and ip.version == 6:
                self._receive_icmp(now, ip, packet, checksum_ok)
            else:
                stats.dropped_unknown_protocol += 1
        except Malformed as e:
            name = "dropped_" + e.reason
            setattr(stats, name, getattr(stats, name) + 1)

    def _martian(self, addr: bytes) -> bool:
        a = ipaddress.ip_address(addr)
        return a.is_multicast or a.is_unspecified or (a.version == 4 and addr == b"\xff\xff\xff\xff")

    def _receive_tcp(self, now: float, ip, packet, checksum_ok: bool = False) -> None:
        start, end = ip.start, ip.end
        if not checksum_ok and (ones_sum(packet, start, end) + int.from_bytes(ip.src + ip.dst, "big")
                                + PROTO_TCP + end - start) % 0xFFFF:
            raise Malformed("bad_checksum", "TCP")
        seg = parse_segment(packet, start, end)
        self.stats.segments_in += 1
        self._demux_tcp(now, ip, seg)

    def _demux_tcp(self, now: float, ip, seg) -> None:
        key = (ip.dst, seg.dport, ip.src, seg.sport)
        conn = self._conns.get(key)
        if conn is not None:
            if conn.state == C.TIME_WAIT and seg.flags & (SYN | ACK | RST) == SYN and self._tw_reusable(conn, seg):
                conn._terminate()   # RFC 6191: a new incarnation may start
            else:
                conn.on_segment(now, seg)
                self._after(conn)
                return
        if self._martian(ip.src):
            self.stats.dropped_martian += 1
            return
        listener = self._listeners.get((ip.dst, seg.dport)) or self._listeners.get((None, seg.dport))
        if listener is not None:
            self._listen_segment(now, listener, ip, seg)
        else:
            self._closed_segment(ip, seg)

    def _tw_reusable(self, conn, seg) -> bool:
        if conn.ts_ok and seg.tsval is not None:
            return 0 < (seg.tsval - conn.ts_recent) & MASK < HALF
        return unwrap(seg.seq, conn.rcv_nxt) > conn.rcv_nxt

    def _closed_segment(self, ip, seg) -> None:
        """RFC 9293 §3.10.7.1: a segment for no connection gets a RST."""
        self.stats.dropped_no_connection += 1
        if seg.flags & RST:
            return
        if seg.flags & ACK:
            tcp = build_segment(seg.dport, seg.sport, seg.ack, 0, RST, 0, b"", b"",
                                int.from_bytes(ip.dst + ip.src, "big") + PROTO_TCP)
        else:
            tcp = build_segment(seg.dport, seg.sport, 0, seg.seq + seg.seg_len, RST | ACK, 0, b"", b"",
                                int.from_bytes(ip.dst + ip.src, "big") + PROTO_TCP)
        self._queue_ip(ip.dst, ip.src, tcp)
        self.stats.rst_sent += 1

    def _listen_segment(self, now: float, listener: Listener, ip, seg) -> None:
        """RFC 9293 §3.10.7.2 (LISTEN state)."""
        flags = seg.flags
        if flags & RST:
            self.stats.dropped_no_connection += 1
            return
        if flags & ACK:
            self._closed_segment(ip, seg)
            return
        if not flags & SYN:
            self.stats.dropped_no_connection += 1
            return
        if listener.syn_count >= listener.syn_backlog:
            self.stats.syn_queue_overflow += 1
            return
        if len(listener.queue) >= listener.backlog:
            self.stats.accept_queue_overflow += 1
            return
        iss = self._isn(now, ip.dst, seg.dport, ip.src, seg.sport)
        conn = Connection(self, ip.dst, seg.dport, ip.src, seg.sport, iss,
                          listener.options.copy(), self.mtu, listener)
        listener.syn_count += 1
        self._conns[conn.key] = conn
        conn.segs_in += 1
        conn.open_passive(now, seg, self.rng.getrandbits(32))
        self.stats.connections_accepted += 1
        self._after(conn)

    def _receive_icmp(self, now: float, ip, packet, checksum_ok: bool = False) -> None:
        if not checksum_ok and not icmp_checksum_ok(ip, packet):
            raise Malformed("bad_checksum", "ICMP")
        body = packet[ip.start:ip.end]
        if len(body) < 4:
            raise Malformed("malformed", "ICMP header truncated")
        t = body[0]
        if (ip.version == 4 and t == ICMP_ECHO_REQUEST) or (ip.version == 6 and t == ICMP6_ECHO_REQUEST):
            if self._martian(ip.src):
                self.stats.dropped_martian += 1
                return
            reply = ICMP_ECHO_REPLY if ip.version == 4 else ICMP6_ECHO_REPLY
            self._packets.append(build_icmp(ip.dst, ip.src, reply, 0, bytes(body[4:])))
            self.stats.icmp_echo_replies += 1
            return
        err = parse_icmp_error(ip, packet)
        if err is None:
            self.stats.dropped_unknown_protocol += 1
            return
        self.stats.icmp_errors += 1
        conn = self._conns.get((err.src, err.sport, err.dst, err.dport))
        if conn is None:
            self.stats.icmp_ignored += 1
            return
        conn.on_icmp(now, err)
        self._after(conn)

    # ------------------------------------------------------------ naming

    def _isn(self, now: float, laddr: bytes, lport: int, raddr: bytes, rport: int) -> int:
        """RFC 6528: ISN = M + F(localip, localport, remoteip, remoteport, key),
        M a 4-microsecond clock, F a keyed hash."""
        h = hashlib.blake2s(laddr + lport.to_bytes(2, "big") + raddr + rport.to_bytes(2, "big"),
                            key=self._isn_key, digest_size=4).digest()
        return (int(now * 250000) + int.from_bytes(h, "big")) & 0xFFFFFFFF

    def _source_for(self, raddr: bytes) -> bytes:
        fam = len(raddr)
        best = None
        for itf in self.interfaces:
            if len(itf.ip.packed) != fam:
                continue
            if ipaddress.ip_address(raddr) in itf.network:
                return itf.ip.packed
            if best is None:
                best = itf.ip.packed
        if best is None:
            raise NetUnreachable(f"no local IPv{4 if fam == 4 else 6} address to reach "
                                 f"{ipaddress.ip_address(raddr)}")
        return best

    def _port_free(self, laddr: bytes, lport: int, raddr: bytes, rport: int) -> bool:
        if (laddr, lport, raddr, rport) in self._conns:
            return False
        return (laddr, lport) not in self._listeners and (None, lport) not in self._listeners

    def _ephemeral_port(self, laddr: bytes, raddr: bytes, rport: int) -> int:
        # RFC 6056 §3.3.1-style: random start, then linear probing.
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        start = self.rng.randrange(span)
        for i in range(span):
            port = EPHEMERAL_LOW + (start + i) % span
            if self._port_free(laddr, port, raddr, rport):
                return port
        raise AddressInUse(f"no free ephemeral port towards {ipaddress.ip_address(raddr)} port {rport}")

    # ------------------------------------------------------------ user API

    def listen(self, port: int, backlog: int = 128, address=None, *, syn_backlog: int | None = None,
               **options) -> Listener:
        """Open a passive endpoint on `port` (all local addresses unless
        `address`).  `backlog` bounds the accept queue, `syn_backlog` the
        SYN-RECEIVED connections (default: same as backlog)."""
        _check_port(port, "listen port")
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise BadArgument(f"backlog must be a positive integer, got {backlog!r}")
        if syn_backlog is None:
            syn_backlog = backlog
        addr = None
        if address is not None:
            addr = _packed(address, "listen address")
            if addr not in self._local:
                raise BadArgument(f"listen address {ipaddress.ip_address(addr)} is not local")
        if (addr, port) in self._listeners or (None, port) in self._listeners or \
                (addr is None and any(p == port for _a, p in self._listeners)):
            raise AddressInUse(f"port {port} is already listening")
        opts = self.options.copy()
        opts.update(**options)
        lst = Listener(self, addr, port, backlog, syn_backlog, opts)
        self._listeners[(addr, port)] = lst
        return lst

    def accept(self, listener: Listener) -> Connection | None:
        """The oldest established connection of `listener`, or None."""
        if not isinstance(listener, Listener):
            raise BadArgument(f"accept() needs a Listener, got {listener!r}")
        if listener.closed:
            raise InvalidState("listener is closed")
        return listener.queue.pop(0) if listener.queue else None

    def connect(self, now: float, remote_addr, remote_port: int, local_addr=None,
                local_port: int | None = None, **options) -> Connection:
        """Active open (RFC 9293 §3.10.1).  The connection is returned in
        SYN-SENT; 'connected' or 'refused'/'error' follows as an event."""
        raddr = _packed(remote_addr, "remote address")
        _check_port(remote_port, "remote port")
        if self._martian(raddr):
            raise NetUnreachable(f"cannot connect to {ipaddress.ip_address(raddr)}")
        if local_addr is None:
            laddr = self._source_for(raddr)
        else:
            laddr = _packed(local_addr, "local address")
            if laddr not in self._local:
                raise BadArgument(f"local address {ipaddress.ip_address(laddr)} is not ours")
            if len(laddr) != len(raddr):
                raise NetUnreachable("local and remote addresses are of different IP versions")
        if local_port is None:
            lport = self._ephemeral_port(laddr, raddr, remote_port)
        else:
            lport = _check_port(local_port, "local port")
            if (laddr, lport, raddr, remote_port) in self._conns:
                raise AddressInUse(f"connection {ipaddress.ip_address(laddr)}:{lport} -> "
                                   f"{ipaddress.ip_address(raddr)}:{remote_port} exists")
        opts = self.options.copy()
        opts.update(**options)
        iss = self._isn(now, laddr, lport, raddr, remote_port)
        conn = Connection(self, laddr, lport, raddr, remote_port, iss, opts, self.mtu)
        self._conns[conn.key] = conn
        conn.open_active(now, self.rng.getrandbits(32))
        self.stats.connections_opened += 1
        self._after(conn)
        return conn

    def _conn(self, conn) -> Connection:
        if not isinstance(conn, Connection):
            raise BadArgument(f"expected a Connection, got {conn!r}")
        return conn

    def send(self, now: float, conn: Connection, data, urgent: bool = False) -> int:
        """Queue bytes; returns how many were taken (0: wait for 'writable').
        `urgent` marks the bytes taken as urgent data (RFC 9293 §3.8.5).
        Raises the connection's error, or InvalidState after shutdown."""
        self._conn(conn)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadArgument(f"send() needs bytes, got {type(data).__name__}")
        n = conn.send(now, data, urgent)
        self._after(conn)
        return n

    def recv(self, conn: Connection, max_bytes: int = 65536, now: float | None = None):
        """Up to `max_bytes` of received data; b'' at end of stream (FIN
        received and everything read); None when nothing is available yet.
        Raises the connection's error (reset, timeout, ...) once the buffer is
        empty.  Pass `now` to let a window update go out at once; without
        it the update goes out at the next timer() call."""
        self._conn(conn)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise BadArgument(f"max_bytes must be a positive integer, got {max_bytes!r}")
        data = conn.recv(now, max_bytes)
        self._after(conn)
        return data

    def recv_chunks(self, conn: Connection, now: float | None = None):
        """Everything buffered as a list of bytes objects (same None/b''/
        exception conventions as recv)."""
        self._conn(conn)
        data = conn.recv_chunks(now)
        self._after(conn)
        return data

    def shutdown(self, now: float, conn: Connection, how="w") -> None:
        """Half-close: 'r'/'w'/'rw' (or socket.SHUT_RD/WR/RDWR)."""
        self._conn(conn)
        if how not in _SHUT:
            raise BadArgument(f"shutdown how must be 'r', 'w', 'rw' or socket.SHUT_*, got {how!r}")
        how = _SHUT[how]
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            conn.shutdown_read(now)
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            conn.shutdown_write(now)
        self._after(conn)

    def close(self, now: float, handle) -> None:
        """Close a connection (graceful FIN, or RST when unread data is
        pending) or a listener (its pending connections are reset)."""
        if isinstance(handle, Listener):
            if handle.closed:
                return
            handle.closed = True
            self._listeners.pop((handle.addr, handle.port), None)
            for conn in handle.queue:
                conn.abort(now)
            handle.queue.clear()
            for conn in [c for c in self._conns.values()
                         if c.listener is handle and c.state == C.SYN_RECEIVED]:
                conn.abort(now)
            return
        self._conn(handle)
        handle.close(now)
        self._after(handle)

    def abort(self, now: float, conn: Connection) -> None:
        """Reset the connection (RST) and forget it."""
        self._conn(conn)
        conn.abort(now)

    def set_options(self, handle, **options) -> None:
        """Change per-connection (or per-listener, for future accepts)
        options: nodelay, keepalive, keepidle, keepintvl, keepcnt,
        user_timeout, sndbuf, rcvbuf, ack_delay, ..."""
        if isinstance(handle, (Connection, Listener)):
            handle.options.update(**options)
            if isinstance(handle, Connection) and "keepalive" in options:
                if options["keepalive"] and handle.state == C.ESTABLISHED and handle.t_keep == INF:
                    handle.t_keep = -INF   # arm at the next timer() call
                elif not options["keepalive"]:
                    handle.t_keep = INF
                self._after(handle)
        else:
            raise BadArgument(f"expected a Connection or Listener, got {handle!r}")

    def connections(self) -> list:
        return list(self._conns.values())

    def listeners(self) -> list:
        return list(self._listeners.values())
