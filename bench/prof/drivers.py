"""Small in-process drivers for profiling the rows of docs/profiles.md.

Each driver runs one hot path N times in this process, single-threaded, and
prints the CPU time it took (time.process_time, not wall); run it under
``valgrind --tool=callgrind --dump-instr=no`` or ``-m cProfile`` to see
where the instructions go. It never compares peers and never reads the wall
clock for a figure (the lead's bench/ suites do that).

    python -m bench.prof.drivers spawn [-n 100000] [--gc default|freeze|off]
    python -m bench.prof.drivers queue [-n 200000] [--maxsize 1]
    python -m bench.prof.drivers echo  [-n 20000] [--flavour gen|green]
    python -m bench.prof.drivers disk  [-n 20000] [--threads 128] [--file /var/tmp/prof6-disk]
    python -m bench.prof.drivers splice [-n 256]   (MiB through a loopback TCP splice hop)
    python -m cProfile -s tottime -m bench.prof.drivers http_user [-n 3] (seconds of wrk -c10 against
        apps.webserver on the user-level stack over TUN, in a namespace it makes; needs root, wrk)
"""
from __future__ import annotations

import argparse
import gc
import sys
import time


def spawn(n: int, gc_mode: str) -> dict:
    """Spawn n threads that each block on one Event, set it, join them all:
    the spawn + park + wake + join cycle of bench/spawn.py, end to end."""
    import threadlib

    if gc_mode == "off":
        gc.disable()

    def waiter(ev):
        yield from ev.wait()

    def main():
        ev = threadlib.Event()
        c0 = time.process_time()
        ts = []
        append = ts.append
        for _ in range(n):
            append((yield from threadlib.spawn(waiter(ev))))
        yield from threadlib.sleep(0)
        c1 = time.process_time()
        ev.set()
        for t in ts:
            yield from t.join()
        c2 = time.process_time()
        return {"spawn_park_us": (c1 - c0) / n * 1e6, "wake_join_us": (c2 - c1) / n * 1e6,
                "total_us": (c2 - c0) / n * 1e6, "gc_collections": [s["collections"] for s in gc.get_stats()]}

    return threadlib.run(main())


def queue(n: int, maxsize: int) -> dict:
    """A producer puts n items into a Queue(maxsize), a consumer gets them."""
    import threadlib

    def producer(q):
        put = q.put
        for i in range(n):
            yield from put(i)

    def consumer(q):
        get = q.get
        for _ in range(n):
            yield from get()

    def main():
        q = threadlib.Queue(maxsize)
        c0 = time.process_time()
        ts = [(yield from threadlib.spawn(producer(q))), (yield from threadlib.spawn(consumer(q)))]
        for t in ts:
            yield from t.join()
        return {"handoff_us": (time.process_time() - c0) / n * 1e6}

    return threadlib.run(main())


def echo(n: int, flavour: str) -> dict:
    """n 64-byte round trips over one socketpair: a client thread sends and
    reads back, an echo thread reads and sends (generator threads, or the
    greenlet frontend's blocking calls on the same runtime)."""
    import threadlib
    from threadlib.io import sockio

    a, b = sockio.socketpair()
    msg = b"x" * 64

    if flavour == "gen":
        def server(s):
            for _ in range(n):
                data = yield from s.recv(65536)
                yield from s.sendall(data)

        def client(s):
            for _ in range(n):
                yield from s.sendall(msg)
                got = 0
                while got < len(msg):
                    got += len((yield from s.recv(65536)))

        def main():
            c0 = time.process_time()
            ts = [(yield from threadlib.spawn(server(b))), (yield from threadlib.spawn(client(a)))]
            for t in ts:
                yield from t.join()
            return {"round_trip_us": (time.process_time() - c0) / n * 1e6}

        return threadlib.run(main())

    from threadlib.frontends import green
    gs, ga = green.wrap(b), green.wrap(a)

    def gserver():
        for _ in range(n):
            gs.sendall(gs.recv(65536))

    def gclient():
        for _ in range(n):
            ga.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(ga.recv(65536))

    def gmain():
        c0 = time.process_time()
        ts = [green.spawn(gserver), green.spawn(gclient)]
        for t in ts:
            green.join(t)
        return {"round_trip_us": (time.process_time() - c0) / n * 1e6}

    return green.run(gmain)


