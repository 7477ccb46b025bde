"""The receiving side of a connection: text delivery, out-of-order
reassembly, the SACK blocks we report, and the window we advertise.

In-order text goes to the user's buffer (`rcvbuf`); text beyond RCV.NXT
waits in `ooo`, sorted, disjoint `(start, end, data)` blocks, until the
gap before it fills (RFC 9293 §3.10.7.4 seventh step, SHLD-31).  The blocks
are what we report in SACK options (RFC 2018 §4): `sack_recent` lists
them most recently changed first.  ACKs are delayed (RFC 9293 §3.8.6.3,
at most `ack_delay`) but sent for every second full-sized segment, and at
once for out-of-order text and for a filled gap (RFC 5681 §4.2).  The
window we advertise follows receiver SWS avoidance (RFC 9293 §3.8.6.2.2):
its right edge never moves left and opens by at least one MSS (or half
the buffer) at a time.

`Receive` is the part of `Connection` that does this (a mixin: its state is
the connection's).  `Connection._fast_path` repeats the in-order case
inline for speed: a change to delivery or ACK pacing here must be made
there too.  Nothing here reads a clock or looks at the send side.
"""

from __future__ import annotations

from .segment import FIN
from .states import EV_READABLE, RECEIVING
from .timers import INF


class Receive:
    """Receive-side processing of `Connection` (a mixin: no state of its own)."""

    __slots__ = ()

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

    def _after_read(self, now) -> None:
        """Send a window update when reading opened the window enough
        (receiver SWS avoidance, RFC 9293 §3.8.6.2.2)."""
        if self.state not in RECEIVING or self.fin_rcvd:
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
