"""Closing and resetting: RFC 9293 §3.6, §3.10.4-5, §3.10.7.4 (FIN, RST,
TIME-WAIT), RFC 5961 challenge ACKs, RFC 6191 TIME-WAIT reuse, RFC 1122
§4.2.2.13 (RST for data lost on close)."""

import pytest

from iolib.tcp import (EV_CLOSED, EV_EOF, EV_RESET, ConnectionAborted, ConnectionReset, InvalidState)
from iolib.tcp.stack import CHALLENGE_ACK_LIMIT
from .testkit import ACK, FIN, PSH, REMOTE_ISS, RST, SYN, Harness, seg

R = REMOTE_ISS + 1


def established(**options):
    h = Harness(**options)
    c = h.established_active(mss=1000)
    return h, c


def test_active_close_through_time_wait():
    """MUST-13: TIME-WAIT lasts 2*MSL (default MSL 30 s, like Linux's 60 s)."""
    h, c = established()
    h.stack.close(h.now, c)
    assert c.state == "FIN-WAIT-1"
    h.expect(seg(ACK | FIN, c.iss + 1, R, 65535))
    h.send(seg(ACK, R, c.iss + 2, 65535))
    assert c.state == "FIN-WAIT-2"
    h.at(1.0)
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    h.expect(seg(ACK, c.iss + 2, R + 1, 65535))
    assert c.state == "TIME-WAIT"
    h.at(60.9)
    assert c.state == "TIME-WAIT"
    h.at(61.0)
    assert c.state == "CLOSED" and h.stack.connections() == []
    assert EV_CLOSED in h.kinds(c)


def test_retransmitted_fin_in_time_wait_is_acked_and_restarts_2msl():
    h, c = established()
    h.stack.close(h.now, c)
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    h.out()
    assert c.state == "TIME-WAIT"
    h.at(30)
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    h.expect(seg(ACK, c.iss + 2, R + 1, 65535))
    h.at(89.9)
    assert c.state == "TIME-WAIT"
    h.at(90)
    assert c.state == "CLOSED"


def test_passive_close_through_last_ack():
    h, c = established()
    h.send(seg(ACK | FIN, R, c.iss + 1, 65535))
    h.expect(seg(ACK, c.iss + 1, R + 1, 65535))
    assert c.state == "CLOSE-WAIT" and EV_EOF in h.kinds(c)
    h.stack.send(h.now, c, b"bye")                 # half-duplex: still sending (MAY-1)
    h.expect(seg(ACK | PSH, c.iss + 1, R + 1, 65535, b"bye"))
    h.stack.close(h.now, c)
    h.expect(seg(ACK | FIN, c.iss + 4, R + 1, 65535))
    assert c.state == "LAST-ACK"
    h.send(seg(ACK, R + 1, c.iss + 5, 65535))
    assert c.state == "CLOSED"


def test_close_sends_data_then_fin_in_one_segment():
    h, c = established()
    h.stack.send(h.now, c, b"last words")
    h.out()
    h.stack.send(h.now, c, b"!")
    h.stack.close(h.now, c)
    h.expect(seg(ACK | PSH | FIN, c.iss + 11, R, 65535, b"!"))   # Nagle yields to the FIN
    h.send(seg(ACK, R, c.iss + 13, 65535))
    assert c.state == "FIN-WAIT-2"


def test_last_ack_completes_on_ack_of_fin():
    h, c = established()
    h.send(seg(ACK | FIN, R, c.iss + 1, 65535))
    h.out()
    h.stack.close(h.now, c)
    h.expect(seg(ACK | FIN, c.iss + 1, R + 1, 65535))
    h.send(seg(ACK, R + 1, c.iss + 2, 65535))
    assert c.state == "CLOSED"
    assert h.kinds(c)[-1] == EV_CLOSED
    assert h.stack.recv(c, 10) == b""


def test_simultaneous_close_goes_through_closing():
    h, c = established()
    h.stack.close(h.now, c)
    h.out()
    h.send(seg(ACK | FIN, R, c.iss + 1, 65535))      # their FIN does not ACK ours
    assert c.state == "CLOSING"
    h.expect(seg(ACK, c.iss + 2, R + 1, 65535))
    h.send(seg(ACK, R + 1, c.iss + 2, 65535))
    assert c.state == "TIME-WAIT"


def test_fin_acking_our_fin_goes_straight_to_time_wait():
    h, c = established()
    h.stack.close(h.now, c)
    h.out()
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    assert c.state == "TIME-WAIT"
    h.expect(seg(ACK, c.iss + 2, R + 1, 65535))


def test_lost_fin_is_retransmitted():
    h, c = established()
    h.stack.close(h.now, c)
    h.out()
    h.at(1.0)
    h.expect(seg(ACK | FIN, c.iss + 1, R, 65535))
    h.at(3.0)
    h.expect(seg(ACK | FIN, c.iss + 1, R, 65535))


