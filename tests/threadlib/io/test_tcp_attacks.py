"""Attacks on the user-level TCP stack from a real packet crafter.

scapy builds the packets and a raw socket sends them from the kernel side
of a TUN device in a network namespace the test makes, to the user stack
serving an echo port; an AF_PACKET socket on the same device sees every
packet the stack sends back. Each case asserts the stack's exact reply
(or that there was none) and that an unrelated connection, a real kernel
socket, carries on. "No reply" is checked without waiting a fixed time:
after the attack the crafter sends an ICMP echo request, which the stack
answers in order, so whatever the attack drew came before that echo reply.

Covered: blind RST, SYN and data injection with exact, in-window and
out-of-window sequence numbers (RFC 5961 §3-5 challenge ACKs) and the
challenge-ACK rate limit (§7), a SYN flood against a small SYN backlog,
ACKs of data never sent, zero-window and shrinking-window peers,
overlapping and tiny IP fragments, and SYNs with every TCP option
malformed. Spoofed sources use an unassigned address of the link
(10.74.0.9): the kernel neither answers for it nor forwards to it, so only
the crafter speaks for it.
"""

from __future__ import annotations

import os
import random
import socket
import time

import pytest

import threadlib
from iolib.netns import NetNamespace
from threadlib.io import tcpsockio

scapy_inet = pytest.importorskip("scapy.layers.inet", reason="scapy (the test extra) is not installed")
IP, TCP, ICMP = scapy_inet.IP, scapy_inet.TCP, scapy_inet.ICMP
from scapy.packet import Raw  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (TUN devices, network namespaces, raw sockets)"),
    pytest.mark.timeout(120),
]

TUN = "tla0"
KERNEL4, USER4, SPOOF = "10.74.0.1", "10.74.0.2", "10.74.0.9"
PORT = 7000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
CHALLENGE_ACK_LIMIT = 1000  # RFC 5961 §7, per second and stack


@pytest.fixture(scope="module")
def ns():
    namespace = NetNamespace.create(prefix="tcpa")
    try:
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture
def net(ns):
    """A fresh stack per test: the challenge-ACK budget is per stack."""
    network = tcpsockio.open_network(tun=TUN, peer=f"{KERNEL4}/24", address=f"{USER4}/24", peer6=None,
                                     address6=None, netns=ns.name, seed=31, offload=False)
    try:
        yield network
    finally:
        network.close()


