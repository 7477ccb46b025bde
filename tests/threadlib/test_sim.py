"""threadlib.sim: simulated hosts with their own TCP/IP stacks exchanging
real segments over faulty links on one virtual clock, driven by one seed.

Every scenario here is also run through ``sim.check_determinism``. Times
asserted are simulated times, which are part of what the simulation
computes (never wall time)."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

import threadlib
from apps.webserver import SAMPLE_SITE, WebServer
from threadlib import sim
from threadlib.lowlevel import Scheduler, VirtualClock
from threadlib.net import Network

# ---------------------------------------------------------------------------
# Programs the scenarios run: plain threadlib code, given a network.


def sink_server(net, port=7000):
    """Accept one connection, read to EOF, answer with the SHA-256 of what came."""
    with (yield from net.listen(("", port))) as lst:
        conn, _peer = yield from lst.accept()
    with conn:
        digest = hashlib.sha256()
        total = 0
        while data := (yield from conn.recv(65536)):
            digest.update(data)
            total += len(data)
        yield from conn.sendall(digest.hexdigest().encode())
    return total


def upload(net, host, payload, port=7000):
    """Send ``payload``, half-close, return the server's answer."""
    with (yield from net.connect((host, port))) as conn:
        yield from conn.sendall(payload)
        conn.shutdown()
        answer = b""
        while data := (yield from conn.recv(4096)):
            answer += data
    return answer.decode()


def echo_server(net, port=7000):
    """Echo every connection, one thread each, until cancelled."""
    lst = yield from net.listen(("", port))

    def handle(conn):
        with conn:
            while data := (yield from conn.recv(65536)):
                yield from conn.sendall(data)

    while True:
        conn, _peer = yield from lst.accept()
        yield from threadlib.spawn(handle, conn)


def echo_once(net, host, message, port=7000, timeout=None):
    """Connect, send ``message``, read it back, return (reply, time it came)."""
    with (yield from net.connect((host, port), timeout=timeout)) as conn:
        yield from conn.sendall(message)
        reply = b""
        while len(reply) < len(message):
            data = yield from conn.recv(65536, timeout=timeout)
            if not data:
                break
            reply += data
    return reply, threadlib.now()


def http_get(net, host, paths, port=80):
    """GET each of ``paths`` on one keep-alive connection; return
    [(status line, headers dict, body)]."""
    out = []
    with (yield from net.connect((host, port))) as conn:
        buffered = b""
        for path in paths:
            yield from conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            while b"\r\n\r\n" not in buffered:
                data = yield from conn.recv(65536)
                assert data, "the server closed the connection mid-response"
                buffered += data
            head, buffered = buffered.split(b"\r\n\r\n", 1)
            status, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
            length = int(headers["content-length"])
            while len(buffered) < length:
                data = yield from conn.recv(65536)
                assert data, "the server closed the connection mid-body"
                buffered += data
            out.append((status, headers, buffered[:length]))
            buffered = buffered[length:]
    return out


FAULTY = dict(latency=0.002, jitter=0.001, loss=0.05, duplicate=0.03, reorder=0.15, corrupt=0.03)


# ---------------------------------------------------------------------------
# Byte-exact transfers through faults


def transfer_scenario(world, family="ipv4", size=400_000):
    a = world.host("a", "10.0.0.1", ipv6="fd00::1")
    b = world.host("b", "10.0.0.2", ipv6="fd00::2")
    world.link(a, b, **FAULTY)
    payload = world.rng.randbytes(size)
    target = {"ipv4": "10.0.0.1", "ipv6": "fd00::1", "name": "a"}[family]
    server = a.spawn(sink_server, a.network)
    client = b.spawn(upload, b.network, target, payload)
    assert world.run(client) == hashlib.sha256(payload).hexdigest()
    assert world.run(server) == len(payload)
    return a, b


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "name"])
def test_a_transfer_is_byte_exact_over_a_lossy_reordering_duplicating_corrupting_link(family):
    world = sim.World(seed=11)
    a, b = transfer_scenario(world, family)
    stats = a.stack.stats
    # The faults happened and the stack coped with each: corrupted packets
    # died at the checksum, lost ones were sent again, reordered ones waited.
    assert stats.dropped_bad_checksum > 0
    assert stats.out_of_order > 0
    assert b.stack.stats.retransmits + b.stack.stats.fast_retransmits > 0
    world.close()