def test_close_with_unread_data_resets():
    """SHLD-3 / RFC 1122 §4.2.2.13: data would be lost, so RST."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 65535, b"unread"))
    h.stack.close(h.now, c)
    h.expect(seg(RST | ACK, c.iss + 1, R + 6, 65535))
    assert c.state == "CLOSED" and isinstance(c.error, ConnectionAborted)


def test_data_arriving_after_close_resets():
    h, c = established()
    h.stack.close(h.now, c)
    h.out()
    h.send(seg(ACK, R, c.iss + 2, 65535, b"late"))
    h.expect(seg(RST | ACK, c.iss + 2, R + 4, 65535))
    assert c.state == "CLOSED"


def test_shutdown_write_keeps_reading():
    h, c = established()
    h.stack.shutdown(h.now, c, "w")
    h.expect(seg(ACK | FIN, c.iss + 1, R, 65535))
    with pytest.raises(InvalidState):
        h.stack.send(h.now, c, b"x")
    h.send(seg(ACK, R, c.iss + 2, 65535, b"still flowing"))
    assert h.stack.recv(c, 100) == b"still flowing"
    assert c.state == "FIN-WAIT-2"


def test_shutdown_read_discards_incoming_data():
    h, c = established()
    h.stack.shutdown(h.now, c, "r")
    h.send(seg(ACK, R, c.iss + 1, 65535, b"ignored"))
    assert h.stack.recv(c, 100) == b""
    assert c.state == "ESTABLISHED"


def test_abort_sends_rst_and_informs_the_user():
    """RFC 9293 §3.10.5; MUST-12."""
    h, c = established()
    h.stack.send(h.now, c, b"pending")
    h.out()
    h.stack.abort(h.now, c)
    h.expect(seg(RST | ACK, c.iss + 8, R, 65535))
    assert c.state == "CLOSED"
    with pytest.raises(ConnectionAborted):
        h.stack.recv(c)


def test_rst_with_exact_sequence_resets_the_connection():
    """RFC 5961 §3.2 / RFC 9293 §3.10.7.4 second check; MUST-12."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 1, 65535, b"data"))
    h.send(seg(RST, R + 4, 0, 0))
    h.expect_none()
    assert c.state == "CLOSED"
    assert EV_RESET in h.kinds(c)
    with pytest.raises(ConnectionReset):
        h.stack.recv(c)         # queues are flushed on reset
    with pytest.raises(ConnectionReset):
        h.stack.send(h.now, c, b"x")


def test_in_window_rst_gets_a_challenge_ack():
    """RFC 5961 §3.2."""
    h, c = established()
    h.send(seg(RST, R + 100, 0, 0))
    h.expect(seg(ACK, c.iss + 1, R, 65535))
    assert c.state == "ESTABLISHED" and h.stack.stats.challenge_acks == 1


def test_out_of_window_rst_is_dropped_silently():
    h, c = established()
    h.send(seg(RST, R + 70000, 0, 0))
    h.send(seg(RST, R - 1, 0, 0))
    h.expect_none()
    assert c.state == "ESTABLISHED"


def test_syn_in_synchronized_state_gets_a_challenge_ack():
    """RFC 5961 §4 (RFC 9293 §3.10.7.4 fourth check)."""
    h, c = established()
    h.send(seg(SYN, R + 5, 0, 1000))
    h.expect(seg(ACK, c.iss + 1, R, 65535))
    h.send(seg(SYN, REMOTE_ISS - 99999, 0, 1000))          # out of window: plain ACK
    h.expect(seg(ACK, c.iss + 1, R, 65535))
    assert c.state == "ESTABLISHED"


def test_ack_of_unsent_data_is_answered_and_dropped():
    """RFC 9293 §3.10.7.4 fifth check; RFC 5961 §5.2 for too-old ACKs."""
    h, c = established()
    h.send(seg(ACK, R, c.iss + 50, 65535, b"data"))
    h.expect(seg(ACK, c.iss + 1, R, 65535))
    assert h.stack.recv(c, 10) is None and c.snd_una == c.iss + 1
    h.send(seg(ACK, R, c.iss - 200000, 65535, b"data"))
    h.expect(seg(ACK, c.iss + 1, R, 65535))
    assert h.stack.recv(c, 10) is None


def test_challenge_acks_are_rate_limited():
    """RFC 5961 §7."""
    h, c = established()
    for i in range(CHALLENGE_ACK_LIMIT + 50):
        h.send(seg(RST, R + 10 + i, 0, 0))
    assert len(h.out()) == CHALLENGE_ACK_LIMIT
    h.at(1.0)
    h.send(seg(RST, R + 5, 0, 0))
    assert len(h.out()) == 1


