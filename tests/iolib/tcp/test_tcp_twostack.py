"""End to end: two Stacks joined by an in-test wire that delays, drops,
duplicates and reorders packets with a seeded RNG.  Also: determinism, and
deep-copy / pickle of a whole run mid-transfer continuing identically."""

import copy
import hashlib
import heapq
import pickle
import random

import pytest

from iolib.tcp import Stack
from .testkit import ACK, REMOTE_ISS, Harness, seg


class World:
    """Two hosts, a lossy wire and a bulk-transfer application on each side.
    Plain data only, so it can be deep-copied and pickled."""

    def __init__(self, seed=1, size=1 << 20, loss=0.02, dup=0.005, jitter=0.004, v6=False,
                 **options):
        self.rng = random.Random(seed)
        a_addr, b_addr = ("fd00::1/64", "fd00::2/64") if v6 else ("10.0.0.1/24", "10.0.0.2/24")
        self.a = Stack([a_addr], rng=random.Random(seed + 1), **options)
        self.b = Stack([b_addr], rng=random.Random(seed + 2), **options)
        self.loss, self.dup, self.jitter = loss, dup, jitter
        self.now = 0.0
        self.queue = []          # (deliver_at, n, dst_is_b, packet)
        self.n = 0
        self.trace = b""          # running digest of every packet sent
        data_rng = random.Random(seed + 3)
        self.out_a = data_rng.randbytes(size)
        self.out_b = data_rng.randbytes(size)
        self.sent_a = self.sent_b = 0
        self.got_a = bytearray()
        self.got_b = bytearray()
        self.listener = self.b.listen(80)
        self.ca = self.a.connect(self.now, b_addr.split("/")[0], 80)
        self.cb = None
        self.closed_a = self.closed_b = False
        self.eof_a = self.eof_b = False

    def _ship(self):
        for stack, to_b in ((self.a, True), (self.b, False)):
            for p in stack.take_packets():
                self.trace = hashlib.sha256(self.trace + p).digest()
                if self.rng.random() < self.loss:
                    continue
                copies = 2 if self.rng.random() < self.dup else 1
                for _ in range(copies):
                    self.n += 1
                    at = self.now + 0.001 + self.rng.random() * self.jitter
                    heapq.heappush(self.queue, (at, self.n, to_b, p))

    def _app(self):
        if self.cb is None:
            self.cb = self.b.accept(self.listener)
        for stack, conn, attr, data in ((self.a, self.ca, "sent_a", self.out_a),
                                        (self.b, self.cb, "sent_b", self.out_b)):
            if conn is None:
                continue
            sent = getattr(self, attr)
            if sent < len(data) and conn.state in ("ESTABLISHED", "CLOSE-WAIT"):
                sent += stack.send(self.now, conn, data[sent:sent + 65536])
                setattr(self, attr, sent)
                if sent == len(data):
                    stack.shutdown(self.now, conn, "w")
        for stack, conn, buf, eof in ((self.a, self.ca, self.got_a, "eof_a"),
                                      (self.b, self.cb, self.got_b, "eof_b")):
            if conn is None or getattr(self, eof):
                continue
            while True:
                r = stack.recv(conn, 1 << 20, now=self.now)
                if r is None:
                    break
                if r == b"":
                    setattr(self, eof, True)
                    break
                buf += r

    def done(self):
        return self.eof_a and self.eof_b and self.ca.info()["unacked"] == 0 \
            and self.cb.info()["unacked"] == 0

    def step(self):
        self._app()
        self._ship()
        times = [t for t in (self.a.next_deadline(), self.b.next_deadline()) if t is not None]
        if self.queue:
            times.append(self.queue[0][0])
        if not times:
            return False
        self.now = max(self.now, min(times))
        while self.queue and self.queue[0][0] <= self.now:
            _t, _n, to_b, p = heapq.heappop(self.queue)
            (self.b if to_b else self.a).receive(self.now, p)
        for s in (self.a, self.b):
            d = s.next_deadline()
            if d is not None and d <= self.now:
                s.timer(self.now)
        return True

    def run(self, max_steps=200000, until=None):
        until = until or self.done
        for _ in range(max_steps):
            if until():
                return
            if not self.step():
                break
        assert until(), f"did not finish: now={self.now} a={self.ca.info()} b={self.cb and self.cb.info()}"


