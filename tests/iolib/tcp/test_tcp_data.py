"""Data transfer: delivery, ACK generation (RFC 9293 §3.8.6.3, RFC 5681 §4.2),
reassembly, SACK generation (RFC 2018), windows and SWS avoidance
(RFC 9293 §3.8.6), Nagle (§3.7.4), zero-window probing, timestamps/PAWS
(RFC 7323), keep-alive (RFC 9293 §3.8.4) and the user timeout."""

import pytest

import ipaddress

from iolib.tcp import (EV_EOF, EV_ERROR, EV_READABLE, EV_URGENT, EV_WRITABLE, ConnectionTimedOut,
                       Stack)
from iolib.tcp.ip import build_ip
from iolib.tcp.segment import build_segment
from .testkit import ACK, FIN, PSH, REMOTE_ISS, RST, URG, Harness, seg

R = REMOTE_ISS + 1       # the remote's first data sequence number


def established(**opts):
    h = Harness(**opts)
    c = h.established_active(mss=1000)
    return h, c


# ------------------------------------------------------------ receiving

def test_in_order_data_is_delivered_and_ack_is_delayed_at_most_ack_delay():
    """SHLD-18 / MUST-40: a lone segment is ACKed after the delay (< 0.5 s)."""
    h, c = established()
    h.send(seg(ACK | PSH, R, c.iss + 1, 65535, b"hello"))
    h.expect_none()
    assert h.kinds(c) == [EV_READABLE]
    h.at(0.039)
    h.expect_none()
    h.at(0.04)
    h.expect(seg(ACK, c.iss + 1, R + 5, 65535))
    assert h.stack.recv(c, 100) == b"hello"
    assert h.stack.recv(c, 100) is None            # nothing yet: None, not b""


