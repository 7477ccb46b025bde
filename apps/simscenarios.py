"""Simulation scenarios that ship with the apps: the load generator, the
proxy and the web server, unchanged, on simulated hosts under faults
drawn from the seed. Run them over many seeds with

    python -m threadlib.sim run apps.simscenarios:proxied_load --seeds 1-1000 --jobs 2
    python -m threadlib.sim run apps.simscenarios:web_crash --seeds 1-1000 --jobs 2

Each is a function taking a ``threadlib.sim.World``; it draws its
configuration (link latencies, partition and crash times, load) from
``world.rng``, checks its invariants with ``sim.always`` as it goes and
returns ``converged``, the condition the liveness phase (after
``world.heal_all()``) must reach. They live here rather than in
``threadlib.sim`` because they run the apps (layers import downward).

Nothing here may read the wall clock or a random source other than
``world.rng``, and no program runs differently from how it runs on a
real network: the scenario only hands it a simulated host's network.
"""

from __future__ import annotations

import os
import types
from typing import Any, Callable

import threadlib
from threadlib import sim

from . import proxy
from .loadgen import LoadGen
from .webserver import SAMPLE_SITE, WebServer

#: The files the clients fetch, and their bytes (the byte-exact check).
PAGES = ("/index.html", "/style.css", "/bench/1k.txt")


def _page(path: str) -> bytes:
    with open(os.path.join(SAMPLE_SITE, path.lstrip("/")), "rb") as f:
        return f.read()


class HttpError(Exception):
    """A response that is not the expected page."""


@types.coroutine
def fetch(conn: Any, path: str, host: str = "web", timeout: float = 30.0) -> Any:
    """One keep-alive GET of ``path`` on ``conn``: the body, checked
    against the served file byte for byte (``HttpError`` if not)."""
    yield from conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), timeout=timeout)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = yield from conn.recv(65536, timeout=timeout)
        if not data:
            raise ConnectionResetError(f"GET {path}: the connection closed before the response head")
        buffer += data
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200 "):
        raise HttpError(f"GET {path}: {lines[0]!r}")
    length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")),
                  None)
    if length is None:
        raise HttpError(f"GET {path}: no Content-Length")
    while len(body) < length:
        data = yield from conn.recv(65536, timeout=timeout)
        if not data:
            raise ConnectionResetError(f"GET {path}: the connection closed {length - len(body)} bytes early")
        body += data
    if body != _page(path):
        raise HttpError(f"GET {path}: the body differs from the file ({len(body)} bytes)")
    return body


@types.coroutine
def _fetch_all(net: Any, address: tuple[str, int], paths: list[str]) -> Any:
    """GET each path on keep-alive connections; returns how many were
    byte-exact. A reused connection the server closed before answering
    (its keep-alive timeout may fire while a request is still held up on
    the network) is replaced and the request sent again once, as RFC 9112
    9.3.1 lets a client do for an idempotent request."""
    done = 0
    conn = None
    try:
        for path in paths:
            for attempt in (1, 2):
                if conn is None:
                    conn = yield from net.connect(address, timeout=30.0)
                    fresh = True
                try:
                    yield from fetch(conn, path)
                    fresh = False
                    break
                except ConnectionResetError as exc:
                    conn.close()
                    conn = None
                    if fresh or attempt == 2 or "before the response head" not in str(exc):
                        raise
                    sim.sometimes(True, "a keep-alive connection closed under a request was retried")
            done += 1
    finally:
        if conn is not None:
            conn.close()
    return done


def _web_main(host: Any) -> Any:
    server = WebServer(SAMPLE_SITE, network=host.network)
    host.server = server  # the scenario reads its counters
    return server.serve(("", 80), threadlib.Event())


# ---------------------------------------------------------------------------
# (a) load generator -> proxy -> web server, on a lossy, reordering network
# with partitions that heal


