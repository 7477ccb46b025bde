"""SACK loss recovery: the scoreboard, the transmission log, and RFC 6675.

A SACK connection keeps `sent_log`, its transmission log: sorted,
contiguous `[start, end, xmit_ts, marks]` ranges covering [SND.UNA,
SND.MAX), each recording when it was last sent and whether it is SACKed,
presumed lost, or has a retransmission in flight.  This is RFC 6675's
scoreboard with per-range marks instead of the single HighRxt pointer,
which lets a retransmission be declared lost again (by RACK, rack.py).
`scoreboard` keeps the SACKed blocks themselves, merged (RFC 2018 §5).

* IsLost (RFC 6675 §4): data below which DupThresh (3) discontiguous SACKed
  ranges or more than (DupThresh - 1) * SMSS SACKed bytes lie is marked
  lost; RACK (rack.py) marks what is overdue in time;
* pipe (RFC 6675 §4 SetPipe): per un-SACKed byte, 1 unless it is marked
  lost, plus 1 if a retransmission of it is in flight;
* recovery (RFC 6675 §5) starts on DupThresh duplicate ACKs or when any data
  is marked lost, sets cwnd = ssthresh = FlightSize / 2, resends the first
  lost segment, then sends NextSeg() (rules 1-4, including the rescue
  retransmission) while cwnd - pipe >= SMSS; a cumulative ACK covering
  RecoveryPoint ends it with cwnd = ssthresh;
* after an RTO (RFC 6675 §5.1) everything outstanding is marked lost and the
  SACK information is forgotten (RFC 2018 §8); lost data is then resent by
  the same NextSeg() loop under slow start, skipping what new SACKs report.

SACK blocks below SND.UNA (D-SACK, RFC 2883) or beyond SND.MAX are ignored.
This module decides what to resend and when; it sends only through the
connection's `_output` / `_retransmit`, never reads a clock, and never
touches the receive side (the SACK blocks *we* report are receive.py's).
"""

from __future__ import annotations

from bisect import bisect_right
from operator import itemgetter

from .recovery import LossRecovery
from .seq import unwrap
from .states import SENDING
from .timers import INF, T_PROBE

# RFC 6675 §2 / RFC 5681 §3.2: duplicate ACKs (and SACKed segments) that
# signal a loss rather than reordering.
DUP_THRESH = 3

# Marks on a `sent_log` range (shared with rack.py).
SACKED = 1        # the peer holds it (RFC 2018)
LOST = 2          # presumed lost: IsLost(), RACK, or an RTO
RETRANS = 4       # a retransmission of it is in flight (counts in pipe)
EVER_RETRANS = 8  # sent more than once: its delivery time is ambiguous (RFC 8985 §6.2 step 2)
_START = itemgetter(0)


