"""The sending side of a connection: segments, output, retransmission,
persist.

`_emit` builds and queues one whole IP packet: every non-SYN segment
carries our current ACK, window and (if negotiated) timestamp and SACK
blocks, and each is one `struct.pack` with the checksum computed
incrementally (or left to the device with offload).  `_output` sends what
the peer's window, cwnd (RFC 5681), Nagle (RFC 9293 §3.7.4) and sender SWS
avoidance (§3.8.6.2.1) allow, starting the persist timer when the window
is zero (§3.8.6.1) and the SWS override timer when small data waits.
`_retransmit` resends one segment from a given sequence number for the
loss recoveries and the timers.

With offload (see Stack), one packet carries up to _OFFLOAD_PAYLOAD bytes
of whole segments; the device cuts it into gso_size pieces, each within
the effective MSS (RFC 9293 §3.7.1).

`Output` is the part of `Connection` that does this (a mixin: its state is
the connection's).  `_emit` and `_output` are the per-segment hot path:
keep them inline, without calls per segment into other objects.  Nothing
here reads a clock or decides about loss: what to resend is the loss
recovery's choice (recovery.py), which is told about every transmission.
"""

from __future__ import annotations

import struct

from .checksum import ones_sum
from .segment import ACK, FIN, PSH, SYN, URG, opt_sack
from .seq import MASK
from .states import SENDING, SYN_RECEIVED, SYN_SENT
from .timers import INF, T_PERSIST, T_RTX

_V4TCP = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")
_V6TCP = struct.Struct("!IHBB16s16sHHIIBBHHH")
_TS_PREFIX = b"\x01\x01\x08\x0a"
_TS = struct.Struct("!II")
# The header with a timestamp option alone (NOP, NOP, TS, 10), as most
# segments of a connection that negotiated timestamps carry: one pack.
_V4TCP_TS = struct.Struct("!BBHHHBBH4s4sHHIIBBHHHIII")
_V6TCP_TS = struct.Struct("!IHBB16s16sHHIIBBHHHIII")
_TS_PREFIX_WORD = int.from_bytes(_TS_PREFIX, "big")
_TS_PREFIX_SUM = 0x0101 + 0x080A  # the prefix's two 16-bit words
# With offload, the most payload one emitted packet carries: its IPv4 total
# length (or IPv6 payload length) must stay within 16 bits with a 60-byte
# TCP header, and Linux's TUN takes GSO packets up to 64 KiB.
_OFFLOAD_PAYLOAD = 65000


