"""Retransmission and congestion control: RFC 6298 (RTO, Karn, backoff),
RFC 5681 (slow start, congestion avoidance, fast retransmit/recovery),
RFC 6582 (NewReno partial ACKs), RFC 2018 (retransmitting SACK holes)."""

import pytest

from .testkit import ACK, PSH, REMOTE_ISS, Harness, seg

R = REMOTE_ISS + 1


def sent_offsets(h, c):
    return [((s.seq - c.iss - 1) & 0xFFFFFFFF, len(s.payload)) for s in h.out()]


def test_rto_follows_rfc6298_estimator():
    h = Harness(min_rto=0.01)
    c = h.connect()
    h.out()
    h.at(0.1)
    h.send(seg(ACK | 0x02, REMOTE_ISS, c.iss + 1, 65535, mss=1000))
    h.out()
    assert (c.rtt.srtt, c.rtt.rttvar) == pytest.approx((0.1, 0.05))       # (2.2)
    assert c.rtt.rto == pytest.approx(0.3)
    h.stack.send(h.now, c, b"x" * 10)
    h.out()
    h.at(0.3)
    h.send(seg(ACK, R, c.iss + 11, 65535))                          # sample 0.2 s
    assert c.rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)      # (2.3)
    assert c.rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    assert c.rtt.rto == pytest.approx(c.rtt.srtt + 4 * c.rtt.rttvar)


def test_rto_is_at_least_one_second_by_default_and_at_most_max_rto():
    """RFC 6298 (2.4) and (2.5)."""
    h = Harness()
    c = h.established_active(mss=1000)
    assert c.rtt.rto == 1.0
    h.stack.send(h.now, c, b"x")
    h.out()
    for _ in range(100):  # bounded; (the user timeout ends it at 300 s)
        if h.now >= 200:
            break
        h.at(h.stack.next_deadline())
        h.out()
    assert c.rtt.rto == 60.0


def test_rto_retransmits_first_segment_backs_off_and_collapses_cwnd():
    """RFC 6298 (5.4)-(5.6); RFC 5681 §3.1 eq. (4): ssthresh = max(FlightSize/2,
    2*SMSS) and cwnd = 1 SMSS; MUST-19."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"d" * 6000)
    assert sent_offsets(h, c) == [(k * 1000, 1000) for k in range(6)]
    h.at(1.0)
    h.expect(seg(ACK, c.iss + 1, R, 65535, b"d" * 1000))
    assert (c.cwnd, c.ssthresh, c.rtt.rto) == (1000, 3000, 2.0)
    h.at(3.0)
    h.expect(seg(ACK, c.iss + 1, R, 65535, b"d" * 1000))
    assert c.rtt.rto == 4.0
    # The ACK of the retransmission: slow start resends from the left edge
    # (go-back-N), one more segment per ACK.
    h.send(seg(ACK, R, c.iss + 1001, 65535))
    assert sent_offsets(h, c) == [(1000, 1000), (2000, 1000)]
    assert c.cwnd == 2000


def test_karn_no_rtt_sample_from_retransmitted_segments():
    """MUST-18 (RFC 6298 §3): without timestamps, an ACK for retransmitted
    data gives no sample, and the backed-off RTO is kept."""
    h = Harness()
    c = h.established_active(mss=1000)
    srtt0 = c.rtt.srtt
    h.stack.send(h.now, c, b"k" * 100)
    h.out()
    h.at(1.0)
    h.out()
    h.at(1.5)
    h.send(seg(ACK, R, c.iss + 101, 65535))
    assert c.rtt.srtt == srtt0 and c.rtt.rto == 2.0
    h.stack.send(h.now, c, b"n" * 100)                # new data: timed again
    h.out()
    h.at(1.7)
    h.send(seg(ACK, R, c.iss + 201, 65535))
    assert c.rtt.srtt != srtt0 and c.rtt.rto == 1.0


def test_initial_window_and_slow_start():
    """RFC 5681 §3.1: IW = 4*SMSS for SMSS <= 1095; cwnd += min(N, SMSS)
    per ACK in slow start."""
    h = Harness()
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"s" * 20000)
    assert len(h.out()) == 4 and c.cwnd == 4000
    h.send(seg(ACK, R, c.iss + 1001, 65535))
    assert c.cwnd == 5000 and len(h.out()) == 2
    h.send(seg(ACK, R, c.iss + 1501, 65535))          # half a segment: +500
    assert c.cwnd == 5500


def test_initial_window_for_1460_byte_segments():
    h = Harness()
    c = h.established_active(mss=1460)
    h.stack.send(h.now, c, b"s" * 20000)
    assert c.cwnd == 3 * 1460 and len(h.out()) == 3


def test_initial_window_for_jumbo_segments_is_two_segments():
    """RFC 5681 §3.1: IW = 2 * SMSS above 2190 bytes."""
    h = Harness(mtu=9000)
    c = h.established_active(mss=8960)
    h.stack.send(h.now, c, b"j" * 40000)
    assert c.cwnd == 2 * c.smss and len(h.out()) == 2


def test_congestion_avoidance_adds_about_one_segment_per_window():
    """RFC 5681 §3.1 eq. (3) with byte counting."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    c.ssthresh = 5000     # as if a loss had happened earlier
    h.stack.send(h.now, c, b"c" * 30000)
    h.out()
    start = c.cwnd
    for k in range(1, 11):
        h.send(seg(ACK, R, c.iss + 1 + k * 1000, 65535))
    assert c.cwnd == start + 1000


