"""RFC 6298 round-trip time estimation and the retransmission timeout.

An `RttEstimator` turns RTT samples into SRTT, RTTVAR and RTO (§2, with a
clock granularity G of 1 ms, the timestamp clock), doubles the RTO when the
retransmission timer expires (§5.5), and, for connections without
timestamps, times one segment at a time and forgets that sample when the
segment is resent (Karn's rule, §3).  It also keeps the smallest sample,
RACK.min_RTT (RFC 8985 §6.2).  Where samples come from (timestamp echoes,
the timed segment, the handshake) is the connection's business.

It is plain data owned by one connection: it is handed samples and times,
never reads a clock, and never sends or schedules anything.
"""

from __future__ import annotations


class RttEstimator:
    """SRTT, RTTVAR and RTO of one connection, and its timed segment."""

    __slots__ = ("srtt", "rttvar", "rto", "min_rtt", "timed_seq", "timed_at")

    def __init__(self, initial_rto: float):
        self.srtt = None          # None until the first sample
        self.rttvar = 0.0
        self.rto = initial_rto    # (2.1)
        self.min_rtt = None       # RFC 8985 RACK.min_RTT
        self.timed_seq = None     # without timestamps: first byte of the timed segment
        self.timed_at = 0.0       # ... and when it was sent

    def sample(self, r: float, opts) -> None:
        """RFC 6298 (2.2)-(2.5) for one measurement `r` (seconds)."""
        if r < 0 or r > 120.0:
            return   # a timestamp echo from another incarnation, or a wrapped one
        if self.min_rtt is None or r < self.min_rtt:
            self.min_rtt = r
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        rto = self.srtt + max(0.001, 4 * self.rttvar)
        if rto < opts.min_rto:
            rto = opts.min_rto
        if rto > opts.max_rto:
            rto = opts.max_rto
        self.rto = rto

    def backoff(self, max_rto: float) -> None:
        """(5.5) after the timer expired; the timed segment is about to be
        resent, so (Karn) its sample would be ambiguous."""
        self.rto = min(self.rto * 2, max_rto)
        self.timed_seq = None

    def resent(self, start: int, end: int) -> None:
        """Karn's rule: [start, end) goes out again, so an ACK of the timed
        segment can no longer tell which transmission it answers."""
        if self.timed_seq is not None and start <= self.timed_seq < end:
            self.timed_seq = None

    def syn_lost(self, min_rto: float) -> None:
        """(5.7): after a lost SYN the RTO is 3 s until a sample arrives."""
        if self.srtt is None:
            self.rto = max(3.0, min_rto)