def test_every_second_full_sized_segment_is_acked_at_once():
    """SHLD-19 (RFC 5681 §4.2) and MUST-58 (ACKs aggregated)."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 65535, b"a" * 1000))
    h.expect_none()
    h.send(seg(ACK, R + 1000, c.iss + 1, 65535, b"b" * 1000))
    h.expect(seg(ACK, c.iss + 1, R + 2000, 65535))
    h.send(seg(ACK, R + 2000, c.iss + 1, 65535, b"c" * 1000))
    h.expect_none()
    assert h.stack.recv(c, 5000) == b"a" * 1000 + b"b" * 1000 + b"c" * 1000


def test_out_of_order_segments_are_queued_sacked_and_reassembled():
    """SHLD-31 (queue), MAY-13 (immediate ACK), MUST-59 (all queued data
    processed before the ACK), RFC 2018 §4 block order."""
    h = Harness()
    c = h.established_active(mss=1000, sack_ok=True)
    h.send(seg(ACK, R + 1000, c.iss + 1, 65535, b"B" * 1000))
    h.expect(seg(ACK, c.iss + 1, R, 65535, sack=[(R + 1000, R + 2000)]))
    h.send(seg(ACK, R + 3000, c.iss + 1, 65535, b"D" * 1000))
    h.expect(seg(ACK, c.iss + 1, R, 65535, sack=[(R + 3000, R + 4000), (R + 1000, R + 2000)]))
    h.send(seg(ACK, R + 2000, c.iss + 1, 65535, b"C" * 1000))   # joins the two blocks
    h.expect(seg(ACK, c.iss + 1, R, 65535, sack=[(R + 1000, R + 4000)]))
    assert h.stack.recv(c, 10) is None
    h.send(seg(ACK, R, c.iss + 1, 65535, b"A" * 1000))          # fills the gap
    h.expect(seg(ACK, c.iss + 1, R + 4000, 65535))
    assert h.stack.recv(c, 10000) == b"A" * 1000 + b"B" * 1000 + b"C" * 1000 + b"D" * 1000


def test_sack_blocks_are_limited_to_three_with_timestamps():
    h = Harness()
    c = h.established_active(mss=1000, sack_ok=True, ts=(1, 0))
    for k in (1, 3, 5, 7):
        h.send(seg(ACK, R + k * 100, c.iss + 1, 65535, b"x" * 50, ts=(2, 0)))
    got = h.out()
    assert [len(s.sack) for s in got] == [1, 2, 3, 3]
    assert got[-1].sack[0] == ((R + 700) & 0xFFFFFFFF, (R + 750) & 0xFFFFFFFF)


def test_overlapping_and_duplicate_segments_are_trimmed():
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 65535, b"0123456789"))
    h.send(seg(ACK, R + 5, c.iss + 1, 65535, b"56789ABCDE"))       # half old
    h.at(0.04)
    h.expect(seg(ACK, c.iss + 1, R + 15, 65535))
    h.send(seg(ACK, R, c.iss + 1, 65535, b"0123"))                  # entirely old
    h.expect(seg(ACK, c.iss + 1, R + 15, 65535))                    # answered with an ACK
    assert h.stack.recv(c, 100) == b"0123456789ABCDE"


def test_receive_sequence_numbers_wrap_around():
    """REC-1 / RFC 9293 §3.4: arithmetic modulo 2**32."""
    h = Harness()
    iss = 0xFFFFFFFF - 1500
    c = h.established_active(remote_iss=iss, mss=1000)
    data = bytes(range(256)) * 12      # 3072 bytes, crossing 2**32
    for off in range(0, len(data), 1000):
        h.send(seg(ACK, iss + 1 + off, c.iss + 1, 65535, data[off:off + 1000]))
    h.at(1.0)
    acks = [s.ack for s in h.out()]
    assert acks[-1] == (iss + 1 + len(data)) & 0xFFFFFFFF and acks[-1] < 2000
    assert h.stack.recv(c, 10000) == data


def test_send_sequence_numbers_wrap_around():
    """Our own ISS just below 2**32: data, ACKs and retransmission across the wrap."""
    h = Harness(seed=3)
    s = h.stack
    # Learn the ephemeral port this seed gives, then rewind the rng and pick
    # the connect time so that the RFC 6528 ISN lands 100 bytes below 2**32.
    rng_state = s.rng.getstate()
    probe = s.connect(0.0, "10.0.0.2", 4000)
    s.abort(0.0, probe)
    s.take_packets()
    lport = probe.lport
    base = s._isn(0.0, probe.laddr, lport, probe.raddr, 4000)
    s.rng.setstate(rng_state)
    h.now = (((0xFFFFFFFF - 100) - base) & 0xFFFFFFFF) / 250000.0
    c = h.connect()
    assert c.lport == lport and 0xFFFFFFFF - 102 <= c.iss <= 0xFFFFFFFF - 98
    h.out()
    h.send(seg(ACK | 0x02, REMOTE_ISS, c.iss + 1, 65535, mss=1000))
    h.out()
    data = bytes(range(200)) * 10
    h.stack.send(h.now, c, data)
    segs = h.out()
    assert [s.seq for s in segs] == [(c.iss + 1) & 0xFFFFFFFF, (c.iss + 1001) & 0xFFFFFFFF]
    h.send(seg(ACK, R, c.iss + 1001, 65535))
    assert c.snd_una - c.iss == 1001
    h.at(h.now + 1.0)                      # RTO: the second segment again, past the wrap
    (rt,) = h.out()
    assert rt.seq == (c.iss + 1001) & 0xFFFFFFFF and rt.payload == data[1000:]
    h.send(seg(ACK, R, c.iss + 2001, 65535))
    assert c.snd_una - c.iss == 2001 and c.info()["unacked"] == 0


def test_readable_events_are_edge_triggered_and_eof_reads_empty():
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 65535, b"ab"))
    h.send(seg(ACK, R + 2, c.iss + 1, 65535, b"cd"))
    assert h.kinds(c) == [EV_READABLE]          # one edge for both
    assert h.stack.recv_chunks(c) == [b"abcd"]
    h.send(seg(ACK | FIN, R + 4, c.iss + 1, 65535, b"e"))
    h.expect(seg(ACK, c.iss + 1, R + 6, 65535))  # FIN is ACKed at once
    assert h.kinds(c) == [EV_READABLE, EV_EOF]
    assert c.state == "CLOSE-WAIT"
    assert h.stack.recv(c, 10) == b"e"
    assert h.stack.recv(c, 10) == b""


def test_receive_window_closes_and_reopens_with_receiver_sws_avoidance():
    """MUST-39 (RFC 9293 §3.8.6.2.2): the window opens only by
    min(RCV.BUFF/2, MSS) steps; a zero-window probe is answered."""
    h, c = established(rcvbuf=2000)
    h.send(seg(ACK, R, c.iss + 1, 65535, b"a" * 1000))
    h.send(seg(ACK, R + 1000, c.iss + 1, 65535, b"b" * 1000))
    h.expect(seg(ACK, c.iss + 1, R + 2000, 0))
    h.send(seg(ACK, R + 2000, c.iss + 1, 65535, b"c"))        # a probe into a zero window
    h.expect(seg(ACK, c.iss + 1, R + 2000, 0))
    assert h.stack.recv(c, 100, now=h.now) == b"a" * 100      # 100 bytes free: too little
    h.expect_none()
    h.at(1.0)
    h.expect_none()
    assert len(h.stack.recv(c, 900, now=h.now)) == 900        # now 1000 free: update
    h.expect(seg(ACK, c.iss + 1, R + 2000, 1000))


def test_window_update_without_now_goes_out_at_the_next_timer_call():
    h, c = established(rcvbuf=2000)
    h.send(seg(ACK, R, c.iss + 1, 65535, b"a" * 1000))
    h.send(seg(ACK, R + 1000, c.iss + 1, 65535, b"b" * 1000))
    h.out()
    h.stack.recv(c, 2000)
    assert h.stack.next_deadline() <= h.now
    h.at(h.now)
    h.expect(seg(ACK, c.iss + 1, R + 2000, 2000))


def test_data_beyond_the_window_is_trimmed():
    h, c = established(rcvbuf=1000)
    h.send(seg(ACK, R, c.iss + 1, 65535, b"z" * 1500))
    h.expect(seg(ACK, c.iss + 1, R + 1000, 0))
    assert len(h.stack.recv(c, 5000)) == 1000


def test_rst_is_processed_with_a_zero_window():
    """MUST-66."""
    h, c = established(rcvbuf=1000)
    h.send(seg(ACK, R, c.iss + 1, 65535, b"z" * 1000))
    h.out()
    h.send(seg(RST, R + 1000, 0, 0))
    assert c.state == "CLOSED"


def test_window_field_is_unsigned():
    """MUST-1: a window of 0xFFFF is 65535, not -1."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 0xFFFF))
    assert c.snd_wnd == 0xFFFF