def test_the_trace_records_every_kind_of_fault_it_decided():
    world = sim.World(seed=5, keep_events=True)
    transfer_scenario(world, size=200_000)
    kinds = {event.split("'")[1] for event in world.events}
    assert {"sent", "delivered", "lost", "corrupted", "reordered", "duplicated", "step", "spawn", "end"} <= kinds
    world.close()


def test_same_seed_same_hash_and_another_seed_another_hash():
    hashes = []
    for seed in (3, 3, 4):
        world = sim.World(seed)
        transfer_scenario(world, size=100_000)
        hashes.append((world.trace_hash(), world.now))
        world.close()
    assert hashes[0] == hashes[1]
    assert hashes[0][0] != hashes[2][0]


def test_the_transfer_scenario_passes_the_determinism_check_plain_and_shuffled():
    for shuffle in (False, True):
        digest = sim.check_determinism(lambda w: transfer_scenario(w, "name", 100_000), seed=21, shuffle=shuffle)
        assert len(digest) == 32


def test_bandwidth_and_latency_set_the_simulated_transfer_time():
    def scenario(world):
        a = world.host("a", "10.0.0.1")
        b = world.host("b", "10.0.0.2")
        world.link(a, b, latency=0.05, bandwidth=1_000_000, queue=1000)
        payload = bytes(500_000)
        server = a.spawn(sink_server, a.network)
        client = b.spawn(upload, b.network, "a", payload)
        world.run(client)
        world.run(server)
        return world.now

    world = sim.World(1)
    elapsed = scenario(world)
    # 500 kB at 1 MB/s is at least 0.5 s of transmission, plus a handshake
    # and the answer (two round trips of 0.1 s); slow start adds more.
    assert elapsed > 0.5 + 0.2
    sim.check_determinism(scenario, 1)


def test_a_small_queue_drops_and_tcp_still_delivers_everything():
    world = sim.World(2, keep_events=True)
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b, latency=0.01, bandwidth=200_000, queue=4)
    payload = world.rng.randbytes(300_000)
    server = a.spawn(sink_server, a.network)
    client = b.spawn(upload, b.network, "a", payload)
    assert world.run(client) == hashlib.sha256(payload).hexdigest()
    assert world.run(server) == len(payload)
    assert any(e.startswith("('queue-full'") for e in world.events)
    world.close()


# ---------------------------------------------------------------------------
# The web server, unchanged, on a simulated host


def webserver_scenario(world):
    a = world.host("web", "10.0.0.1")
    b = world.host("client", "10.0.0.2")
    world.link(a, b, latency=0.003, jitter=0.002, loss=0.03, reorder=0.1, duplicate=0.01, corrupt=0.01)
    server = WebServer(SAMPLE_SITE, network=a.network)
    shutdown = threadlib.Event()
    a.spawn(server.serve, ("", 80), shutdown)
    client = b.spawn(http_get, b.network, "web", ["/index.html", "/bench/100k.txt", "/missing", "/bench/1k.txt"])
    responses = world.run(client)
    world.run(until=world.now + 1.0)
    return server, responses


