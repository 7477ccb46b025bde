"""Checksum and segmentation offload (`Stack(offload=True)`): the stack
hands the device packets of many segments with the TCP checksum left to
finish, and takes packets the device vouches for without checking them.
The device's part (cutting and checksumming) is done here by
`device_segments`, as Linux does for a TUN with a virtio_net_hdr."""

import random

from iolib.tcp import Stack
from .testkit import ACK, ANY, PSH, REMOTE_ISS, RST, SYN, Harness, device_segments, seg

R = REMOTE_ISS + 1
MSS = 1460


def bulk_sender(**opts):
    h = Harness(offload=True, **opts)
    c = h.established_active(mss=MSS, ws=7, win=65535)
    h.send(seg(ACK, R, c.iss + 1, 65535))   # a scaled window update: 8 MiB (a SYN's is never scaled)
    h.expect_none()
    return h, c


def test_one_packet_carries_many_whole_segments_with_gso_size_the_mss():
    h, c = bulk_sender(initial_window=50)          # cwnd 73,000 bytes
    h.stack.send(h.now, c, bytes(100_000))
    (first, gso1), (second, gso2) = h.out_offloaded()
    # 44 segments fit in one packet (the 65,000-byte bound), then the
    # 6 whole segments cwnd still allows; the rest waits for an ACK.
    assert (first.seq, len(first.payload), first.flags, gso1) == ((c.iss + 1), 44 * MSS, ACK, MSS)
    assert (second.seq, len(second.payload), second.flags, gso2) == ((c.iss + 1 + 44 * MSS), 6 * MSS, ACK, MSS)
    h.expect_none()


def test_the_device_cuts_a_packet_into_mss_segments_with_psh_only_on_the_last():
    h, c = bulk_sender(initial_window=50)
    h.stack.send(h.now, c, bytes(range(256)) * 20)   # 5,120 bytes: 3 segments and a tail
    packets = h.stack.take_packets()
    assert len(packets) == 1 and packets[0][1] == MSS
    wire = device_segments(packets[0])
    h.stack._packets.extend(packets)                 # let the harness decode them too
    h.expect(seg(ACK, c.iss + 1, R, ANY, (bytes(range(256)) * 20)[:MSS]),
             seg(ACK, c.iss + 1 + MSS, R, ANY, (bytes(range(256)) * 20)[MSS:2 * MSS]),
             seg(ACK, c.iss + 1 + 2 * MSS, R, ANY, (bytes(range(256)) * 20)[2 * MSS:3 * MSS]),
             seg(ACK | PSH, c.iss + 1 + 3 * MSS, R, ANY, (bytes(range(256)) * 20)[3 * MSS:]))
    assert [len(p) for p in wire] == [1500, 1500, 1500, 40 + 5120 - 3 * MSS]


def test_a_window_that_ends_mid_segment_sends_whole_segments_only():
    """Sender SWS avoidance (RFC 9293 §3.8.6.2.1) still holds per wire
    segment: a 10,000-byte window takes 6 full segments, not 6.85."""
    h = Harness(offload=True, initial_window=50)
    c = h.established_active(mss=MSS, win=10_000)
    h.stack.send(h.now, c, bytes(20_000))
    ((s, gso),) = h.out_offloaded()
    assert (len(s.payload), gso) == (6 * MSS, MSS)
    h.expect_none()


def test_slow_start_counts_every_byte_an_ack_covers():
    """One ACK for a 44-segment packet grows cwnd by 44 segments (RFC 3465
    §2.3 byte counting), not by one SMSS as RFC 5681 (2) would."""
    h, c = bulk_sender(initial_window=50)
    h.stack.send(h.now, c, bytes(200_000))
    h.out_offloaded()
    before = c.cwnd
    h.advance(0.01)
    h.send(seg(ACK, R, c.iss + 1 + 50 * MSS, 65535))
    assert c.cwnd == before + 50 * MSS
    plain = Harness(initial_window=50)
    pc = plain.established_active(mss=MSS, ws=7, win=65535)
    plain.send(seg(ACK, R, pc.iss + 1, 65535))
    plain.stack.send(plain.now, pc, bytes(200_000))
    plain.out()
    plain.advance(0.01)
    plain.send(seg(ACK, R, pc.iss + 1 + 50 * MSS, 65535))
    assert pc.cwnd == before + MSS


