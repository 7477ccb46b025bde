"""Shared benchmark machinery: free ports, C builds, pinned server processes
with readiness checks, load clients, CPU and memory accounting, child-process
runs, Markdown tables with ratios and targets, and the command line every
benchmark shares (cli). The peers themselves are in peers.py.

It must never leave a server running (every start has a matching kill, also
on error), never send traffic anywhere but 127.0.0.1, and never abort a whole
run because one peer failed: a failing peer becomes a "failed: reason" row.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
SERVER_CPU, LOAD_CPU = 0, 1
HOST = "127.0.0.1"


class Skip(Exception):
    """A peer that cannot run here (a module missing): reported as 'skipped: reason'."""


# ---------------------------------------------------------------- processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pinned(argv: list[str], cpu: int) -> list[str]:
    """argv run on one core (taskset), at priority $BENCH_NICE if set (e.g. -5
    to stand out from other work on a shared machine)."""
    if shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu)] + argv
    nice = os.environ.get("BENCH_NICE", "")
    return (["nice", "-n", str(int(nice))] + argv) if nice else argv


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def build_c(name: str) -> Path:
    """Compile bench/c/NAME.c with gcc -O2 into bench/build/NAME (if stale)."""
    src, out = BENCH / "c" / f"{name}.c", BUILD / name
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        BUILD.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(src)], check=True,
                       capture_output=True, text=True)
    return out


def group_pids(pgid: int) -> list[int]:
    """Live processes in process group pgid (a server and any children it forked)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(d))
    return pids


