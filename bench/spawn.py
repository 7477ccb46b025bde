"""Spawn benchmark: N threads (tasks, greenlets) each blocked on one Event.

Reports µs per spawn (wall and CPU, from the first spawn until every thread
has started and is blocked; and the CPU of the spawn calls alone) and RSS bytes per blocked thread (VmRSS after
minus VmRSS just before spawning, over N). Each peer runs alone in a fresh
child process pinned to core 0. A separate row set runs 10M blocked threads
in one process: threadlib and a plain-generators baseline only.

It must never run two peers in one process, nor tear down the blocked
threads at the end (the child exits at once).

    python -m bench.spawn [--sizes 100000,1000000] [--big 10000000] [--json]
"""
from __future__ import annotations

import sys
import time

from bench import harness as H, peers

BIG_ONLY = ("threadlib", "generators")
PEERS = (*peers.RUNTIMES, "generators")
TARGETS = [("cpu_us", "<=", 2.5, " µs"), ("bytes", "<=", 450, " B")]
ANCHORS = {"asyncio": "1176 B", "generators": "298 B"}


# ---------------------------------------------------------------- children
class Meter:
    """Wall, CPU and RSS at the start of spawning; result() when all are blocked."""

    def __init__(self, n: int):
        self.n, self.count, self.woken, self.loop_cpu = n, 0, 0, None
        self.rss0, self.cpu0, self.t0 = H.rss_bytes(), H.self_cpu_ns(), time.perf_counter()

    def spawned(self) -> None:
        """The spawn calls are done (the threads may not have run yet)."""
        self.loop_cpu = H.self_cpu_ns() - self.cpu0

    def result(self) -> dict:
        t1, cpu1, rss1 = time.perf_counter(), H.self_cpu_ns(), H.rss_bytes()
        if self.woken:
            raise RuntimeError(f"{self.woken} threads returned from Event.wait() before it was set")
        return {"n": self.n, "wall_s": t1 - self.t0, "cpu_ns": cpu1 - self.cpu0, "loop_cpu_ns": self.loop_cpu,
                "rss_before": self.rss0, "rss_after": rss1}


async def await_event(ev, m):
    """The blocked thread of every `async def` runtime: asyncio, uvloop, trio,
    curio and threadlib-async run this same coroutine."""
    m.count += 1
    await ev.wait()
    m.woken += 1


# Each child below spawns n threads with its runtime's own spawn call, then
# yields until all have started: the lines around that call look alike from
# peer to peer on purpose (they are the measured loop, with no helper call
# per spawn that would add to what is measured). A child that spawns
# await_event binds it to a local `waiter` first, so that its loop loads it
# from a closure cell, as it always has.
def c_asyncio(n: str, loop: str = "asyncio") -> None:
    import asyncio
    n, waiter = int(n), await_event

    async def main():
        ev = asyncio.Event()
        m = Meter(n)
        for _ in range(n):
            asyncio.create_task(waiter(ev, m))
        m.spawned()
        while m.count < n:
            await asyncio.sleep(0)
        H.emit(m.result())

    peers.run(loop, main)


def c_uvloop(n: str) -> None:
    c_asyncio(n, "uvloop")


def c_gevent(n: str) -> None:
    import gevent
    import gevent.event
    n = int(n)
    ev = gevent.event.Event()

    def waiter(m):
        m.count += 1
        ev.wait()
        m.woken += 1

    m = Meter(n)   # no loop to start: gevent's hub runs from the first gevent.sleep
    for _ in range(n):
        gevent.spawn(waiter, m)
    m.spawned()
    while m.count < n:
        gevent.sleep(0)
    H.emit(m.result())


def c_trio(n: str) -> None:
    import trio
    n, waiter = int(n), await_event

    async def main():
        ev = trio.Event()
        async with trio.open_nursery() as nursery:
            m = Meter(n)
            for _ in range(n):
                nursery.start_soon(waiter, ev, m)
            m.spawned()
            while m.count < n:
                await trio.sleep(0)
            H.emit(m.result())

    peers.run("trio", main)


def c_curio(n: str) -> None:
    import curio
    n, waiter = int(n), await_event

    async def main():
        ev = curio.Event()
        m = Meter(n)
        for _ in range(n):
            await curio.spawn(waiter, ev, m, daemon=True)
        m.spawned()
        while m.count < n:
            await curio.sleep(0)
        H.emit(m.result())

    peers.run("curio", main)


