"""Switch benchmark: context switches between two threads.

yield: two threads each call sleep(0) N/2 times (N switches in all).
queue: a producer puts N items into a Queue(maxsize=1), a consumer gets them
(N handoffs; the full/empty queue forces a switch per item). --maxsize 1,64
adds a table for a queue of 64, where switches are batched.
Each peer and mode runs in a fresh child process pinned to core 0; reports
switches (handoffs) per second and CPU µs per switch.

    python -m bench.switch [-n 1000000] [--maxsize 1[,64]] [--json]
"""
from __future__ import annotations

import sys
import time

from bench import harness as H, peers

PEERS = peers.RUNTIMES
TARGETS = {"yield": [("ops_s", ">=", 2_500_000, "/s")], "queue": [("ops_s", ">=", 1_200_000, "/s")]}
ANCHORS = {("yield", "asyncio"): "562k/s", ("yield", "uvloop"): "1.21M/s"}


def check(last, n: int) -> None:
    """The consumer's last item must be the producer's last: the queue really handed items over."""
    if last != n - 1:
        raise RuntimeError(f"consumer's last item is {last!r}, not {n - 1}")


class Clock:
    def __init__(self):
        self.t0, self.c0 = time.perf_counter(), H.self_cpu_ns()

    def result(self, n: int) -> dict:
        return {"n": n, "wall_s": time.perf_counter() - self.t0, "cpu_ns": H.self_cpu_ns() - self.c0}


# ---------------------------------------------------------------- children
# The measured threads, one set per way of writing a thread. lib is the
# runtime's module: `lib.sleep(0)` costs what the `asyncio.sleep(0)` (etc.)
# written out per peer did, a closure variable and an attribute.
def async_threads(lib, n: int) -> tuple:
    """yielder(k), producer(q), consumer(q) as `async def` threads: asyncio,
    uvloop, curio and threadlib-async run this same code (and trio its yielder)."""
    async def yielder(k):
        for _ in range(k):
            await lib.sleep(0)

    async def producer(q):
        for i in range(n):
            await q.put(i)

    async def consumer(q):
        for _ in range(n):
            item = await q.get()
        check(item, n)

    return yielder, producer, consumer


def generator_threads(lib, n: int) -> tuple:
    """The same as generator threads (threadlib): `yield from` each call."""
    def yielder(k):
        for _ in range(k):
            yield from lib.sleep(0)

    def producer(q):
        for i in range(n):
            yield from q.put(i)

    def consumer(q):
        for _ in range(n):
            item = yield from q.get()
        check(item, n)

    return yielder, producer, consumer


def blocking_threads(lib, n: int) -> tuple:
    """The same as green threads whose calls block them: gevent and threadlib-green."""
    def yielder(k):
        for _ in range(k):
            lib.sleep(0)

    def producer(q):
        for i in range(n):
            q.put(i)

    def consumer(q):
        for _ in range(n):
            item = q.get()
        check(item, n)

    return yielder, producer, consumer