def test_the_web_server_serves_a_client_on_another_host_byte_exact():
    assert isinstance(sim.World(0).host("x", "10.1.1.1").network, Network)
    world = sim.World(8)
    server, responses = webserver_scenario(world)
    statuses = [status for status, _headers, _body in responses]
    assert statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 200 OK"]
    for (_status, _headers, body), name in zip(responses, ["index.html", "bench/100k.txt", None, "bench/1k.txt"]):
        if name is not None:
            with open(os.path.join(SAMPLE_SITE, name), "rb") as f:
                assert body == f.read()
    # The Date header comes from the simulated clock (its epoch is 2000-01-01).
    assert responses[0][1]["date"].startswith("Sat, 01 Jan 2000 00:00:")
    assert server.requests == 4 and server.connections == 1
    world.close()


def test_the_web_server_scenario_is_deterministic():
    sim.check_determinism(webserver_scenario, seed=8)


# ---------------------------------------------------------------------------
# Partitions, hold and release, crashes, pauses, skew


def partition_scenario(world):
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b, latency=0.005)
    a.spawn(echo_server, a.network)
    first = b.spawn(echo_once, b.network, "a", b"before")
    assert world.run(first)[0] == b"before"
    world.partition([a], [b])
    # A connection attempt during the partition times out...
    cut = b.spawn(echo_once, b.network, "a", b"cut", 7000, 2.0)
    with pytest.raises(TimeoutError):
        world.run(cut)
    # ... one that starts during it completes once the partition heals.
    healed_at = world.now + 3.0
    world.at(healed_at, world.heal)
    late = b.spawn(echo_once, b.network, "a", b"x" * 50_000)
    reply, when = world.run(late)
    assert reply == b"x" * 50_000 and when > healed_at
    return world


def test_a_partition_stops_traffic_and_healing_lets_it_through():
    world = partition_scenario(sim.World(4))
    world.close()
    sim.check_determinism(partition_scenario, 4)


def test_hold_keeps_packets_and_release_sends_them_in_order():
    world = sim.World(6)
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b, latency=0.001)
    a.spawn(echo_server, a.network)
    world.run(until=0.1)
    world.hold(b, "a")
    client = b.spawn(echo_once, b.network, "a", b"held")
    world.at(5.0, world.release, b, a)
    reply, when = world.run(client)
    assert reply == b"held" and when >= 5.0
    world.close()


def crash_scenario(world):
    def start(host):
        yield from echo_server(host.network)

    a = world.host("server", "10.0.0.1", start=start)
    b = world.host("client", "10.0.0.2")
    world.link(a, b, latency=0.002)

    def long_client(net):
        conn = yield from net.connect(("server", 7000))
        yield from conn.sendall(b"ping")
        assert (yield from conn.recv(10)) == b"ping"
        try:
            while True:  # the server crashes meanwhile; its next incarnation resets us
                yield from conn.sendall(b"more")
                yield from conn.recv(10)
                yield from threadlib.sleep(0.1)
        except ConnectionError as exc:
            return type(exc).__name__, threadlib.now()

    client = b.spawn(long_client, b.network)
    world.at(1.0, a.crash)
    world.at(1.5, a.restart)
    error, when = world.run(client)
    assert error in ("ConnectionResetError", "ClosedByPeer", "BrokenPipeError") and when >= 1.5
    assert a.up and a.incarnation == 2 and a.crashes == 1
    # The restarted host runs its start function again: a new client gets through.
    fresh = b.spawn(echo_once, b.network, "server", b"after")
    assert world.run(fresh)[0] == b"after"
    return world


def test_crash_drops_the_threads_and_restart_boots_a_fresh_stack_running_start_again():
    world = crash_scenario(sim.World(9, keep_events=True))
    assert any(e.startswith("('crash'") for e in world.events)
    # Nothing left the crashed host between crash and restart.
    crash = next(i for i, e in enumerate(world.events) if e.startswith("('crash'"))
    boot = next(i for i, e in enumerate(world.events) if e.startswith("('boot'") and i > crash)
    assert not [e for e in world.events[crash:boot] if e.startswith("('sent', ") and "'server', 'client'" in e]
    world.close()
    sim.check_determinism(crash_scenario, 9)