def disk(n: int, threads: int, path: str) -> dict:
    """n random 4 KiB O_DIRECT reads of a 64 MiB file by ``threads``
    threads through threadlib.io.fileio (bench/disk_bench.py's threadlib
    peer, bounded by a count instead of a time; the file is made once)."""
    import os
    import random

    import threadlib
    from threadlib.io import fileio

    size = 64 << 20
    if not os.path.exists(path) or os.path.getsize(path) != size:
        with open(path, "wb") as out:
            out.write(os.urandom(size))
    blocks = size // 4096
    per_thread = n // threads

    def reader(f, seed):
        rnd = random.Random(seed).randrange
        pread = f.pread
        for _ in range(per_thread):
            yield from pread(4096, rnd(blocks) * 4096)

    def main():
        f = yield from fileio.open(path)
        if not f.direct:
            raise RuntimeError("fileio fell back to the blocking pool (no O_DIRECT or no AIO here)")
        c0 = time.process_time()
        ts = []
        for i in range(threads):
            ts.append((yield from threadlib.spawn(reader(f, i))))
        yield from threadlib.join_all(ts)
        c1 = time.process_time()
        yield from f.close()
        return {"cpu_us_per_read": (c1 - c0) / (per_thread * threads) * 1e6, "reads": per_thread * threads}

    return threadlib.run(main())


def splice_hop(mib: int) -> dict:
    """mib MiB from a sender thread through threadlib.io.splice.splice (one
    loopback TCP connection in, one out) to a reader thread: the proxy
    hop of bench/proxy_bench.py, in one process; the CPU (process_time) is
    that of all three threads."""
    import threadlib
    from threadlib.io import sockio
    from threadlib.io import splice as splicing

    chunk = b"x" * (1 << 20)

    def pair():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        client = yield from sockio.connect(listener.address)
        server, _ = yield from listener.accept()
        listener.close()
        return client, server

    def sender(conn):
        for _ in range(mib):
            yield from conn.sendall(chunk)
        conn.shutdown()

    def sink(conn):
        got = 0
        buf = bytearray(1 << 20)
        while True:
            n = yield from conn.recv_into(buf)
            if not n:
                return got
            got += n

    def main():
        (src_out, src_in), (dst_out, dst_in) = (yield from pair()), (yield from pair())
        c0 = time.process_time()
        ts = [(yield from threadlib.spawn(sender(src_out))), (yield from threadlib.spawn(sink(dst_in)))]
        moved = yield from splicing.splice(src_in, dst_out, half_close=True)
        got = (yield from threadlib.join_all(ts))[1]
        c1 = time.process_time()
        for c in (src_out, src_in, dst_out, dst_in):
            c.close()
        assert moved == got == mib << 20, (moved, got)
        return {"cpu_s_per_gb": (c1 - c0) / (mib / 1024), "zero_copy": splicing.zero_copy(src_in, dst_out)}

    return threadlib.run(main())


def http_user(seconds: int) -> dict:
    """apps.webserver on tcpsockio (the user-level stack) over a TUN link in
    a throw-away namespace, wrk -c10 for ``seconds`` from the namespace's
    kernel side, GET /1k.txt: usertcp_bench's http row, small, to profile
    the server process (run this under cProfile)."""
    import tempfile

    from bench import usertcp_bench as U

    with tempfile.TemporaryDirectory() as root:
        with open(f"{root}/1k.txt", "wb") as f:
            f.write(b"x" * 1024)
        cpu0 = time.process_time()
        res = U.user_http(seconds, 10, root)
        res["process_cpu_s"] = time.process_time() - cpu0
        res["cpu_us_per_request"] = res["process_cpu_s"] * 1e6 / max(1, res["req_s"] * seconds)
        return res


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench.prof.drivers")
    p.add_argument("what", choices=("spawn", "queue", "echo", "disk", "splice", "http_user"))
    p.add_argument("--threads", type=int, default=128)
    p.add_argument("--file", default="/var/tmp/prof6-disk")
    p.add_argument("-n", type=int, default=0)
    p.add_argument("--gc", default="default", choices=("default", "off"))
    p.add_argument("--maxsize", type=int, default=1)
    p.add_argument("--flavour", default="gen", choices=("gen", "green"))
    a = p.parse_args(argv)
    if a.what == "spawn":
        r = spawn(a.n or 100_000, a.gc)
    elif a.what == "queue":
        r = queue(a.n or 200_000, a.maxsize)
    elif a.what == "echo":
        r = echo(a.n or 20_000, a.flavour)
    elif a.what == "disk":
        r = disk(a.n or 20_000, a.threads, a.file)
    elif a.what == "splice":
        r = splice_hop(a.n or 256)
    else:
        r = http_user(a.n or 3)
    from threadlib._kernel.compiled import COMPILED
    r["compiled"] = COMPILED
    print(r)


if __name__ == "__main__":
    main(sys.argv[1:])