def test_one_mebibyte_each_way_with_loss_duplication_and_reordering():
    w = World(seed=11)
    w.run()
    assert bytes(w.got_b) == w.out_a and bytes(w.got_a) == w.out_b
    ia, ib = w.ca.info(), w.cb.info()
    assert ia["retransmits"] + ib["retransmits"] > 0          # loss really happened
    assert w.a.stats.out_of_order + w.b.stats.out_of_order > 0
    assert ia["sack"] and ia["timestamps"] and ia["snd_wscale"] == 3
    # Both sides closed their write side; drain to the end of TIME-WAIT.
    w.run(until=lambda: not w.a.connections() and not w.b.connections())


def test_ipv6_transfer_without_sack_or_timestamps():
    w = World(seed=5, size=200000, v6=True, sack=False, timestamps=False, loss=0.03)
    w.run()
    assert bytes(w.got_b) == w.out_a and bytes(w.got_a) == w.out_b
    assert not w.ca.sack_ok and not w.ca.ts_ok


def test_small_buffers_and_nodelay_still_deliver_exactly():
    w = World(seed=9, size=150000, rcvbuf=3000, sndbuf=5000, nodelay=True, loss=0.05)
    w.run()
    assert bytes(w.got_b) == w.out_a and bytes(w.got_a) == w.out_b


def test_runs_are_deterministic_given_the_seed():
    w1, w2 = World(seed=3, size=100000), World(seed=3, size=100000)
    w1.run()
    w2.run()
    assert w1.trace == w2.trace and w1.now == w2.now
    w3 = World(seed=4, size=100000)
    w3.run()
    assert w3.trace != w1.trace


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda w: pickle.loads(pickle.dumps(w))],
                         ids=["deepcopy", "pickle"])
def test_a_run_cloned_mid_transfer_continues_identically(clone):
    w = World(seed=21, size=300000)
    w.run(until=lambda: len(w.got_b) > 100000)
    assert w.ca.state in ("ESTABLISHED", "FIN-WAIT-1") and w.ca.info()["unacked"] > 0
    twin = clone(w)
    w.trace = twin.trace = b""
    w.run()
    twin.run()
    assert w.trace == twin.trace
    assert bytes(twin.got_b) == twin.out_a and bytes(twin.got_a) == twin.out_b
    assert twin.now == w.now


def test_a_connection_deep_copied_mid_transfer_answers_identically():
    h = Harness()
    c = h.established_active(mss=1000, sack_ok=True, ts=(1, 0))
    h.stack.send(h.now, c, b"q" * 5000)
    h.out()
    h.send(seg(ACK, REMOTE_ISS + 1, c.iss + 1001, 65535, b"reply", ts=(2, 0)))
    twin = copy.deepcopy(h)
    tc = twin.stack.connections()[0]
    assert tc is not c and tc.info() == c.info()
    script = [(0.01, seg(ACK, REMOTE_ISS + 6, c.iss + 1001, 65535, ts=(3, 0))),
              (0.02, seg(ACK, REMOTE_ISS + 6, c.iss + 1001, 65535, ts=(4, 0))),
              (0.03, seg(ACK, REMOTE_ISS + 6, c.iss + 3001, 65535, b"more", ts=(5, 0)))]
    outs = []
    for harness in (h, twin):
        got = []
        for t, s in script:
            harness.at(t)
            harness.send(s)
            got += [p for p in harness.stack.take_packets()]
        harness.at(5.0)
        got += harness.stack.take_packets()
        outs.append(got)
    assert outs[0] == outs[1] and len(outs[0]) > 2
    assert h.stack.recv(c, 100) == twin.stack.recv(tc, 100) == b"replymore"