def test_a_thread_on_a_crashed_host_cannot_be_waited_for():
    world = sim.World(1)
    a = world.host("a", "10.0.0.1")
    cleaned = []

    def forever():
        try:
            yield from threadlib.sleep(100)
        finally:
            cleaned.append(threadlib.now())

    t = a.spawn(forever)
    world.at(2.0, a.crash)
    with pytest.raises(sim.HostCrashed, match="host a crashed at t=2.0"):
        world.run(t)
    assert cleaned == [2.0]  # closed at its wait, deterministically, at the crash
    with pytest.raises(RuntimeError, match="host a is down"):
        a.spawn(forever)
    world.close()


def test_pause_stops_a_host_and_its_stack_for_that_long():
    world = sim.World(2)
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b, latency=0.001)
    a.spawn(echo_server, a.network)
    world.run(until=0.5)
    a.pause(3.0)
    reply, when = world.run(b.spawn(echo_once, b.network, "a", b"wake"))
    assert reply == b"wake" and when >= 3.5
    world.close()


def test_skew_makes_a_host_clock_run_faster_than_the_world():
    world = sim.World(3)
    fast = world.host("fast", "10.0.0.1")
    normal = world.host("normal", "10.0.0.2")
    fast.skew(1.0)  # twice as fast

    def nap():
        start = threadlib.now()
        yield from threadlib.sleep(10.0)
        return threadlib.now() - start

    assert world.run(fast.spawn(nap)) == pytest.approx(10.0)
    assert world.now == pytest.approx(5.0)  # 10 host seconds went by in 5 world seconds
    assert world.run(normal.spawn(nap)) == pytest.approx(10.0)
    assert world.now == pytest.approx(15.0)
    with pytest.raises(ValueError, match="skew must be a number greater than -1"):
        fast.skew(-1.0)
    world.close()


def test_the_wall_clock_of_a_simulated_host_is_the_simulated_date():
    world = sim.World(0, time_limit=10 * 86400)
    a = world.host("a", "10.0.0.1")

    def when():
        yield from threadlib.sleep(86400 * 2 + 3600)
        return threadlib.wall_time()

    assert time.gmtime(world.run(a.spawn(when)))[:4] == (2000, 1, 3, 1)
    world.close()


# ---------------------------------------------------------------------------
# Names, ids, ordering


def test_names_resolve_through_the_world_only():
    world = sim.World(0)
    a = world.host("a", "10.0.0.1", ipv6="fd00::1")

    def look(name):
        return (yield from a.network.resolve(name, 80))

    assert sorted(world.run(a.spawn(look, "A."))) == sorted(
        [(socket.AF_INET, ("10.0.0.1", 80)), (socket.AF_INET6, ("fd00::1", 80))])
    with pytest.raises(socket.gaierror, match="not in the host table"):
        world.run(a.spawn(look, "localhost"))
    world.close()


def test_thread_ids_are_numbered_per_scheduler_so_reruns_number_alike():
    def main():
        children = []
        for _ in range(3):
            children.append((yield from threadlib.spawn(threadlib.sleep, 0)))
        return [(yield from threadlib.current()).id] + [c.id for c in children]

    first = Scheduler(clock=VirtualClock()).run(main)
    second = Scheduler(clock=VirtualClock()).run(main)
    assert first == second == [1, 2, 3, 4]


# ---------------------------------------------------------------------------
# Catching nondeterminism, bad input, deadlocks, endless scenarios


