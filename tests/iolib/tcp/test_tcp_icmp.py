"""ICMP and ICMPv6: echo replies, and errors routed to the connection they
quote (RFC 9293 §3.9.2.2 / MUST-54..56, RFC 5927 §4.1 validation, RFC 1191
and RFC 8201 path-MTU)."""

import ipaddress

from iolib.tcp import EV_ERROR, HostUnreachable
from iolib.tcp.checksum import verify
from iolib.tcp.ip import build_icmp, parse_ip, pseudo_sum
from .testkit import REMOTE_ISS, Harness, decode

R = REMOTE_ISS + 1
ROUTER4 = ipaddress.ip_address("10.0.0.254").packed
ROUTER6 = ipaddress.ip_address("fd00::fe").packed


def me(h):
    return ipaddress.ip_address(h.local).packed


def icmp_error(h, quoted: bytes, icmp_type: int, code: int, rest4: bytes = b"\0\0\0\0") -> bytes:
    router = ROUTER6 if h.v6 else ROUTER4
    return build_icmp(router, me(h), icmp_type, code, rest4 + quoted[:48 if h.v6 else 28])


def test_echo_request_gets_a_reply_v4():
    h = Harness()
    peer = ipaddress.ip_address(h.remote).packed
    h.stack.receive(0, build_icmp(peer, me(h), 8, 0, b"\x12\x34\x00\x07payload"))
    (reply,) = h.stack.take_packets()
    ip = parse_ip(reply)
    body = reply[ip.start:ip.end]
    assert (ip.src, ip.dst, ip.proto) == (me(h), peer, 1)
    assert body[:2] == b"\x00\x00" and body[4:] == b"\x12\x34\x00\x07payload"
    assert verify(body)
    assert h.stack.stats.icmp_echo_replies == 1


def test_echo_request_gets_a_reply_v6():
    h = Harness(v6=True)
    peer = ipaddress.ip_address(h.remote).packed
    h.stack.receive(0, build_icmp(peer, me(h), 128, 0, b"\x00\x01\x00\x02ping6"))
    (reply,) = h.stack.take_packets()
    ip = parse_ip(reply)
    body = reply[ip.start:ip.end]
    assert body[0] == 129 and body[4:] == b"\x00\x01\x00\x02ping6"
    assert verify(body, pseudo_sum(ip.src, ip.dst, 58, len(body)))


def test_icmp_with_bad_checksum_is_counted_and_dropped():
    h = Harness()
    pkt = bytearray(build_icmp(ipaddress.ip_address(h.remote).packed, me(h), 8, 0, b"\0\0\0\0x"))
    pkt[-1] ^= 0xFF
    h.stack.receive(0, bytes(pkt))
    assert h.stack.take_packets() == [] and h.stack.stats.dropped_bad_checksum == 1


def test_port_unreachable_aborts_a_connection_attempt():
    """SHLD-26: hard errors (codes 2-4) abort an opening connection."""
    h = Harness()
    c = h.connect()
    (syn,) = h.stack.take_packets()
    h.stack.receive(0.1, icmp_error(h, syn, 3, 3))
    assert c.state == "CLOSED" and isinstance(c.error, HostUnreachable)
    assert "port" in str(c.error) and EV_ERROR in h.kinds(c)
    assert h.stack.stats.icmp_errors == 1


def test_ipv6_port_unreachable_aborts_a_connection_attempt():
    h = Harness(v6=True)
    c = h.connect()
    (syn,) = h.stack.take_packets()
    h.stack.receive(0.1, icmp_error(h, syn, 1, 4))
    assert c.state == "CLOSED" and isinstance(c.error, HostUnreachable)


def test_soft_errors_do_not_abort_and_are_reported_on_timeout():
    """MUST-56 (no abort on codes 0, 1, 5 or time exceeded); SHLD-25 (the
    application hears of it: the timeout error names it)."""
    h = Harness()
    c = h.connect(user_timeout=5)
    (syn,) = h.stack.take_packets()
    for t, c_ in ((3, 1), (3, 0), (11, 0)):
        h.stack.receive(0.1, icmp_error(h, syn, t, c_))
    assert c.state == "SYN-SENT"
    h.at(6)
    assert c.state == "CLOSED" and "ICMP" in str(c.error)


def test_source_quench_is_silently_discarded():
    """MUST-55."""
    h = Harness()
    c = h.established_active(mss=1000)
    h.stack.send(h.now, c, b"x" * 10)
    (data,) = h.stack.take_packets()
    h.stack.receive(0.1, icmp_error(h, data, 4, 0))
    assert c.state == "ESTABLISHED" and c.cwnd == 4000 and h.stack.take_packets() == []


def test_icmp_quoting_a_sequence_outside_the_window_is_ignored():
    """RFC 5927 §4.1: blind ICMP attacks."""
    h = Harness()
    c = h.connect()
    (syn,) = h.stack.take_packets()
    forged = bytearray(syn)
    forged[24:28] = ((c.iss + 5000) & 0xFFFFFFFF).to_bytes(4, "big")
    h.stack.receive(0.1, icmp_error(h, bytes(forged), 3, 3))
    assert c.state == "SYN-SENT" and h.stack.stats.icmp_ignored == 1


def test_icmp_for_an_unknown_connection_is_ignored():
    h = Harness()
    c = h.connect()
    (syn,) = h.stack.take_packets()
    h.stack.abort(0, c)
    h.stack.receive(0.1, icmp_error(h, syn, 3, 3))
    assert h.stack.stats.icmp_ignored == 1


def test_fragmentation_needed_lowers_the_mss_and_resends():
    """SHLD-6 / RFC 1191: the effective send MSS follows the path MTU."""
    h = Harness()
    c = h.established_active(mss=1460)
    h.stack.send(h.now, c, b"m" * 2920)
    first, _second = h.stack.take_packets()
    h.stack.receive(0.01, icmp_error(h, first, 3, 4, (1000).to_bytes(4, "big")))
    assert c.smss == 960
    (again,) = [decode(p)[1] for p in h.stack.take_packets()]
    assert again.seq == (c.iss + 1) & 0xFFFFFFFF and len(again.payload) == 960


def test_packet_too_big_v6():
    h = Harness(v6=True)
    c = h.established_active(mss=1440)
    h.stack.send(h.now, c, b"m" * 1440)
    (first,) = h.stack.take_packets()
    h.stack.receive(0.01, icmp_error(h, first, 2, 0, (1280).to_bytes(4, "big")))
    assert c.smss == 1220
    (again,) = [decode(p)[1] for p in h.stack.take_packets()]
    assert len(again.payload) == 1220
