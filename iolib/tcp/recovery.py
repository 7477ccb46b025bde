"""The loss-recovery interface: what ACK processing, output and the timers
of a connection call.

A connection picks its recovery once, when it becomes ESTABLISHED:
`SackRecovery` (sack_recovery.py: RFC 6675 with RFC 8985 RACK-TLP) when
SACK was negotiated, `NewRenoRecovery` (newreno.py: RFC 5681 fast
retransmit, RFC 6582 NewReno) when it was not.  Both keep the state that
RFC 5681 and RFC 6582 share (`in_recovery`, `recover`, `dupacks`) and
answer the same calls, each at a fixed point of the connection's ACK
processing (RFC 9293 §3.10.7.4 fifth step):

* `on_sack(conn, now, blocks)`: the ACK carries SACK blocks (first of all);
* `on_ack(conn, now, ack, acked)`: SND.UNA has just advanced to `ack`;
  returns True when recovery set cwnd for this ACK, so that the connection
  skips slow start / congestion avoidance;
* `on_dupack(conn, now)`: an RFC 5681 §2 duplicate ACK;
* `after_ack(conn, now, ack, dupack)`: after the window update;
* `on_rto(conn, now)`: the retransmission timer expired with data
  outstanding (RFC 6298 backoff and the loss window are already done);
  resend;
* `on_sent(conn, now)` / `on_retransmitted(conn, now, start, end)`: a
  segment went out, so that a transmission log can follow;
* `on_timer(conn, now)`: `conn.t_rack` passed.

Recovery objects are plain data (__slots__, no reference to the connection
or the stack: the connection is passed in), so a connection deep-copies and
pickles with them.  They change the connection's congestion window and send
through its `_output` / `_retransmit`, and must never read a clock, touch
another connection, or send anything but retransmissions and the new data
the congestion window lets out.
"""

from __future__ import annotations


class LossRecovery:
    """What every recovery keeps, and the calls a recovery may ignore."""

    __slots__ = ("in_recovery", "recover", "dupacks")

    def __init__(self, iss: int):
        self.in_recovery = False
        self.recover = iss        # RFC 6582 `recover` / RFC 6675 RecoveryPoint
        self.dupacks = 0

    def on_sack(self, conn, now: float, blocks) -> None:
        pass

    def on_ack(self, conn, now: float, ack: int, acked: int) -> bool:
        raise NotImplementedError

    def on_dupack(self, conn, now: float) -> None:
        raise NotImplementedError

    def after_ack(self, conn, now: float, ack: int, dupack: bool) -> None:
        pass

    def on_rto(self, conn, now: float) -> None:
        # RFC 6582 §4 / RFC 6675 §5.1: a timeout ends any recovery, and no
        # new one starts until what is outstanding now has been ACKed.
        self.in_recovery = False
        self.recover = conn.snd_max
        self.dupacks = 0

    def on_sent(self, conn, now: float) -> None:
        pass

    def on_retransmitted(self, conn, now: float, start: int, end: int) -> None:
        pass

    def on_timer(self, conn, now: float) -> None:
        pass