class Wire:
    """The crafter's side of the TUN link: send raw IPv4 packets into it,
    read what the user stack sends out of it."""

    def __init__(self, ns) -> None:
        self.tx = ns.run(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.rx = ns.run(socket.socket, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.rx.bind((TUN, 0))
        self.pings = random.Random(5).randrange(1, 60000)
        self.kernel_tsval = 0  # the newest timestamp the kernel's own TCP sent

    def close(self) -> None:
        self.tx.close()
        self.rx.close()

    def send(self, *packets) -> None:
        for p in packets:
            self.tx.sendto(bytes(p), (p[IP].dst, 0))

    def read(self, timeout: float = 10.0):
        """The next packet the user stack sent (scapy IP), or None after
        ``timeout``; packets the kernel sent are only noted."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.rx.settimeout(left)
            try:
                data, address = self.rx.recvfrom(65536)
            except TimeoutError:
                return None
            packet = IP(data)
            if address[2] == PACKET_OUTGOING:
                if TCP in packet:
                    for kind, value in packet[TCP].options:
                        if kind == "Timestamp":
                            self.kernel_tsval = max(self.kernel_tsval, value[0])
                continue
            return packet

    def expect(self, match, what: str, timeout: float = 10.0):
        """The first packet from the stack that ``match``es (others skipped)."""
        deadline = time.monotonic() + timeout
        while (packet := self.read(max(0.0, deadline - time.monotonic()))) is not None:
            if match(packet):
                return packet
        raise AssertionError(f"the stack never sent {what}")

    def until_ping(self, flow=None) -> list:
        """Send an ICMP echo request and return the TCP packets the stack
        sent before its reply (on ``flow``, a (src port, dst addr, dst port),
        if given): what earlier packets drew, with no fixed wait."""
        self.pings += 1
        ident = self.pings
        self.send(IP(src=KERNEL4, dst=USER4) / ICMP(type=8, id=ident, seq=1) / b"marker")
        seen = []
        while True:
            packet = self.read()
            assert packet is not None, f"the stack did not answer the marker ping ({len(seen)} before)"
            if ICMP in packet and packet[ICMP].type == 0 and packet[ICMP].id == ident:
                return seen
            if TCP in packet and (flow is None or (packet[TCP].sport, packet[IP].dst, packet[TCP].dport) == flow):
                seen.append(packet)


@pytest.fixture
def wire(ns):
    w = Wire(ns)
    yield w
    w.close()


def echo_connection(conn):
    with conn:
        while data := (yield from conn.recv(65536)):
            yield from conn.sendall(data)


def with_echo_server(net, body, backlog: int = 128):
    """Run an echo server on (USER4, PORT) of the user stack while
    ``body()`` runs on the blocking pool; return its result."""

    def accept_loop(listener):
        while True:
            conn, _ = yield from listener.accept()
            yield from threadlib.spawn(echo_connection(conn))

    def main():
        listener = yield from net.listen(("", PORT), backlog=backlog)
        acceptor = yield from threadlib.spawn(accept_loop(listener))
        try:
            return (yield from threadlib.blocking(body))
        finally:
            yield from acceptor.cancel()
            listener.close()

    return threadlib.run(main())


class Victim:
    """A real kernel TCP connection to the echo server, and what the
    crafter knows of it: the stack's next sequence number and what it
    acknowledges, read off the stack's latest segment on the flow."""

    def __init__(self, ns, wire) -> None:
        self.wire = wire
        self.sock = ns.run(socket.create_connection, (USER4, PORT), 10)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.rounds = 0
        self.round_trip()

    def round_trip(self) -> None:
        """Echo a message; afterwards ``snd_nxt``/``rcv_nxt`` are the stack's."""
        self.rounds += 1
        message = f"round {self.rounds}".encode()
        self.sock.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = self.sock.recv(100)
            assert chunk, "the victim connection was closed"
            got += chunk
        assert got == message
        # The kernel's ACK of the echo goes out now, not up to 40 ms later
        # (delayed ACK), when a forged segment sent after this round trip
        # may have reset the connection: an ACK arriving then draws a RST
        # that resets this socket before the test expects it.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        last = self.wire.expect(lambda p: self.is_ours(p) and bytes(p[TCP].payload) == message, "the echo")
        self.snd_nxt = last[TCP].seq + len(message)
        self.rcv_nxt = last[TCP].ack
        self.window = last[TCP].window
        self.tsecr = dict(last[TCP].options).get("Timestamp", (0, 0))[0]

    def is_ours(self, packet) -> bool:
        return TCP in packet and packet[TCP].dport == self.port and packet[IP].dst == KERNEL4

    def forged(self, flags: str, seq: int, ack: int = 0, payload: bytes = b"") -> object:
        """A segment claiming to be the kernel's, with a timestamp that
        passes PAWS (the connection negotiated timestamps)."""
        options = [("NOP", None), ("NOP", None), ("Timestamp", (self.wire.kernel_tsval + 1, self.tsecr))]
        segment = TCP(sport=self.port, dport=PORT, flags=flags, seq=seq % (1 << 32), ack=ack % (1 << 32),
                      window=502, options=options)
        return IP(src=KERNEL4, dst=USER4) / segment / payload

    def flow(self):
        return (PORT, KERNEL4, self.port)

    def close(self) -> None:
        self.sock.close()


def assert_challenge_ack(packet, victim) -> None:
    """RFC 5961's challenge ACK: a bare ACK of what the stack has, at its
    next sequence number."""
    tcp = packet[TCP]
    assert (str(tcp.flags), tcp.seq, tcp.ack, len(tcp.payload)) == ("A", victim.snd_nxt % (1 << 32),
                                                                    victim.rcv_nxt % (1 << 32), 0), packet.show(dump=True)


def test_blind_rst_exact_in_window_and_outside(ns, net, wire):
    def body():
        victim, bystander = Victim(ns, wire), Victim(ns, wire)
        # Outside the window: dropped without a word (RFC 5961 §3.2).
        wire.send(victim.forged("R", victim.rcv_nxt + (1 << 31)), victim.forged("R", victim.rcv_nxt - 70000))
        assert wire.until_ping(victim.flow()) == []
        victim.round_trip()
        # In the window but not exact: a challenge ACK, the connection lives.
        wire.send(victim.forged("R", victim.rcv_nxt + 1000))
        [reply] = wire.until_ping(victim.flow())
        assert_challenge_ack(reply, victim)
        victim.round_trip()
        # Exactly RCV.NXT: the reset is taken (an attacker who knows that
        # much owns the connection; RFC 5961 cannot help), silently.
        wire.send(victim.forged("R", victim.rcv_nxt))
        assert wire.until_ping(victim.flow()) == []
        victim.sock.sendall(b"after the reset")
        rst = wire.expect(lambda p: victim.is_ours(p), "an answer to data on a reset connection")
        assert "R" in str(rst[TCP].flags)
        bystander.round_trip()  # unrelated connections carry on
        return net.stack.stats.challenge_acks

    assert with_echo_server(net, body) == 1


def test_syn_in_a_synchronized_state_gets_a_challenge_ack(ns, net, wire):
    def body():
        victim, bystander = Victim(ns, wire), Victim(ns, wire)
        for seq in (victim.rcv_nxt, victim.rcv_nxt + 5000, victim.rcv_nxt + (1 << 31)):
            wire.send(victim.forged("S", seq))
            [reply] = wire.until_ping(victim.flow())
            assert_challenge_ack(reply, victim)  # RFC 5961 §4: whatever the sequence number
        victim.round_trip()
        bystander.round_trip()

    with_echo_server(net, body)


def test_data_injection_outside_the_window_or_acking_unsent_data_is_answered_and_dropped(ns, net, wire):
    def body():
        victim, bystander = Victim(ns, wire), Victim(ns, wire)
        # Data far outside the receive window: an ACK of what we have (RFC
        # 9293 §3.10.7.4), the bytes thrown away.
        wire.send(victim.forged("PA", victim.rcv_nxt + (1 << 30), victim.snd_nxt, b"EVIL-OUTSIDE"))
        [reply] = wire.until_ping(victim.flow())
        assert_challenge_ack(reply, victim)
        # Data at RCV.NXT but acknowledging bytes never sent: RFC 5961 §5
        # says ACK and drop (an old ACK far behind SND.UNA likewise).
        for ack in (victim.snd_nxt + 100000, victim.snd_nxt - (1 << 31)):
            wire.send(victim.forged("PA", victim.rcv_nxt, ack, b"EVIL-ACK"))
            [reply] = wire.until_ping(victim.flow())
            assert_challenge_ack(reply, victim)
        # None of it reached the application: the next echo is ours alone.
        victim.round_trip()
        bystander.round_trip()

    with_echo_server(net, body)


def test_challenge_acks_are_rate_limited_per_stack(ns, net, wire):
    """1,500 in-window RSTs sent at once draw exactly the budget of 1,000
    challenge ACKs (RFC 5961 §7); the connection is unharmed."""

    def body():
        victim = Victim(ns, wire)
        bystander = Victim(ns, wire)
        forged = [bytes(victim.forged("R", victim.rcv_nxt + 1 + i)) for i in range(1500)]
        replies = []
        started = time.monotonic()
        # In batches the TUN device's queue holds (it drops beyond 1,000),
        # each drained (the marker ping answered) before the next.
        for batch in range(0, len(forged), 250):
            for packet in forged[batch:batch + 250]:
                wire.tx.sendto(packet, (USER4, 0))
            replies += wire.until_ping(victim.flow())
        elapsed = time.monotonic() - started
        victim.round_trip()
        bystander.round_trip()
        return replies, elapsed

    replies, elapsed = with_echo_server(net, body)
    print(f"{len(replies)} challenge ACKs for 1,500 in-window RSTs sent in {elapsed:.2f} s")
    assert net.stack.stats.packets_in >= 1500
    # The budget is 1,000 a second: exactly that when the flood took under
    # a second, never more than a budget per second begun.
    if elapsed < 1.0:
        assert len(replies) == CHALLENGE_ACK_LIMIT
    assert CHALLENGE_ACK_LIMIT <= len(replies) <= CHALLENGE_ACK_LIMIT * (1 + int(elapsed))
    assert {(str(p[TCP].flags), len(p[TCP].payload)) for p in replies} == {("A", 0)}
    assert net.stack.stats.challenge_acks == len(replies)


def spoofed_syn(sport: int, seq: int, options=(("MSS", 1460),), src: str = SPOOF):
    return IP(src=src, dst=USER4) / TCP(sport=sport, dport=PORT, flags="S", seq=seq, window=65535,
                                        options=list(options))


def test_syn_flood_fills_only_the_syn_backlog_and_established_connections_are_served(ns, net, wire):
    backlog = 32

    def body():
        bystander = Victim(ns, wire)
        flood = [spoofed_syn(20000 + i, 1000 * i) for i in range(500)]
        # In batches, each followed by its marker ping: 500 SYNs and the ping
        # at once can overflow the TUN queue (txqueuelen 500) on a busy
        # machine, and the dropped ping then looks like a silent stack.
        answered = []
        for start in range(0, len(flood), 250):
            wire.send(*flood[start:start + 250])
            answered += wire.until_ping()
        bystander.round_trip()  # served through the flood
        return answered

    answered = with_echo_server(net, body, backlog=backlog)
    syn_acks = [p for p in answered if p[IP].dst == SPOOF and str(p[TCP].flags) == "SA"]
    # The first `backlog` SYNs are answered, each acknowledging its own SYN; the rest are dropped and counted.
    # A half-open connection retransmits its SYN-ACK after the initial RTO (1 s), which a busy machine
    # can let pass before the last marker ping: a retransmission repeats its original exactly, so it is
    # told apart by that, never counted as an answer to another SYN.
    first: dict[int, tuple[int, int]] = {}
    for p in syn_acks:
        assert first.setdefault(p[TCP].dport, (p[TCP].seq, p[TCP].ack)) == (p[TCP].seq, p[TCP].ack), \
            f"a second, different SYN-ACK to port {p[TCP].dport}"
    assert sorted(first) == list(range(20000, 20000 + backlog))
    assert all(ack == 1000 * (port - 20000) + 1 for port, (_seq, ack) in first.items())
    assert net.stack.stats.syn_queue_overflow == 500 - backlog


def handshake(wire, sport: int, window: int, seq: int = 5000):
    """A full connection from the spoofed address; returns the stack's ISS + 1."""
    wire.send(spoofed_syn(sport, seq))
    synack = wire.expect(lambda p: TCP in p and p[TCP].dport == sport and str(p[TCP].flags) == "SA", "a SYN-ACK")
    wire.send(IP(src=SPOOF, dst=USER4) / TCP(sport=sport, dport=PORT, flags="A", seq=seq + 1,
                                              ack=synack[TCP].seq + 1, window=window))
    return synack[TCP].seq + 1


def test_zero_window_peer_is_probed_and_gets_its_data_when_it_opens(ns, net, wire):
    def body():
        bystander = Victim(ns, wire)
        sport, seq = 41000, 5000
        iss1 = handshake(wire, sport, window=0)
        request = b"x" * 300
        wire.send(IP(src=SPOOF, dst=USER4) / TCP(sport=sport, dport=PORT, flags="PA", seq=seq + 1, ack=iss1,
                                                  window=0) / request)
        ours = lambda p: TCP in p and p[TCP].dport == sport  # noqa: E731
        # First the ACK of the request (no data: the window is zero) ...
        ack = wire.expect(ours, "an ACK of the request")
        assert (str(ack[TCP].flags), ack[TCP].ack, len(ack[TCP].payload)) == ("A", seq + 1 + len(request), 0)
        # ... then window probes: at SND.UNA, at most one byte, never more.
        probes = [wire.expect(ours, f"window probe {i}") for i in range(2)]
        for probe in probes:
            assert probe[TCP].seq == iss1 and len(probe[TCP].payload) <= 1, probe.show(dump=True)
        bystander.round_trip()  # the stalled peer holds nobody else up
        # The window opens: the whole echo arrives.
        wire.send(IP(src=SPOOF, dst=USER4) / TCP(sport=sport, dport=PORT, flags="A", seq=seq + 1 + len(request),
                                                  ack=iss1, window=65535))
        got = b""
        while len(got) < len(request):
            p = wire.expect(lambda p: ours(p) and len(p[TCP].payload) > 0, "the echoed data")
            offset = p[TCP].seq - iss1
            got = got[:offset] + bytes(p[TCP].payload) if offset <= len(got) else got
        assert got == request
        return net.stack.stats.window_probes

    assert with_echo_server(net, body) >= 2


def test_shrinking_window_peer_gets_nothing_beyond_its_window(ns, net, wire):
    """The peer offers 1,000 bytes, then takes back all but 100 before
    acknowledging anything (RFC 9293 MUST-34): the stack keeps what it
    sent, sends nothing past the shrunken edge, and finishes when the
    window opens again."""

    def body():
        bystander = Victim(ns, wire)
        sport, seq = 41001, 5000
        iss1 = handshake(wire, sport, window=1000)
        request = b"y" * 1400
        ours = lambda p: TCP in p and p[TCP].dport == sport  # noqa: E731
        wire.send(IP(src=SPOOF, dst=USER4) / TCP(sport=sport, dport=PORT, flags="PA", seq=seq + 1, ack=iss1,
                                                  window=1000) / request)
        first = wire.expect(lambda p: ours(p) and len(p[TCP].payload) > 0, "the first echo bytes")
        assert first[TCP].seq == iss1 and len(first[TCP].payload) <= 1000
        # Shrink: acknowledge nothing new, offer 100 bytes.
        wire.send(IP(src=SPOOF, dst=USER4) / TCP(sport=sport, dport=PORT, flags="A", seq=seq + 1 + len(request),
                                                  ack=iss1, window=100))
        before = wire.until_ping()
        assert all(p[TCP].seq + len(p[TCP].payload) <= iss1 + 1000 for p in before if ours(p)), \
            [(p[TCP].seq - iss1, len(p[TCP].payload)) for p in before]
        bystander.round_trip()
        # Open wide and acknowledge: the rest of the echo comes.
        got = bytearray()
        while len(got) < len(request):
            wire.send(IP(src=SPOOF, dst=USER4) / TCP(sport=sport, dport=PORT, flags="A",
                                                      seq=seq + 1 + len(request), ack=iss1 + len(got), window=65535))
            p = wire.expect(lambda p: ours(p) and len(p[TCP].payload) > 0
                            and p[TCP].seq <= iss1 + len(got) < p[TCP].seq + len(p[TCP].payload), "more echo")
            got[p[TCP].seq - iss1:] = bytes(p[TCP].payload)
        assert bytes(got) == request

    with_echo_server(net, body)


def fragments_of(packet, pieces):
    """IPv4 fragments of ``packet``: ``pieces`` is [(offset, bytes)] of its
    IP payload, each fragment with MF set but the last given."""
    header = packet.copy()
    payload = bytes(packet[IP].payload)
    out = []
    for i, (offset, data) in enumerate(pieces):
        more = i < len(pieces) - 1 or offset + len(data) < len(payload)
        frag = IP(src=header[IP].src, dst=header[IP].dst, id=header[IP].id, proto=6, frag=offset // 8,
                  flags="MF" if more else 0) / Raw(data)
        out.append(frag)
    return out


def test_tiny_fragments_are_reassembled_and_overlapping_ones_discarded(ns, net, wire):
    def body():
        bystander = Victim(ns, wire)
        syn = spoofed_syn(42000, 777)
        syn[IP].id = 4242
        raw = bytes(IP(bytes(syn))[IP].payload)  # the TCP header, its checksum filled in
        # Tiny: the 24-byte TCP header in 8-byte fragments, out of order.
        tiny = fragments_of(syn, [(0, raw[0:8]), (8, raw[8:16]), (16, raw[16:24])])
        wire.send(tiny[2], tiny[0], tiny[1])
        synack = wire.expect(lambda p: TCP in p and p[TCP].dport == 42000, "a SYN-ACK to the tiny fragments")
        assert (str(synack[TCP].flags), synack[TCP].ack) == ("SA", 778)
        # Overlapping (RFC 1858's attack): a second fragment rewriting the
        # first one's flags; the datagram is discarded, nothing answered.
        syn2 = spoofed_syn(42001, 999)
        syn2[IP].id = 4343
        raw2 = bytes(IP(bytes(syn2))[IP].payload)
        rewritten = bytearray(raw2[8:24])
        rewritten[5] = 0x12  # flags SYN+ACK in place of SYN
        overlap = fragments_of(syn2, [(0, raw2[0:16]), (8, bytes(rewritten))])
        wire.send(*overlap)
        assert [p for p in wire.until_ping() if p[TCP].dport == 42001] == []
        bystander.round_trip()
        return net.stack.stats

    stats = with_echo_server(net, body)
    assert stats.reassembled >= 1 and stats.dropped_fragment_overlap >= 1


MALFORMED_OPTIONS = {
    "MSS length 3": b"\x02\x03\x05",
    "MSS length 5": b"\x02\x05\x05\xb4\x00",
    "window scale length 2": b"\x03\x02",
    "SACK-permitted length 3": b"\x04\x03\x00",
    "SACK length 3": b"\x05\x03\x00",
    "timestamp length 9": b"\x08\x09" + b"\x00" * 7,
    "option length 0": b"\xfe\x00",
    "option length 1": b"\xfe\x01",
    "length past the header": b"\x02\x28\x05\xb4",
    "truncated kind": b"\x01\x01\x01\x02",
}


def test_syns_with_malformed_options_are_dropped_and_a_good_one_is_answered(ns, net, wire):
    def body():
        bystander = Victim(ns, wire)
        sent = []
        for i, (name, blob) in enumerate(MALFORMED_OPTIONS.items()):
            padded = blob + b"\x00" * (-len(blob) % 4)  # EOL padding to a 32-bit boundary
            syn = IP(src=SPOOF, dst=USER4) / TCP(sport=43000 + i, dport=PORT, flags="S", seq=1, window=65535,
                                                 dataofs=5 + len(padded) // 4) / Raw(padded)
            # scapy puts the blob after the 20-byte header, inside the data offset: the options field.
            sent.append(IP(bytes(syn)))
        wire.send(*sent)
        answered = [p for p in wire.until_ping() if p[IP].dst == SPOOF]
        wire.send(spoofed_syn(43100, 1))
        good = wire.expect(lambda p: TCP in p and p[TCP].dport == 43100, "a SYN-ACK to the well-formed SYN")
        bystander.round_trip()
        return answered, good

    before = net.stack.stats.dropped_malformed
    answered, good = with_echo_server(net, body)
    assert answered == [], [(p[TCP].dport, str(p[TCP].flags)) for p in answered]
    assert str(good[TCP].flags) == "SA"
    assert net.stack.stats.dropped_malformed - before == len(MALFORMED_OPTIONS)