class Output:
    """Segment output of `Connection` (a mixin: no state of its own)."""

    __slots__ = ()

    def _emit(self, now: float, flags: int, seq: int, payload=b"", options: bytes | None = None,
              gso_size: int = 0) -> None:
        """Build and queue one segment; every non-SYN segment carries our
        current ACK, window and (if negotiated) timestamp and SACK blocks.
        With offload, a payload longer than `gso_size` is one packet the
        device cuts into `gso_size`-byte segments (RFC 9293 §3.7.1 still
        holds on the wire: each piece carries at most the effective MSS)."""
        tsval = -1  # >= 0: the options are the timestamp alone, packed with the header
        if options is None:
            options = b""
            if self.ts_ok:
                tsval = (int(now * 1000) + self.ts_offset) & MASK
            if self.sack_recent and self.sack_ok:
                if tsval >= 0:
                    options = _TS_PREFIX + _TS.pack(tsval, self.ts_recent)
                    tsval = -1
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
        olen = len(options) if tsval < 0 else 12
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
            if tsval >= 0:
                tsecr = self.ts_recent
                total += _TS_PREFIX_SUM + (tsval >> 16) + (tsval & 0xFFFF) + (tsecr >> 16) + (tsecr & 0xFFFF)
            elif olen:
                total += int.from_bytes(options, "big")
            if plen:
                total += ones_sum(payload)
            cks = 0xFFFF - total % 0xFFFF
        if tsval >= 0:
            # The usual segment: the timestamp option packed with the header.
            if self._iphead is not None:
                ip_total = 20 + tcp_len
                head = _V4TCP_TS.pack(0x45, 0, ip_total, 0, 0x4000, self.ttl, 6,
                                      0xFFFF - (self._iphead + ip_total) % 0xFFFF, self.laddr, self.raddr,
                                      self.lport, self.rport, seq, ack, hlen << 2, flags, wnd, cks, urg,
                                      _TS_PREFIX_WORD, tsval, self.ts_recent)
            else:
                head = _V6TCP_TS.pack(0x60000000, tcp_len, 6, self.ttl, self.laddr, self.raddr,
                                      self.lport, self.rport, seq, ack, hlen << 2, flags, wnd, cks, urg,
                                      _TS_PREFIX_WORD, tsval, self.ts_recent)
            packet = head + payload if plen else head
        else:
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

    def _segment_room(self) -> int:
        """Payload bytes per wire segment: the effective send MSS less
        the SACK blocks our segments carry (RFC 9293 §3.7.1, RFC 2018 §3)."""
        if self.sack_recent and self.sack_ok:
            return self.smss - 2 - 8 * min(len(self.sack_recent), 3 if self.ts_ok else 4) - 2
        return self.smss

    def _output(self, now: float, force: bool = False) -> None:
        """Send what the windows, Nagle and SWS avoidance allow
        (RFC 9293 §3.7.4, §3.8.6.2.1; RFC 5681 cwnd)."""
        if self.state not in SENDING:
            return
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
                    if self.snd_wnd == 0 and nxt == self.snd_max and self.rtx_kind is not T_PERSIST \
                            and self.snd_max == self.snd_una:
                        self._start_persist(now)
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
                    if not self.ts_ok and nxt >= self.snd_max:
                        rtt = self.rtt
                        if rtt.timed_seq is None:   # RFC 6298 §3: one timed segment at a time
                            rtt.timed_seq = nxt
                            rtt.timed_at = now
                    self.snd_max = end
                if self.rtx_kind is not T_RTX:
                    self.rtx_kind = T_RTX
                    self.persist_shift = 0
                    self.t_rtx = INF
                if self.t_rtx == INF:
                    self.t_rtx = now + self.rtt.rto
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
                if self.rtx_kind is not T_RTX:
                    self.rtx_kind = T_RTX
                if self.t_rtx == INF:
                    self.t_rtx = now + self.rtt.rto
                    self.rtx_start = now
            break
        self.recovery.on_sent(self, now)

    def _start_persist(self, now: float) -> None:
        # RFC 9293 §3.8.6.1: probe a zero window with exponential backoff.
        self.rtx_kind = T_PERSIST
        delay = self.rtt.rto * (1 << self.persist_shift)
        if delay > self.options.max_rto:
            delay = self.options.max_rto
        self.t_rtx = now + delay

    def _on_persist(self, now: float) -> None:
        if self.snd_wnd > 0:
            # SWS override: send what fits even if small.
            self.rtx_kind = T_RTX
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
            self.recovery.on_sent(self, now)
        else:
            return
        self.stats.window_probes += 1
        self.persist_shift += 1
        self._start_persist(now)

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
        self.rtt.resent(start, start + n + 1)
        end = start + n + (1 if flags & FIN else 0)
        if end > self.snd_nxt:
            self.snd_nxt = end
        if end > self.snd_max:
            self.snd_max = end
        self.recovery.on_retransmitted(self, now, start, end)
        return end

    def _output_with_cwnd(self, now: float, cwnd: int) -> None:
        """`_output` with a congestion window lent for this one call (limited
        transmit, RFC 6675 pipe, a tail loss probe): those decide how much
        may go out, `_output` decides what (window, Nagle, SWS)."""
        saved = self.cwnd
        self.cwnd = cwnd
        self._output(now)
        self.cwnd = saved
