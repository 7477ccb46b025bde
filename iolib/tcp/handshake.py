"""Opening a connection: SYNs, option negotiation, and the step to
ESTABLISHED.

RFC 9293 §3.10.1 (OPEN: our SYN), §3.10.7.2 (a SYN at a listener: our
SYN-ACK), §3.10.7.3 (segments in SYN-SENT, including simultaneous open,
§3.5 figure 8), and the options a SYN negotiates: MSS (§3.7.1), window
scale and timestamps (RFC 7323, both only when both sides sent them),
SACK-permitted (RFC 2018).  The ACK that completes the handshake gives the
first RTT sample (Karn: not if the SYN was resent, RFC 6298 §3) and, after
a lost SYN, a 3 s RTO and a one-segment initial window (RFC 6298 (5.7),
RFC 5681 §3.1).  On the way to ESTABLISHED the connection picks its loss
recovery, once (recovery.py).

`Handshake` is the part of `Connection` that does this (a mixin: its state
is the connection's).  Synchronized states are connection.py's; nothing
here reads a clock or a random source (the timestamp offset is given).
"""

from __future__ import annotations

from .errors import ConnectionRefused
from .newreno import NewRenoRecovery
from .rack import Rack
from .sack_recovery import SackRecovery
from .segment import ACK, FIN, RST, SYN, opt_mss, opt_sack_ok, opt_timestamp, opt_wscale
from .seq import MASK, unwrap
from .states import (ESTABLISHED, EV_ACCEPT, EV_CONNECTED, EV_READABLE, EV_REFUSED, EV_WRITABLE,
                     SYN_RECEIVED, SYN_SENT)
from .timers import INF, T_RTX, T_SYN

# The timestamp option as we send it, with its two NOPs: what it takes from
# every segment's payload room.
TS_LEN = 12


class Handshake:
    """SYN processing of `Connection` (a mixin: no state of its own)."""

    __slots__ = ()

    def open_active(self, now: float, ts_offset: int) -> None:
        """Send our SYN (RFC 9293 §3.10.1, OPEN call in CLOSED state)."""
        opts = self.options
        self.state = SYN_SENT
        self.ts_offset = ts_offset
        self.rcv_wscale = self._rcv_wscale_for(opts.rcvbuf) if opts.window_scaling else 0
        self._send_first_syn(now)

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
        self._send_first_syn(now)

    def _send_first_syn(self, now: float) -> None:
        """Send our SYN (or SYN-ACK) and start its timer; the user timeout
        counts from here."""
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(now)
        self.rtx_kind = T_SYN
        self.rtx_start = now
        self.t_rtx = now + self.rtt.rto

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
        self.rcv_mss = min(self.mtu_mss, max(self.peer_mss, 536)) - (TS_LEN if self.ts_ok else 0)
        self.cwnd = self._initial_cwnd()

    def _rcv_wscale_for(self, bufsize: int) -> int:
        shift = 0
        while (bufsize >> shift) > 0xFFFF and shift < 14:
            shift += 1
        return shift

    def _set_smss(self) -> None:
        base = min(self.peer_mss, self.mtu_mss)
        self.smss = max(base - (TS_LEN if self.ts_ok else 0), 64)

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

    def _syn_acked(self, now: float, seg) -> None:
        """The peer acknowledged our SYN: stop its timer, take the first RTT
        sample from this ACK (its timestamp echo, or else the SYN's send
        time unless the SYN was resent: Karn, RFC 6298 §3), and become
        ESTABLISHED."""
        self.t_rtx = INF
        self.rtx_kind = T_RTX
        if self.ts_ok and seg.tsecr:
            self.rtt.sample(((self._tsval(now) - seg.tsecr) & MASK) / 1000.0, self.options)
        elif not self.syn_retransmitted:
            self.rtt.sample(now - self.rtx_start, self.options)
        self._established(now)

    def _established(self, now: float) -> None:
        self.state = ESTABLISHED
        # SACK is settled now, and so is the loss recovery, for good: no
        # later decision needs to ask whether SACK was negotiated.
        if self.sack_ok:
            self.recovery = SackRecovery(self.iss, Rack(self.iss))
        else:
            self.recovery = NewRenoRecovery(self.iss)
        if self.syn_retransmitted:
            # RFC 6298 (5.7) and RFC 5681 §3.1: a lost SYN means a 3 s RTO
            # (unless measured since) and a one-segment initial window.
            self.rtt.syn_lost(self.options.min_rto)
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
                self._refused()
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
            self._syn_acked(now, seg)
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
            self.rtx_kind = T_SYN
            self.t_rtx = now + self.rtt.rto

    def _refused(self) -> None:
        self.error = ConnectionRefused(f"connection to {self.remote[0]} port {self.rport} refused")
        self._event(EV_REFUSED)