def c_asyncio(mode: str, n: str, maxsize: str, loop: str = "asyncio") -> dict:
    import asyncio
    n, maxsize = int(n), int(maxsize)
    yielder, producer, consumer = async_threads(asyncio, n)

    async def main():
        c = Clock()
        if mode == "yield":
            await asyncio.gather(yielder(n // 2), yielder(n - n // 2))
        else:
            q = asyncio.Queue(maxsize)
            await asyncio.gather(producer(q), consumer(q))
        return c.result(n)

    return peers.run(loop, main)


def c_uvloop(mode: str, n: str, maxsize: str) -> dict:
    return c_asyncio(mode, n, maxsize, "uvloop")


def c_gevent(mode: str, n: str, maxsize: str) -> dict:
    import gevent
    import gevent.queue
    n, maxsize = int(n), int(maxsize)
    yielder, producer, consumer = blocking_threads(gevent, n)

    c = Clock()   # no loop to start: gevent's hub runs from the first switch
    if mode == "yield":
        gs = [gevent.spawn(yielder, n // 2), gevent.spawn(yielder, n - n // 2)]
    else:
        q = gevent.queue.Queue(maxsize)
        gs = [gevent.spawn(producer, q), gevent.spawn(consumer, q)]
    gevent.joinall(gs, raise_error=True)
    return c.result(n)


def c_trio(mode: str, n: str, maxsize: str) -> dict:
    import trio
    n, maxsize = int(n), int(maxsize)
    yielder = async_threads(trio, n)[0]

    # async_threads' producer and consumer, deliberately written again for trio's
    # API: trio has no Queue but a memory channel of maxsize (send/receive).
    async def producer(s):
        for i in range(n):
            await s.send(i)

    async def consumer(r):
        for _ in range(n):
            item = await r.receive()
        check(item, n)

    async def main():
        c = Clock()
        async with trio.open_nursery() as nursery:
            if mode == "yield":
                nursery.start_soon(yielder, n // 2)
                nursery.start_soon(yielder, n - n // 2)
            else:
                s, r = trio.open_memory_channel(maxsize)
                nursery.start_soon(producer, s)
                nursery.start_soon(consumer, r)
        return c.result(n)

    return peers.run("trio", main)


def c_curio(mode: str, n: str, maxsize: str) -> dict:
    import curio
    n, maxsize = int(n), int(maxsize)
    yielder, producer, consumer = async_threads(curio, n)

    async def main():
        c = Clock()
        if mode == "yield":
            ts = [await curio.spawn(yielder, n // 2), await curio.spawn(yielder, n - n // 2)]
        else:
            q = curio.Queue(maxsize)
            ts = [await curio.spawn(producer, q), await curio.spawn(consumer, q)]
        for t in ts:
            await t.join()
        return c.result(n)

    return peers.run("curio", main)


def c_threadlib(mode: str, n: str, maxsize: str, flavour: str = "gen") -> dict:
    threadlib = H.import_or_skip("threadlib")
    n, maxsize = int(n), int(maxsize)
    y, p, c_ = (generator_threads if flavour == "gen" else async_threads)(threadlib, n)

    def main():
        c = Clock()
        if mode == "yield":
            ts = [(yield from threadlib.spawn(y(n // 2))), (yield from threadlib.spawn(y(n - n // 2)))]
        else:
            q = threadlib.Queue(maxsize)
            ts = [(yield from threadlib.spawn(p(q))), (yield from threadlib.spawn(c_(q)))]
        for t in ts:
            yield from t.join()
        return c.result(n)

    return peers.run("threadlib", main)


def c_threadlib_async(mode: str, n: str, maxsize: str) -> dict:
    return c_threadlib(mode, n, maxsize, "async")


def c_threadlib_green(mode: str, n: str, maxsize: str) -> dict:
    threadlib = H.import_or_skip("threadlib")
    green = H.import_or_skip("threadlib.frontends.green")
    n, maxsize = int(n), int(maxsize)
    yielder, producer, consumer = blocking_threads(green, n)

    def main():
        c = Clock()
        if mode == "yield":
            ts = [green.spawn(yielder, n // 2), green.spawn(yielder, n - n // 2)]
        else:
            q = green.wrap(threadlib.Queue(maxsize))   # blocking view: q.put/q.get block the greenlet
            ts = [green.spawn(producer, q), green.spawn(consumer, q)]
        for t in ts:
            green.join(t)
        return c.result(n)

    return peers.run("threadlib-green", main)


ENTRIES = {name: globals()["c_" + name.replace("-", "_")] for name in PEERS}


# ---------------------------------------------------------------- parent
def measure(peer: str, mode: str, n: int, maxsize: int, timeout: float) -> dict:
    r = H.run_child("bench.switch", ["--child", peer, mode, str(n), str(maxsize)], timeout)
    return {"n": n, "ops_s": n / r["wall_s"], "cpu_us": r["cpu_ns"] / 1e3 / n}


def run(n: int, maxsize: int | list[int] = 1, only: str = "", timeout: float = 300, save: bool = False,
        repeat: int = 1) -> list[str]:
    """Tables for sleep(0) switches and, per queue capacity in maxsize, Queue handoffs."""
    tables, results = [], {}
    modes = [("yield", 0)] + [("queue", m) for m in ([maxsize] if isinstance(maxsize, int) else maxsize)]
    for mode, size in modes:
        anchors = {peer: a for (m, peer), a in ANCHORS.items() if m == mode}
        rows = H.peer_rows(PEERS, only, lambda peer: measure(peer, mode, n, size, timeout), repeat, anchors,
                           TARGETS[mode])
        if mode == "yield":
            title, cols = f"switch: {n:,} sleep(0) switches between two threads", \
                [("ops_s", "switches/s"), ("cpu_us", "CPU µs/switch")]
        else:
            title, cols = f"switch: {n:,} Queue(maxsize={size}) handoffs producer -> consumer", \
                [("ops_s", "handoffs/s"), ("cpu_us", "CPU µs/handoff")]
        tables.append(H.table(title, rows, cols, ref="asyncio"))
        results[f"{mode}{size or ''}"] = rows
    if save:
        H.save_json("switch", results)
    return tables


def main(argv: list[str]) -> None:
    p = H.arg_parser(__doc__)
    p.add_argument("-n", type=int, default=1_000_000, help="switches (handoffs) per peer and mode")
    p.add_argument("--maxsize", default="1",
                   help="queue capacities, comma-separated (1: every item a handoff; 64: batched)")
    p.add_argument("--timeout", type=float, default=300, help="per-peer child timeout, seconds")
    H.cli(argv, p, lambda a: run(a.n, [int(m) for m in a.maxsize.split(",")], a.only, a.timeout, a.json, a.repeat),
          children=ENTRIES)


if __name__ == "__main__":
    main(sys.argv[1:])