def test_acks_and_syns_leave_with_partial_checksums_and_no_gso():
    h = Harness(offload=True)
    c = h.connect()
    ((syn, gso),) = h.out_offloaded()            # checks the checksum field too
    assert (syn.flags, gso) == (SYN, 0)
    h.send(seg(SYN | ACK, REMOTE_ISS, c.iss + 1, 65535, mss=MSS))
    ((ack, gso),) = h.out_offloaded()
    assert (ack.flags, ack.ack, gso) == (ACK, R & 0xFFFFFFFF, 0)


def test_a_reset_for_a_closed_port_is_a_plain_packet():
    h = Harness(offload=True)
    h.send(seg(SYN, REMOTE_ISS, 0, 65535))
    (packet,) = h.stack.take_packets()
    assert isinstance(packet, bytes)
    h.stack._packets.append(packet)
    h.expect(seg(RST | ACK, 0, R, 0))


def big_segment(h, c, n, corrupt):
    payload = random.Random(n).randbytes(n)
    packet = bytearray(h.packet(seg(ACK, R, c.iss + 1, 65535, payload)))
    if corrupt:
        packet[-1] ^= 0xFF
    return bytes(packet), payload


def test_a_64_kib_segment_the_device_vouches_for_is_taken_without_a_checksum():
    for v6 in (False, True):
        h = Harness(offload=True, v6=v6)
        c = h.established_active(mss=MSS, ws=7)
        packet, payload = big_segment(h, c, 64_000, corrupt=True)
        h.stack.receive(h.now, packet, checksum_ok=True)
        h.expect(seg(ACK, c.iss + 1, R + 64_000, ANY))   # more than 2 MSS: ACKed at once
        assert h.stack.recv(c, 1 << 20) == payload[:-1] + bytes([payload[-1] ^ 0xFF])


def test_a_bad_checksum_is_still_dropped_when_the_device_does_not_vouch():
    for v6 in (False, True):
        h = Harness(offload=True, v6=v6)
        c = h.established_active(mss=MSS, ws=7)
        packet, _ = big_segment(h, c, 64_000, corrupt=True)
        h.stack.receive(h.now, packet)
        h.expect_none()
        assert h.stack.stats.dropped_bad_checksum == 1
        assert h.stack.recv(c, 1 << 20) is None


def transfer(size, receiver_offload, coalesce):
    """`size` bytes from an offloading stack A to stack B over a wire that
    either cuts A's packets like a NIC (coalesce=False) or hands them over
    whole like a local kernel (coalesce=True, with checksum_ok)."""
    a = Stack(["10.0.0.1/24"], rng=1, offload=True, initial_window=10)
    b = Stack(["10.0.0.2/24"], rng=2, offload=receiver_offload)
    listener = b.listen(80)
    conn = a.connect(0.0, "10.0.0.2", 80)
    data = random.Random(size).randbytes(size)
    got = bytearray()
    sent = 0
    peer = None
    now = 0.0
    for _ in range(10_000):
        now += 0.0005
        for item in a.take_packets():
            if coalesce:
                b.receive(now, item[0], checksum_ok=True)
            else:
                for p in device_segments(item):
                    b.receive(now, p)
        for item in b.take_packets():
            for p in device_segments(item):
                a.receive(now, p)
        a.timer(now)
        b.timer(now)
        if peer is None:
            peer = b.accept(listener)
        if conn.state == "ESTABLISHED" and sent < size:
            sent += a.send(now, conn, data[sent:sent + 65536])
            if sent == size:
                a.shutdown(now, conn, "w")
        while peer is not None and (chunk := b.recv(peer, 1 << 20, now=now)):
            got += chunk
        if peer is not None and b.recv(peer, 1, now=now) == b"":
            break
    return bytes(got) == data, a.stats, conn


def test_an_offloading_sender_talks_to_a_plain_receiver_through_the_device():
    ok, stats, conn = transfer(2 << 20, receiver_offload=False, coalesce=False)
    assert ok
    assert conn.segs_out < (2 << 20) // MSS // 4     # most packets carried many segments


def test_whole_offloaded_packets_between_two_offloading_stacks():
    ok, stats, conn = transfer(2 << 20, receiver_offload=True, coalesce=True)
    assert ok
    assert conn.segs_out < (2 << 20) // MSS // 4