def test_check_determinism_names_the_first_event_where_a_planted_clock_read_differs():
    def leaky(world):
        a = world.host("a", "10.0.0.1")
        b = world.host("b", "10.0.0.2")
        world.link(a, b, latency=0.001)
        a.spawn(echo_server, a.network)
        stamp = repr(time.monotonic_ns()).encode()  # the planted bug: wall time in the data
        world.run(b.spawn(echo_once, b.network, "a", b"at " + stamp))

    with pytest.raises(sim.Nondeterminism) as caught:
        sim.check_determinism(leaky, seed=1)
    report = caught.value
    assert report.first.startswith("('sent'") and report.second.startswith("('sent'")
    assert "first run:" in str(report) and f"event {report.index}" in str(report)


def test_check_determinism_catches_a_planted_id_read():
    kept = []  # each run's object stays alive, so the two runs' objects have different addresses

    def by_address(world):
        a = world.host("a", "10.0.0.1")
        kept.append(object())

        def nap():
            yield from threadlib.sleep(id(kept[-1]) % 10**9 / 10**9)  # the planted bug: an address as data

        world.run(a.spawn(nap))

    with pytest.raises(sim.Nondeterminism, match="differ at event") as caught:
        sim.check_determinism(by_address, seed=1)
    # The first difference is the nap's end: same steps, at different simulated times.
    assert caught.value.first.startswith("('step'") or caught.value.first.startswith("('end'")


@pytest.mark.parametrize("params, name", [
    (dict(loss=1.5), "loss"), (dict(latency=-0.001), "latency"), (dict(jitter=float("nan")), "jitter"),
    (dict(duplicate=-0.1), "duplicate"), (dict(reorder=2), "reorder"), (dict(corrupt=True), "corrupt"),
    (dict(bandwidth=0), "bandwidth"), (dict(queue=0), "queue"), (dict(latency=float("inf")), "latency"),
])
def test_bad_link_parameters_raise_valueerror_naming_them(params, name):
    world = sim.World(0)
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    with pytest.raises(ValueError, match=f"link a<->b: {name} must be"):
        world.link(a, b, **params)
    world.close()


def test_bad_hosts_and_worlds_raise_valueerror_naming_what_is_wrong():
    world = sim.World(0)
    world.host("a", "10.0.0.1")
    with pytest.raises(ValueError, match="already a host named 'a'"):
        world.host("a", "10.0.0.9")
    with pytest.raises(ValueError, match="10.0.0.1 already belongs to host a"):
        world.host("b", "10.0.0.1")
    with pytest.raises(ValueError, match="'fd00::1' is not an IPv4 address"):
        world.host("c", "fd00::1")
    with pytest.raises(ValueError, match="no host named 'zz'"):
        world.link("a", "zz")
    with pytest.raises(ValueError, match="cannot be linked to itself"):
        world.link("a", "a")
    with pytest.raises(ValueError, match="pause needs a positive"):
        world.hosts[0].pause(0)
    with pytest.raises(ValueError, match="time_limit must be"):
        sim.World(0, time_limit=-1)
    world.close()


def test_a_deadlocked_scenario_reports_the_waiting_threads_per_host_and_the_time():
    world = sim.World(0)
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b)
    never = threadlib.Event()

    def server(net):
        lst = yield from net.listen(("", 80))
        yield from lst.accept()

    def stuck():
        yield from threadlib.sleep(1.5)
        yield from never.wait()

    a.spawn(server, a.network, name="acceptor")
    t = b.spawn(stuck, name="stuck")
    with pytest.raises(sim.Deadlock) as caught:
        world.run(t)
    text = str(caught.value)
    assert "deadlock at t=1.500000 s" in text
    assert "host a (1 threads)" in text and "'acceptor' waiting in TcpWait(accept)" in text
    assert "host b (1 threads)" in text and "'stuck' waiting in Park" in text
    world.close()


def test_a_scenario_that_never_ends_stops_at_the_simulated_time_limit():
    world = sim.World(0, time_limit=50.0)
    a = world.host("a", "10.0.0.1")

    def ticker():
        while True:
            yield from threadlib.sleep(1.0)

    t = a.spawn(ticker, name="ticker")
    with pytest.raises(sim.TimeLimitReached, match=r"limit reached at t=50.000000 s with ticker on host a"):
        world.run(t)
    assert world.now == 50.0
    with pytest.raises(sim.TimeLimitReached):
        world.run(t, until=60.0)
    world.close()