# ------------------------------------------------------------ sending

def test_nagle_holds_small_segments_while_data_is_unacked():
    """SHLD-7 (RFC 9293 §3.7.4)."""
    h, c = established()
    assert h.stack.send(h.now, c, b"a") == 1
    h.expect(seg(ACK | PSH, c.iss + 1, R, 65535, b"a"))
    h.stack.send(h.now, c, b"b")
    h.stack.send(h.now, c, b"c")
    h.expect_none()
    h.send(seg(ACK, R, c.iss + 2, 65535))
    h.expect(seg(ACK | PSH, c.iss + 2, R, 65535, b"bc"))     # MUST-61: PSH on the last segment


def test_nodelay_disables_nagle():
    """MUST-17."""
    h, c = established()
    h.stack.set_options(c, nodelay=True)
    h.stack.send(h.now, c, b"a")
    h.stack.send(h.now, c, b"b")
    h.expect(seg(ACK | PSH, c.iss + 1, R, 65535, b"a"), seg(ACK | PSH, c.iss + 2, R, 65535, b"b"))


def test_sender_sws_avoidance_waits_for_a_useful_window():
    """MUST-38 (RFC 9293 §3.8.6.2.1): with data outstanding, a window
    fragment smaller than both the MSS and half the largest window seen is
    not used; the override timer sends it if nothing is in flight."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 3000))
    h.stack.send(h.now, c, b"q" * 5000)
    got = h.out()
    assert [len(s.payload) for s in got] == [1000, 1000, 1000]
    h.send(seg(ACK, R, c.iss + 1001, 1100))      # usable: 100 bytes - silly
    h.expect_none()
    h.send(seg(ACK, R, c.iss + 3001, 100))       # nothing in flight, 100 bytes usable
    h.expect_none()
    h.at(h.now + 1.0)                            # override (persist) timer
    h.expect(seg(ACK, c.iss + 3001, R, 65535, b"q" * 100))


def test_zero_window_is_probed_with_backoff_forever():
    """MUST-35/36/37, SHLD-29 (first probe after one RTO), SHLD-30
    (exponential backoff), RFC 1122 §4.2.2.17."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 0))
    h.stack.send(h.now, c, b"0123456789")
    h.expect_none()
    probes = []
    for _ in range(100):  # bounded: a deadline that stops moving fails here
        if h.now >= 2000:
            break
        h.at(h.stack.next_deadline())
        for s in h.out():
            probes.append((h.now, s.seq, s.payload))
            h.send(seg(ACK, R, c.iss + 1, 0))    # still closed
    times = [t for t, _s, _p in probes]
    assert times[:6] == [1, 3, 7, 15, 31, 63]
    assert all(b - a == 60 for a, b in zip(times[6:], times[7:]))
    assert all(p == b"0" and s == (c.iss + 1) & 0xFFFFFFFF for _t, s, p in probes)
    assert c.state == "ESTABLISHED"
    h.send(seg(ACK, R, c.iss + 2, 1000))         # the probe byte accepted, window open
    h.expect(seg(ACK | PSH, c.iss + 2, R, 65535, b"123456789"))