def c_threadlib(n: str, flavour: str = "gen") -> None:
    threadlib = H.import_or_skip("threadlib")
    n = int(n)

    def waiter(ev, m):
        m.count += 1
        yield from ev.wait()
        m.woken += 1

    def main():
        ev = threadlib.Event()
        m = Meter(n)
        fn = waiter if flavour == "gen" else await_event
        for _ in range(n):
            yield from threadlib.spawn(fn(ev, m))
        m.spawned()
        while m.count < n:
            yield from threadlib.sleep(0)
        H.emit(m.result())

    peers.run("threadlib", main)


def c_threadlib_async(n: str) -> None:
    c_threadlib(n, "async")


def c_threadlib_green(n: str) -> None:
    threadlib = H.import_or_skip("threadlib")
    green = H.import_or_skip("threadlib.frontends.green")
    n = int(n)

    def waiter(ev, m):
        m.count += 1
        ev.wait()
        m.woken += 1

    def main():
        ev = green.wrap(threadlib.Event())   # blocking view: ev.wait() blocks the greenlet
        m = Meter(n)
        for _ in range(n):
            green.spawn(waiter, ev, m)
        m.spawned()
        while m.count < n:
            green.sleep(0)
        H.emit(m.result())

    peers.run("threadlib-green", main)


def c_generators(n: str) -> None:
    """The floor: plain generator objects, each started and suspended at a yield."""
    n = int(n)

    def waiter(m):
        m.count += 1
        yield

    m = Meter(n)
    gens = []
    append = gens.append
    for _ in range(n):
        g = waiter(m)
        next(g)
        append(g)
    H.emit(m.result())


ENTRIES = {name: globals()["c_" + name.replace("-", "_")] for name in PEERS}


# ---------------------------------------------------------------- parent
def measure(peer: str, n: int, timeout: float) -> dict:
    # curio's reschedule_task() asserts `task not in ready` (a deque scan): quadratic in
    # the number of ready tasks, so curio runs with -O (asserts off) here.
    flags = ("-O",) if peer == "curio" else ()
    # Leave 1.5 GiB of the machine's available memory to everyone else.
    limit = max(H.mem_available() - 3 * 2**29, 2**30)
    r = H.run_child("bench.spawn", ["--child", peer, str(n)], timeout, pyflags=flags, mem_limit=limit)
    rss = r["rss_after"] - r["rss_before"]
    return {"n": n, "us_spawn": r["wall_s"] * 1e6 / n, "ops_s": n / r["wall_s"],
            "cpu_us": r["cpu_ns"] / 1e3 / n, "bytes": rss / n, "rss_gib": rss / 2**30,
            "call_us": r["loop_cpu_ns"] / 1e3 / n if r.get("loop_cpu_ns") is not None else None}


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def run(sizes: list[int], big: int, only: str = "", timeout: float = 600, save: bool = False,
        repeat: int = 1) -> list[str]:
    tables, results = [], {}
    cols = [("n", "threads"), ("ops_s", "spawns/s"), ("us_spawn", "wall µs/spawn"),
            ("cpu_us", "CPU µs/spawn"), ("call_us", "of which spawn calls"), ("bytes", "RSS B/thread")]
    for n, names in [(n, PEERS) for n in sizes] + ([(big, BIG_ONLY)] if big else []):
        target = TARGETS + ([("rss_gib", "<=", 6.0, " GiB")] if n == big else [])
        rows = H.peer_rows(names, only, lambda peer: measure(peer, n, timeout), repeat, ANCHORS, target)
        c = cols + ([("rss_gib", "RSS GiB total")] if n == big else [])
        ref = "asyncio" if n != big else "generators"
        tables.append(H.table(f"spawn {label(n)} threads blocked on an Event", rows, c, ref=ref))
        results[label(n)] = rows
    if save:
        H.save_json("spawn", results)
    return tables


def main(argv: list[str]) -> None:
    p = H.arg_parser(__doc__)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated thread counts for all peers")
    p.add_argument("--big", type=int, default=10_000_000, help="threadlib+generators only run size (0: skip)")
    p.add_argument("--timeout", type=float, default=600, help="per-peer child timeout, seconds")
    H.cli(argv, p, lambda a: run([int(s) for s in a.sizes.split(",") if s], a.big, a.only, a.timeout, a.json,
                                 a.repeat), children=ENTRIES)


if __name__ == "__main__":
    main(sys.argv[1:])