def test_fast_retransmit_and_recovery_on_three_duplicate_acks():
    """RFC 5681 §3.2 steps 1-6; RFC 6582 full acknowledgment."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"f" * 10000)
    h.out()
    h.send(seg(ACK, R, c.iss + 1001, 65535))        # segment 0 arrived, 1 lost
    h.send(seg(ACK, R, c.iss + 1001, 65535))
    h.send(seg(ACK, R, c.iss + 1001, 65535))
    h.expect_none()
    h.send(seg(ACK, R, c.iss + 1001, 65535))        # third duplicate
    h.expect(seg(ACK, c.iss + 1001, R, 65535, b"f" * 1000))
    assert c.recovery.in_recovery and c.ssthresh == 4500 and c.cwnd == 4500 + 3000
    h.stack.send(h.now, c, b"g" * 1000)
    for _ in range(3):                               # inflate: +1 SMSS each
        h.send(seg(ACK, R, c.iss + 1001, 65535))
    assert c.cwnd == 10500
    h.expect(seg(ACK | PSH, c.iss + 10001, R, 65535, b"g" * 1000))   # new data allowed
    h.send(seg(ACK, R, c.iss + 10001, 65535))       # full ACK: leave recovery
    assert not c.recovery.in_recovery and c.cwnd == 2000
    assert c.fast_retransmits == 1


def test_dupacks_with_data_or_window_change_do_not_count():
    """RFC 5681 §2 definition of a duplicate ACK."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"f" * 5000)
    h.out()
    h.send(seg(ACK, R, c.iss + 1, 65535, b"1"))
    h.send(seg(ACK, R + 1, c.iss + 1, 65000))
    h.send(seg(ACK, R + 1, c.iss + 1, 64000))
    h.send(seg(ACK, R + 1, c.iss + 1, 63000, b"2"))
    assert c.recovery.dupacks == 0 and not c.recovery.in_recovery


def test_newreno_partial_ack_retransmits_the_next_hole():
    """RFC 6582 §3.2 step 5 (partial acknowledgment)."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"p" * 10000)
    h.out()
    h.send(seg(ACK, R, c.iss + 1001, 65535))        # 1 and 4 lost
    for _ in range(3):
        h.send(seg(ACK, R, c.iss + 1001, 65535))
    h.expect(seg(ACK, c.iss + 1001, R, 65535, b"p" * 1000))
    cwnd = c.cwnd
    h.send(seg(ACK, R, c.iss + 4001, 65535))        # partial: up to the next loss
    h.expect(seg(ACK, c.iss + 4001, R, 65535, b"p" * 1000))
    assert c.recovery.in_recovery and c.cwnd == cwnd - 3000 + 1000
    h.send(seg(ACK, R, c.iss + 10001, 65535))
    assert not c.recovery.in_recovery


def test_sack_holes_are_retransmitted_and_sacked_data_is_not():
    """RFC 2018 §5: the sender uses the peer's blocks to pick retransmissions."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000, sack_ok=True)
    h.stack.send(h.now, c, b"S" * 10000)
    h.out()
    a = c.iss + 1
    h.send(seg(ACK, R, a + 1000, 65535))             # segments 1 and 3 lost
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + 3000)]))
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 4000, a + 5000), (a + 2000, a + 3000)]))
    h.expect_none()
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 4000, a + 6000), (a + 2000, a + 3000)]))
    h.expect(seg(ACK, a + 1000, R, 65535, b"S" * 1000))
    # Hole 3 is now lost too, but RFC 6675 pipe (1000 resent + 3000 beyond
    # the last block) leaves less than one SMSS of cwnd (4500).
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 4000, a + 7000), (a + 2000, a + 3000)]))
    h.expect_none()
    h.send(seg(ACK, R, a + 3000, 65535, sack=[(a + 4000, a + 7000)]))   # partial ACK
    h.expect(seg(ACK, a + 3000, R, 65535, b"S" * 1000))     # hole 3, not 2
    h.send(seg(ACK, R, a + 10000, 65535))
    assert not c.recovery.in_recovery and c.retransmits == 2


