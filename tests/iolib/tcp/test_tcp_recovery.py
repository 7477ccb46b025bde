"""Sender loss recovery on SACK connections: RFC 6675 (IsLost, pipe,
NextSeg rules 1-4, entering and leaving recovery), RFC 8985 RACK-TLP (lost
retransmissions, the reordering timer, tail loss probes); and RFC 7323 §5.3
PAWS sparing overtaken pure ACKs.  Connections without SACK keep NewReno
(test_tcp_retransmit.py)."""

import pytest

from .testkit import ACK, ANY, PSH, REMOTE_ISS, SYN, Harness, seg

R = REMOTE_ISS + 1
D = b"x" * 1000


def sack_conn(h, rtt=0.1, **opts):
    """Active open with SACK and a 1000-byte MSS; the handshake measures
    `rtt` (so SRTT = min_RTT = rtt, RTO = 1 s)."""
    c = h.connect()
    h.out()
    h.at(rtt)
    h.send(seg(SYN | ACK, REMOTE_ISS, c.iss + 1, 65535, mss=1000, sack_ok=True, **opts))
    h.out()
    return c


def lose_1_3_5(h, c):
    """Ten segments sent at 0.1; 1, 3 and 5 are lost; the peer's ACKs
    arrive at 0.2.  Returns the first data sequence number."""
    a = c.iss + 1
    h.stack.send(h.now, c, D * 10)
    assert len(h.out()) == 10
    h.at(0.2)
    h.send(seg(ACK, R, a + 1000, 65535))
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + 3000)]))
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 4000, a + 5000), (a + 2000, a + 3000)]))
    h.expect_none()
    return a


def test_three_sacked_blocks_enter_recovery_and_pipe_limits_the_first_ack():
    """RFC 6675 §5 (4): cwnd = ssthresh = FlightSize/2 and only the first
    lost segment goes out while pipe (1000 resent + 1000 + 1000 + 3000 not
    lost) exceeds cwnd."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = lose_1_3_5(h, c)
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 6000, a + 7000), (a + 4000, a + 5000),
                                             (a + 2000, a + 3000)]))
    h.expect(seg(ACK, a + 1000, R, 65535, D))
    assert c.recovery.in_recovery and c.cwnd == c.ssthresh == 4500


def test_sack_recovery_resends_several_holes_on_one_ack():
    """RFC 6675 §5 (C): NextSeg() rule (1) repeatedly while cwnd - pipe >=
    SMSS; data SACKed or already resent is skipped."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = lose_1_3_5(h, c)
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 6000, a + 7000), (a + 4000, a + 5000),
                                             (a + 2000, a + 3000)]))
    h.out()
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 6000, a + 10000), (a + 4000, a + 5000),
                                             (a + 2000, a + 3000)]))
    h.expect(seg(ACK, a + 3000, R, 65535, D), seg(ACK, a + 5000, R, 65535, D))


def test_pipe_lets_new_data_out_as_sacks_drain_it():
    """RFC 6675 NextSeg() rule (2): in recovery, new data is sent as far as
    cwnd - pipe allows, not cwnd - (SND.NXT - SND.UNA)."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = c.iss + 1
    h.stack.send(h.now, c, D * 10)
    h.out()
    h.stack.send(h.now, c, D * 10)          # queued: cwnd is full
    h.expect_none()
    h.at(0.2)
    for top in (3000, 4000, 5000):           # segment 1 lost
        h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + top)]))
        h.out()                              # (limited transmit)
    # Slow start and limited transmit sent [10000, 13000): FlightSize 12000.
    assert c.recovery.in_recovery and c.cwnd == 6000
    # pipe: 1000 resent + [5000, 13000) = 9000.  Four more SACKed segments
    # leave 5000: cwnd - pipe = 1000 -> one new segment.
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + 9000)]))
    h.expect(seg(ACK, a + 13000, R, 65535, D))


def test_leaving_recovery_sets_cwnd_to_ssthresh():
    """RFC 6675 §5 (A), RFC 5681 §3.2 step 6: a cumulative ACK covering
    RecoveryPoint ends recovery with cwnd = ssthresh."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = lose_1_3_5(h, c)
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 6000, a + 10000), (a + 4000, a + 5000),
                                             (a + 2000, a + 3000)]))
    h.out()
    h.at(0.3)
    h.send(seg(ACK, R, a + 10000, 65535))
    assert not c.recovery.in_recovery and c.cwnd == c.ssthresh == 4500