def test_rst_in_time_wait_closes():
    h, c = established()
    h.stack.close(h.now, c)
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    h.out()
    h.send(seg(RST, R + 1, 0, 0))
    assert c.state == "CLOSED"


def test_time_wait_accepts_a_new_syn_with_a_higher_sequence():
    """MAY-2 / RFC 6191."""
    h = Harness()
    c = h.established_passive(mss=1000)
    h.stack.close(h.now, c)
    h.out()
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    h.out()
    assert c.state == "TIME-WAIT"
    h.send(seg(SYN, R + 100000, 0, 4000))
    (synack,) = h.out()
    assert synack.flags == SYN | ACK and synack.ack == (R + 100001) & 0xFFFFFFFF
    assert c.state == "CLOSED"
    (new,) = h.stack.connections()
    assert new is not c and new.state == "SYN-RECEIVED"


def test_old_syn_in_time_wait_gets_an_ack():
    h = Harness()
    c = h.established_passive(mss=1000)
    h.stack.close(h.now, c)
    h.out()
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    h.out()
    h.send(seg(SYN, REMOTE_ISS, 0, 4000))     # the old incarnation's SYN
    h.expect(seg(ACK, c.iss + 2, R + 1, 65535))
    assert c.state == "TIME-WAIT"


def test_closing_a_listener_resets_unaccepted_connections():
    h = Harness()
    lst = h.stack.listen(80)
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), sport=7001)
    (s1,) = h.out()
    h.send(seg(ACK, R, s1.seq + 1, 4000), sport=7001)
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), sport=7002)
    h.out()
    h.stack.close(h.now, lst)
    # Which of the two goes first is not specified; each goes to its own peer.
    resets = sorted(h.out(), key=lambda s: s.dport)
    assert [(s.sport, s.dport, s.flags) for s in resets] == [(80, 7001, RST | ACK), (80, 7002, RST | ACK)]
    assert resets[0].seq == (s1.seq + 1) & 0xFFFFFFFF and resets[0].ack == R
    assert h.stack.connections() == []
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), sport=7003)
    h.expect(seg(RST | ACK, 0, R, 0, dport=7003))


def test_orphaned_fin_wait_2_times_out():
    h, c = established()
    h.stack.close(h.now, c)
    h.send(seg(ACK, R, c.iss + 2, 65535))
    assert c.state == "FIN-WAIT-2"
    h.at(59.9)
    assert c.state == "FIN-WAIT-2"
    h.at(60.0)
    assert c.state == "CLOSED"


@pytest.mark.parametrize("how", ["w", "rw"])
def test_fin_wait_2_after_shutdown_waits_for_the_peer_without_a_timeout(how):
    """`fin_wait2_timeout` is only for connections the user closed: after
    a shutdown the socket is still the user's, and FIN-WAIT-2 lasts until
    the peer's FIN, however late it comes."""
    h, c = established()
    h.stack.shutdown(h.now, c, how)
    h.expect(seg(ACK | FIN, c.iss + 1, R, 65535))
    h.send(seg(ACK, R, c.iss + 2, 65535))
    assert c.state == "FIN-WAIT-2"
    h.at(10_000.0)
    assert c.state == "FIN-WAIT-2" and h.stack.connections() == [c]
    h.expect_none()
    h.send(seg(ACK | FIN, R, c.iss + 2, 65535))
    h.expect(seg(ACK, c.iss + 2, R + 1, 65535))
    assert c.state == "TIME-WAIT"


def test_closing_a_shut_down_connection_in_fin_wait_2_starts_the_timeout():
    """The close, not the shutdown, starts `fin_wait2_timeout`."""
    h, c = established(fin_wait2_timeout=20)
    h.stack.shutdown(h.now, c, "w")
    h.send(seg(ACK, R, c.iss + 2, 65535))
    h.out()
    h.at(100.0)
    h.stack.close(h.now, c)
    h.expect_none()                               # the FIN is already out
    h.at(119.9)
    assert c.state == "FIN-WAIT-2"
    h.at(120.0)
    assert c.state == "CLOSED" and h.stack.connections() == []


def test_closing_a_listener_leaves_another_listeners_half_open_connections_alone():
    h = Harness()
    lst80, lst81 = h.stack.listen(80), h.stack.listen(81)
    h.send(seg(SYN, REMOTE_ISS, 0, 4000, dport=81), sport=7005)
    (synack81,) = h.out()
    h.send(seg(SYN, REMOTE_ISS, 0, 4000), sport=7001)
    h.out()
    h.stack.close(h.now, lst80)
    assert [(s.sport, s.dport, s.flags) for s in h.out()] == [(80, 7001, RST | ACK)]
    h.send(seg(ACK, R, synack81.seq + 1, 4000, dport=81), sport=7005)
    c = h.stack.accept(lst81)
    assert c is not None and (c.lport, c.rport, c.state) == (81, 7005, "ESTABLISHED")