def test_sack_blocks_outside_the_window_are_ignored():
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000, sack_ok=True)
    h.stack.send(h.now, c, b"S" * 3000)
    h.out()
    a = c.iss + 1
    h.send(seg(ACK, R, a, 65535, sack=[(a - 500, a), (a + 5000, a + 9000)]))
    assert c.recovery.scoreboard == []


def test_rto_forgets_sack_information():
    """RFC 2018 §8."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000, sack_ok=True)
    h.stack.send(h.now, c, b"S" * 4000)
    h.out()
    a = c.iss + 1
    h.send(seg(ACK, R, a, 65535, sack=[(a + 1000, a + 2000)]))
    assert c.recovery.scoreboard
    h.at(1.0)
    assert c.recovery.scoreboard == []
    h.expect(seg(ACK, a, R, 65535, b"S" * 1000))


def test_lost_syn_means_three_second_rto_and_one_segment_window():
    """RFC 6298 (5.7) and RFC 5681 §3.1 (IW = 1 SMSS after a lost SYN)."""
    h = Harness()
    c = h.connect()
    h.out()
    h.at(1.0)
    (again,) = h.out()
    assert again.flags == 0x02
    h.at(1.2)
    h.send(seg(ACK | 0x02, REMOTE_ISS, c.iss + 1, 65535, mss=1000))
    h.out()
    assert c.state == "ESTABLISHED"
    assert c.rtt.srtt is None and c.rtt.rto == 3.0 and c.cwnd == 1000
    h.stack.send(h.now, c, b"z" * 5000)
    assert len(h.out()) == 1


def test_limited_transmit_sends_new_data_on_the_first_two_dupacks():
    """RFC 3042: one new segment per early duplicate ACK, cwnd unchanged."""
    h = Harness()
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"L" * 10000)
    assert sent_offsets(h, c) == [(0, 1000), (1000, 1000), (2000, 1000), (3000, 1000)]
    h.send(seg(ACK, R, c.iss + 1, 65535))          # first duplicate ACK
    assert sent_offsets(h, c) == [(4000, 1000)]
    h.send(seg(ACK, R, c.iss + 1, 65535))
    assert sent_offsets(h, c) == [(5000, 1000)]
    assert c.cwnd == 4000
    h.send(seg(ACK, R, c.iss + 1, 65535))          # third: fast retransmit
    assert sent_offsets(h, c) == [(0, 1000)]


@pytest.mark.timeout(20)
def test_user_timeout_ends_when_the_start_time_does_not_add_up_exactly():
    """Found by fuzz.tcp_input (fuzz/crashers/tcp_input/user-timeout-rounding-*):
    a SYN first sent at t=350.35 reaches its 300 s user timeout at
    350.35 + 300, where `now - start` rounds to just under 300; the
    connection must time out there, not re-arm its timer for the same
    instant and spin in Stack.timer forever."""
    from iolib.tcp import Stack
    from iolib.tcp.errors import ConnectionTimedOut

    start = 350.3500000000002
    assert (start + 300.0) - start < 300.0   # the float fact the bug needs
    stack = Stack(["10.0.0.1/24"], rng=14)
    conn = stack.connect(start, "10.0.0.2", 5000)
    for _ in range(50):
        deadline = stack.next_deadline()
        if deadline is None:
            break
        stack.timer(deadline)
    assert isinstance(conn.error, ConnectionTimedOut)
    assert stack.next_deadline() is None


def test_karn_a_fast_retransmission_forgets_only_the_sample_it_makes_ambiguous():
    """MUST-18 (RFC 6298 §3) for fast retransmits: resending the timed
    segment forgets its sample; resending another segment does not."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"f" * 20000)
    assert len(h.out()) == 10                          # the first one is timed
    h.at(h.now + 0.1)
    h.send(seg(ACK, R, c.iss + 1001, 65535))           # sample 0.1; two new segments, the first timed
    srtt = c.rtt.srtt
    assert len(h.out()) == 2
    for _ in range(3):                                  # segment 1 lost
        h.send(seg(ACK, R, c.iss + 1001, 65535))
    assert sent_offsets(h, c)[-1] == (1000, 1000)       # fast retransmit of segment 1 only
    h.at(h.now + 0.2)
    h.send(seg(ACK, R, c.iss + 12001, 65535))          # covers the timed segment: sample 0.2
    assert c.rtt.srtt == pytest.approx(0.875 * srtt + 0.125 * 0.2)