def test_run_refuses_to_be_called_from_inside_the_simulation():
    world = sim.World(0)
    a = world.host("a", "10.0.0.1")

    def inside():
        world.run(until=5.0)
        yield

    with pytest.raises(RuntimeError, match="from outside the simulation"):
        world.run(a.spawn(inside))
    world.close()


def test_shuffle_explores_other_interleavings_of_ready_threads():
    def order(seed, shuffle):
        world = sim.World(seed, shuffle)
        a = world.host("a", "10.0.0.1")
        seen = []

        def worker(tag):
            for _ in range(3):
                seen.append(tag)
                yield from threadlib.sleep(0)

        threads = [a.spawn(worker, tag) for tag in "xyz"]
        for t in threads:
            world.run(t)
        world.close()
        return "".join(seen)

    assert {order(seed, False) for seed in range(5)} == {"xyzxyzxyz"}  # FIFO without shuffle
    shuffled = {order(seed, True) for seed in range(8)}
    assert len(shuffled) > 1 and all(sorted(s) == sorted("xyzxyzxyz") for s in shuffled)
    assert order(3, True) == order(3, True)  # and each order is the seed's


CROSS_PROCESS = """
import sys
sys.path.insert(0, {root!r})
from tests.threadlib.test_sim import transfer_scenario
from threadlib import sim
world = sim.World(17, shuffle=True)
transfer_scenario(world, "name", 50_000)
print(world.trace_hash())
"""


def test_a_seed_gives_the_same_trace_in_another_process_whatever_the_hash_seed():
    import subprocess
    import sys

    from tests import REPO_ROOT

    hashes = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run([sys.executable, "-c", CROSS_PROCESS.format(root=str(REPO_ROOT))],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        hashes.add(result.stdout.strip())
    world = sim.World(17, shuffle=True)
    transfer_scenario(world, "name", 50_000)
    hashes.add(world.trace_hash())
    world.close()
    assert len(hashes) == 1


def test_a_host_may_crash_itself_or_another_from_a_thread():
    world = sim.World(0)
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    after = []

    def suicide(host):
        yield from threadlib.sleep(1.0)
        host.crash()  # applied when this pass ends: the thread reaches its next wait first
        after.append("still running")
        yield from threadlib.sleep(1.0)
        after.append("never")

    def killer(victim):
        yield from threadlib.sleep(2.0)
        victim.restart()
        return victim.incarnation

    t = a.spawn(suicide, a)
    with pytest.raises(sim.HostCrashed, match="crashed at t=1.000000"):
        world.run(t)
    assert after == ["still running"] and not a.up
    assert world.run(b.spawn(killer, a)) == 1  # the restart happens after the step
    world.run(until=world.now)
    assert a.up and a.incarnation == 2
    world.close()


def apps_scenario(world):
    from apps import echo, rooster

    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b, latency=0.002, loss=0.05, reorder=0.1)

    def shout(client, data):
        client.write(data.upper())

    def echo_main(net):
        listener = yield from net.listen(("", 7000))
        yield from echo.accept_loop(listener)

    a.spawn(echo_main, a.network)
    a.spawn(rooster.server, shout, ("", 7001), a.network)
    message = world.rng.randbytes(30_000)
    assert world.run(b.spawn(echo_once, b.network, "a", message, 7000))[0] == message
    assert world.run(b.spawn(echo_once, b.network, "a", b"quiet please", 7001))[0] == b"QUIET PLEASE"


def test_the_echo_server_and_rooster_run_unchanged_on_a_simulated_host():
    world = sim.World(12)
    apps_scenario(world)
    world.close()
    sim.check_determinism(apps_scenario, 12)