def test_lost_retransmission_is_resent_without_waiting_for_the_rto():
    """RFC 8985 §6.2: the retransmission of segment 1 (sent at 0.2) is lost
    once a segment resent after it (at 0.25) is SACKed and RACK.rtt +
    reo_wnd (0.11 + 0.025) has passed since it was sent."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = lose_1_3_5(h, c)
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 6000, a + 7000), (a + 4000, a + 5000),
                                             (a + 2000, a + 3000)]))
    h.expect(seg(ACK, a + 1000, R, 65535, D))               # at 0.2
    h.at(0.25)
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 6000, a + 10000), (a + 4000, a + 5000),
                                             (a + 2000, a + 3000)]))
    h.expect(seg(ACK, a + 3000, R, 65535, D), seg(ACK, a + 5000, R, 65535, D))
    h.at(0.36)                                              # 5 arrived, 1 did not
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 4000, a + 10000), (a + 2000, a + 3000)]))
    h.expect(seg(ACK, a + 1000, R, 65535, D))
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + 10000)]))   # 3 arrived
    h.expect_none()
    assert c.rto_timeouts == 0


def test_reordering_within_the_window_is_not_loss_but_a_lasting_hole_is_resent_by_the_rack_timer():
    """RFC 8985 §6.2-6.3: with one segment SACKed above a hole (below
    DupThresh) nothing is resent at once; if the hole fills, never; if it
    does not, the reordering timer resends it at xmit_ts + RACK.rtt +
    reo_wnd without waiting for another ACK or the RTO."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = c.iss + 1
    h.stack.send(h.now, c, D * 4)
    h.out()
    h.at(0.2)
    h.send(seg(ACK, R, a, 65535, sack=[(a + 1000, a + 2000)]))   # 0 overtaken by 1
    h.send(seg(ACK, R, a + 2000, 65535))
    h.at(0.5)
    h.expect_none()
    assert not c.recovery.in_recovery and c.retransmits == 0
    h.send(seg(ACK, R, a + 4000, 65535))
    h.stack.send(h.now, c, D * 4)                              # sent at 0.5
    h.out()
    h.at(0.6)
    h.send(seg(ACK, R, a + 4000, 65535, sack=[(a + 5000, a + 6000)]))   # 4 lost
    h.expect_none()
    h.at(0.624)
    h.expect_none()
    h.at(0.626)                                                  # 0.5 + 0.1 + 0.025
    h.expect(seg(ACK, a + 4000, R, 65535, D))
    assert c.recovery.in_recovery and c.rto_timeouts == 0


def test_rescue_retransmission_resends_the_tail_once():
    """RFC 6675 NextSeg() rule (4): with segment 9 missing and nothing above
    it SACKed, the partial ACK that passes RescueRxt sends the last SMSS
    once; RescueRxt becomes RecoveryPoint.  (The partial ACK comes sooner
    than min_RTT after the retransmission, so RACK cannot trust it.)"""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = c.iss + 1
    h.stack.send(h.now, c, D * 10)
    h.out()
    h.at(0.2)
    h.send(seg(ACK, R, a + 1000, 65535))
    for top in (3000, 4000, 5000):                              # 1 lost
        h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + top)]))
    h.expect(seg(ACK, a + 1000, R, 65535, D))
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + 9000)]))
    h.expect_none()
    h.at(0.25)
    h.send(seg(ACK, R, a + 9000, 65535))                        # partial ACK
    h.expect(seg(ACK | PSH, a + 9000, R, 65535, D))
    assert c.recovery.rescue_rxt == c.recovery.recover == a + 10000
    h.send(seg(ACK, R, a + 9000, 65535))
    h.expect_none()