def test_send_buffer_limit_and_writable_event():
    h, c = established(sndbuf=3000)
    assert h.stack.send(h.now, c, b"x" * 5000) == 3000
    assert h.stack.send(h.now, c, b"y") == 0
    h.out()
    h.send(seg(ACK, R, c.iss + 1001, 65535))
    assert EV_WRITABLE in h.kinds(c)
    assert h.stack.send(h.now, c, b"y" * 2000) == 1000


def test_peer_window_scaling_is_applied():
    h = Harness()
    c = h.established_active(mss=1000, ws=4, win=100)
    assert c.snd_wnd == 100                       # SYN-ACK window is not scaled
    h.send(seg(ACK, R, c.iss + 1, 100))
    assert c.snd_wnd == 1600


# ------------------------------------------------------------ timestamps

def test_paws_drops_old_timestamps_and_answers_with_an_ack():
    """RFC 7323 §5.3."""
    h = Harness()
    c = h.established_active(mss=1000, ts=(1000, 0))
    h.send(seg(ACK, R, c.iss + 1, 65535, b"new", ts=(1005, 0)))
    assert c.ts_recent == 1005
    h.at(0.04)
    h.out()
    h.send(seg(ACK, R + 3, c.iss + 1, 65535, b"old", ts=(1001, 0)))
    (ack,) = h.out()
    assert ack.ack == (R + 3) & 0xFFFFFFFF and ack.tsecr == 1005
    assert h.stack.stats.paws_dropped == 1
    assert h.stack.recv(c, 10) == b"new"


def test_timestamps_wrap_and_segments_without_them_are_dropped():
    """RFC 7323 §3.2 (drop non-RST segments lacking TSopt) and §5.2
    (timestamp comparisons modulo 2**32)."""
    h = Harness()
    c = h.established_active(mss=1000, ts=(0xFFFFFFF0, 0))
    h.send(seg(ACK, R, c.iss + 1, 65535, b"a", ts=(5, 0)))    # wrapped, newer
    assert c.ts_recent == 5
    h.send(seg(ACK, R + 1, c.iss + 1, 65535, b"b"))           # no timestamp
    assert h.stack.stats.dropped_no_timestamp == 1
    assert h.stack.recv(c, 10) == b"a"