def test_karn_the_ack_of_a_fast_retransmitted_timed_segment_gives_no_sample():
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    srtt = c.rtt.srtt
    h.stack.send(h.now, c, b"f" * 10000)
    assert len(h.out()) == 10                          # the first one is timed, and lost
    for _ in range(3):
        h.send(seg(ACK, R, c.iss + 1, 65535))
    assert sent_offsets(h, c)[-1] == (0, 1000)          # fast retransmit of the timed segment
    h.at(h.now + 0.3)
    h.send(seg(ACK, R, c.iss + 10001, 65535))
    assert c.rtt.srtt == srtt


def test_an_rto_during_fast_recovery_halves_the_flight_then_and_the_next_keeps_it():
    """RFC 6582 §3.2 (6) / RFC 5681 §3.1 (4): the first RTO sets ssthresh to
    half the flight at that time, even in fast recovery; a second RTO in a
    row (RFC 5681: "retransmitted more than once") keeps it."""
    h = Harness(initial_window=10)
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"p" * 10000)
    h.out()
    h.send(seg(ACK, R, c.iss + 1001, 65535))        # 1 and 4 lost
    for _ in range(3):
        h.send(seg(ACK, R, c.iss + 1001, 65535))
    h.send(seg(ACK, R, c.iss + 4001, 65535))        # partial ACK: 6000 in flight
    h.out()
    assert c.recovery.in_recovery and c.ssthresh == 4500
    h.at(h.stack.next_deadline())                   # the retransmission is lost too: RTO
    assert (c.ssthresh, c.cwnd) == (3000, 1000)
    h.out()
    h.at(h.stack.next_deadline())                   # and again
    assert (c.ssthresh, c.cwnd) == (3000, 1000)


def test_an_rto_with_one_segment_in_flight_keeps_ssthresh_at_two_segments():
    """RFC 5681 §3.1 (4): ssthresh = max(FlightSize / 2, 2*SMSS)."""
    h = Harness()
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"o" * 1000)
    h.out()
    h.at(1.0)
    h.expect(seg(ACK | PSH, c.iss + 1, R, 65535, b"o" * 1000))
    assert (c.ssthresh, c.cwnd) == (2000, 1000)
    assert (c.retransmits, h.stack.stats.retransmits, h.stack.stats.rto_timeouts) == (1, 1, 1)


def test_a_resent_syn_counts_as_a_retransmission():
    h = Harness()
    c = h.connect()
    h.out()
    h.at(1.0)
    (again,) = h.out()
    assert again.flags == 0x02
    assert (c.retransmits, h.stack.stats.retransmits, h.stack.stats.rto_timeouts) == (1, 1, 1)


def test_keepalive_does_not_probe_while_data_waits_for_an_ack():
    """RFC 1122 §4.2.3.6: keep-alives are for idle connections; while data is
    unacknowledged, retransmission is already probing."""
    h = Harness(keepalive=True, keepidle=10, keepintvl=5, user_timeout=100)
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"d" * 100)
    h.out()
    sent = []
    for _ in range(100):
        if h.now >= 90:
            break
        h.at(h.stack.next_deadline())
        sent += h.out()
    assert sent and all(s.payload == b"d" * 100 and s.seq == c.iss + 1 for s in sent)


def test_fast_retransmit_with_one_segment_in_flight_keeps_ssthresh_at_two_segments():
    """RFC 5681 §3.2 step 2: ssthresh = max(FlightSize / 2, 2*SMSS)."""
    h = Harness()
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"o" * 1000)
    h.out()
    for _ in range(3):
        h.send(seg(ACK, R, c.iss + 1, 65535))
    h.expect(seg(ACK | PSH, c.iss + 1, R, 65535, b"o" * 1000))
    assert (c.ssthresh, c.cwnd) == (2000, 5000)
    assert (c.fast_retransmits, h.stack.stats.fast_retransmits) == (1, 1)
