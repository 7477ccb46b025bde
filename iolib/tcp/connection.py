"""One TCP connection: the TCB, the RFC 9293 state machine, the user calls.

A `Connection` reacts to three kinds of input, each stamped with `now`:
segments from the peer (`on_segment`), calls from the user (`send`, `recv`,
`close`, ...), and its own deadlines (`on_timer`).  Its reactions are whole IP
packets appended to the stack's output list and `(conn, kind)` events
appended to the stack's event list.  This module holds the TCB (RFC 9293
§3.3.1: `Connection.__slots__`) and:

* the segment-arrival rules of RFC 9293 §3.10.7.4 (all synchronized states,
  simultaneous close, TIME-WAIT for 2*MSL), with RFC 5961 challenge ACKs for
  RSTs, SYNs and ACKs that are in the window but not exact, and header
  prediction for in-order data and pure ACKs (`_fast_path`);
* RFC 7323 PAWS (sparing overtaken pure duplicate ACKs, `_disordered_ack`)
  and TS.Recent;
* the ACK processing of the fifth step (`_on_ack`), with RFC 5681 slow
  start and congestion avoidance inline because they run for every ACK,
  handing over to the loss recovery at the points recovery.py names;
* FIN and RST processing, the user calls, urgent data (RFC 9293 §3.8.5),
  and path-MTU updates from ICMP (RFC 1191, RFC 8201; RFC 5927 checks).

The rest of a connection lives beside it, one concern per module, as
mixins of `Connection` (no state of their own) or as objects it holds:
handshake.py (SYNs, SYN-SENT, option negotiation, the step to ESTABLISHED),
output.py (segments, `_output` with Nagle and SWS avoidance, persist,
retransmission), receive.py (text delivery, reassembly, the SACK blocks
and window we advertise, delayed ACKs), timers.py (`Timer`, RTO,
keep-alive, user timeout), rtt.py (`self.rtt`, RFC 6298), and
`self.recovery`, chosen once at ESTABLISHED (recovery.py):
sack_recovery.py (RFC 6675, with RFC 8985 RACK-TLP in rack.py) when SACK
was negotiated, newreno.py (RFC 5681 fast retransmit, RFC 6582 NewReno)
when it was not.

Sequence numbers are kept *unwrapped* (see seq.py) and wrapped on the wire.
The connection never reads a clock or a random source and holds no closures
or bound methods: it can be deep-copied or pickled at any moment.  It must
never touch other connections or the stack's tables except through the few
`stack._...` hooks used here (output lists, stats, removal, the listener's
accept queue, the challenge-ACK budget).
"""

from __future__ import annotations

from .errors import ConnectionAborted, ConnectionReset, HostUnreachable, InvalidState
from .handshake import Handshake
from .options import ConnOptions
from .output import Output
from .receive import Receive
from .rtt import RttEstimator
from .segment import ACK, FIN, RST, SYN, URG, build_segment
from .seq import HALF, MASK, unwrap
from .states import (CLOSE_WAIT, CLOSED, CLOSING, ESTABLISHED, EV_ACCEPT, EV_CLOSED, EV_CONNECTED,
                     EV_EOF, EV_ERROR, EV_READABLE, EV_REFUSED, EV_RESET, EV_URGENT, EV_WRITABLE,
                     FIN_WAIT_1, FIN_WAIT_2, LAST_ACK, LISTEN, RECEIVING, SYN_RECEIVED, SYN_SENT,
                     SYNCHRONIZED, TIME_WAIT)
from .timers import INF, T_FINWAIT2, T_PERSIST, T_RTX, T_TIMEWAIT, Timers

__all__ = [
    "Connection", "INF",
    "CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2",
    "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT",
    "EV_READABLE", "EV_WRITABLE", "EV_ACCEPT", "EV_CONNECTED", "EV_REFUSED", "EV_RESET",
    "EV_EOF", "EV_ERROR", "EV_CLOSED", "EV_URGENT",
]