class SackRecovery(LossRecovery):
    """RFC 6675 loss recovery over a transmission log, with RACK-TLP
    (`rack`, a rack.Rack) detecting losses in time.  The Rack is handed in
    by the connection: rack.py reads this module's marks, so this module
    does not import it."""

    __slots__ = ("scoreboard", "sent_log", "lost_edge", "rescue_rxt", "rack")

    def __init__(self, iss: int, rack):
        LossRecovery.__init__(self, iss)
        self.scoreboard = []      # sorted, disjoint [(start, end)] SACKed by the peer
        self.sent_log = []        # [start, end, xmit_ts, marks] over [SND.UNA, SND.MAX)
        self.lost_edge = iss      # IsLost() marks have been applied below this
        self.rescue_rxt = None    # RFC 6675 RescueRxt
        self.rack = rack

    # ------------------------------------------------------------ ACK processing

    def on_sack(self, conn, now: float, blocks) -> None:
        """Merge the blocks into the scoreboard and mark the log."""
        una, top = conn.snd_una, conn.snd_max
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
            self._log_sacked(conn, now, s, e)
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

    def on_ack(self, conn, now: float, ack: int, acked: int) -> bool:
        self.dupacks = 0
        board = self.scoreboard
        if board and board[0][0] < ack:
            self.scoreboard = [(max(s, ack), e) for s, e in board if e > ack]
        log = self.sent_log
        if log:
            # Drop what the cumulative ACK covers, noting deliveries for RACK.
            k = self._log_split(ack)
            rack = self.rack
            est = conn.rtt
            for entry in log[:k]:
                if not entry[3] & SACKED:
                    rack.delivered(now, entry, est)
            del log[:k]
        if not self.in_recovery:
            return False
        if ack >= self.recover:
            # RFC 6675 §5 (A); RFC 5681 §3.2 step 6.
            self.in_recovery = False
            conn.cwnd = conn.ssthresh
        return True

    def on_dupack(self, conn, now: float) -> None:
        self.dupacks += 1   # acted on in after_ack, once the window is updated

    def after_ack(self, conn, now: float, ack: int, dupack: bool) -> None:
        rack = self.rack
        if rack.tlp_end is not None and ack >= rack.tlp_end:
            rack.tlp_end = None
        if (self.scoreboard or self.dupacks or conn.snd_una < self.recover) \
                and self.sent_log and conn.state in SENDING:
            self._recover(conn, now, dupack)
        rack.arm_probe(conn, now, self.in_recovery or conn.snd_una < self.recover)

    def on_rto(self, conn, now: float) -> None:
        LossRecovery.on_rto(self, conn, now)
        self.scoreboard = []     # RFC 2018 §8: forget SACK state after a timeout
        # RFC 6675 §5.1: RecoveryPoint = HighData (set above).  Presume
        # everything outstanding lost; SACKs arriving from now on steer the
        # resending (_send_by_pipe) so SACKed data is not sent again.
        for entry in self.sent_log:
            entry[3] = (entry[3] & EVER_RETRANS) | LOST
        self.lost_edge = conn.snd_una
        conn.t_rack = INF
        self.rack.tlp_end = None
        conn._retransmit(now, conn.snd_una, None)

    def on_timer(self, conn, now: float) -> None:
        if self.sent_log and conn.state in SENDING:
            if self.rack.timer is T_PROBE:
                self.rack.send_probe(conn, now)
            else:
                self._recover(conn, now, False)
                self.rack.arm_probe(conn, now, self.in_recovery or conn.snd_una < self.recover)

    # ------------------------------------------------------------ the transmission log

    def on_sent(self, conn, now: float) -> None:
        """Extend the log to SND.MAX with what was just sent."""
        log = self.sent_log
        start = log[-1][1] if log else conn.snd_una
        end = conn.snd_max
        if end <= start:
            return
        if log and log[-1][2] == now and log[-1][3] == 0:
            log[-1][1] = end      # same send time: one range is enough
        else:
            log.append([start, end, now, 0])
        # RFC 8985 §7.2: (re)start the probe timer after sending new data,
        # not only on ACKs.  ACK processing arms it before the ACK's own
        # output: data that output sends after a full ACK (nothing was
        # outstanding then) would otherwise have no probe, and a lost tail
        # of it would wait for the RTO.  A probe's own new data does not
        # re-arm it (send_probe disarms after sending).
        self.rack.arm_probe(conn, now, self.in_recovery or conn.snd_una < self.recover)

    def on_retransmitted(self, conn, now: float, start: int, end: int) -> None:
        self.on_sent(conn, now)   # it may have reached past SND.MAX (more data, a FIN)
        log = self.sent_log
        i = self._log_split(start)
        j = self._log_split(end)
        for k in range(i, j):
            entry = log[k]
            entry[2] = now
            entry[3] = (entry[3] & ~SACKED) | RETRANS | EVER_RETRANS

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

    def _log_sacked(self, conn, now: float, start: int, end: int) -> None:
        log = self.sent_log
        if not log:
            return
        i = self._log_split(start)
        j = self._log_split(end)
        rack = self.rack
        est = conn.rtt
        for k in range(i, j):
            entry = log[k]
            if not entry[3] & SACKED:
                rack.delivered(now, entry, est)
                entry[3] = SACKED
        # Once SACKed, a range's send time no longer matters: merge
        # neighbours so that the log stays about as short as the scoreboard.
        k = i - 1 if i > 0 else 0
        stop = j
        while k < stop and k + 1 < len(log):
            if log[k][3] & SACKED and log[k + 1][3] & SACKED:
                log[k][1] = log[k + 1][1]
                del log[k + 1]
                stop -= 1
            else:
                k += 1

    # ------------------------------------------------------------ RFC 6675

    def _detect_losses(self, conn, now: float) -> None:
        """Mark log ranges lost by RFC 6675 IsLost() and by RACK."""
        log = self.sent_log
        board = self.scoreboard
        if board:
            # RFC 6675 §4 IsLost(): walking the blocks down from the highest,
            # every un-SACKed byte below the block that brings the count to
            # DupThresh blocks or more than (DupThresh - 1) * SMSS bytes is lost.
            limit = (DUP_THRESH - 1) * conn.smss
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
                    if not log[k][3] & (SACKED | LOST):
                        log[k][3] |= LOST
                    k += 1
                self.lost_edge = edge
        self.rack.detect_losses(conn, now, log)

    def _recover(self, conn, now: float, dupack: bool) -> None:
        """RFC 6675 §5 for an ACK (or the RACK timer) with something amiss:
        SACK blocks, duplicate ACKs, or a recovery under way."""
        self._detect_losses(conn, now)
        if not self.in_recovery:
            # RFC 6582 §3.2 step 2 / RFC 6675 §5.1: no new recovery until
            # the data outstanding at the last one (or at an RTO) is ACKed.
            if conn.snd_una >= self.recover and (self.dupacks >= DUP_THRESH
                                                 or self._next_lost(conn.smss) is not None):
                self._enter_recovery(conn, now)
            elif conn.snd_una >= self.recover:
                if dupack and self.dupacks < DUP_THRESH and conn.sndbuf:
                    # RFC 6675 §5 (3) with RFC 3042 limited transmit: each of
                    # the first two duplicate ACKs may clock out one new
                    # segment (flight <= cwnd + 2*SMSS).
                    conn._output_with_cwnd(now, conn.cwnd + self.dupacks * conn.smss)
                return
        self._send_by_pipe(conn, now)

    def _enter_recovery(self, conn, now: float) -> None:
        """RFC 6675 §5 step (4)."""
        smss = conn.smss
        flight = conn.snd_max - conn.snd_una
        self.recover = conn.snd_max                           # (4.1) RecoveryPoint = HighData
        conn.ssthresh = conn.cwnd = max(flight // 2, 2 * smss)   # (4.2), RFC 5681 eq. (4)
        conn.ca_acc = 0
        self.in_recovery = True
        conn.fast_retransmits += 1
        conn.stats.fast_retransmits += 1
        # (4.3) The first segment presumed dropped goes out whatever pipe
        # says.  After DupThresh duplicate ACKs without enough SACK blocks to
        # make IsLost() true, that is the segment at HighACK.
        hole = self._next_lost(smss)
        if hole is None:
            k = self._log_split(conn.snd_una)
            log = self.sent_log
            end = conn.snd_una + smss
            while k < len(log) and log[k][0] < end and not log[k][3] & SACKED:
                log[k][3] |= LOST
                k += 1
            hole = self._next_lost(smss)
            if hole is None:
                return
        self.rescue_rxt = conn._retransmit(now, hole[0], hole[1])
        conn.rtx_start = now
        conn.t_rtx = now + conn.rtt.rto

    def _pipe(self) -> int:
        """RFC 6675 §4 SetPipe(): the bytes presumed in the network."""
        pipe = 0
        for s, e, _ts, marks in self.sent_log:
            if marks & SACKED:
                continue
            if not marks & LOST:
                pipe += e - s
            if marks & RETRANS:
                pipe += e - s
        return pipe

    def _next_lost(self, smss: int):
        """NextSeg() rule (1): the first lost, un-SACKed range with no
        retransmission in flight, as (start, end), or None.  (A range whose
        retransmission RACK found lost qualifies again.)"""
        log = self.sent_log
        for k, entry in enumerate(log):
            if entry[3] & (SACKED | LOST | RETRANS) == LOST:
                start = entry[0]
                end = entry[1]
                k += 1
                while end - start < smss and k < len(log) \
                        and log[k][3] & (SACKED | LOST | RETRANS) == LOST:
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
        for start, end, _ts, marks in self.sent_log:
            if start >= high:
                break
            if not marks & (SACKED | LOST | RETRANS):
                return start, end
        return None

    def _rescue(self, conn):
        """NextSeg() rule (4): once per recovery, after HighACK passed
        RescueRxt, the last SMSS of un-SACKed data, so that a loss at the
        tail of the window does not have to wait for the RTO."""
        if self.rescue_rxt is not None and conn.snd_una <= self.rescue_rxt:
            return None
        for start, end, _ts, marks in reversed(self.sent_log):
            if not marks & SACKED:
                return max(start, end - conn.smss), end
        return None

    def _send_by_pipe(self, conn, now: float) -> None:
        """RFC 6675 §5 step (C): send NextSeg() while cwnd - pipe >= SMSS.
        Outside a recovery (resending after an RTO) only rules 1 and 2."""
        smss = conn.smss
        pipe = self._pipe()
        while conn.cwnd - pipe >= smss:
            rescue = False
            hole = self._next_lost(smss)                           # rule (1)
            if hole is None:
                # Rule (2): new data, as much as pipe, the peer's window,
                # Nagle and SWS avoidance allow; _output measures its room as
                # SND.NXT - SND.UNA against cwnd, so lend it the difference.
                before = conn.snd_max
                if conn.snd_base + len(conn.sndbuf) > conn.snd_nxt or \
                        conn.fin_queued and conn.fin_seq is None:
                    conn._output_with_cwnd(now, conn.snd_nxt - conn.snd_una + conn.cwnd - pipe)
                    if conn.snd_max > before:
                        pipe += conn.snd_max - before
                        continue
                if not self.in_recovery:
                    return
                hole = self._next_unsacked()                       # rule (3)
                if hole is None:
                    hole = self._rescue(conn)                      # rule (4)
                    if hole is None:
                        return
                    rescue = True
            end = conn._retransmit(now, hole[0], hole[1])
            if end <= hole[0]:
                return
            pipe += end - hole[0]
            if rescue:
                self.rescue_rxt = self.recover
