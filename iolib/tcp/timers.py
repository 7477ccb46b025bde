"""A connection's timers: what each deadline slot is running, and what
happens when one passes.

A connection keeps four deadlines, so that the stack's timer heap needs one
key per connection (`deadline()`):

* `t_rtx`, whose purpose is `Connection.rtx_kind`: the SYN retransmission
  (RFC 9293 §3.8.1, RFC 6298 (5.7)), the retransmission timer (RFC 6298 §5),
  the persist timer probing a zero window (RFC 9293 §3.8.6.1, also the
  sender's SWS override), TIME-WAIT's 2*MSL, and the FIN-WAIT-2 timeout of
  a connection the user closed;
* `t_rack`, whose purpose is `Rack.timer` (SACK connections only): RACK's
  reordering timer (RFC 8985 §6.3) or the tail loss probe (§7.2);
* `t_dack`: the delayed ACK (RFC 9293 §3.8.6.3; -INF means "at the next
  timer() call");
* `t_keep`: keep-alive (RFC 1122 §4.2.3.6) and its probes.

The user timeout (RFC 9293 §3.8.3) is measured from `rtx_start` when the
retransmission timer fires.  `Timers` is the part of `Connection` that runs
expired deadlines; it holds no state of its own (Connection's __slots__ has
it).  Nothing here reads a clock: `now` comes from the stack's caller, and
a timer is only ever armed by writing one of the four fields.
"""

from __future__ import annotations

import enum

from .errors import ConnectionTimedOut
from .segment import ACK
from .states import (CLOSE_WAIT, CLOSED, ESTABLISHED, EV_ERROR, EV_READABLE, EV_WRITABLE,
                     FIN_WAIT_2, SYN_RECEIVED, SYN_SENT, SYNCHRONIZED, TIME_WAIT)

INF = float("inf")


class Timer(enum.Enum):
    """What `t_rtx` or `t_rack` is running."""
    SYN = "syn"               # t_rtx: our SYN or SYN-ACK is unanswered
    RTX = "rtx"               # t_rtx: RFC 6298 retransmission timer
    PERSIST = "persist"       # t_rtx: zero-window probe / SWS override
    TIMEWAIT = "timewait"     # t_rtx: 2*MSL in TIME-WAIT
    FINWAIT2 = "finwait2"     # t_rtx: FIN-WAIT-2 of a closed socket
    REORDER = "reorder"       # t_rack: RFC 8985 §6.3 reordering timer
    PROBE = "probe"           # t_rack: RFC 8985 §7.2 tail loss probe


# The members as plain module names, compared with `is`: in CPython 3.11 a
# `Timer.RTX` lookup goes through the enum metaclass and costs several times
# a global, and the ACK fast path tests `rtx_kind` on every segment.
T_SYN = Timer.SYN
T_RTX = Timer.RTX
T_PERSIST = Timer.PERSIST
T_TIMEWAIT = Timer.TIMEWAIT
T_FINWAIT2 = Timer.FINWAIT2
T_REORDER = Timer.REORDER
T_PROBE = Timer.PROBE


class Timers:
    """The timer handlers of `Connection` (a mixin: no state of its own)."""

    __slots__ = ()

    def deadline(self) -> float:
        """The earliest of this connection's timers (the stack's timer heap
        keys on it). Stack._after and Stack.receive's fast path inline
        this: a timer added here must be added there."""
        t = self.t_rtx
        if self.t_dack < t:
            t = self.t_dack
        if self.t_keep < t:
            t = self.t_keep
        if self.t_rack < t:
            t = self.t_rack
        return t

    def on_timer(self, now: float) -> None:
        """Run whichever of this connection's timers are due."""
        if self.t_dack <= now:
            self.t_dack = INF
            if self.state in SYNCHRONIZED and self.state != TIME_WAIT:
                self._send_ack(now)
        if self.t_rtx <= now:
            self.t_rtx = INF
            kind = self.rtx_kind
            if kind is T_TIMEWAIT or kind is T_FINWAIT2:
                self._terminate()
                return
            if kind is T_PERSIST:
                self._on_persist(now)
            else:
                self._on_rto(now)
            if self.state == CLOSED:
                return
        if self.t_rack <= now:
            self.t_rack = INF
            self.recovery.on_timer(self, now)   # only SACK recovery arms t_rack
        if self.t_keep <= now:
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        """RFC 6298 §5 (5.4)-(5.6), RFC 5681 §3.1 (4), RFC 6582 §3.2 (6);
        what is resent is up to the loss recovery."""
        opts = self.options
        # The same sum the deadline below is set to: `now - rtx_start` can
        # round to just under user_timeout when now == rtx_start +
        # user_timeout, and the timer would then be re-armed for `now`
        # and fire again without end.
        if now >= self.rtx_start + opts.user_timeout:
            self._timed_out("user timeout expired with data unacknowledged")
            return
        if self.snd_max == self.snd_una and self.state not in (SYN_SENT, SYN_RECEIVED):
            return
        self.rto_timeouts += 1
        self.stats.rto_timeouts += 1
        rtt = self.rtt
        if self.state in (SYN_SENT, SYN_RECEIVED):
            self.syn_retransmitted = True
            rtt.backoff(opts.max_rto)
            self.retransmits += 1
            self.stats.retransmits += 1
            self._send_syn(now)
            self.t_rtx = min(now + rtt.rto, self.rtx_start + opts.user_timeout)
            return
        smss = self.smss
        flight = self.snd_max - self.snd_una
        rec = self.recovery
        if self.rto_timeouts == 1 or not rec.in_recovery:
            self.ssthresh = max(flight // 2, 2 * smss)
        self.cwnd = smss
        self.ca_acc = 0
        rtt.backoff(opts.max_rto)
        rec.on_rto(self, now)
        self.t_rtx = min(now + rtt.rto, self.rtx_start + opts.user_timeout)
        self.rtx_kind = T_RTX

    def _timed_out(self, why: str) -> None:
        err = self.soft_error
        detail = f" (last ICMP error: {err})" if err else ""
        self.error = ConnectionTimedOut(f"{why}{detail}")
        self.rcvbuf.clear()
        self._event(EV_ERROR)
        self._event(EV_READABLE)
        self._event(EV_WRITABLE)
        self._terminate()

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
