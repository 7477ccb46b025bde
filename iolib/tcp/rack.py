"""RACK-TLP (RFC 8985): time-based loss detection for SACK connections.

* RACK (§6.2): data sent before the most recently sent data that has been
  delivered, and longer ago than that data's RTT plus a reordering window
  of min_RTT / 4, is marked lost, even if it was a retransmission.  Without
  this a lost retransmission waits for the RTO (RFC 6675 never resends
  below HighRxt).  Reordering shorter than the window, or than DupThresh
  segments, causes no recovery.  What is not overdue yet is checked again
  by the reordering timer (§6.3, `Connection.t_rack`);
* TLP (§7): outside recovery a tail loss probe is sent 2*SRTT after the
  last ACK, so that a lost tail is reported by SACK rather than found by
  the RTO.  We do not do the §7.4 detection of losses repaired by the probe
  alone (such a loss goes without a cwnd reduction), nor D-SACK-driven
  adaptation of the reordering window.

A `Rack` is owned by a `SackRecovery` (sack_recovery.py), whose
transmission log it reads and marks; it takes RACK.min_RTT and SRTT from
the connection's `RttEstimator`.  It arms only `t_rack`, sends only through
the connection's `_output` / `_retransmit`, and never reads a clock.
"""

from __future__ import annotations

from .sack_recovery import EVER_RETRANS, LOST, RETRANS, SACKED
from .states import SENDING
from .timers import INF, T_PROBE, T_REORDER, T_RTX

# RFC 8985 §6.2: the smallest reordering window, our timestamp clock's tick.
RACK_MIN_REO_WND = 0.001
# RFC 8985 §7.2 WCDelAckT: the worst-case delayed-ACK timer of the peer.
TLP_DELAYED_ACK = 0.2
# A floor on the probe timeout, so that a tiny or idealized SRTT does not
# make every pause in the ACK clock a probe (Linux uses the same 10 ms).
TLP_MIN_PTO = 0.01


class Rack:
    """RACK.xmit_ts, RACK.end_seq, RACK.rtt, TLP.end_seq, and what
    `t_rack` is running."""

    __slots__ = ("xmit_ts", "end_seq", "rtt", "timer", "tlp_end")

    def __init__(self, iss: int):
        self.xmit_ts = -INF
        self.end_seq = iss
        self.rtt = 0.0
        self.timer = T_REORDER    # what t_rack runs: T_REORDER (§6.3) or T_PROBE (§7.2)
        self.tlp_end = None       # TLP.end_seq while a probe is unanswered

    def delivered(self, now: float, entry, est) -> None:
        """RFC 8985 §6.2 step 2: remember the most recently sent data that
        has reached the peer (a log `entry` just SACKed or ACKed)."""
        ts = entry[2]
        rtt = now - ts
        if entry[3] & EVER_RETRANS:
            # The ACK may be for an earlier transmission: trust it only if it
            # came later than any round trip could (RACK.min_RTT).
            if est.min_rtt is None or rtt < est.min_rtt:
                return
        elif est.min_rtt is None or rtt < est.min_rtt:
            est.min_rtt = rtt
        if ts > self.xmit_ts or (ts == self.xmit_ts and entry[1] > self.end_seq):
            self.xmit_ts = ts
            self.end_seq = entry[1]
            self.rtt = rtt

    def detect_losses(self, conn, now: float, log) -> None:
        """§6.2 steps 4-5 over the transmission log, and §6.3: arm the
        reordering timer for what is not overdue yet."""
        est = conn.rtt
        if self.xmit_ts == -INF or est.min_rtt is None:
            return
        # Reordering window min_RTT / 4 (bounded by SRTT), but at least our
        # 1 ms clock granularity so that a round trip too short to measure
        # does not turn all reordering into loss.  A range sent before the
        # RACK segment is lost once it has been out longer than
        # RACK.rtt + reo_wnd.
        reo_wnd = est.min_rtt / 4
        if est.srtt is not None and reo_wnd > est.srtt:
            reo_wnd = est.srtt
        if reo_wnd < RACK_MIN_REO_WND:
            reo_wnd = RACK_MIN_REO_WND
        wait = self.rtt + reo_wnd
        rack_ts, rack_end = self.xmit_ts, self.end_seq
        # §6.3: what is not overdue yet is checked again when it is, even if
        # no ACK comes by then.
        timeout = INF
        for entry in log:
            marks = entry[3]
            if marks & SACKED:
                continue
            ts = entry[2]
            if ts > rack_ts or (ts == rack_ts and entry[1] >= rack_end):
                if not marks & EVER_RETRANS:
                    # First transmissions go out in sequence order, so
                    # everything above this was sent later as well.
                    break
                continue
            if marks & LOST and not marks & RETRANS:
                continue          # already waiting to be resent
            due = ts + wait
            if due <= now:
                entry[3] = (marks | LOST) & ~RETRANS
            elif due < timeout:
                timeout = due
        if timeout != INF or self.timer is T_REORDER:
            conn.t_rack = timeout
            self.timer = T_REORDER

    def arm_probe(self, conn, now: float, recovering: bool) -> None:
        """§7.2: outside recovery (`recovering` is false), with no
        reordering timer and no probe pending, schedule a tail loss probe
        2*SRTT ahead (plus the peer's worst-case delayed ACK when one
        segment is out), if that is sooner than the RTO."""
        if self.timer is T_REORDER and conn.t_rack != INF:
            return
        conn.t_rack = INF
        srtt = conn.rtt.srtt
        if recovering or self.tlp_end is not None or srtt is None \
                or conn.snd_max == conn.snd_una or conn.rtx_kind is not T_RTX \
                or conn.state not in SENDING:
            return
        pto = 2 * srtt
        if pto < TLP_MIN_PTO:
            pto = TLP_MIN_PTO
        if conn.snd_max - conn.snd_una <= conn.smss:
            pto += TLP_DELAYED_ACK
        if now + pto < conn.t_rtx:
            conn.t_rack = now + pto
            self.timer = T_PROBE

    def send_probe(self, conn, now: float) -> None:
        """§7.3: send one new segment if the peer's window allows, else
        resend the last one, so that the ACK it elicits carries the SACK
        information RACK needs to detect a tail loss without the RTO."""
        before = conn.snd_max
        if conn.snd_base + len(conn.sndbuf) > conn.snd_nxt:
            conn._output_with_cwnd(now, conn.snd_nxt - conn.snd_una + conn.smss)
        if conn.snd_max == before:
            start = conn.snd_max - conn.smss
            if start < conn.snd_una:
                start = conn.snd_una
            conn._retransmit(now, start, conn.snd_max)
        self.tlp_end = conn.snd_max
        conn.t_rack = INF                   # §7.2: one probe until an ACK (sending may have re-armed it)
        conn.t_rtx = now + conn.rtt.rto     # §7.3: the RTO runs again from the probe