def schedstat_ns(pid: int | str) -> int:
    """Nanoseconds on CPU of all live threads of pid (schedstat first field)."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def stat_ns(pid: int | str) -> int:
    """utime+stime of pid in ns (clock-tick resolution; includes dead threads)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return (int(f[11]) + int(f[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def self_cpu_ns() -> int:
    return schedstat_ns("self")


def rss_bytes() -> int:
    """VmRSS of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Server:
    """A server subprocess pinned to SERVER_CPU in its own process group.

    Use as a context manager: started and checked ready on entry (a TCP
    connect succeeds), killed (the whole group) on exit, also on error."""

    def __init__(self, name: str, argv: list[str], port: int, cpu: int = SERVER_CPU,
                 ready_timeout: float = 15.0):
        self.name, self.argv, self.port, self.cpu = name, argv, port, cpu
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile(mode="w+")

    def __enter__(self) -> "Server":
        try:
            self.proc = subprocess.Popen(pinned(self.argv, self.cpu), cwd=ROOT, env=child_env(),
                                         stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 2) -> str:
        """The last lines of the server's output (its exception, usually)."""
        self.log.flush()
        self.log.seek(0)
        return " / ".join(l.strip() for l in self.log.read().strip().splitlines()[-lines:])[-300:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"not ready after {self.ready_timeout}s: {self.log_tail()}")

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) if self.proc else []

    def cpu_ns(self) -> tuple[int, int]:
        """(schedstat ns, utime+stime ns) summed over the server's process group."""
        pids = self.pids()
        return sum(schedstat_ns(p) for p in pids), sum(stat_ns(p) for p in pids)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server died with {self.proc.returncode}: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
            if self.proc.poll() is not None and not group_pids(pgid):
                break
        with contextlib.suppress(ProcessLookupError):   # stragglers (e.g. nginx workers)
            os.killpg(pgid, signal.SIGKILL)


def run_load(argv: list[str], timeout: float, cpu: int = LOAD_CPU) -> str:
    """Run a load client pinned to LOAD_CPU; its stdout, or RuntimeError."""
    try:
        p = subprocess.run(pinned(argv, cpu), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"load client timed out after {timeout:.0f}s")
    if p.returncode != 0:
        raise RuntimeError(f"load client exit {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    return p.stdout


def measure_server(server: Server, load: Callable[[], tuple[int, float]]) -> dict:
    """Run load() -> (operations, seconds) against server; ops/s, server CPU µs/op,
    and busy: the server's CPU time as a % of the load's wall time (< 100: the
    load client or the machine, not the server, set the throughput)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, s0 = server.cpu_ns()
    t0 = time.perf_counter()
    ops, secs = load()
    wall = time.perf_counter() - t0
    c1, s1 = server.cpu_ns()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)   # the load client, reaped in between
    load_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    server.check_alive()
    if ops <= 0:
        raise RuntimeError("no operations completed")
    return {"ops": ops, "seconds": secs, "ops_s": ops / secs, "cpu_us": (c1 - c0) / 1e3 / ops,
            "cpu_us_stat": (s1 - s0) / 1e3 / ops, "busy": 100 * (c1 - c0) / 1e9 / wall,
            "load_busy": 100 * load_cpu / wall}


def measure_load(server: Server, load: Callable[[float], tuple[int, float]], duration: float,
                 warmup: float = 0) -> dict:
    """load(seconds) -> (operations, seconds) run unmeasured for warmup seconds
    (0: not at all), then measured (measure_server) for duration seconds."""
    if warmup:
        load(warmup)
    return measure_server(server, lambda: load(duration))


def require(program: str) -> None:
    """Skip unless program is on PATH."""
    if not shutil.which(program):
        raise Skip(f"{program} not installed")


def wrk(url: str, conns: int, duration: int) -> tuple[int, float]:
    """`wrk -t1 -cCONNS -dDURATIONs URL` pinned to LOAD_CPU: (requests, seconds);
    RuntimeError on non-2xx answers or socket errors."""
    out = run_load(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", url], timeout=duration + 30)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output: {out.strip()[-200:]}")
    if "Non-2xx" in out or "Socket errors" in out:
        bad = re.findall(r"(Non-2xx.*|Socket errors.*)", out)
        raise RuntimeError("wrk: " + "; ".join(b.strip() for b in bad))
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    return int(m.group(1)), float(m.group(2)) * scale


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run_child(module: str, args: list[str], timeout: float, cpu: int = SERVER_CPU,
              pyflags: tuple[str, ...] = (), mem_limit: int = 0) -> dict:
    """Run `python [pyflags] -m module args` pinned to cpu; the JSON object on its
    last stdout line. mem_limit > 0 caps the child's address space (RLIMIT_AS),
    so a runaway peer fails with MemoryError instead of starving the machine."""
    argv = pinned([sys.executable, *pyflags, "-m", module] + args, cpu)

    def limit() -> None:
        if mem_limit > 0:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=child_env(), start_new_session=True, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f}s")
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"exit {p.returncode}: {err[-300:]}")
    out = json.loads(lines[-1])
    if "skip" in out:
        raise Skip(out["skip"])
    return out


def emit(res: dict) -> NoReturn:
    """In a child: print res as the JSON result line and exit at once, so that
    millions of still-blocked threads are never torn down (call it from inside
    the event loop being measured)."""
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    os._exit(0)


def child_main(entries: dict[str, Callable[..., dict]], argv: list[str]) -> NoReturn:
    """In a child: run entries[argv[0]](*argv[1:]) and emit its result."""
    name, *args = argv
    try:
        emit(entries[name](*args) or {})
    except Skip as e:
        emit({"skip": str(e)})


def safe(name: str, fn: Callable[[], dict], **extra) -> dict:
    """fn() as a table row; an exception becomes a 'failed:'/'skipped:' row."""
    t0 = time.monotonic()
    try:
        row = fn()
    except Skip as e:
        row = {"error": f"skipped: {e}"}
    except Exception as e:  # a peer failing must not abort the run
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        row = {"error": f"failed: {type(e).__name__}: {e}"[:300]}
    row = {"name": name, **extra, **row}
    print(f"  {name}: {row.get('error') or 'ok'} ({time.monotonic() - t0:.1f}s)", file=sys.stderr, flush=True)
    return row


def best_of(k: int, fn: Callable[[], dict]) -> dict:
    """fn() run k times; the run with the lowest CPU µs/op (noise only adds CPU)."""
    rows = [fn() for _ in range(max(1, k))]
    best = min(rows, key=lambda r: r["cpu_us"])
    if k > 1:
        best["cpu_us_runs"] = [round(r["cpu_us"], 3) for r in rows]
    return best


def peer_rows(peers: tuple[str, ...] | list[str], only: str, measure: Callable[[str], dict], repeat: int = 1,
              anchors: dict[str, str] | None = None, target: list | None = None) -> list[dict]:
    """A table row per peer that `only` selects: the best of `repeat` runs of
    measure(peer) (best_of), or its 'failed:'/'skipped:' row (safe); with the
    peer's anchor from anchors and, on threadlib rows, target."""
    rows = []
    for peer in (p for p in peers if selected(p, only)):
        extra = {"anchor": (anchors or {}).get(peer, "")}
        if target and peer.startswith("threadlib"):
            extra["target"] = target
        rows.append(safe(peer, lambda: best_of(repeat, lambda: measure(peer)), **extra))
    return rows


def import_or_skip(modname: str):
    """Import modname or raise Skip naming why."""
    import importlib
    try:
        return importlib.import_module(modname)
    except Exception as e:
        raise Skip(f"{modname} does not import ({type(e).__name__}: {e})")


# ---------------------------------------------------------------- output
def fmt(v: Any, digits: int = 2) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 1000):
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def target_cell(row: dict) -> str:
    """'≤ 8.00 µs ✓' from row['target'] = [(key, '<='|'>=', value, unit), ...]."""
    cells = []
    for key, op, val, unit in row.get("target") or ():
        got = row.get(key)
        text = f"{'≤' if op == '<=' else '≥'} {fmt(val)}{unit}"
        if got is not None and "error" not in row:
            text += " ✓" if (got <= val if op == "<=" else got >= val) else " ✗"
        cells.append(text)
    return "; ".join(cells)


def table(title: str, rows: list[dict], columns: list[tuple[str, str]], ref: str | None = None,
          ratio_key: str = "ops_s", cpu_key: str = "cpu_us") -> str:
    """A Markdown table. columns: (key, header). Adds 'ratio' (ratio_key vs the
    ref row, higher is better) and 'CPU ratio' (cpu_key vs ref, lower is better)
    columns when ref names a row that has numbers."""
    refrow = next((r for r in rows if r["name"] == ref and "error" not in r), None)
    cols = list(columns)
    for r in rows:
        if refrow and "error" not in r:
            if refrow.get(ratio_key) and r.get(ratio_key) is not None:
                r["ratio"] = r[ratio_key] / refrow[ratio_key]
            if refrow.get(cpu_key) and r.get(cpu_key) is not None:
                r["cpu_ratio"] = r[cpu_key] / refrow[cpu_key]
    if refrow:
        i = next((k for k, (key, _) in enumerate(cols) if key == ratio_key), len(cols) - 1) + 1
        cols.insert(i, ("ratio", f"ratio vs {ref}"))
        j = next((k for k, (key, _) in enumerate(cols) if key == cpu_key), len(cols) - 1) + 1
        cols.insert(j, ("cpu_ratio", "CPU ratio"))
    cols += [("_target", "target"), ("anchor", "anchor (earlier)")]
    lines = [f"### {title}", "", "| name | " + " | ".join(h for _, h in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in rows:
        if "error" in r:
            cells = [r["error"]] + [""] * (len(cols) - 1)
            cells[-2] = target_cell(r)
            cells[-1] = fmt(r.get("anchor"))
        else:
            cells = [target_cell(r) if k == "_target" else fmt(r.get(k)) for k, _ in cols]
        lines.append(f"| {r['name']} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, Linux {platform.release()}, "
            f"{model}, nproc {os.cpu_count()}, Python {platform.python_version()}")


def save_json(bench: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{bench}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine_line(), **data}, indent=1, default=str))
    return path


def report(bench: str, title: str, rows: list[dict], columns: list[tuple[str, str]], save: bool,
           params: dict, **table_args) -> list[str]:
    """[table(title, rows, columns, **table_args)]; with save, rows and params
    also go to bench/results/BENCH-TIME.json (save_json)."""
    if save:
        save_json(bench, {"rows": rows, **params})
    return [table(title, rows, columns, **table_args)]


def arg_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--json", action="store_true", help="also write results to bench/results/")
    p.add_argument("--only", default="", help="comma-separated peer names (substring; =name: exact)")
    p.add_argument("--repeat", type=int, default=1, help="runs per peer; the table keeps the lowest CPU/op")
    return p


def load_args(doc: str, duration_help: str, conns_help: str, warmup_help: str, seconds: type = int,
              warmup: float = 1) -> argparse.ArgumentParser:
    """arg_parser(doc) and the flags of a benchmark that puts a load client on
    each peer for a while: -d/--duration (default 3), -c/--conns (default
    100), --warmup; seconds is the type of -d and --warmup (int for wrk)."""
    p = arg_parser(doc)
    p.add_argument("-d", "--duration", type=seconds, default=seconds(3), help=duration_help)
    p.add_argument("-c", "--conns", type=int, default=100, help=conns_help)
    p.add_argument("--warmup", type=seconds, default=seconds(warmup), help=warmup_help)
    return p


def cli(argv: list[str], parser: argparse.ArgumentParser, tables: Callable[[argparse.Namespace], list[str]],
        serve: Callable[..., None] | None = None, children: dict[str, Callable[..., dict]] | None = None) -> None:
    """A benchmark's main(argv): `--serve PEER PORT [ARGS]` runs serve(PEER,
    PORT, *ARGS), a peer's server, in the foreground (the child that
    bench.peers.child_argv names); `--child NAME [ARGS]` runs children[NAME]
    in a measuring child (child_main); any other argv is parsed with parser
    and tables(args) are printed under the machine line."""
    if serve is not None and argv[:1] == ["--serve"]:
        peer, port, *args = argv[1:]
        serve(peer, int(port), *args)
        return
    if children is not None and argv[:1] == ["--child"]:
        child_main(children, argv[1:])
    args = parser.parse_args(argv)
    print(machine_line() + "\n")
    for t in tables(args):
        print(t)


def selected(name: str, only: str) -> bool:
    """Is peer `name` picked by `only` (comma-separated substrings; '=name' for exactly name)?"""
    return not only or any(s == "=" + name or (s and s[0] != "=" and s in name) for s in only.split(","))