class Connection(Handshake, Output, Receive, Timers):
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
        # RTT / RTO (RFC 6298): an RttEstimator
        "rtt", "syn_retransmitted",
        # congestion control (RFC 5681), and the loss recovery chosen at
        # ESTABLISHED (SackRecovery or NewRenoRecovery; None before)
        "cwnd", "ssthresh", "ca_acc", "recovery",
        # timers (timers.py)
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
        self.ttl = stack.ttl
        # Segmentation and checksum offload (see Stack): segments of up to
        # _OFFLOAD_PAYLOAD bytes leave as (packet, gso_size) pairs whose TCP
        # checksum field holds only the pseudo-header sum.
        self.offload = stack.offload
        # Partial sum of the constant IPv4 header words (version/IHL, DF, TTL,
        # protocol, addresses); the total length is added per packet.
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

        self.rtt = RttEstimator(options.initial_rto)
        self.syn_retransmitted = False

        self.cwnd = 0
        self.ssthresh = 1 << 30   # RFC 5681 §3.1: arbitrarily high
        self.ca_acc = 0
        self.recovery = None      # chosen in _established, once SACK is settled

        self.t_rtx = INF
        self.rtx_kind = T_RTX     # what t_rtx runs (timers.Timer)
        self.t_dack = INF
        self.t_keep = INF
        self.t_rack = INF         # the loss recovery's timer (RACK reordering / TLP)
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

    def _event(self, kind: str) -> None:
        self.events.append((self, kind))

    def _tsval(self, now: float) -> int:
        # RFC 7323 §5.4: a millisecond clock with a random per-connection offset.
        return (int(now * 1000) + self.ts_offset) & MASK

    def _challenge_ack(self, now: float) -> None:
        # RFC 5961 §7: a per-stack budget keeps challenge ACKs from being an
        # amplifier.
        if self.stack._challenge_ack_allowed(now):
            self.stats.challenge_acks += 1
            self._send_ack(now)

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
                self._syn_acked(now, seg)
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
        if flags & URG and state in RECEIVING and not self.fin_rcvd:
            up = seg_seq + seg.urg
            if up > self.rcv_up:
                self.rcv_up = up
                self._event(EV_URGENT)

        # (CLOSE-WAIT, CLOSING and LAST-ACK have seen the FIN: ignore text.)
        if state in RECEIVING and (payload or flags & FIN):
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
        return (self.ts_recent - seg.tsval) & MASK <= int(self.rtt.rto * 1000)

    def _fast_path(self, now: float, seg) -> bool:
        """The in-order, in-window, flag-free segment of a bulk transfer in
        ESTABLISHED (header prediction).  Returns False, having changed
        nothing, when the general path is needed.  The delivery of in-order
        text repeats `Receive._on_text` inline: no call per segment."""
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
        if ack != una or wnd != self.snd_wnd or self.snd_max != una or self.rtx_kind is not T_RTX:
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

    def _on_reset(self, now: float) -> None:
        state = self.state
        if state == SYN_RECEIVED:
            if self.passive:
                # Back to LISTEN: the embryonic connection just goes away.
                self._terminate()
                return
            self._refused()
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

    def _on_ack(self, now: float, seg, seq: int, ack: int, flags: int) -> None:
        """RFC 9293 §3.10.7.4 fifth step for an acceptable ACK: advance
        SND.UNA, grow cwnd, take an RTT sample, manage the retransmission
        timer, update the send window; the loss recovery is told at the
        points its interface names (recovery.py)."""
        una = self.snd_una
        rec = self.recovery
        if seg.sack is not None:
            rec.on_sack(self, now, seg.sack)
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
            # Congestion control: during a recovery the recovery sets cwnd;
            # otherwise RFC 5681 growth, inline because it runs per ACK.
            if not rec.on_ack(self, now, ack, acked):
                smss = self.smss
                if self.cwnd < self.ssthresh:
                    # RFC 5681 (2).  With offload one ACK covers a whole
                    # multi-segment packet (the receiver coalesces them), so
                    # count every byte it acknowledges (RFC 3465 §2.3 byte
                    # counting, as Linux counts segments).
                    self.cwnd += acked if acked < smss or self.offload else smss
                else:
                    self.ca_acc += acked                            # RFC 5681 (3), byte counting
                    if self.ca_acc >= self.cwnd:
                        self.ca_acc -= self.cwnd
                        self.cwnd += smss
            # RTT: timestamps echo the segment that triggered this ACK, so
            # retransmissions cannot confuse them (RFC 7323 §4); without
            # timestamps, Karn's rule: time only never-retransmitted data.
            rtt = self.rtt
            if self.ts_ok:
                if seg.tsecr:
                    rtt.sample(((int(now * 1000) + self.ts_offset - seg.tsecr) & MASK) / 1000.0,
                               self.options)
            elif rtt.timed_seq is not None and ack > rtt.timed_seq:
                rtt.sample(now - rtt.timed_at, self.options)
                rtt.timed_seq = None
            # RFC 6298 (5.2)/(5.3): stop or restart the retransmission timer.
            if self.rtx_kind is T_RTX:
                if ack >= self.snd_max:
                    self.t_rtx = INF
                else:
                    self.t_rtx = now + rtt.rto
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
            dupack = True
            rec.on_dupack(self, now)

        # RFC 9293 §3.10.7.4 fifth: window update.
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.rtx_kind is T_PERSIST:
                self.rtx_kind = T_RTX
                self.persist_shift = 0
                self.t_rtx = now + self.rtt.rto if self.snd_max > self.snd_una else INF

        rec.after_ack(self, now, ack, dupack)

    def _our_fin_acked(self, now: float) -> None:
        state = self.state
        if state == FIN_WAIT_1:
            self.state = FIN_WAIT_2
            self.t_rtx = INF
            if self.user_closed and self.read_shut:
                # The user cannot read any more: don't wait forever for a FIN.
                self.rtx_kind = T_FINWAIT2
                self.t_rtx = now + self.options.fin_wait2_timeout
        elif state == CLOSING:
            self._enter_time_wait(now)
        elif state == LAST_ACK:
            self._terminate()

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self.rtx_kind = T_TIMEWAIT
        self.t_rtx = now + 2 * self.options.msl
        self.t_dack = INF
        self.t_keep = INF
        self.t_rack = INF

    # ------------------------------------------------------------ FIN

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
        if self.state == FIN_WAIT_2 and self.rtx_kind is not T_FINWAIT2:
            self.rtx_kind = T_FINWAIT2
            self.t_rtx = now + self.options.fin_wait2_timeout

    def abort(self, now: float) -> None:
        """RFC 9293 §3.10.5 ABORT: RST in synchronized states, then CLOSED."""
        if self.state == CLOSED:
            return
        if self.state in SYNCHRONIZED and self.state != TIME_WAIT or self.state == SYN_RECEIVED:
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
            "ssthresh": self.ssthresh, "srtt": self.rtt.srtt, "rto": self.rtt.rto,
            "smss": self.smss, "snd_wscale": self.snd_wscale, "rcv_wscale": self.rcv_wscale,
            "sack": self.sack_ok, "timestamps": self.ts_ok,
            "unsent": self.snd_base + len(self.sndbuf) - self.snd_nxt,
            "unacked": self.snd_max - self.snd_una, "unread": len(self.rcvbuf),
            "segs_in": self.segs_in, "segs_out": self.segs_out,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "retransmits": self.retransmits, "fast_retransmits": self.fast_retransmits,
            "rto_timeouts": self.rto_timeouts,
            "in_recovery": self.recovery is not None and self.recovery.in_recovery,
        }