def test_rtt_is_measured_from_timestamp_echoes():
    h = Harness()
    c = h.established_active(mss=1000, ts=(1000, 0))
    h.stack.send(h.now, c, b"x" * 100)
    (d,) = h.out()
    h.at(0.3)
    h.send(seg(ACK, R, c.iss + 101, 65535, ts=(1001, d.tsval)))
    # First sample 0 (the handshake), then 0.3 s: SRTT = 7/8*0 + 1/8*0.3 (RFC 6298 2.3)
    assert c.rtt.srtt == pytest.approx(0.0375, abs=0.001)


# ------------------------------------------------------------ keep-alive and user timeout

def test_keepalive_is_off_by_default():
    """MUST-25."""
    h, c = established()
    assert not c.options.keepalive and h.stack.next_deadline() is None
    h.at(100000)
    h.expect_none()


def test_keepalive_probes_idle_connections_and_tolerates_lost_acks():
    """MUST-24/26/27/29, SHLD-12 (no data in the probe), RFC 1122 §4.2.3.6."""
    h = Harness(keepalive=True, keepidle=100, keepintvl=10, keepcnt=3)
    c = h.established_active(mss=1000)
    assert Stack(["10.0.0.9"], rng=1).options.keepidle >= 7200     # MUST-28
    h.at(99.9)
    h.expect_none()
    h.at(100)
    h.expect(seg(ACK, c.iss, R, 65535))            # SEG.SEQ = SND.NXT - 1
    h.at(110)
    h.expect(seg(ACK, c.iss, R, 65535))            # first answer lost: probe again
    h.send(seg(ACK, R, c.iss + 1, 65535))          # answered
    h.at(119)
    h.expect_none()
    h.at(210)
    h.expect(seg(ACK, c.iss, R, 65535))
    h.at(220)
    h.at(230)
    assert c.state == "ESTABLISHED"
    h.at(240)
    assert c.state == "CLOSED" and isinstance(c.error, ConnectionTimedOut)
    assert len(h.out()) == 2
    assert EV_ERROR in h.kinds(c)


def test_keepalive_can_be_switched_on_later():
    h, c = established()
    h.stack.set_options(c, keepalive=True, keepidle=50)
    h.at(h.now)
    h.at(50)
    h.expect(seg(ACK, c.iss, R, 65535))


def test_user_timeout_aborts_when_data_stays_unacknowledged():
    """MUST-20/21: R2 closes the connection; the error names the cause."""
    h, c = established(user_timeout=10)
    h.stack.send(h.now, c, b"data")
    for _ in range(100):  # bounded: a deadline that stops moving fails here
        if c.state == "CLOSED":
            break
        h.at(h.stack.next_deadline())
    assert h.now == 10
    assert c.retransmits == 3                    # at 1, 3 and 7 s
    with pytest.raises(ConnectionTimedOut, match="user timeout"):
        h.stack.recv(c)
    with pytest.raises(ConnectionTimedOut):
        h.stack.send(h.now, c, b"more")


# ------------------------------------------------------------ urgent data

def test_urgent_data_is_announced_and_stays_inline():
    """MUST-30/31/32/33: the pointer is taken, the user is told and can ask
    how much unread data is urgent; the data itself stays in line."""
    h, c = established()
    h.send(seg(ACK | URG, R, c.iss + 1, 65535, b"abcdef", urg=3))
    assert h.kinds(c) == [EV_URGENT, EV_READABLE]
    assert c.urgent_pending == 3
    assert h.stack.recv(c, 2) == b"ab" and c.urgent_pending == 1
    assert h.stack.recv(c, 10) == b"cdef" and c.urgent_pending == 0
    h.send(seg(ACK | URG, R + 6, c.iss + 1, 65535, b"x" * 2000, urg=1500))   # longer than a segment
    assert c.urgent_pending == 1500


