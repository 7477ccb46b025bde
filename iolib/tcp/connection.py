"""One TCP connection: the RFC 9293 state machine with its timers.

A `Connection` reacts to three kinds of input, each stamped with `now`:
segments from the peer (`on_segment`), calls from the user (`send`, `recv`,
`close`, ...), and its own deadlines (`on_timer`).  Its reactions are whole IP
packets appended to the stack's output list and `(conn, kind)` events
appended to the stack's event list.  It implements:

* the segment-arrival rules of RFC 9293 §3.10.7 (all eleven states, simultaneous
  open and close, TIME-WAIT for 2*MSL), with RFC 5961 challenge ACKs for RSTs,
  SYNs and ACKs that are in the window but not exact;
* RFC 7323 window scaling, timestamps and PAWS (sparing overtaken pure
  duplicate ACKs, `_disordered_ack`); RFC 2018 SACK (we report our
  out-of-order blocks and retransmit the holes the peer reports);
* RFC 6298 retransmission timer with Karn's rule and exponential backoff;
* RFC 5681 slow start / congestion avoidance; RFC 6675 SACK-based loss
  recovery with RFC 8985 (RACK) time-based detection of lost
  retransmissions when SACK was negotiated, RFC 5681 fast retransmit with
  RFC 6582 NewReno fast recovery when it was not (see "SACK loss recovery"
  below);
* delayed ACKs (every second full-sized segment, at most `ack_delay`), Nagle,
  sender and receiver silly-window avoidance, zero-window probing (persist),
  keep-alive, the user timeout, and path-MTU updates from ICMP.

SACK loss recovery.  A SACK connection keeps `sent_log`, its transmission
log: sorted, contiguous `[start, end, xmit_ts, flags]` ranges covering
[SND.UNA, SND.MAX), each recording when it was last sent and whether it is
SACKed, presumed lost, or has a retransmission in flight.  This is RFC 6675's
scoreboard with per-range marks instead of the single HighRxt pointer, which
lets a retransmission be declared lost again:

* IsLost (RFC 6675 §4): data below which DupThresh (3) discontiguous SACKed
  ranges or more than (DupThresh - 1) * SMSS SACKed bytes lie is marked lost;
* RACK (RFC 8985 §6.2): data sent before the most recently sent data that
  has been delivered, and longer ago than that data's RTT plus a reordering
  window of min_RTT / 4, is marked lost, even if it was a retransmission.
  Without this a lost retransmission waits for the RTO (RFC 6675 never
  resends below HighRxt).  Reordering shorter than the window, or than
  DupThresh segments, causes no recovery.  What is not overdue yet is
  checked again by the reordering timer (§6.3, `t_rack`), and outside
  recovery a tail loss probe (§7) is sent 2*SRTT after the last ACK so that
  a lost tail is reported by SACK rather than found by the RTO;
* pipe (RFC 6675 §4 SetPipe): per un-SACKed byte, 1 unless it is marked lost,
  plus 1 if a retransmission of it is in flight;
* recovery (RFC 6675 §5) starts on DupThresh duplicate ACKs or when any data
  is marked lost, sets cwnd = ssthresh = FlightSize / 2, resends the first
  lost segment, then sends NextSeg() (rules 1-4, including the rescue
  retransmission) while cwnd - pipe >= SMSS; a cumulative ACK covering
  RecoveryPoint ends it with cwnd = ssthresh;
* after an RTO (RFC 6675 §5.1) everything outstanding is marked lost and the
  SACK information is forgotten (RFC 2018 §8); lost data is then resent by
  the same NextSeg() loop under slow start, skipping what new SACKs report.

Sequence numbers are kept *unwrapped* (see seq.py) and wrapped on the wire.
The connection never reads a clock or a random source and holds no closures:
it can be deep-copied or pickled at any moment.  It must never touch other
connections or the stack's tables except through the few `stack._...` hooks
used below (output lists, stats, removal, the listener's accept queue).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from operator import itemgetter

from .errors import (ConnectionAborted, ConnectionRefused, ConnectionReset,
                     ConnectionTimedOut, HostUnreachable, InvalidState)
from .options import ConnOptions
from .segment import (ACK, FIN, PSH, RST, SYN, URG, build_segment, opt_mss, opt_sack,
                      opt_sack_ok, opt_timestamp, opt_wscale)
from .seq import HALF, MASK, unwrap

INF = float("inf")

CLOSED = "CLOSED"
LISTEN = "LISTEN"
SYN_SENT = "SYN-SENT"
SYN_RECEIVED = "SYN-RECEIVED"
ESTABLISHED = "ESTABLISHED"
FIN_WAIT_1 = "FIN-WAIT-1"
FIN_WAIT_2 = "FIN-WAIT-2"
CLOSE_WAIT = "CLOSE-WAIT"
CLOSING = "CLOSING"
LAST_ACK = "LAST-ACK"
TIME_WAIT = "TIME-WAIT"

# Events, as (handle, kind) pairs in stack.take_events().
EV_READABLE = "readable"      # data (or EOF, or an error) can be read now
EV_WRITABLE = "writable"      # send() will accept bytes again
EV_ACCEPT = "accept"          # (listener) accept() will return a connection
EV_CONNECTED = "connected"    # active open completed
EV_REFUSED = "refused"        # RST answered our SYN
EV_RESET = "reset"            # peer reset a synchronized connection
EV_EOF = "eof"                # peer's FIN arrived: reads end after buffered data
EV_ERROR = "error"            # conn.error is set (user timeout, ICMP hard error)
EV_CLOSED = "closed"          # connection reached CLOSED and left the stack
EV_URGENT = "urgent"          # the peer marked urgent data (conn.urgent_pending)

# States in which we may send data / a FIN.
_SENDING = frozenset((ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK))
# States in which arriving text is delivered (RFC 9293 §3.10.7.4 seventh).
_RECEIVING = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
_SYNCHRONIZED = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT,
                           CLOSING, LAST_ACK, TIME_WAIT))

_V4TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
_V6TCP = struct.Struct("!IHBB16s16sHHIIBBHHH")
_TS_PREFIX = b"\x01\x01\x08\x0a"
_TS = struct.Struct("!II")
_TS_LEN = 12
# With offload, the most payload one emitted packet carries: its IPv4 total
# length (or IPv6 payload length) must stay within 16 bits with a 60-byte
# TCP header, and Linux's TUN takes GSO packets up to 64 KiB.
_OFFLOAD_PAYLOAD = 65000

# RFC 6675 §2 / RFC 5681 §3.2: duplicate ACKs (and SACKed segments) that
# signal a loss rather than reordering.
DUP_THRESH = 3
# RFC 8985 §6.2: the smallest reordering window, our timestamp clock's tick.
RACK_MIN_REO_WND = 0.001
# RFC 8985 §7.2 WCDelAckT: the worst-case delayed-ACK timer of the peer.
TLP_DELAYED_ACK = 0.2
# A floor on the probe timeout, so that a tiny or idealized SRTT does not
# make every pause in the ACK clock a probe (Linux uses the same 10 ms).
TLP_MIN_PTO = 0.01

# Marks on a `sent_log` range.
_SACKED = 1        # the peer holds it (RFC 2018)
_LOST = 2          # presumed lost: IsLost(), RACK, or an RTO
_RETRANS = 4       # a retransmission of it is in flight (counts in pipe)
_EVER_RETRANS = 8  # sent more than once: its delivery time is ambiguous (RFC 8985 §6.2 step 2)
_START = itemgetter(0)


class Connection:
    """State of one connection (RFC 9293 §3.3.1 TCB) plus our extensions.

    Public, read-only for users: `state`, `local`, `remote`, `error`,
    `options`, counters (`segs_in`, `segs_out`, `bytes_in`, `bytes_out`,
    `retransmits`, `fast_retransmits`, `rto_timeouts`).
    """

    __slots__ = (
        # identity
        "stack", "out", "events", "stats", "laddr", "lport", "raddr", "rport",
        "key", "listener", "passive", "options", "_pseudo", "_port_sum", "_iphead", "ttl",
        "offload",
        "state", "error", "soft_error", "user_closed",
        # send sequence space (unwrapped)
        "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2",
        "max_snd_wnd", "snd_wscale", "peer_mss", "mtu_mss", "smss",
        "sndbuf", "snd_base", "fin_queued", "fin_seq", "write_shut", "want_write", "snd_up",
        # receive sequence space
        "irs", "rcv_nxt", "rcv_adv", "rcv_wscale", "rcvbuf", "ooo", "ooo_fin",
        "sack_recent", "read_shut", "fin_rcvd", "rcv_mss", "unacked_bytes", "ack_now", "rcv_up",
        # negotiated options
        "ts_ok", "sack_ok", "ws_ok", "ts_recent", "ts_offset", "last_ack_sent",
        # RTT / RTO (RFC 6298)
        "srtt", "rttvar", "rto", "rtt_seq", "rtt_time", "syn_retransmitted",
        # congestion control (RFC 5681, RFC 6582)
        "cwnd", "ssthresh", "dupacks", "in_recovery", "recover", "ca_acc",
        "rtx_high", "scoreboard",
        # SACK loss recovery (RFC 6675) and RACK (RFC 8985)
        "sent_log", "lost_edge", "rescue_rxt", "rack_xmit_ts", "rack_end", "rack_rtt",
        "min_rtt", "rack_timer", "tlp_end",
        # timers
        "t_rtx", "rtx_kind", "t_dack", "t_keep", "t_rack", "rtx_start", "persist_shift",
        "keep_probes", "_sched",
        # counters
        "segs_in", "segs_out", "bytes_in", "bytes_out", "retransmits",
        "fast_retransmits", "rto_timeouts",
    )

    def __init__(self, stack, laddr: bytes, lport: int, raddr: bytes, rport: int,
                 iss: int, options: ConnOptions, mtu: int, listener=None):
        self.stack = stack
        self.out = stack._packets
        self.events = stack._events
        self.stats = stack.stats
        self.laddr, self.lport, self.raddr, self.rport = laddr, lport, raddr, rport
        self.key = (laddr, lport, raddr, rport)
        self.listener = listener
        self.passive = listener is not None
        self.options = options
        self._pseudo = int.from_bytes(laddr + raddr, "big") + 6
        self._port_sum = self._pseudo + lport + rport   # constant part of the TCP checksum
        v4 = len(laddr) == 4
        # Partial sum of the constant IPv4 header words (version/IHL, DF, TTL,
        # protocol, addresses); the total length is added per packet.
        self.ttl = stack.ttl
        # Segmentation and checksum offload (see Stack): segments of up to
        # _OFFLOAD_PAYLOAD bytes leave as (packet, gso_size) pairs whose TCP
        # checksum field holds only the pseudo-header sum.
        self.offload = stack.offload
        self._iphead = (0x4500 + 0x4000 + (self.ttl << 8 | 6) + int.from_bytes(laddr + raddr, "big")) if v4 else None
        self.state = CLOSED
        self.error = None
        self.soft_error = None
        self.user_closed = False

        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.peer_mss = 536 if v4 else 1220   # RFC 9293 §3.7.1 default send MSS
        self.mtu_mss = mtu - (40 if v4 else 60)
        self.smss = min(self.peer_mss, self.mtu_mss)
        self.sndbuf = bytearray()
        self.snd_base = iss + 1
        self.fin_queued = False
        self.fin_seq = None
        self.write_shut = False
        self.want_write = False
        self.snd_up = 0        # end of urgent data we sent (RFC 9293 §3.8.5), 0 = none

        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_wscale = 0
        self.rcvbuf = bytearray()
        self.ooo = []          # sorted, disjoint [(start, end, data)]
        self.ooo_fin = None    # sequence number of an out-of-order FIN
        self.sack_recent = []  # (start, end) blocks, most recently changed first
        self.read_shut = False
        self.fin_rcvd = False
        self.rcv_mss = 536
        self.unacked_bytes = 0
        self.ack_now = False
        self.rcv_up = 0        # end of urgent data announced by the peer, 0 = none

        self.ts_ok = False
        self.sack_ok = False
        self.ws_ok = False
        self.ts_recent = 0
        self.ts_offset = 0
        self.last_ack_sent = 0

        self.srtt = None
        self.rttvar = 0.0
        self.rto = options.initial_rto
        self.rtt_seq = None
        self.rtt_time = 0.0
        self.syn_retransmitted = False

        self.cwnd = 0
        self.ssthresh = 1 << 30   # RFC 5681 §3.1: arbitrarily high
        self.dupacks = 0
        self.in_recovery = False
        self.recover = iss
        self.ca_acc = 0
        self.rtx_high = iss
        self.scoreboard = []      # sorted, disjoint [(start, end)] SACKed by the peer
        self.sent_log = []        # [start, end, xmit_ts, flags] over [SND.UNA, SND.MAX) (SACK only)
        self.lost_edge = iss      # IsLost() marks have been applied below this
        self.rescue_rxt = None    # RFC 6675 RescueRxt
        self.rack_xmit_ts = -INF  # RFC 8985 RACK.xmit_ts, RACK.end_seq, RACK.rtt
        self.rack_end = iss
        self.rack_rtt = 0.0
        self.min_rtt = None       # RFC 8985 RACK.min_RTT
        self.rack_timer = "reorder"   # what t_rack runs: "reorder" (§6.3) or "probe" (§7.2)
        self.tlp_end = None       # RFC 8985 TLP.end_seq while a probe is unanswered

        self.t_rtx = INF
        self.rtx_kind = "rtx"     # "syn", "rtx", "persist", "timewait", "finwait2"
        self.t_dack = INF
        self.t_keep = INF
        self.t_rack = INF         # RFC 8985 §6.3 reordering timer
        self.rtx_start = 0.0
        self.persist_shift = 0
        self.keep_probes = 0
        self._sched = INF

        self.segs_in = self.segs_out = self.bytes_in = self.bytes_out = 0
        self.retransmits = self.fast_retransmits = self.rto_timeouts = 0

    # ------------------------------------------------------------ helpers

    def __repr__(self) -> str:
        return f"<Connection {self.local}->{self.remote} {self.state}>"

    @property
    def local(self):
        from ipaddress import ip_address
        return (str(ip_address(self.laddr)), self.lport)

    @property
    def remote(self):
        from ipaddress import ip_address
        return (str(ip_address(self.raddr)), self.rport)

    def deadline(self) -> float:
        """The earliest of this connection's timers (the stack's timer heap
        keys on it)."""
        t = self.t_rtx
        if self.t_dack < t:
            t = self.t_dack
        if self.t_keep < t:
            t = self.t_keep
        if self.t_rack < t:
            t = self.t_rack
        return t

    def _event(self, kind: str) -> None:
        self.events.append((self, kind))

    def _tsval(self, now: float) -> int:
        # RFC 7323 §5.4: a millisecond clock with a random per-connection offset.
        return (int(now * 1000) + self.ts_offset) & MASK

    def _wrap_window(self) -> int:
        """The window field to send, updating rcv_adv (RFC 9293 §3.8.6.2.2
        receiver SWS avoidance; the right edge never moves left)."""
        opts = self.options
        free = opts.rcvbuf - len(self.rcvbuf)
        if free < 0:
            free = 0
        nxt = self.rcv_nxt
        right = nxt + free
        adv = self.rcv_adv
        if right > adv:
            step = self.rcv_mss if self.rcv_mss < opts.rcvbuf // 2 else opts.rcvbuf // 2
            if right - adv >= step or adv <= nxt and free > 0 and right - nxt >= step:
                adv = right
        if adv < nxt:
            adv = nxt
        shift = self.rcv_wscale
        field = (adv - nxt + (1 << shift) - 1) >> shift
        if field > 0xFFFF:
            field = 0xFFFF
        self.rcv_adv = nxt + (field << shift)
        return field

    def _emit(self, now: float, flags: int, seq: int, payload=b"", options: bytes | None = None,
              gso_size: int = 0) -> None:
        """Build and queue one segment; every non-SYN segment carries our
        current ACK, window and (if negotiated) timestamp and SACK blocks.
        With offload, a payload longer than `gso_size` is one packet the
        device cuts into `gso_size`-byte segments (RFC 9293 §3.7.1 still
        holds on the wire: each piece carries at most the effective MSS)."""
        if options is None:
            options = b""
            if self.ts_ok:
                options = _TS_PREFIX + _TS.pack((int(now * 1000) + self.ts_offset) & MASK,
                                                self.ts_recent)
            if self.sack_recent and self.sack_ok:
                options += opt_sack(self.sack_recent[:3 if self.ts_ok else 4])
        if flags & SYN:
            wnd = min(self.options.rcvbuf, 0xFFFF)   # RFC 7323 §2.2: never scaled
            self.rcv_adv = self.rcv_nxt + wnd
        else:
            wnd = self._wrap_window()
        if flags & ACK:
            ack = self.rcv_nxt
            self.last_ack_sent = ack
            self.t_dack = INF
            self.unacked_bytes = 0
            self.ack_now = False
        else:
            ack = 0
        # build_segment() inlined: this is the per-segment hot path.
        olen = len(options)
        hlen = 20 + olen
        urg = 0
        if self.snd_up > seq and not flags & SYN:
            # RFC 9293 §3.8.5 / MUST-62: the pointer names the first
            # non-urgent octet, as an offset from this segment's sequence.
            flags |= URG
            urg = min(self.snd_up - seq, 0xFFFF)
        seq &= MASK
        ack &= MASK
        plen = len(payload)
        tcp_len = hlen + plen
        if self.offload:
            # CHECKSUM_PARTIAL: the field holds the pseudo-header sum and
            # the device folds in the rest (virtio 1.x §5.1.6.2).
            cks = (self._pseudo + tcp_len) % 0xFFFF
        else:
            total = (self._port_sum + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
                     + (hlen << 10 | flags) + wnd + tcp_len + urg)
            if olen:
                total += int.from_bytes(options, "big")
            if plen:
                if plen & 1:
                    total += int.from_bytes(payload, "big") << 8
                else:
                    total += int.from_bytes(payload, "big")
            cks = 0xFFFF - total % 0xFFFF
        if self._iphead is not None:
            ip_total = 20 + tcp_len
            head = _V4TCP.pack(0x45, 0, ip_total, 0, 0x4000, self.ttl, 6,
                               0xFFFF - (self._iphead + ip_total) % 0xFFFF, self.laddr, self.raddr,
                               self.lport, self.rport, seq, ack, hlen << 2, flags, wnd, cks, urg)
        else:
            head = _V6TCP.pack(0x60000000, tcp_len, 6, self.ttl, self.laddr, self.raddr,
                               self.lport, self.rport, seq, ack, hlen << 2, flags, wnd, cks, urg)
        if olen:
            packet = b"".join((head, options, payload))
        elif plen:
            packet = head + payload
        else:
            packet = head
        if self.offload:
            self.out.append((packet, gso_size if plen > gso_size else 0))
        else:
            self.out.append(packet)
        self.segs_out += 1

    def _send_ack(self, now: float) -> None:
        # SND.MAX, not SND.NXT: after a timeout pulls SND.NXT back (go-back-N)
        # the peer may already hold data up to SND.MAX, and an ACK carrying
        # an older sequence number would fail its acceptability test and be
        # dropped with the acknowledgment in it (RFC 9293 Appendix A.2).
        self._emit(now, ACK, self.snd_max)

    def _challenge_ack(self, now: float) -> None:
        # RFC 5961 §7: a per-stack budget keeps challenge ACKs from being an
        # amplifier.
        if self.stack._challenge_ack_allowed(now):
            self.stats.challenge_acks += 1
            self._send_ack(now)

    def _syn_options(self, now: float) -> bytes:
        """MSS, SACK-permitted, timestamps and window scale, in the order and
        alignment Linux uses.  On a SYN-ACK only what the peer offered."""
        opts = self.options
        o = opt_mss(self.mtu_mss)
        passive = self.state == SYN_RECEIVED and self.passive
        if self.sack_ok if passive else opts.sack:
            o += opt_sack_ok()
        if self.ts_ok if passive else opts.timestamps:
            o += opt_timestamp(self._tsval(now), self.ts_recent if passive else 0)
        if self.ws_ok if passive else opts.window_scaling:
            o += opt_wscale(self.rcv_wscale)
        return o

    def _send_syn(self, now: float) -> None:
        flags = SYN | ACK if self.state == SYN_RECEIVED else SYN
        self._emit(now, flags, self.iss, b"", self._syn_options(now))

    def _set_smss(self) -> None:
        base = min(self.peer_mss, self.mtu_mss)
        self.smss = max(base - (_TS_LEN if self.ts_ok else 0), 64)

    def _initial_cwnd(self) -> int:
        smss = self.smss
        iw = self.options.initial_window
        if iw:
            return iw * smss
        # RFC 5681 §3.1 (equivalent to RFC 3390).
        if smss > 2190:
            return 2 * smss
        if smss > 1095:
            return 3 * smss
        return 4 * smss

    def _rcv_wscale_for(self, bufsize: int) -> int:
        shift = 0
        while (bufsize >> shift) > 0xFFFF and shift < 14:
            shift += 1
        return shift

    # ------------------------------------------------------------ opening

    def open_active(self, now: float, ts_offset: int) -> None:
        """Send our SYN (RFC 9293 §3.10.1, OPEN call in CLOSED state)."""
        opts = self.options
        self.state = SYN_SENT
        self.ts_offset = ts_offset
        self.rcv_wscale = self._rcv_wscale_for(opts.rcvbuf) if opts.window_scaling else 0
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(now)
        self.rtx_kind = "syn"
        self.rtx_start = now
        self.t_rtx = now + self.rto

    def open_passive(self, now: float, seg, ts_offset: int) -> None:
        """A SYN arrived at a listener (RFC 9293 §3.10.7.2): record the peer's
        options and answer SYN-ACK."""
        self.state = SYN_RECEIVED
        self.ts_offset = ts_offset
        self._take_syn_options(seg)
        self.irs = seg.seq
        self.rcv_nxt = self.irs + 1 + (1 << 32)   # keep unwrapped values positive
        self.snd_wnd = seg.wnd          # window in a SYN is never scaled
        self.max_snd_wnd = seg.wnd
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(now)
        self.rtx_kind = "syn"
        self.rtx_start = now
        self.t_rtx = now + self.rto

    def _take_syn_options(self, seg) -> None:
        opts = self.options
        if seg.mss is not None and seg.mss > 0:
            self.peer_mss = seg.mss
        if opts.window_scaling and seg.wscale is not None:
            self.ws_ok = True
            self.snd_wscale = seg.wscale
            if self.state == SYN_RECEIVED:
                self.rcv_wscale = self._rcv_wscale_for(opts.rcvbuf)
        else:
            # RFC 7323 §2.2: scaling only when both sides sent the option.
            self.ws_ok = False
            self.snd_wscale = 0
            self.rcv_wscale = 0
        self.sack_ok = opts.sack and seg.sack_ok
        if opts.timestamps and seg.tsval is not None:
            self.ts_ok = True
            self.ts_recent = seg.tsval
        else:
            self.ts_ok = False
        self._set_smss()
        self.rcv_mss = min(self.mtu_mss, max(self.peer_mss, 536)) - (_TS_LEN if self.ts_ok else 0)
        self.cwnd = self._initial_cwnd()

    def _handshake_rtt_sample(self, now: float, seg) -> None:
        """The first RTT sample, from the ACK that completes our side of the
        handshake: its timestamp echo, or else the SYN's send time unless
        the SYN was resent (Karn, RFC 6298 §3)."""
        if self.ts_ok and seg.tsecr:
            self._rtt_sample(((self._tsval(now) - seg.tsecr) & MASK) / 1000.0)
        elif not self.syn_retransmitted:
            self._rtt_sample(now - self.rtx_start)

    def _established(self, now: float) -> None:
        self.state = ESTABLISHED
        if self.syn_retransmitted:
            # RFC 6298 (5.7) and RFC 5681 §3.1: a lost SYN means a 3 s RTO
            # (unless measured since) and a one-segment initial window.
            if self.srtt is None:
                self.rto = max(3.0, self.options.min_rto)
            self.cwnd = self.smss
        if self.options.keepalive:
            self.t_keep = now + self.options.keepidle
        listener = self.listener
        if self.passive and listener is not None:
            listener.syn_count -= 1
            if listener.closed:
                self.abort(now)
                return
            listener.queue.append(self)
            self.events.append((listener, EV_ACCEPT))
        else:
            self._event(EV_CONNECTED)
            self._event(EV_WRITABLE)

    # ------------------------------------------------------------ arrivals

    def on_segment(self, now: float, seg) -> None:
        """Process one arriving segment (RFC 9293 §3.10.7.3 and §3.10.7.4)."""
        state = self.state
        if state == ESTABLISHED and seg.flags & 0x37 == ACK and not self.ooo \
                and seg.seq == self.rcv_nxt & MASK and self._fast_path(now, seg):
            return
        self.segs_in += 1
        if state == SYN_SENT:
            self._on_segment_syn_sent(now, seg)
            return
        if state == CLOSED:
            return
        flags = seg.flags
        payload = seg.payload
        rcv_nxt = self.rcv_nxt
        seq = unwrap(seg.seq, rcv_nxt)
        plen = len(payload)
        seglen = plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)

        if self.t_keep != INF:
            self.t_keep = now + self.options.keepidle
            self.keep_probes = 0

        # RFC 7323 §5.3 PAWS (R1): a timestamp older than TS.Recent marks an
        # old duplicate.  RFC 7323 §3.2: once negotiated, a non-RST segment
        # without the option is dropped.
        if self.ts_ok and not flags & RST:
            tsval = seg.tsval
            if tsval is None:
                if not flags & SYN:
                    self.stats.dropped_no_timestamp += 1
                    return
            elif (tsval - self.ts_recent) & MASK >= HALF and not self._disordered_ack(seg, seq):
                self.stats.paws_dropped += 1
                self._send_ack(now)
                return

        if flags & SYN and state == SYN_RECEIVED and seq == rcv_nxt - 1:
            if flags & ACK and not self.passive:
                # Simultaneous open (RFC 9293 figure 8, line 6): the peer's
                # SYN-ACK repeats the SYN we already acknowledged; take the ACK.
                flags &= ~SYN
                seq += 1
                seglen -= 1
                self.ack_now = True
            else:
                # Our SYN-ACK was lost and the peer repeated its SYN.
                self._send_syn(now)
                return

        # First: sequence number acceptability (RFC 9293 §3.10.7.4).
        wnd = self.rcv_adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        if seglen == 0:
            ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
        elif wnd == 0:
            # Only the ACK/RST content of a segment can be taken (zero-window
            # probes land here); the text is trimmed below.
            ok = seq == rcv_nxt
        else:
            ok = (rcv_nxt <= seq < rcv_nxt + wnd) or (rcv_nxt <= seq + seglen - 1 < rcv_nxt + wnd)
        if not ok:
            if flags & RST:
                return
            if state == TIME_WAIT and flags & FIN:
                # RFC 9293 §3.10.7.4: a retransmitted FIN is acknowledged
                # and restarts the 2 MSL timeout.
                self.t_rtx = now + 2 * self.options.msl
            self.stats.out_of_window += 1
            self._send_ack(now)
            return

        # Second: RST (RFC 5961 §3.2: only an exact match resets).
        if flags & RST:
            if seq != rcv_nxt:
                self._challenge_ack(now)
                return
            self._on_reset(now)
            return

        # Fourth: SYN in a synchronized state (RFC 5961 §4).
        if flags & SYN:
            self._challenge_ack(now)
            return

        seg_seq = seq
        # Trim to the window (RFC 9293 §3.10.7.4 first, "trimmed").
        if seq < rcv_nxt:
            cut = rcv_nxt - seq
            payload = payload[cut:]
            seq = rcv_nxt
        if plen:
            room = rcv_nxt + wnd - seq
            if len(payload) > room:
                payload = payload[:max(room, 0)]
                flags &= ~FIN
                self.ack_now = True   # tell the sender what we actually took

        # Fifth: ACK.
        if not flags & ACK:
            return
        ack = unwrap(seg.ack, self.snd_una)
        if state == SYN_RECEIVED:
            if self.snd_una < ack <= self.snd_max:
                self.snd_una = ack
                self.snd_wnd = seg.wnd << self.snd_wscale
                self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
                self.snd_wl1 = seq
                self.snd_wl2 = ack
                self.t_rtx = INF
                self.rtx_kind = "rtx"
                self._handshake_rtt_sample(now, seg)
                self._established(now)
                if self.state == CLOSED:
                    return
                state = ESTABLISHED
            else:
                self._emit_rst_for(now, seg)
                return
        if ack > self.snd_max:
            # RFC 9293: ACK of something not yet sent -> ACK and drop.
            self.stats.challenge_acks += 1
            self._send_ack(now)
            return
        if ack < self.snd_una - self.max_snd_wnd:
            # RFC 5961 §5.2: too old to be acceptable.
            self._challenge_ack(now)
            return

        # RFC 7323 §4.3: update TS.Recent from segments covering Last.ACK.sent.
        if self.ts_ok and seg.tsval is not None and seq <= self.last_ack_sent:
            if (seg.tsval - self.ts_recent) & MASK < HALF:
                self.ts_recent = seg.tsval

        if state == TIME_WAIT:
            return

        self._on_ack(now, seg, seq, ack, flags)
        state = self.state
        if state == CLOSED:
            return

        # Seventh: text.  Eighth: FIN.
        # Sixth: URG (RFC 9293 §3.10.7.4; MUST-30..33): the data stays
        # inline; the user learns where the urgent data ends.
        if flags & URG and state in _RECEIVING and not self.fin_rcvd:
            up = seg_seq + seg.urg
            if up > self.rcv_up:
                self.rcv_up = up
                self._event(EV_URGENT)

        # (CLOSE-WAIT, CLOSING and LAST-ACK have seen the FIN: ignore text.)
        if state in _RECEIVING and (payload or flags & FIN):
            self._on_text(now, seq, payload, flags & FIN)

        if self.fin_queued or self.sndbuf:
            self._output(now)
        if self.ack_now:
            self._send_ack(now)

    def _disordered_ack(self, seg, seq: int) -> bool:
        """A pure duplicate ACK overtaken by a later one, which PAWS need not
        drop.  PAWS exists to keep old duplicate *data* out of the receive
        stream (RFC 7323 §5.3, §5.7 and Appendix B); an ACK that carries no
        data, no SYN/FIN/RST, sits exactly at RCV.NXT, acknowledges exactly
        SND.UNA and leaves the send window as it is cannot corrupt anything,
        while its SACK blocks are news for loss recovery.  Its timestamp must
        still be recent: within one RTO (in timestamp ticks) of TS.Recent."""
        if seg.payload or seg.flags & (SYN | FIN | RST | URG) or not seg.flags & ACK:
            return False
        if seq != self.rcv_nxt or unwrap(seg.ack, self.snd_una) != self.snd_una:
            return False
        if seg.wnd << self.snd_wscale != self.snd_wnd:
            return False
        return (self.ts_recent - seg.tsval) & MASK <= int(self.rto * 1000)

    def _fast_path(self, now: float, seg) -> bool:
        """The in-order, in-window, flag-free segment of a bulk transfer in
        ESTABLISHED (header prediction).  Returns False, having changed
        nothing, when the general path is needed."""
        tsval = seg.tsval
        if self.ts_ok and (tsval is None or (tsval - self.ts_recent) & MASK >= HALF):
            return False
        payload = seg.payload
        plen = len(payload)
        rcv_nxt = self.rcv_nxt
        if plen > self.rcv_adv - rcv_nxt or self.read_shut or seg.sack is not None:
            return False
        una = self.snd_una
        d = (seg.ack - una) & MASK
        if d >= HALF:
            return False
        ack = una + d
        if ack > self.snd_max:
            return False
        self.segs_in += 1
        if self.t_keep != INF:
            self.t_keep = now + self.options.keepidle
            self.keep_probes = 0
        if tsval is not None and self.ts_ok and rcv_nxt <= self.last_ack_sent:
            self.ts_recent = tsval          # RFC 7323 §4.3
        wnd = seg.wnd << self.snd_wscale
        if ack != una or wnd != self.snd_wnd or self.snd_max != una or self.rtx_kind != "rtx":
            self._on_ack(now, seg, rcv_nxt, ack, seg.flags)
        else:
            self.snd_wl1 = rcv_nxt
            self.snd_wl2 = ack
        if plen:
            if not self.rcvbuf:
                self.events.append((self, EV_READABLE))
            self.rcvbuf += payload
            self.rcv_nxt = rcv_nxt + plen
            self.bytes_in += plen
            if plen > self.rcv_mss and plen <= self.mtu_mss:
                self.rcv_mss = plen
            self.unacked_bytes += plen
            if self.unacked_bytes >= 2 * self.rcv_mss:
                self.ack_now = True
            elif self.t_dack == INF:
                self.t_dack = now + self.options.ack_delay
        if self.sndbuf or self.fin_queued:
            self._output(now)
        if self.ack_now:
            self._send_ack(now)
        return True

    def _emit_rst_for(self, now: float, seg) -> None:
        """<SEQ=SEG.ACK><CTL=RST> for an unacceptable ACK (RFC 9293 §3.10.7.4)."""
        tcp = build_segment(self.lport, self.rport, seg.ack, 0, RST, 0, b"", b"", self._pseudo)
        self.stack._queue_ip(self.laddr, self.raddr, tcp)
        self.stats.rst_sent += 1

    def _on_segment_syn_sent(self, now: float, seg) -> None:
        """RFC 9293 §3.10.7.3."""
        flags = seg.flags
        ack_ok = False
        if flags & ACK:
            ack = unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._emit_rst_for(now, seg)
                return
            ack_ok = True
        if flags & RST:
            if ack_ok:
                self.error = ConnectionRefused(f"connection to {self.remote[0]} port {self.rport} refused")
                self._event(EV_REFUSED)
                self._event(EV_READABLE)
                self._terminate()
            return
        if not flags & SYN:
            return
        self._take_syn_options(seg)
        self.irs = seg.seq
        self.rcv_nxt = self.irs + 1 + (1 << 32)
        self.snd_wnd = seg.wnd
        self.max_snd_wnd = seg.wnd
        self.snd_wl1 = self.rcv_nxt - 1
        if ack_ok:
            self.snd_wl2 = ack
            self.snd_una = ack
            self.t_rtx = INF
            self.rtx_kind = "rtx"
            self._handshake_rtt_sample(now, seg)
            self._established(now)
            if seg.payload:
                self._on_text(now, self.rcv_nxt, seg.payload, flags & FIN)
            elif flags & FIN:
                self._on_text(now, self.rcv_nxt, b"", FIN)
            self._output(now)
            if self.ack_now or self.last_ack_sent != self.rcv_nxt:
                self._send_ack(now)   # the third segment of the handshake
        else:
            # Simultaneous open (RFC 9293 §3.5, figure 8).
            self.state = SYN_RECEIVED
            self._send_syn(now)
            self.rtx_kind = "syn"
            self.t_rtx = now + self.rto

    def _on_reset(self, now: float) -> None:
        state = self.state
        if state == SYN_RECEIVED:
            if self.passive:
                # Back to LISTEN: the embryonic connection just goes away.
                self._terminate()
                return
            self.error = ConnectionRefused(f"connection to {self.remote[0]} port {self.rport} refused")
            self._event(EV_REFUSED)
        elif state in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self.error = ConnectionReset(f"connection reset by {self.remote[0]} port {self.rport}")
            self.sndbuf.clear()
            self.rcvbuf.clear()  # RFC 9293: all queues are flushed
            self._event(EV_RESET)
            self._event(EV_READABLE)
            if self.want_write:
                self._event(EV_WRITABLE)
        self._terminate()

    # ------------------------------------------------------------ ACK side

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 §2 estimator (G = 1 ms, the timestamp clock)."""
        if r < 0 or r > 120.0:
            return
        if self.min_rtt is None or r < self.min_rtt:
            self.min_rtt = r
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        opts = self.options
        rto = self.srtt + max(0.001, 4 * self.rttvar)
        if rto < opts.min_rto:
            rto = opts.min_rto
        if rto > opts.max_rto:
            rto = opts.max_rto
        self.rto = rto

    def _on_ack(self, now: float, seg, seq: int, ack: int, flags: int) -> None:
        una = self.snd_una
        smss = self.smss
        sack = self.sack_ok
        if seg.sack is not None and sack:
            self._update_scoreboard(now, seg.sack)
        wnd = seg.wnd << self.snd_wscale
        dupack = False
        if ack > una:
            acked = ack - una
            base = self.snd_base
            data_end = base + len(self.sndbuf)
            done = (ack if ack < data_end else data_end) - base
            if done > 0:
                del self.sndbuf[:done]
                self.snd_base = base + done
                self.bytes_out += done
            self.snd_una = ack
            if self.snd_nxt < ack:
                self.snd_nxt = ack
            if self.scoreboard and self.scoreboard[0][0] < ack:
                self.scoreboard = [(max(s, ack), e) for s, e in self.scoreboard if e > ack]
            if sack and self.sent_log:
                self._log_acked(now, ack)
            # RTT: timestamps echo the segment that triggered this ACK, so
            # retransmissions cannot confuse them (RFC 7323 §4); without
            # timestamps, Karn's rule: time only never-retransmitted data.
            if self.ts_ok:
                if seg.tsecr:
                    self._rtt_sample(((int(now * 1000) + self.ts_offset - seg.tsecr) & MASK) / 1000.0)
            elif self.rtt_seq is not None and ack > self.rtt_seq:
                self._rtt_sample(now - self.rtt_time)
                self.rtt_seq = None
            # Congestion control.
            if self.in_recovery:
                if ack >= self.recover:
                    self.in_recovery = False
                    if sack:
                        # RFC 6675 §5 (A); RFC 5681 §3.2 step 6.
                        self.cwnd = self.ssthresh
                    else:
                        # RFC 6582 §3.2 step 3, full acknowledgment.
                        flight = self.snd_max - ack
                        self.cwnd = min(self.ssthresh, max(flight, smss) + smss)
                elif not sack:
                    # Partial acknowledgment: retransmit the next hole,
                    # deflate by the amount acked, add back one SMSS.
                    if self.rtx_high < ack:
                        self.rtx_high = ack
                    self.rtx_high = self._retransmit(now, ack, None)
                    self.cwnd = max(self.cwnd - acked, smss) + (smss if acked >= smss else 0)
            elif self.cwnd < self.ssthresh:
                # RFC 5681 (2).  With offload one ACK covers a whole
                # multi-segment packet (the receiver coalesces them), so
                # count every byte it acknowledges (RFC 3465 §2.3 byte
                # counting, as Linux counts segments).
                self.cwnd += acked if acked < smss or self.offload else smss
            else:
                self.ca_acc += acked                                # RFC 5681 (3), byte counting
                if self.ca_acc >= self.cwnd:
                    self.ca_acc -= self.cwnd
                    self.cwnd += smss
            self.dupacks = 0
            # RFC 6298 (5.2)/(5.3): stop or restart the retransmission timer.
            if self.rtx_kind == "rtx":
                if ack >= self.snd_max:
                    self.t_rtx = INF
                elif not self.in_recovery or acked:
                    self.t_rtx = now + self.rto
                self.rtx_start = now
            if self.fin_seq is not None and ack > self.fin_seq:
                self._our_fin_acked(now)
                if self.state == CLOSED or self.state == TIME_WAIT:
                    return
            if self.want_write and len(self.sndbuf) < self.options.sndbuf and not self.write_shut:
                self.want_write = False
                self._event(EV_WRITABLE)
        elif ack == una and self.snd_max > una and not seg.payload \
                and not flags & (SYN | FIN) and wnd == self.snd_wnd and wnd:
            # RFC 5681 §2 duplicate ACK.
            self.stats.dupacks_in += 1
            if sack:
                self.dupacks += 1
                dupack = True
            else:
                self._on_dupack(now)

        # RFC 9293 §3.10.7.4 fifth: window update.
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.rtx_kind == "persist":
                self.rtx_kind = "rtx"
                self.persist_shift = 0
                self.t_rtx = now + self.rto if self.snd_max > self.snd_una else INF

        if sack:
            if self.tlp_end is not None and ack >= self.tlp_end:
                self.tlp_end = None
            if (self.scoreboard or self.dupacks or self.snd_una < self.recover) \
                    and self.sent_log and self.state in _SENDING:
                self._sack_recovery(now, dupack)
            self._arm_probe(now)

    def _our_fin_acked(self, now: float) -> None:
        state = self.state
        if state == FIN_WAIT_1:
            self.state = FIN_WAIT_2
            self.t_rtx = INF
            if self.user_closed and self.read_shut:
                # The user cannot read any more: don't wait forever for a FIN.
                self.rtx_kind = "finwait2"
                self.t_rtx = now + self.options.fin_wait2_timeout
        elif state == CLOSING:
            self._enter_time_wait(now)
        elif state == LAST_ACK:
            self._terminate()

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self.rtx_kind = "timewait"
        self.t_rtx = now + 2 * self.options.msl
        self.t_dack = INF
        self.t_keep = INF
        self.t_rack = INF

    def _update_scoreboard(self, now: float, blocks) -> None:
        una, top = self.snd_una, self.snd_max
        board = self.scoreboard
        changed = False
        for left, right in blocks:
            s = unwrap(left, una)
            e = unwrap(right, una)
            # RFC 2018 §4 / RFC 2883: blocks below SND.UNA (D-SACK) or beyond
            # what we sent are ignored.
            if not (una < e <= top) or s >= e:
                continue
            if s < una:
                s = una
            board.append((s, e))
            changed = True
            self._log_sacked(now, s, e)
        if changed:
            board.sort()
            merged = []
            for s, e in board:
                if merged and s <= merged[-1][1]:
                    if e > merged[-1][1]:
                        merged[-1] = (merged[-1][0], e)
                else:
                    merged.append((s, e))
            self.scoreboard = merged

    def _on_dupack(self, now: float) -> None:
        """Duplicate ACK on a connection without SACK (RFC 5681 §3.2,
        RFC 6582 §3.2)."""
        self.dupacks += 1
        smss = self.smss
        if not self.in_recovery:
            if self.dupacks == 3 and self.snd_una >= self.recover:
                # RFC 5681 §3.2 steps 2-4 with RFC 6582 §3.2 step 2.
                flight = self.snd_max - self.snd_una
                self.ssthresh = max(flight // 2, 2 * smss)
                self.recover = self.snd_max
                self.in_recovery = True
                self.fast_retransmits += 1
                self.stats.fast_retransmits += 1
                self.rtx_high = self._retransmit(now, self.snd_una, None)
                self.cwnd = self.ssthresh + 3 * smss
                self.rtx_start = now
                self.t_rtx = now + self.rto
            elif self.dupacks < 3 and self.sndbuf:
                # RFC 3042 limited transmit: each of the first two duplicate
                # ACKs may clock out one new segment (flight <= cwnd + 2*SMSS).
                cwnd = self.cwnd
                self.cwnd = cwnd + self.dupacks * smss
                self._output(now)
                self.cwnd = cwnd
        else:
            self.cwnd += smss   # RFC 5681 step 5: inflate
            self._output(now)

    def _segment_room(self) -> int:
        """Payload bytes per wire segment: the effective send MSS less
        the SACK blocks our segments carry (RFC 9293 §3.7.1, RFC 2018 §3)."""
        if self.sack_recent and self.sack_ok:
            return self.smss - 2 - 8 * min(len(self.sack_recent), 3 if self.ts_ok else 4) - 2
        return self.smss

    def _retransmit(self, now: float, start: int, limit) -> int:
        """Resend from `start` (one segment, not beyond `limit`); return the
        sequence number after what was sent."""
        state = self.state
        if state in (SYN_SENT, SYN_RECEIVED):
            self._send_syn(now)
            return self.iss + 1
        base = self.snd_base
        data_end = base + len(self.sndbuf)
        n = data_end - start
        room = self._segment_room()
        if n > room:
            n = room
        if limit is not None and start + n > limit:
            n = limit - start
        if n < 0:
            n = 0
        flags = ACK
        if self.fin_seq is not None and start + n == self.fin_seq:
            flags |= FIN
        if n == 0 and not flags & FIN:
            return start
        off = start - base
        self._emit(now, flags | (PSH if start + n == data_end and n else 0), start,
                   self.sndbuf[off:off + n])
        self.retransmits += 1
        self.stats.retransmits += 1
        if self.rtt_seq is not None and start <= self.rtt_seq < start + n + 1:
            self.rtt_seq = None   # Karn: this sample is now ambiguous
        end = start + n + (1 if flags & FIN else 0)
        if end > self.snd_nxt:
            self.snd_nxt = end
        if end > self.snd_max:
            self.snd_max = end
        if self.sack_ok:
            self._log_sent(now)
            self._log_retransmitted(now, start, end)
        return end

    # ------------------------------------------------------------ SACK loss recovery

    def _log_sent(self, now: float) -> None:
        """Extend the transmission log to SND.MAX with what was just sent."""
        log = self.sent_log
        start = log[-1][1] if log else self.snd_una
        end = self.snd_max
        if end <= start:
            return
        if log:
            last = log[-1]
            if last[2] == now and last[3] == 0:
                last[1] = end     # same send time: one range is enough
                return
        log.append([start, end, now, 0])

    def _log_split(self, seq: int) -> int:
        """Index of the log range starting at `seq`, splitting the range
        that contains it; len(log) when `seq` is at or beyond the end."""
        log = self.sent_log
        i = bisect_right(log, seq, key=_START) - 1
        if i < 0:
            return 0
        entry = log[i]
        if entry[0] == seq:
            return i
        if seq >= entry[1]:
            return i + 1
        log.insert(i + 1, [seq, entry[1], entry[2], entry[3]])
        entry[1] = seq
        return i + 1

    def _log_sacked(self, now: float, start: int, end: int) -> None:
        log = self.sent_log
        if not log:
            return
        i = self._log_split(start)
        j = self._log_split(end)
        for k in range(i, j):
            entry = log[k]
            if not entry[3] & _SACKED:
                self._delivered(now, entry)
                entry[3] = _SACKED
        # Once SACKed, a range's send time no longer matters: merge
        # neighbours so that the log stays about as short as the scoreboard.
        k = i - 1 if i > 0 else 0
        stop = j
        while k < stop and k + 1 < len(log):
            if log[k][3] & _SACKED and log[k + 1][3] & _SACKED:
                log[k][1] = log[k + 1][1]
                del log[k + 1]
                stop -= 1
            else:
                k += 1

    def _log_acked(self, now: float, ack: int) -> None:
        """Drop what the cumulative ACK covers, noting deliveries for RACK."""
        log = self.sent_log
        k = self._log_split(ack)
        for entry in log[:k]:
            if not entry[3] & _SACKED:
                self._delivered(now, entry)
        del log[:k]

    def _log_retransmitted(self, now: float, start: int, end: int) -> None:
        log = self.sent_log
        i = self._log_split(start)
        j = self._log_split(end)
        for k in range(i, j):
            entry = log[k]
            entry[2] = now
            entry[3] = (entry[3] & ~_SACKED) | _RETRANS | _EVER_RETRANS

    def _delivered(self, now: float, entry) -> None:
        """RFC 8985 §6.2 step 2: remember the most recently sent data that
        has reached the peer (RACK.xmit_ts, RACK.end_seq, RACK.rtt)."""
        ts = entry[2]
        rtt = now - ts
        if entry[3] & _EVER_RETRANS:
            # The ACK may be for an earlier transmission: trust it only if it
            # came later than any round trip could (RACK.min_RTT).
            if self.min_rtt is None or rtt < self.min_rtt:
                return
        elif self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        if ts > self.rack_xmit_ts or (ts == self.rack_xmit_ts and entry[1] > self.rack_end):
            self.rack_xmit_ts = ts
            self.rack_end = entry[1]
            self.rack_rtt = rtt

    def _detect_losses(self, now: float) -> None:
        """Mark log ranges lost by RFC 6675 IsLost() and by RACK."""
        log = self.sent_log
        board = self.scoreboard
        if board:
            # RFC 6675 §4 IsLost(): walking the blocks down from the highest,
            # every un-SACKed byte below the block that brings the count to
            # DupThresh blocks or more than (DupThresh - 1) * SMSS bytes is lost.
            limit = (DUP_THRESH - 1) * self.smss
            sacked = blocks = 0
            edge = None
            for s, e in reversed(board):
                sacked += e - s
                blocks += 1
                if blocks >= DUP_THRESH or sacked > limit:
                    edge = s
                    break
            if edge is not None and edge > self.lost_edge:
                # SACKs only accumulate, so the edge only moves up: mark the
                # ranges between the old and the new edge.
                k = self._log_split(self.lost_edge)
                while k < len(log) and log[k][0] < edge:
                    if not log[k][3] & (_SACKED | _LOST):
                        log[k][3] |= _LOST
                    k += 1
                self.lost_edge = edge
        if self.rack_xmit_ts == -INF or self.min_rtt is None:
            return
        # RFC 8985 §6.2 steps 4-5, reordering window min_RTT / 4 (bounded by
        # SRTT), but at least our 1 ms clock granularity so that a round trip
        # too short to measure does not turn all reordering into loss.  A
        # range sent before the RACK segment is lost once it has been out
        # longer than RACK.rtt + reo_wnd.
        reo_wnd = self.min_rtt / 4
        if self.srtt is not None and reo_wnd > self.srtt:
            reo_wnd = self.srtt
        if reo_wnd < RACK_MIN_REO_WND:
            reo_wnd = RACK_MIN_REO_WND
        wait = self.rack_rtt + reo_wnd
        rack_ts, rack_end = self.rack_xmit_ts, self.rack_end
        # RFC 8985 §6.3: what is not overdue yet is checked again when it
        # is, even if no ACK comes by then.
        timeout = INF
        for entry in log:
            flags = entry[3]
            if flags & _SACKED:
                continue
            ts = entry[2]
            if ts > rack_ts or (ts == rack_ts and entry[1] >= rack_end):
                if not flags & _EVER_RETRANS:
                    # First transmissions go out in sequence order, so
                    # everything above this was sent later as well.
                    break
                continue
            if flags & _LOST and not flags & _RETRANS:
                continue          # already waiting to be resent
            due = ts + wait
            if due <= now:
                entry[3] = (flags | _LOST) & ~_RETRANS
            elif due < timeout:
                timeout = due
        if timeout != INF or self.rack_timer == "reorder":
            self.t_rack = timeout
            self.rack_timer = "reorder"

    def _sack_recovery(self, now: float, dupack: bool) -> None:
        """RFC 6675 §5 for an ACK on a SACK connection with something
        amiss (SACK blocks, duplicate ACKs, or a recovery under way)."""
        self._detect_losses(now)
        if not self.in_recovery:
            # RFC 6582 §3.2 step 2 / RFC 6675 §5.1: no new recovery until
            # the data outstanding at the last one (or at an RTO) is ACKed.
            if self.snd_una >= self.recover and (self.dupacks >= DUP_THRESH
                                                 or self._next_lost() is not None):
                self._enter_recovery(now)
            elif self.snd_una >= self.recover:
                if dupack and self.dupacks < DUP_THRESH and self.sndbuf:
                    # RFC 6675 §5 (3) with RFC 3042 limited transmit: each of
                    # the first two duplicate ACKs may clock out one new
                    # segment (flight <= cwnd + 2*SMSS).
                    cwnd = self.cwnd
                    self.cwnd = cwnd + self.dupacks * self.smss
                    self._output(now)
                    self.cwnd = cwnd
                return
        self._send_by_pipe(now)

    def _enter_recovery(self, now: float) -> None:
        """RFC 6675 §5 step (4)."""
        smss = self.smss
        flight = self.snd_max - self.snd_una
        self.recover = self.snd_max                       # (4.1) RecoveryPoint = HighData
        self.ssthresh = self.cwnd = max(flight // 2, 2 * smss)   # (4.2), RFC 5681 eq. (4)
        self.ca_acc = 0
        self.in_recovery = True
        self.fast_retransmits += 1
        self.stats.fast_retransmits += 1
        # (4.3) The first segment presumed dropped goes out whatever pipe
        # says.  After DupThresh duplicate ACKs without enough SACK blocks to
        # make IsLost() true, that is the segment at HighACK.
        hole = self._next_lost()
        if hole is None:
            k = self._log_split(self.snd_una)
            log = self.sent_log
            end = self.snd_una + smss
            while k < len(log) and log[k][0] < end and not log[k][3] & _SACKED:
                log[k][3] |= _LOST
                k += 1
            hole = self._next_lost()
            if hole is None:
                return
        self.rescue_rxt = self._retransmit(now, hole[0], hole[1])
        self.rtx_start = now
        self.t_rtx = now + self.rto

    def _pipe(self) -> int:
        """RFC 6675 §4 SetPipe(): the bytes presumed in the network."""
        pipe = 0
        for s, e, _ts, flags in self.sent_log:
            if flags & _SACKED:
                continue
            if not flags & _LOST:
                pipe += e - s
            if flags & _RETRANS:
                pipe += e - s
        return pipe

    def _next_lost(self):
        """NextSeg() rule (1): the first lost, un-SACKed range with no
        retransmission in flight, as (start, end), or None.  (A range whose
        retransmission RACK found lost qualifies again.)"""
        log = self.sent_log
        for k, entry in enumerate(log):
            if entry[3] & (_SACKED | _LOST | _RETRANS) == _LOST:
                start = entry[0]
                end = entry[1]
                k += 1
                while end - start < self.smss and k < len(log) \
                        and log[k][3] & (_SACKED | _LOST | _RETRANS) == _LOST:
                    end = log[k][1]
                    k += 1
                return start, end
        return None

    def _next_unsacked(self):
        """NextSeg() rule (3): the first un-SACKed range below the highest
        SACKed byte that is neither lost nor already resent."""
        if not self.scoreboard:
            return None
        high = self.scoreboard[-1][1]
        for start, end, _ts, flags in self.sent_log:
            if start >= high:
                break
            if not flags & (_SACKED | _LOST | _RETRANS):
                return start, end
        return None

    def _rescue(self):
        """NextSeg() rule (4): once per recovery, after HighACK passed
        RescueRxt, the last SMSS of un-SACKed data, so that a loss at the
        tail of the window does not have to wait for the RTO."""
        if self.rescue_rxt is not None and self.snd_una <= self.rescue_rxt:
            return None
        for start, end, _ts, flags in reversed(self.sent_log):
            if not flags & _SACKED:
                return max(start, end - self.smss), end
        return None

    def _send_by_pipe(self, now: float) -> None:
        """RFC 6675 §5 step (C): send NextSeg() while cwnd - pipe >= SMSS.
        Outside a recovery (resending after an RTO) only rules 1 and 2."""
        smss = self.smss
        pipe = self._pipe()
        while self.cwnd - pipe >= smss:
            rescue = False
            hole = self._next_lost()                               # rule (1)
            if hole is None:
                # Rule (2): new data, as much as pipe, the peer's window,
                # Nagle and SWS avoidance allow; _output measures its room as
                # SND.NXT - SND.UNA against cwnd, so lend it the difference.
                before = self.snd_max
                if self.snd_base + len(self.sndbuf) > self.snd_nxt or \
                        self.fin_queued and self.fin_seq is None:
                    cwnd = self.cwnd
                    self.cwnd = self.snd_nxt - self.snd_una + cwnd - pipe
                    self._output(now)
                    self.cwnd = cwnd
                    if self.snd_max > before:
                        pipe += self.snd_max - before
                        continue
                if not self.in_recovery:
                    return
                hole = self._next_unsacked()                       # rule (3)
                if hole is None:
                    hole = self._rescue()                          # rule (4)
                    if hole is None:
                        return
                    rescue = True
            end = self._retransmit(now, hole[0], hole[1])
            if end <= hole[0]:
                return
            pipe += end - hole[0]
            if rescue:
                self.rescue_rxt = self.recover

    def _arm_probe(self, now: float) -> None:
        """RFC 8985 §7.2: outside recovery, with no reordering timer and no
        probe pending, schedule a tail loss probe 2*SRTT ahead (plus the
        peer's worst-case delayed ACK when one segment is out), if that is
        sooner than the RTO."""
        if self.rack_timer == "reorder" and self.t_rack != INF:
            return
        self.t_rack = INF
        if self.in_recovery or self.snd_una < self.recover or self.tlp_end is not None \
                or self.srtt is None or self.snd_max == self.snd_una or self.rtx_kind != "rtx" \
                or self.state not in _SENDING:
            return
        pto = 2 * self.srtt
        if pto < TLP_MIN_PTO:
            pto = TLP_MIN_PTO
        if self.snd_max - self.snd_una <= self.smss:
            pto += TLP_DELAYED_ACK
        if now + pto < self.t_rtx:
            self.t_rack = now + pto
            self.rack_timer = "probe"

    def _send_probe(self, now: float) -> None:
        """RFC 8985 §7.3: send one new segment if the peer's window allows,
        else resend the last one, so that the ACK it elicits carries the
        SACK information RACK needs to detect a tail loss without the RTO.
        (We do not do the §7.4 detection of losses repaired by the probe
        alone: such a loss goes without a cwnd reduction.)"""
        before = self.snd_max
        if self.snd_base + len(self.sndbuf) > self.snd_nxt:
            cwnd = self.cwnd
            self.cwnd = self.snd_nxt - self.snd_una + self.smss
            self._output(now)
            self.cwnd = cwnd
        if self.snd_max == before:
            start = self.snd_max - self.smss
            if start < self.snd_una:
                start = self.snd_una
            self._retransmit(now, start, self.snd_max)
        self.tlp_end = self.snd_max
        self.t_rtx = now + self.rto     # §7.3: the RTO runs again from the probe

    # ------------------------------------------------------------ text

    def _on_text(self, now: float, seq: int, payload, fin: int) -> None:
        rcv_nxt = self.rcv_nxt
        if seq == rcv_nxt:
            n = len(payload)
            if n:
                if self.read_shut:
                    if self.user_closed:
                        # RFC 1122 §4.2.2.13: data for a closed socket -> RST.
                        self.rcv_nxt = rcv_nxt + n
                        self.abort(now)
                        return
                else:
                    if not self.rcvbuf:
                        self._event(EV_READABLE)
                    self.rcvbuf += payload
                self.rcv_nxt = rcv_nxt = rcv_nxt + n
                self.bytes_in += n
                if n > self.rcv_mss and n <= self.mtu_mss:
                    self.rcv_mss = n
            filled = False
            if self.ooo:
                filled = self._pull_ooo()
                if self.ooo_fin is not None and self.ooo_fin == self.rcv_nxt and not self.ooo:
                    fin = FIN
            if fin:
                self._on_fin(now)
            elif filled:
                self.ack_now = True   # RFC 5681 §4.2: ACK at once when a gap fills
            elif n:
                # RFC 9293 §3.8.6.3 / RFC 5681 §4.2: delayed ACK, but at least
                # every second full-sized segment.
                self.unacked_bytes += n
                if self.unacked_bytes >= 2 * self.rcv_mss:
                    self.ack_now = True
                elif self.t_dack == INF:
                    self.t_dack = now + self.options.ack_delay
        else:
            self._store_ooo(seq, payload, fin)
            self.ack_now = True       # RFC 5681 §4.2: immediate duplicate ACK

    def _store_ooo(self, s: int, data, fin: int) -> None:
        e = s + len(data)
        if fin:
            self.ooo_fin = e
        if not data:
            return
        self.stats.out_of_order += 1
        ns, ne, nd = s, e, bytes(data)
        kept = []
        for bs, be, bd in self.ooo:
            if be < ns or bs > ne:
                kept.append((bs, be, bd))
                continue
            if bs < ns:
                nd = bd[:ns - bs] + nd
                ns = bs
            if be > ne:
                nd = nd + bd[ne - bs:]
                ne = be
        kept.append((ns, ne, nd))
        kept.sort()
        self.ooo = kept
        # RFC 2018 §4: the first block reports the most recent arrival, then
        # the other blocks in the order they were last reported.
        recent = [(ns, ne)]
        for bs, be in self.sack_recent:
            for cs, ce, _d in kept:
                if cs <= bs < ce:
                    if (cs, ce) not in recent:
                        recent.append((cs, ce))
                    break
        self.sack_recent = recent

    def _pull_ooo(self) -> bool:
        nxt = self.rcv_nxt
        moved = False
        blocks = self.ooo
        while blocks and blocks[0][0] <= nxt:
            s, e, d = blocks.pop(0)
            if e > nxt:
                chunk = d[nxt - s:]
                if not self.read_shut:
                    if not self.rcvbuf:
                        self._event(EV_READABLE)
                    self.rcvbuf += chunk
                self.bytes_in += len(chunk)
                nxt = e
            moved = True
        self.rcv_nxt = nxt
        self.sack_recent = [(s, e) for s, e in self.sack_recent if e > nxt]
        return moved

    def _on_fin(self, now: float) -> None:
        self.rcv_nxt += 1
        self.fin_rcvd = True
        self.ack_now = True
        self.ooo_fin = None
        self._event(EV_EOF)
        if not self.rcvbuf:
            self._event(EV_READABLE)
        state = self.state
        if state in (ESTABLISHED, SYN_RECEIVED):
            self.state = CLOSE_WAIT
        elif state == FIN_WAIT_1:
            self.state = CLOSING
        elif state == FIN_WAIT_2:
            self._send_ack(now)
            self._enter_time_wait(now)

    # ------------------------------------------------------------ output

    def _output(self, now: float, force: bool = False) -> None:
        """Send what the windows, Nagle and SWS avoidance allow
        (RFC 9293 §3.7.4, §3.8.6.2.1; RFC 5681 cwnd)."""
        if self.state not in _SENDING:
            return
        smss = self.smss
        base = self.snd_base
        data_end = base + len(self.sndbuf)
        nodelay = self.options.nodelay
        while True:
            nxt = self.snd_nxt
            avail = data_end - nxt
            if avail > 0:
                wnd = self.snd_wnd if self.snd_wnd < self.cwnd else self.cwnd
                usable = self.snd_una + wnd - nxt
                room = self._segment_room()
                if self.offload and avail > room and usable > room:
                    # Several segments in one packet, whole segments only
                    # unless this is the tail of the queued data.
                    most = _OFFLOAD_PAYLOAD - _OFFLOAD_PAYLOAD % room
                    n = avail if avail < most else most
                    if usable < n:
                        n = usable
                    if n < avail:
                        n -= n % room
                else:
                    n = avail if avail < room else room
                    if usable < n:
                        n = usable
                if n <= 0:
                    if self.snd_wnd == 0 and nxt == self.snd_max and self.rtx_kind != "persist" \
                            and self.snd_max == self.snd_una:
                        self._start_persist(now)
                    elif force and self.snd_wnd == 0:
                        pass
                    break
                if n < room:
                    idle = nxt == self.snd_una
                    if n == avail:
                        send = nodelay or idle or self.fin_queued          # Nagle
                    else:
                        send = (nodelay or idle) and n >= self.max_snd_wnd // 2   # SWS
                    if force:
                        send = True
                    if not send:
                        if idle and self.t_rtx == INF:
                            self._start_persist(now)   # SWS override timer
                        break
                force = False
                fin = FIN if self.fin_queued and nxt + n == data_end else 0
                off = nxt - base
                self._emit(now, ACK | fin | (PSH if nxt + n == data_end else 0), nxt,
                           self.sndbuf[off:off + n], None, room)
                end = nxt + n + (1 if fin else 0)
                if fin:
                    self.fin_seq = data_end
                self.snd_nxt = end
                if end > self.snd_max:
                    if nxt >= self.snd_max and self.rtt_seq is None and not self.ts_ok:
                        self.rtt_seq = nxt
                        self.rtt_time = now
                    self.snd_max = end
                if self.rtx_kind != "rtx":
                    self.rtx_kind = "rtx"
                    self.persist_shift = 0
                    self.t_rtx = INF
                if self.t_rtx == INF:
                    self.t_rtx = now + self.rto
                    self.rtx_start = now
                if fin:
                    break
                continue
            if self.fin_queued and (self.fin_seq is None or nxt == self.fin_seq):
                self._emit(now, ACK | FIN, data_end)
                self.fin_seq = data_end
                self.snd_nxt = data_end + 1
                if self.snd_nxt > self.snd_max:
                    self.snd_max = self.snd_nxt
                if self.rtx_kind != "rtx":
                    self.rtx_kind = "rtx"
                if self.t_rtx == INF:
                    self.t_rtx = now + self.rto
                    self.rtx_start = now
            break
        if self.sack_ok:
            self._log_sent(now)

    def _start_persist(self, now: float) -> None:
        # RFC 9293 §3.8.6.1: probe a zero window with exponential backoff.
        self.rtx_kind = "persist"
        delay = self.rto * (1 << self.persist_shift)
        if delay > self.options.max_rto:
            delay = self.options.max_rto
        self.t_rtx = now + delay

    # ------------------------------------------------------------ timers

    def on_timer(self, now: float) -> None:
        """Run whichever of this connection's timers are due."""
        if self.t_dack <= now:
            self.t_dack = INF
            if self.state in _SYNCHRONIZED and self.state != TIME_WAIT:
                self._send_ack(now)
        if self.t_rtx <= now:
            self.t_rtx = INF
            kind = self.rtx_kind
            if kind == "timewait" or kind == "finwait2":
                self._terminate()
                return
            if kind == "persist":
                self._on_persist(now)
            else:
                self._on_rto(now)
            if self.state == CLOSED:
                return
        if self.t_rack <= now:
            self.t_rack = INF
            if self.sack_ok and self.sent_log and self.state in _SENDING:
                if self.rack_timer == "probe":
                    self._send_probe(now)
                else:
                    self._sack_recovery(now, False)
                    self._arm_probe(now)
        if self.t_keep <= now:
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        """RFC 6298 §5 (5.4)-(5.6), RFC 5681 §3.1 (4), RFC 6582 §3.2 (6)."""
        opts = self.options
        if now - self.rtx_start >= opts.user_timeout:
            self._timed_out("user timeout expired with data unacknowledged")
            return
        if self.snd_max == self.snd_una and self.state not in (SYN_SENT, SYN_RECEIVED):
            return
        self.rto_timeouts += 1
        self.stats.rto_timeouts += 1
        if self.state in (SYN_SENT, SYN_RECEIVED):
            self.syn_retransmitted = True
            self.rto = min(self.rto * 2, opts.max_rto)
            self.retransmits += 1
            self.stats.retransmits += 1
            self._send_syn(now)
            self.t_rtx = min(now + self.rto, self.rtx_start + opts.user_timeout)
            return
        smss = self.smss
        flight = self.snd_max - self.snd_una
        if self.rto_timeouts == 1 or not self.in_recovery:
            self.ssthresh = max(flight // 2, 2 * smss)
        self.cwnd = smss
        self.ca_acc = 0
        self.in_recovery = False
        self.recover = self.snd_max
        self.dupacks = 0
        self.scoreboard = []     # RFC 2018 §8: forget SACK state after a timeout
        self.rto = min(self.rto * 2, opts.max_rto)
        self.rtt_seq = None
        if self.sack_ok:
            # RFC 6675 §5.1: RecoveryPoint = HighData (set above).  Presume
            # everything outstanding lost; SACKs arriving from now on steer
            # the resending (_send_by_pipe) so SACKed data is not sent again.
            for entry in self.sent_log:
                entry[3] = (entry[3] & _EVER_RETRANS) | _LOST
            self.lost_edge = self.snd_una
            self.t_rack = INF
            self.tlp_end = None
            self._retransmit(now, self.snd_una, None)
        else:
            self.snd_nxt = self.snd_una    # go back N: resend from the left edge
            end = self._retransmit(now, self.snd_una, None)
            self.snd_nxt = end
        self.t_rtx = min(now + self.rto, self.rtx_start + opts.user_timeout)
        self.rtx_kind = "rtx"

    def _timed_out(self, why: str) -> None:
        err = self.soft_error
        detail = f" (last ICMP error: {err})" if err else ""
        self.error = ConnectionTimedOut(f"{why}{detail}")
        self.rcvbuf.clear()
        self._event(EV_ERROR)
        self._event(EV_READABLE)
        self._event(EV_WRITABLE)
        self._terminate()

    def _on_persist(self, now: float) -> None:
        if self.snd_wnd > 0:
            # SWS override: send what fits even if small.
            self.rtx_kind = "rtx"
            self._output(now, force=True)
            return
        base = self.snd_base
        data_end = base + len(self.sndbuf)
        if self.snd_max > self.snd_una:
            self._retransmit(now, self.snd_una, self.snd_una + 1)
        elif data_end > self.snd_nxt:
            off = self.snd_nxt - base
            self._emit(now, ACK, self.snd_nxt, self.sndbuf[off:off + 1])
            self.snd_nxt += 1
            self.snd_max = self.snd_nxt
            if self.sack_ok:
                self._log_sent(now)
        else:
            return
        self.stats.window_probes += 1
        self.persist_shift += 1
        self._start_persist(now)

    def _on_keepalive(self, now: float) -> None:
        opts = self.options
        if self.t_keep == -INF:
            self.t_keep = now + opts.keepidle   # just switched on by set_options
            return
        if not opts.keepalive or self.state not in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2):
            self.t_keep = INF
            return
        if self.snd_max > self.snd_una:
            # Retransmission is already probing the path.
            self.t_keep = now + opts.keepintvl
            return
        if self.keep_probes >= opts.keepcnt:
            self._timed_out("keep-alive probes unanswered")
            return
        # RFC 1122 §4.2.3.6: SEG.SEQ = SND.NXT-1, no data, elicits an ACK.
        self.keep_probes += 1
        self.stats.keepalive_probes += 1
        self._emit(now, ACK, self.snd_max - 1)
        self.t_keep = now + opts.keepintvl

    # ------------------------------------------------------------ ICMP

    def on_icmp(self, now: float, err) -> None:
        """An ICMP error quoting one of our segments (RFC 5927 §4.1 check,
        RFC 1122 §4.2.3.9 soft/hard, RFC 1191/8201 PMTU)."""
        seq = unwrap(err.seq, self.snd_una)
        if not (self.snd_una <= seq < max(self.snd_max, self.snd_una + 1)):
            self.stats.icmp_ignored += 1
            return
        if err.kind == "too_big":
            v4 = len(self.laddr) == 4
            mtu = max(err.mtu, 576 if v4 else 1280)
            new = mtu - (40 if v4 else 60)
            if new < self.mtu_mss:
                self.mtu_mss = new
                self._set_smss()
                if self.snd_max > self.snd_una:
                    self._retransmit(now, self.snd_una, None)
            return
        hard = err.kind == "unreachable" and (
            (len(self.laddr) == 4 and err.code in (2, 3)) or (len(self.laddr) == 16 and err.code == 4))
        what = f"ICMP {err.kind} code {err.code}"
        if hard and self.state in (SYN_SENT, SYN_RECEIVED) and not self.passive:
            self.error = HostUnreachable(f"{what} for {self.remote[0]} port {self.rport}")
            self._event(EV_ERROR)
            self._event(EV_READABLE)
            self._terminate()
            return
        self.soft_error = what

    # ------------------------------------------------------------ user calls

    @property
    def urgent_pending(self) -> int:
        """How many received, unread bytes are urgent (MUST-33)."""
        if not self.rcv_up:
            return 0
        read_pos = self.rcv_nxt - len(self.rcvbuf) - (1 if self.fin_rcvd else 0)
        return max(0, min(self.rcv_up, self.rcv_nxt) - read_pos)

    def send(self, now: float, data, urgent: bool = False) -> int:
        if self.error is not None:
            raise self.error
        if self.write_shut or self.fin_queued or self.state in (CLOSED, TIME_WAIT, FIN_WAIT_2,
                                                                 CLOSING, LAST_ACK):
            raise InvalidState(f"cannot send: connection {self.state}, write side shut down")
        space = self.options.sndbuf - len(self.sndbuf)
        n = len(data)
        if n > space:
            n = space if space > 0 else 0
            self.want_write = True
        if n:
            self.sndbuf += data[:n] if n < len(data) else data
            if urgent:
                self.snd_up = self.snd_base + len(self.sndbuf)
            self._output(now)
        return n

    def recv(self, now, max_bytes: int):
        buf = self.rcvbuf
        if buf:
            if max_bytes >= len(buf):
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(buf[:max_bytes])
                del buf[:max_bytes]
            self._after_read(now)
            return data
        if self.error is not None:
            raise self.error
        if self.fin_rcvd or self.read_shut or self.state == CLOSED:
            return b""
        return None

    def recv_chunks(self, now):
        data = self.recv(now, 1 << 62)
        if data is None or data == b"":
            return data
        return [data]

    def _after_read(self, now) -> None:
        """Send a window update when reading opened the window enough
        (receiver SWS avoidance, RFC 9293 §3.8.6.2.2)."""
        if self.state not in _RECEIVING or self.fin_rcvd:
            return
        opts = self.options
        free = opts.rcvbuf - len(self.rcvbuf)
        adv_wnd = self.rcv_adv - self.rcv_nxt
        opening = self.rcv_nxt + free - self.rcv_adv
        step = min(opts.rcvbuf // 2, self.rcv_mss)
        if opening >= step and (adv_wnd < 2 * self.rcv_mss or opening >= opts.rcvbuf // 2):
            if now is None:
                self.t_dack = -INF   # due at the next timer() call
            else:
                self._send_ack(now)

    def shutdown_write(self, now: float) -> None:
        if self.write_shut:
            return
        self.write_shut = True
        state = self.state
        if state == SYN_SENT:
            self._terminate()
            return
        if state == SYN_RECEIVED:
            self.abort(now)
            return
        if state == ESTABLISHED:
            self.state = FIN_WAIT_1
        elif state == CLOSE_WAIT:
            self.state = LAST_ACK
        else:
            return
        self.fin_queued = True
        self._output(now)

    def shutdown_read(self, now) -> None:
        self.read_shut = True
        self.rcvbuf.clear()

    def close(self, now: float) -> None:
        """RFC 9293 §3.10.4 CLOSE; with unread data, RST (RFC 1122 §4.2.2.13)."""
        self.user_closed = True
        if self.state == CLOSED:
            return
        if self.rcvbuf and not self.read_shut:
            self.abort(now)
            return
        self.read_shut = True
        self.shutdown_write(now)
        if self.state == FIN_WAIT_2 and self.rtx_kind != "finwait2":
            self.rtx_kind = "finwait2"
            self.t_rtx = now + self.options.fin_wait2_timeout

    def abort(self, now: float) -> None:
        """RFC 9293 §3.10.5 ABORT: RST in synchronized states, then CLOSED."""
        if self.state == CLOSED:
            return
        if self.state in _SYNCHRONIZED and self.state != TIME_WAIT or self.state == SYN_RECEIVED:
            self._emit(now, RST | ACK, self.snd_max, b"", b"")
            self.stats.rst_sent += 1
        if self.error is None:
            self.error = ConnectionAborted("connection aborted locally")
        self.sndbuf.clear()
        self.rcvbuf.clear()
        self._terminate()

    def _terminate(self) -> None:
        if self.state == CLOSED:
            return
        if self.state == SYN_RECEIVED and self.passive and self.listener is not None:
            self.listener.syn_count -= 1
        self.state = CLOSED
        self.t_rtx = self.t_dack = self.t_keep = self.t_rack = INF
        self.stack._remove(self)
        self._event(EV_CLOSED)

    # ------------------------------------------------------------ info

    def info(self) -> dict:
        """A snapshot for diagnostics (names follow Linux's tcp_info where
        one exists)."""
        return {
            "state": self.state, "local": self.local, "remote": self.remote,
            "snd_una": self.snd_una & MASK, "snd_nxt": self.snd_nxt & MASK,
            "rcv_nxt": self.rcv_nxt & MASK, "snd_wnd": self.snd_wnd,
            "rcv_wnd": self.rcv_adv - self.rcv_nxt, "cwnd": self.cwnd,
            "ssthresh": self.ssthresh, "srtt": self.srtt, "rto": self.rto,
            "smss": self.smss, "snd_wscale": self.snd_wscale, "rcv_wscale": self.rcv_wscale,
            "sack": self.sack_ok, "timestamps": self.ts_ok,
            "unsent": self.snd_base + len(self.sndbuf) - self.snd_nxt,
            "unacked": self.snd_max - self.snd_una, "unread": len(self.rcvbuf),
            "segs_in": self.segs_in, "segs_out": self.segs_out,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "retransmits": self.retransmits, "fast_retransmits": self.fast_retransmits,
            "rto_timeouts": self.rto_timeouts, "in_recovery": self.in_recovery,
        }
