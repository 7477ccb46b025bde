"""Loss recovery for connections without SACK: RFC 5681 §3.2 fast
retransmit and fast recovery with RFC 6582 NewReno partial ACKs, RFC 3042
limited transmit, and go-back-N after a timeout.

Without SACK the sender knows only the cumulative ACK: three duplicate
ACKs resend the segment at SND.UNA, each partial ACK during the recovery
resends the next one, and a timeout resends everything from SND.UNA.  Like
every recovery (see recovery.py) it never reads a clock and never touches
anything but its own state and its connection's.
"""

from __future__ import annotations

from .recovery import LossRecovery


class NewRenoRecovery(LossRecovery):
    """RFC 5681 / RFC 6582 state: the shared `in_recovery`, `recover`
    and `dupacks` are all it needs."""

    __slots__ = ()

    def on_ack(self, conn, now: float, ack: int, acked: int) -> bool:
        self.dupacks = 0
        if not self.in_recovery:
            return False
        smss = conn.smss
        if ack >= self.recover:
            # RFC 6582 §3.2 step 3, full acknowledgment.
            self.in_recovery = False
            flight = conn.snd_max - ack
            conn.cwnd = min(conn.ssthresh, max(flight, smss) + smss)
        else:
            # Partial acknowledgment: retransmit the next hole, deflate by
            # the amount acked, add back one SMSS.
            conn._retransmit(now, ack, None)
            conn.cwnd = max(conn.cwnd - acked, smss) + (smss if acked >= smss else 0)
        return True

    def on_dupack(self, conn, now: float) -> None:
        """RFC 5681 §3.2, RFC 6582 §3.2."""
        self.dupacks += 1
        smss = conn.smss
        if not self.in_recovery:
            if self.dupacks == 3 and conn.snd_una >= self.recover:
                # RFC 5681 §3.2 steps 2-4 with RFC 6582 §3.2 step 2.
                flight = conn.snd_max - conn.snd_una
                conn.ssthresh = max(flight // 2, 2 * smss)
                self.recover = conn.snd_max
                self.in_recovery = True
                conn.fast_retransmits += 1
                conn.stats.fast_retransmits += 1
                conn._retransmit(now, conn.snd_una, None)
                conn.cwnd = conn.ssthresh + 3 * smss
                conn.rtx_start = now
                conn.t_rtx = now + conn.rtt.rto
            elif self.dupacks < 3 and conn.sndbuf:
                # RFC 3042 limited transmit: each of the first two duplicate
                # ACKs may clock out one new segment (flight <= cwnd + 2*SMSS).
                conn._output_with_cwnd(now, conn.cwnd + self.dupacks * smss)
        else:
            conn.cwnd += smss   # RFC 5681 step 5: inflate
            conn._output(now)

    def on_rto(self, conn, now: float) -> None:
        LossRecovery.on_rto(self, conn, now)
        # Go back N: SND.NXT returns to the left edge, and _output resends
        # the rest as the ACKs of the resent data open cwnd again.
        conn.snd_nxt = conn.snd_una
        conn.snd_nxt = conn._retransmit(now, conn.snd_una, None)
