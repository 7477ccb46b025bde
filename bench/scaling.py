"""How cost grows with work: per-operation CPU must stay flat as idle
connections and parked threads pile up (no scan over idle threads or fds
on a hot path).

1. Echo at 100, 1,000 and 10,000 connections (one 64-byte message in
   flight on each, the C load client): server CPU µs per message for
   threadlib, uvloop and asyncio (protocols) and the C epoll server, and
   each one's ratio of 10,000 to 100 connections (the issue's limit for
   threadlib: 1.2x). Server and load run with the fd limit raised to the
   machine's hard limit (prlimit), pinned to different cores.
2. The scheduler with many threads parked: N threads blocked on one
   Event (N = 0 and 1,000,000) while 100 threads switch with sleep(0) and
   50 pairs hand items over Queue(maxsize=1); CPU ns per switch and per
   hand-off, and the ratio of N = 1M to N = 0. Each N runs in a fresh
   child pinned to core 0.

    python -m bench.scaling [--conns 100,1000,10000] [-d 3] [--parked 0,1000000] [--only echo] [--json]
"""

from __future__ import annotations

import resource
import sys

from bench import echo, harness as H, peers

PEERS = ("threadlib", "uvloop-protocols", "asyncio-protocols", "c-epoll")


def _hard_nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _raised(argv: list[str]) -> list[str]:
    n = _hard_nofile()
    return ["prlimit", f"--nofile={n}:{n}", *argv]


def _server_argv(peer: str, port: int, tmp: str) -> list[str]:
    return _raised(echo.server_argv(peer, port, tmp))


def _measure_echo(peer: str, conns: int, duration: float, warmup: float) -> dict:
    loader = str(H.build_c("echo_load"))

    def load(secs: float) -> tuple[int, float]:
        out = H.run_load(_raised([loader, H.HOST, str(port[0]), str(conns), str(secs), "64"]), timeout=secs + 60)
        f = dict(kv.split("=") for kv in out.split())
        if int(f["errors"]):
            raise RuntimeError(f"{f['errors']} connections failed: {out.strip()}")
        return int(f["messages"]), float(f["seconds"])

    port = [0]
    with peers.running(peer, _server_argv) as srv:
        port[0] = srv.port
        return H.measure_load(srv, load, duration, warmup)


def echo_rows(conn_counts: list[int], duration: float, warmup: float, only: str) -> list[dict]:
    rows = []
    for peer in (p for p in PEERS if H.selected(p, only)):
        row: dict = {"name": peer, "anchor": ""}
        for conns in conn_counts:
            try:
                r = H.best_of(1, lambda: _measure_echo(peer, conns, duration, warmup))
            except Exception as exc:  # a peer that cannot hold this many: say so in its cell
                row[f"cpu_{conns}"] = f"failed: {exc}"[:60]
                continue
            row[f"cpu_{conns}"] = r["cpu_us"]
            row[f"ops_{conns}"] = r["ops_s"]
        first, last = f"cpu_{conn_counts[0]}", f"cpu_{conn_counts[-1]}"
        if isinstance(row.get(first), float) and isinstance(row.get(last), float):
            row["growth"] = row[last] / row[first]
        print(f"  {peer}: done", file=sys.stderr)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- parked threads
def c_parked(n: str, rounds: str) -> dict:
    """In a child: n threads parked on an Event, then 100 threads doing
    sleep(0) `rounds` times and 50 producer/consumer pairs handing over
    `rounds` items each through Queue(maxsize=1)."""
    threadlib = H.import_or_skip("threadlib")
    n, rounds = int(n), int(rounds)
    out: dict = {"n": n}

    def parked(ev):
        yield from ev.wait()

    def switcher():
        for _ in range(rounds):
            yield from threadlib.sleep(0)

    def producer(q):
        for i in range(rounds):
            yield from q.put(i)

    def consumer(q):
        for _ in range(rounds):
            yield from q.get()

    def main():
        ev = threadlib.Event()
        for _ in range(n):
            yield from threadlib.spawn(parked(ev))
        yield from threadlib.sleep(0)  # every parked thread has run to its wait
        rss = H.rss_bytes()
        cpu0 = H.self_cpu_ns()
        workers = []
        for _ in range(100):
            workers.append((yield from threadlib.spawn(switcher())))
        for t in workers:
            yield from t.join()
        out["switch_ns"] = (H.self_cpu_ns() - cpu0) / (100 * rounds)
        cpu0 = H.self_cpu_ns()
        pairs = []
        for _ in range(50):
            q = threadlib.Queue(maxsize=1)
            pairs.append((yield from threadlib.spawn(producer(q))))
            pairs.append((yield from threadlib.spawn(consumer(q))))
        for t in pairs:
            yield from t.join()
        out["handoff_ns"] = (H.self_cpu_ns() - cpu0) / (50 * rounds)
        out["rss_mb"] = rss / 1e6
        H.emit(out)

    threadlib.run(main)
    return out


def parked_rows(counts: list[int], rounds: int) -> list[dict]:
    rows = []
    for n in counts:
        rows.append(H.safe(f"threadlib, {n:,} parked",
                           lambda: H.run_child("bench.scaling", ["--child", "parked", str(n), str(rounds)],
                                               timeout=600)))
    base = rows[0] if rows and "error" not in rows[0] else None
    for r in rows:
        if base is not None and "error" not in r:
            r["switch_ratio"] = r["switch_ns"] / base["switch_ns"]
            r["handoff_ratio"] = r["handoff_ns"] / base["handoff_ns"]
        r.setdefault("anchor", "")
    return rows


def run(conn_counts: list[int], duration: float, warmup: float, parked: list[int], rounds: int, only: str,
        save: bool) -> list[str]:
    out = []
    if H.selected("echo", only):
        rows = echo_rows(conn_counts, duration, warmup, "")
        cols = [(f"cpu_{c}", f"CPU µs/msg, {c:,} conns") for c in conn_counts] + [
            ("growth", f"{conn_counts[-1]:,} vs {conn_counts[0]:,}")]
        out += H.report("scaling-echo", f"echo CPU per message as connections grow (fd limit {_hard_nofile()}; "
                        f"target for threadlib: growth at most 1.2x)", rows, cols, save,
                        {"conns": conn_counts, "duration": duration})
    if H.selected("parked", only):
        rows = parked_rows(parked, rounds)
        cols = [("switch_ns", "CPU ns per sleep(0) switch"), ("switch_ratio", "vs none parked"),
                ("handoff_ns", "CPU ns per Queue(1) hand-off"), ("handoff_ratio", "vs none parked"),
                ("rss_mb", "RSS MB")]
        out += H.report("scaling-parked", f"scheduler cost with threads parked on an Event ({rounds:,} rounds)",
                        rows, cols, save, {"parked": parked, "rounds": rounds})
    return out


def main(argv: list[str]) -> None:
    p = H.arg_parser(__doc__)
    p.add_argument("-d", "--duration", type=float, default=3.0, help="measured seconds per server and count")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured load seconds first")
    p.add_argument("--conns", default="100,1000,10000", help="connection counts")
    p.add_argument("--parked", default="0,1000000", help="parked thread counts")
    p.add_argument("--rounds", type=int, default=20000, help="switches per thread and items per pair")
    H.cli(argv, p, lambda a: run([int(c) for c in a.conns.split(",")], a.duration, a.warmup,
                                 [int(c) for c in a.parked.split(",")], a.rounds, a.only, a.json),
          children={"parked": c_parked})


if __name__ == "__main__":
    main(sys.argv[1:])
