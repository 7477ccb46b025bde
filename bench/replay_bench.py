"""What recording costs and how fast a recording replays (threadlib.replay).

For the echo (100 connections x 64 B, C load client) and HTTP hello
(wrk -c100) workloads, the same threadlib server runs twice in one run,
pinned as every benchmark is: plain, and with its run recorded
(``threadlib.run(..., record=PATH)``, the `threadlib-recording` peer).
The table gives server CPU µs per operation for both and their ratio (the
issue's limit: at most 1.15x), the log's bytes per operation, and the
replay: the recorded log replayed in this process against the same
server code, its CPU µs per operation (a replay touches no socket: it
should be cheaper than the run it replays). The recorded server is
killed at the end of its load, so its log ends mid-record; the replay
runs up to that cut (the LogError there is expected and counted).

    python -m bench.replay_bench [-d 3] [-c 100] [--only echo] [--json]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from bench import echo, harness as H, http, peers

WORKLOADS = ("echo", "http")


def _sends(path: str) -> tuple[int, int]:
    """(send records, records) in the log, read up to its cut."""
    from threadlib.replay import LogError, log as L, sockets as S

    reader = L.LogReader(path)
    sends = records = 0
    try:
        while not reader.at_end():
            kind = reader.begin()
            if kind == L.SOCK:
                op = reader.uint()
                reader.uint()
                if reader.uint():
                    reader.outcome()
                else:
                    S._read_result(reader, op)
                sends += op == S.SEND
            else:
                L._skip(reader, kind)
            records += 1
    except LogError:
        pass
    finally:
        reader.close()
    return sends, records


def _replay(path: str, workload: str) -> float:
    """CPU seconds to replay the log up to its cut (the port comes from
    the log: the 0 given here is never bound)."""
    from threadlib import replay

    server = peers.Threadlib()
    handle = server.echo() if workload == "echo" else server.respond(http.Requests)
    start = time.process_time()
    try:
        replay.replay(path, server.main(0, handle))
    except replay.LogError:
        pass  # the cut where the recorded server was killed
    return time.process_time() - start


def measure(workload: str, peer: str, duration: float, conns: int, warmup: float) -> dict:
    if workload == "echo":
        return echo.measure(peer, conns, duration, 64, warmup)
    return http.measure(peer, conns, int(duration), int(warmup))


def run(duration: float = 3.0, conns: int = 100, warmup: float = 1.0, only: str = "", save: bool = False) -> list[str]:
    out = []
    for workload in (w for w in WORKLOADS if H.selected(w, only)):
        rows = []
        plain = H.safe("threadlib", lambda: measure(workload, "threadlib", duration, conns, warmup))
        rows.append(plain)
        with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
            path = os.path.join(tmp, "run.tlrec")
            os.environ["THREADLIB_BENCH_RECORD"] = path
            try:
                rec = H.safe("threadlib-recording",
                             lambda: measure(workload, "threadlib-recording", duration, conns, warmup))
            finally:
                del os.environ["THREADLIB_BENCH_RECORD"]
            rows.append(rec)
            if "error" not in rec and os.path.exists(path):
                size = os.path.getsize(path)
                sends, records = _sends(path)
                rec["log_bytes_op"] = size / max(1, sends)
                cpu = _replay(path, workload)
                replay_row = {"name": "replay of that log", "cpu_us": cpu * 1e6 / max(1, sends),
                              "ops_s": sends / cpu if cpu else None, "anchor": ""}
                rows.append(replay_row)
                rec["log_mb"] = size / 1e6
        cols = [("ops_s", "ops/s"), ("cpu_us", "server CPU µs/op"), ("log_bytes_op", "log bytes/op"),
                ("log_mb", "log MB")]
        title = (f"recording and replay, {workload}: {conns} connections, {duration:g}s "
                 f"(target: recording at most 1.15x the CPU per op; replay at most the original's)")
        out += H.report(f"replay-{workload}", title, rows, cols, save, {"duration": duration, "conns": conns},
                        ref="threadlib")
    return out


def main(argv: list[str]) -> None:
    p = H.load_args(__doc__, "measured seconds per server", "connections", "unmeasured load seconds first",
                    seconds=float, warmup=1.0)
    H.cli(argv, p, lambda a: run(a.duration, a.conns, a.warmup, a.only, a.json))


if __name__ == "__main__":
    main(sys.argv[1:])