def proxied_load(world: sim.World) -> Callable[[], bool]:
    """Three hosts, ``client -> proxy -> web``, each link with 5% loss
    and 25% reordering and up to two partitions that heal. The load
    generator (unchanged ``apps.loadgen``) sends a request count drawn
    from the seed through the unchanged ``apps.proxy`` to the web server;
    a checker fetches every page through the proxy and compares it byte
    for byte. Invariants: the load generator's counts add up (each
    request it took is one success or one counted error; every status is
    200), the checker's pages are byte-exact, the web server served at
    least what was answered. Liveness: once healed, a fresh fetch
    through the proxy succeeds."""
    rng = world.rng
    client = world.host("client", "10.0.0.1")
    middle = world.host("proxy", "10.0.0.2")
    web = world.host("web", "10.0.0.3", start=_web_main)
    for a, b in ((client, middle), (middle, web)):
        world.link(a, b, latency=rng.uniform(0.001, 0.01), jitter=rng.uniform(0.0, 0.003), loss=0.05, reorder=0.25)
    proxy_main = proxy.serve(("", 8080), ("web", 80), connect_timeout=30.0, network=middle.network)
    proxy_thread = middle.spawn(proxy_main, 0, threadlib.Event(), name="proxy")
    for _ in range(rng.randint(0, 2)):
        start = rng.uniform(0.05, 2.0)
        side = rng.choice([([client], [middle]), ([middle], [web])])
        names = "-".join(h.name for h in side[0] + side[1])

        def partition(side: Any = side, lasts: float = rng.uniform(0.2, 3.0)) -> None:
            world.partition(*side)
            world.after(lasts, world.heal)

        world.fault_at(start, partition, label=f"partition {names}")
    requests = rng.randint(20, 60)
    gen = LoadGen([f"http://proxy:8080{p}" for p in PAGES], connections=rng.randint(1, 6), requests=requests,
                  duration=None, timeout=60.0, network=client.network)
    load = client.spawn(gen.main, name="loadgen")
    checker = client.spawn(_fetch_all, client.network, ("proxy", 8080), list(PAGES) * 2, name="checker")
    result = world.run(load)
    checked = world.run(checker)
    sim.always(checked == 2 * len(PAGES), "the checker's pages are byte-exact")
    failed = sum(n for kind, n in result.errors.items() if not kind.startswith("HTTP "))
    sim.always(result.requests + failed == requests,
               f"every request taken is a success or a counted error: {result.requests} + {failed} != {requests}")
    sim.always(sum(result.statuses.values()) == result.requests, "each success has one status")
    sim.always(set(result.statuses) <= {200}, f"every status is 200: {dict(result.statuses)}")
    sim.always(web.server.requests >= result.requests + checked,
               f"the server served every answered request: {web.server.requests} < {result.requests} + {checked}")
    sim.always(not proxy_thread.done, "the proxy keeps running")
    sim.sometimes(failed, "a load generator request failed under faults")
    sim.sometimes(any(f.startswith("at#") for f in world.faults.fired), "a partition happened")
    probe = client.spawn(_fetch_all, client.network, ("proxy", 8080), ["/index.html"], name="probe")

    def converged() -> bool:
        return probe.done and probe.result() == 1

    return converged


# ---------------------------------------------------------------------------
# (b) the web server under crash and restart of its host


class _Client:
    """One client's record: for each request, the time its connection
    opened, the time it ended and its error (None: the page, byte-exact)."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, float, str | None]] = []

    @types.coroutine
    def run(self, net: Any, count: int, pause: float) -> Any:
        conn = None
        opened = 0.0
        try:
            for i in range(count):
                try:
                    if conn is None:
                        conn = yield from net.connect(("web", 80), timeout=30.0)
                        opened = threadlib.now()
                    yield from fetch(conn, PAGES[i % len(PAGES)])
                    self.requests.append((opened, threadlib.now(), None))
                except (OSError, HttpError) as exc:
                    self.requests.append((opened if conn is not None else threadlib.now(), threadlib.now(),
                                          f"{type(exc).__name__}: {exc}"))
                    if conn is not None:
                        conn.close()
                        conn = None
                yield from threadlib.sleep(pause)
        finally:
            if conn is not None:
                conn.close()


def web_crash(world: sim.World) -> Callable[[], bool]:
    """The web server's host crashes once (at a time drawn from the seed)
    and restarts after a downtime drawn from it, while clients on another
    host fetch pages on keep-alive connections. Invariants: every error
    is on a connection opened before the crash and seen after it (clients
    see errors only for connections open at the crash); every request on
    a connection opened after the restart succeeds, byte-exact.
    Liveness: after the restart, a new connection gets a page."""
    rng = world.rng
    web = world.host("web", "10.0.0.1", start=_web_main)
    client = world.host("client", "10.0.0.2")
    world.link(web, client, latency=rng.uniform(0.001, 0.01), jitter=rng.uniform(0.0, 0.002), loss=0.01)
    crashes: list[float] = []
    restarts: list[float] = []

    def restart() -> None:
        if not web.up:
            restarts.append(world.now)
            web.restart()

    down = rng.uniform(0.05, 1.5)

    def crash() -> None:
        crashes.append(world.now)
        web.crash()
        world.after(down, restart)

    world.fault_at(rng.uniform(0.05, 2.0), crash, label="crash web")
    clients = [_Client() for _ in range(rng.randint(1, 4))]
    threads = [client.spawn(c.run, client.network, rng.randint(10, 40), rng.uniform(0.0, 0.1), name=f"client-{i}")
               for i, c in enumerate(clients)]
    for t in threads:
        world.run(t)
    for c in clients:
        for opened, ended, error in c.requests:
            if error is None:
                continue
            sim.always(any(opened <= t <= ended for t in crashes),
                       f"an error only on a connection open at the crash: {error} (opened t={opened:.6f}, "
                       f"ended t={ended:.6f}, crashes {crashes})")
        for opened, _ended, error in c.requests:
            if restarts and opened > restarts[-1]:
                sim.always(error is None, f"after the restart every request succeeds: {error}")
    sim.sometimes(any(e for c in clients for _o, _e, e in c.requests), "a client saw the crash")
    probe = client.spawn(_fetch_all, client.network, ("web", 80), ["/index.html"], name="probe")

    def converged() -> bool:
        return probe.done and probe.result() == 1

    return converged


__all__ = ["PAGES", "HttpError", "fetch", "proxied_load", "web_crash"]
