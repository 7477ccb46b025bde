"""Simulation benchmark: how fast threadlib.sim runs worlds, on one core.

Rows (each in this process, pinned to core 0, one after another):
  idle       --idle-conns keep-alive connections between two simulated hosts,
             idle for --idle-hours simulated hours with TCP keep-alive timers
             armed (probe after 60 s idle, then every 10 s): the wall seconds
             it takes. Target: one hour of 100 connections in < 2 s.
  traffic    one bulk transfer of --mib MiB between two hosts on a clean 1 ms
             link (1500-byte MTU, every checksum computed): simulated TCP
             segments (both directions) per wall second. Target: >= 50,000/s
             (the TUN path moves ~48,000 1500-byte segments/s).
  seeds      scenario (a): load generator -> proxy -> web server on three hosts,
             5% loss and 25% reordering on every link, up to two partitions,
             --conns connections for --seconds simulated seconds; --seeds seeds
             one after another in fresh worlds: seeds per wall second.
             Target: >= 1 seed/s per core.
Reported: wall seconds, simulated seconds, the simulated/wall ratio, trace
events per wall second, and the row's own figure.

    python -m bench.sim [--idle-hours 1] [--idle-conns 100] [--mib 64] [--seeds 10]
                        [--seconds 10] [--conns 20] [--only idle,traffic,seeds] [--json]

It runs no real network and opens no fd: the worlds are simulated.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

import threadlib
from bench import harness as H
from threadlib import sim

ANCHORS = {"traffic": "TUN path ~48k segs/s"}


@contextlib.contextmanager
def on_core(cpu: int) -> Iterator[None]:
    """This process on one core while the block runs."""
    before = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _row(name: str, world_events: int, sim_seconds: float, wall: float, cpu_ns: int, **extra: Any) -> dict:
    return {"name": name, "wall_s": wall, "sim_s": sim_seconds, "ratio_sw": sim_seconds / wall,
            "events_s": world_events / wall, "cpu_s": cpu_ns / 1e9, **extra}


# ---------------------------------------------------------------- idle compression
def _idle_server(net):
    lst = yield from net.listen(("", 9000))
    conns = []
    while True:
        conn, _peer = yield from lst.accept()
        conns.append(conn)  # kept open, idle


def _idle_client(net, n, hours):
    conns = []
    for _ in range(n):
        conns.append((yield from net.connect(("srv", 9000))))
    yield from threadlib.sleep(hours * 3600.0)
    for conn in conns:
        conn.close()
    return len(conns)


def idle(conns: int, hours: float) -> dict:
    options = dict(keepalive=True, keepidle=60.0, keepintvl=10.0)
    world = sim.World(1)
    srv = world.host("srv", "10.0.0.1", **options)
    cli = world.host("cli", "10.0.0.2", **options)
    world.link(srv, cli, latency=0.001)
    srv.spawn(_idle_server, srv.network)
    client = cli.spawn(_idle_client, cli.network, conns, hours)
    t0, c0 = time.perf_counter(), H.self_cpu_ns()
    opened = world.run(client, until=hours * 3600.0 + 60.0)
    wall, cpu = time.perf_counter() - t0, H.self_cpu_ns() - c0
    probes = srv.stack.stats.keepalive_probes + cli.stack.stats.keepalive_probes
    world.close()
    if opened != conns:
        raise RuntimeError(f"{opened} connections opened, not {conns}")
    if not probes:
        raise RuntimeError("no keep-alive probe was sent: the timers did not run")
    return _row(f"idle {conns} conns {hours:g} h", world.event_count, world.now, wall, cpu, figure=f"{probes:,} probes",
                target=[("wall_s", "<=", 2.0 * hours * conns / 100, " s")])


# ---------------------------------------------------------------- traffic
def _sink(net):
    with (yield from net.listen(("", 9001))) as lst:
        conn, _peer = yield from lst.accept()
    n = 0
    with conn:
        while data := (yield from conn.recv(262144)):
            n += len(data)
    return n


def _source(net, size):
    block = bytes(65536)
    with (yield from net.connect(("rx", 9001))) as conn:
        left = size
        while left > 0:
            chunk = block[:min(left, len(block))]
            yield from conn.sendall(chunk)
            left -= len(chunk)


def traffic(mib: int) -> dict:
    size = mib << 20
    world = sim.World(2)
    rx = world.host("rx", "10.0.0.1")
    tx = world.host("tx", "10.0.0.2")
    world.link(rx, tx, latency=0.001)
    sink = rx.spawn(_sink, rx.network)
    tx.spawn(_source, tx.network, size)
    t0, c0 = time.perf_counter(), H.self_cpu_ns()
    got = world.run(sink)
    wall, cpu = time.perf_counter() - t0, H.self_cpu_ns() - c0
    segments = rx.stack.stats.segments_in + tx.stack.stats.segments_in
    world.close()
    if got != size:
        raise RuntimeError(f"{got} bytes arrived, not {size}")
    return _row(f"traffic {mib} MiB", world.event_count, world.now, wall, cpu, segs_s=segments / wall,
                figure=f"{segments / wall:,.0f} segs/s", target=[("segs_s", ">=", 50_000, "/s")],
                anchor=ANCHORS["traffic"])


# ---------------------------------------------------------------- seeds of scenario (a)
def proxied_for(world: sim.World, seconds: float, connections: int) -> None:
    """Scenario (a) for a fixed time and connection count: the shipped
    ``apps.simscenarios.proxied_load`` topology, faults and checks, with
    the load generator running ``seconds`` simulated seconds."""
    from apps import proxy, simscenarios
    from apps.loadgen import LoadGen

    rng = world.rng
    client = world.host("client", "10.0.0.1")
    middle = world.host("proxy", "10.0.0.2")
    web = world.host("web", "10.0.0.3", start=simscenarios._web_main)
    for a, b in ((client, middle), (middle, web)):
        world.link(a, b, latency=rng.uniform(0.001, 0.01), jitter=rng.uniform(0.0, 0.003), loss=0.05, reorder=0.25)
    main = proxy.serve(("", 8080), ("web", 80), connect_timeout=30.0, network=middle.network)
    middle.spawn(main, 0, threadlib.Event(), name="proxy")
    for _ in range(rng.randint(0, 2)):
        side = rng.choice([([client], [middle]), ([middle], [web])])
        lasts = rng.uniform(0.2, 3.0)
        world.at(rng.uniform(0.05, seconds / 2), lambda side=side, lasts=lasts: (world.partition(*side),
                                                                               world.after(lasts, world.heal)))
    gen = LoadGen([f"http://proxy:8080{p}" for p in simscenarios.PAGES], connections=connections, requests=None,
                  duration=seconds, timeout=60.0, network=client.network)
    result = world.run(client.spawn(gen.main, name="loadgen"))
    if set(result.statuses) - {200} or not result.requests:
        raise RuntimeError(f"scenario (a) went wrong: {result.requests} requests, statuses {dict(result.statuses)}")


def seeds(count: int, seconds: float, connections: int) -> dict:
    # The scenario's modules are imported before the clock starts: the row
    # measures worlds, not compiling the apps (PYTHONDONTWRITEBYTECODE
    # machines compile them at every import).
    import apps.loadgen  # noqa: F401
    import apps.proxy  # noqa: F401
    import apps.simscenarios  # noqa: F401
    import apps.webserver.server  # noqa: F401

    events = 0
    simulated = 0.0
    t0, c0 = time.perf_counter(), H.self_cpu_ns()
    for seed in range(1, count + 1):
        world = sim.World(seed)
        try:
            proxied_for(world, seconds, connections)
        finally:
            world.close()
        events += world.event_count
        simulated += world.now
    wall, cpu = time.perf_counter() - t0, H.self_cpu_ns() - c0
    return _row(f"seeds (a) {seconds:g} s x {connections} conns", events, simulated, wall, cpu,
                seeds_s=count / wall, figure=f"{count / wall:.2f} seeds/s", target=[("seeds_s", ">=", 1.0, "/s")])


def main(argv: list[str] | None = None) -> None:
    p = H.arg_parser(__doc__)
    p.add_argument("--idle-hours", type=float, default=1.0, help="simulated hours of idle connections")
    p.add_argument("--idle-conns", type=int, default=100, help="idle keep-alive connections")
    p.add_argument("--mib", type=int, default=64, help="bulk transfer size in MiB")
    p.add_argument("--seeds", type=int, default=10, help="seeds of scenario (a)")
    p.add_argument("--seconds", type=float, default=10.0, help="simulated seconds of load per seed")
    p.add_argument("--conns", type=int, default=20, help="load generator connections per seed")
    args = p.parse_args(argv)
    print(H.machine_line(), flush=True)
    rows: list[dict] = []
    with on_core(0):
        if H.selected("idle", args.only):
            rows.append(H.safe("idle", lambda: idle(args.idle_conns, args.idle_hours)))
        if H.selected("traffic", args.only):
            rows.append(H.safe("traffic", lambda: traffic(args.mib)))
        if H.selected("seeds", args.only):
            rows.append(H.safe("seeds", lambda: seeds(args.seeds, args.seconds, args.conns)))
    print(H.table("threadlib.sim on one core", rows,
                  [("wall_s", "wall s"), ("sim_s", "simulated s"), ("ratio_sw", "sim/wall"),
                   ("events_s", "events/s"), ("cpu_s", "CPU s"), ("figure", "figure")]), flush=True)
    if args.json:
        print(H.save_json("sim", {"rows": rows}))


if __name__ == "__main__":
    main()