def test_sending_urgent_data_sets_the_pointer_past_it():
    """MUST-62: the pointer gives the first non-urgent octet."""
    h, c = established()
    h.stack.send(h.now, c, b"xyz", urgent=True)
    h.expect(seg(ACK | PSH | URG, c.iss + 1, R, 65535, b"xyz", urg=3))
    h.send(seg(ACK, R, c.iss + 4, 65535))
    h.stack.send(h.now, c, b"plain")
    h.expect(seg(ACK | PSH, c.iss + 4, R, 65535, b"plain"))


def test_illegal_option_length_on_a_connection_is_counted_and_dropped():
    """MUST-7: no crash; the segment is dropped and counted."""
    h, c = established()
    s, d = ipaddress.ip_address(h.remote).packed, ipaddress.ip_address(h.local).packed
    tcp = build_segment(h.rport, h.lport, R, c.iss + 1, ACK, 1000, bytes([8, 0, 0, 0]), b"data",
                        int.from_bytes(s + d, "big") + 6)
    h.stack.receive(h.now, build_ip(s, d, 6, tcp))
    assert h.stack.stats.dropped_malformed == 1 and c.state == "ESTABLISHED"
    assert h.stack.recv(c, 10) is None


def test_a_shrinking_peer_window_is_survived():
    """MUST-34, SHLD-16: no new data past the shrunken edge; old data is
    still retransmitted."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 3000))
    h.stack.send(h.now, c, b"w" * 5000)
    assert len(h.out()) == 3
    h.send(seg(ACK, R, c.iss + 1001, 500))       # right edge moved from 3001 to 1501
    h.expect_none()
    h.at(h.stack.next_deadline())
    (rt,) = h.out()
    assert rt.seq == (c.iss + 1001) & 0xFFFFFFFF
    h.send(seg(ACK, R, c.iss + 3001, 4000))
    assert [len(s.payload) for s in h.out()] == [1000, 1000]


def test_urgent_pointer_is_processed_with_a_zero_window():
    """MUST-66, URG half: with the receive window closed, a segment at
    RCV.NXT still has its urgent pointer taken and the user told, although
    its text is dropped and answered with a zero-window ACK."""
    h, c = established(rcvbuf=1000)
    h.send(seg(ACK, R, c.iss + 1, 65535, b"z" * 1000))
    h.out()
    h.take_events()
    assert c.rcv_adv - c.rcv_nxt == 0                       # the window really is closed
    h.send(seg(ACK | URG, R + 1000, c.iss + 1, 65535, b"!", urg=5))
    h.expect(seg(ACK, c.iss + 1, R + 1000, 0))              # the byte did not fit
    assert h.kinds(c) == [EV_URGENT]
    assert c.rcv_up - c.rcv_nxt == 5                        # where the urgent data will end
    assert c.urgent_pending == 1000                         # everything unread lies before it
    assert h.stack.recv(c, 2000) == b"z" * 1000             # nothing of the probe got in


@pytest.mark.parametrize("bad", [0.51, 1, 5.0, float("nan")])
def test_ack_delay_above_half_a_second_is_refused(bad):
    """MUST-40: an ACK is never delayed 0.5 s or more, so ack_delay above
    0.5 is refused wherever options are given (stack, listener, connect,
    set_options), naming the option; 0.5 itself is allowed and used."""
    with pytest.raises(ValueError, match="ack_delay"):
        Stack(["10.0.0.1/24"], ack_delay=bad)
    h = Harness()
    with pytest.raises(ValueError, match="ack_delay"):
        h.stack.listen(80, ack_delay=bad)
    with pytest.raises(ValueError, match="ack_delay"):
        h.stack.connect(0.0, "10.0.0.2", 4000, ack_delay=bad)
    h, c = established(ack_delay=0.5)
    with pytest.raises(ValueError, match="ack_delay"):
        h.stack.set_options(c, nodelay=True, ack_delay=bad)
    assert (c.options.ack_delay, c.options.nodelay) == (0.5, False)   # nothing half-applied
    h.send(seg(ACK | PSH, R, c.iss + 1, 65535, b"hello"))
    h.at(0.499)
    h.expect_none()
    h.at(0.5)
    h.expect(seg(ACK, c.iss + 1, R + 5, 65535))