def test_tail_loss_probe_resends_the_last_segment_before_the_rto():
    """RFC 8985 §7: with the last segment lost and no new data, a probe
    goes out at PTO = 2*SRTT + WCDelAckT (one segment outstanding)."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = c.iss + 1
    h.stack.send(h.now, c, D * 4)
    h.out()
    h.at(0.2)
    h.send(seg(ACK, R, a + 3000, 65535))                        # 3 lost
    h.at(0.599)                                                 # 0.2 + 2 * 0.1 + 0.2
    h.expect_none()
    h.at(0.601)
    h.expect(seg(ACK | PSH, a + 3000, R, 65535, D))
    assert c.rto_timeouts == 0 and c.t_rtx == pytest.approx(0.601 + c.rtt.rto)


def test_data_sent_after_a_full_ack_gets_a_tail_loss_probe():
    """RFC 8985 §7.2: the probe timer starts when new data is sent, not only
    when an ACK arrives.  The ACK at 0.2 covers everything outstanding and
    lets the last 4 of 14 queued segments out; all 4 are lost.  A probe
    (the last segment again: nothing new is queued) goes out at 0.2 +
    2*SRTT, long before the RTO at 1.2.  (Found at 10 % kernel loss, where
    such tails each waited for the RTO.)"""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = c.iss + 1
    h.stack.send(h.now, c, D * 14)
    assert len(h.out()) == 10
    h.at(0.2)
    h.send(seg(ACK, R, a + 10000, 65535))
    assert len(h.out()) == 4                                    # 10-13, all lost
    h.at(0.399)
    h.expect_none()
    h.at(0.401)
    h.expect(seg(ACK | PSH, a + 13000, R, 65535, D))
    assert c.rto_timeouts == 0 and c.recovery.rack.tlp_end == a + 14000
    h.at(0.8)                                                   # one probe only
    h.expect_none()
    h.send(seg(ACK, R, a + 10000, 65535, sack=[(a + 13000, a + 14000)]))
    h.at(0.83)                                                  # RACK: 10-12 lost
    assert [s.seq for s in h.out()][:1] == [a + 10000]
    assert c.rto_timeouts == 0


def test_after_an_rto_new_sacks_keep_sacked_data_from_being_resent():
    """RFC 6675 §5.1: after a timeout everything outstanding is presumed
    lost, but SACKs arriving afterwards steer the resending."""
    h = Harness(initial_window=10)
    c = sack_conn(h)
    a = c.iss + 1
    h.stack.send(h.now, c, D * 4)
    h.out()
    h.at(1.1)
    h.expect(seg(ACK, a, R, 65535, D))                          # RTO
    h.at(1.2)
    h.send(seg(ACK, R, a + 1000, 65535, sack=[(a + 2000, a + 3000)]))
    h.expect(seg(ACK, a + 1000, R, 65535, D), seg(ACK | PSH, a + 3000, R, 65535, D))


def test_paws_spares_an_overtaken_pure_ack_with_sack_blocks():
    """RFC 7323 §5.3 protects the data stream from old duplicates; a pure
    duplicate ACK overtaken by a newer one (timestamp older than TS.Recent
    by less than an RTO) is processed, and its SACK blocks count."""
    h = Harness(initial_window=10)
    c = sack_conn(h, ts=(500, 0))
    a = c.iss + 1
    h.stack.send(h.now, c, D * 10)
    h.out()
    h.at(0.2)
    h.send(seg(ACK, R, a, 65535, sack=[(a + 1000, a + 2000)], ts=(510, 100)))
    h.send(seg(ACK, R, a, 65535, sack=[(a + 1000, a + 4000)], ts=(512, 100)))
    h.send(seg(ACK, R, a, 65535, sack=[(a + 1000, a + 3000)], ts=(511, 100)))   # overtaken
    assert c.stack.stats.paws_dropped == 0
    h.expect(seg(ACK, a, R, 65535, b"x" * 988, ts=ANY))       # fast retransmit
    assert c.recovery.in_recovery


def test_paws_still_drops_old_data_and_old_acks_that_change_something():
    h = Harness(initial_window=10)
    c = sack_conn(h, ts=(500, 0))
    a = c.iss + 1
    h.at(0.2)
    h.send(seg(ACK, R, a, 65535, b"d" * 10, ts=(510, 100)))
    h.out()
    h.send(seg(ACK, R + 10, a, 65535, b"e" * 10, ts=(505, 100)))   # old data
    h.expect(seg(ACK, a, R + 10, ANY, ts=ANY))
    h.send(seg(ACK, R + 10, a, 60000, ts=(505, 100)))              # old window update
    h.expect(seg(ACK, a, R + 10, ANY, ts=ANY))
    h.send(seg(ACK, R + 10, a, 65535, ts=(510 - 1001, 100)))        # older than an RTO
    h.expect(seg(ACK, a, R + 10, ANY, ts=ANY))
    assert c.stack.stats.paws_dropped == 3 and c.snd_wnd == 65535
