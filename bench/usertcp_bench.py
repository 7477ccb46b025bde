"""User-level TCP benchmark: threadlib.io.tcpsockio on a TUN link against the
kernel's own TCP on the same kind of path, in the same run.

Rows, each in throw-away network namespaces this script creates and removes:
  user-stack download  a kernel sender (Python, in the namespace) -> tcpsockio receiver (this process), over a
                       TUN with checksum and segmentation offload (packets of up to 64 KiB each way)
  user-stack upload    tcpsockio sender -> kernel receiver, over the same TUN
  user-stack 1500B ... the same two without offloads: every packet a 1500-byte frame the stack checksums
  kernel veth download/upload  the same Python sender and receiver, both on the kernel's TCP, across a
                       veth pair between two namespaces (the kernel path the user stack is compared with)
  user-stack http      apps.webserver on tcpsockio, wrk -c C -d D from the kernel side of the TUN
  kernel veth http     apps.webserver on the kernel's TCP, wrk from the other end of a veth pair
Reported: MB/s and Gbit/s, packets the user stack took in and sent out per
second, the same transfer in 1448-byte wire segments per second, and CPU
µs per packet and CPU seconds per GB (this process: stack, runtime and TUN
syscalls); for HTTP, requests/s and wrk's socket errors.  This process runs
on core 0 and its kernel peers on core 1 (taskset).

Anchors (earlier, elsewhere): PyTCP (pure Python) ~7k packets/s; smoltcp
(Rust) 3.7-7.9 Gbit/s on a TAP. Targets: >= 50k segments/s, >= 1 Gbit/s
bulk with offloads.

    python -m bench.usertcp_bench [--mib 64] [-d 5] [-c 100] [--only upload,http] [--json]

Needs root, iproute2, wrk (a missing wrk becomes a 'skipped' row). It never
touches the host's interfaces: every device lives in a namespace it made.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import harness as H

SENDER_RECEIVER = r"""
import socket, sys, time
mode, host, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
block = bytes(range(256)) * 1024
if mode in ("send-server", "recv-server"):
    s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(4); print("ready", flush=True); s.settimeout(120)
    c, _ = s.accept()
else:
    c = socket.create_connection((host, port), timeout=120)
c.settimeout(120)
t0 = time.perf_counter(); c0 = time.process_time()
if mode.startswith("send"):
    left = size
    while left > 0:
        left -= c.send(block[:min(left, len(block))])
    c.shutdown(socket.SHUT_WR)
    c.recv(100)
else:
    n = 0
    while chunk := c.recv(1 << 20):
        n += len(chunk)
    c.sendall(b"done")
print(time.perf_counter() - t0, time.process_time() - c0, flush=True)
c.close()
"""
BLOCK = bytes(range(256)) * 1024


# ---------------------------------------------------------------- namespaces
@contextlib.contextmanager
def namespaces(n: int):
    from iolib.netns import NetNamespace

    made = []
    try:
        for _ in range(n):
            made.append(NetNamespace.create(prefix="tlb"))
        yield made
    finally:
        for ns in made:
            ns.delete()


def veth_pair(a, b, addr_a: str = "10.88.0.1/24", addr_b: str = "10.88.0.2/24") -> None:
    """A veth pair with one end in each namespace (made inside a, so the host never sees it)."""
    a.exec(["ip", "link", "add", "tlva", "type", "veth", "peer", "name", "tlvb", "netns", b.name], check=True)
    a.exec(["ip", "addr", "add", addr_a, "dev", "tlva"], check=True)
    b.exec(["ip", "addr", "add", addr_b, "dev", "tlvb"], check=True)
    a.exec(["ip", "link", "set", "tlva", "up"], check=True)
    b.exec(["ip", "link", "set", "tlvb", "up"], check=True)


def start(ns, mode: str, host: str, port: int, size: int, cpu: int = 1) -> subprocess.Popen:
    proc = ns.popen(H.pinned([sys.executable, "-c", SENDER_RECEIVER, mode, host, str(port), str(size)], cpu),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if mode.endswith("server"):
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"peer did not start: {proc.stderr.read()}")
    return proc


def finish(proc: subprocess.Popen) -> tuple[float, float]:
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed: {err.strip()[-300:]}")
    wall, cpu = map(float, out.split()[-2:])
    return wall, cpu


def bulk_row(name: str, size: int, wall: float, **extra: Any) -> dict:
    return {"name": name, "mb_s": size / wall / 1e6, "gbit_s": size * 8 / wall / 1e9, "seconds": wall, **extra}


# ---------------------------------------------------------------- user stack
@contextlib.contextmanager
def on_core(cpu: int):
    """This process on one core while the block runs."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def user_bulk(size: int, offload: bool) -> list[dict]:
    import threadlib
    from threadlib.io import tcpsockio

    rows = []
    label = "user-stack" if offload else "user-stack 1500B"
    with namespaces(1) as (ns,), on_core(0):
        net = tcpsockio.open_network(tun="tlb0", netns=ns.name, offload=offload)
        try:
            for direction in ("download", "upload"):
                port = 9000 + len(rows)
                peer = start(ns, "send-server" if direction == "download" else "recv-server", "10.77.0.1", port, size)
                stats = net.stack.stats

                def main():
                    conn = yield from net.connect(("10.77.0.1", port), timeout=10)
                    if direction == "download":
                        n = 0
                        while chunk := (yield from conn.get()):
                            n += len(chunk)
                        yield from conn.sendall(b"done")
                        assert n == size, (n, size)
                    else:
                        left = size
                        while left > 0:
                            chunk = BLOCK[:min(left, len(BLOCK))]
                            yield from conn.sendall(chunk)
                            left -= len(chunk)
                        conn.shutdown()
                        yield from conn.recv(100)
                    conn.close()

                seg0, out0 = stats.segments_in, net.worker.stats["packets_out"]
                t0, c0 = time.perf_counter(), H.self_cpu_ns()
                threadlib.run(main())
                wall, cpu_ns = time.perf_counter() - t0, H.self_cpu_ns() - c0
                finish(peer)
                segs_in = stats.segments_in - seg0
                segs_out = net.worker.stats["packets_out"] - out0
                rows.append(bulk_row(f"{label} {direction}", size, wall,
                                     segs_in_s=segs_in / wall, segs_out_s=segs_out / wall,
                                     wire_segs_s=size / 1448 / wall,
                                     cpu_us=cpu_ns / 1e3 / max(1, segs_in + segs_out),
                                     cpu_s_gb=cpu_ns / 1e9 / (size / 1e9),
                                     target=[("wire_segs_s", ">=", 50_000, "/s")]
                                     + ([("gbit_s", ">=", 1, " Gbit/s")] if offload else [])))
        finally:
            net.close()
    return rows


def kernel_bulk(size: int) -> list[dict]:
    rows = []
    with namespaces(2) as (a, b):
        veth_pair(a, b)
        for direction, port in (("download", 9100), ("upload", 9101)):
            # "download": the far end (b) sends to a receiver in a, as the kernel sends to the user stack.
            if direction == "download":
                server = start(b, "send-server", "10.88.0.2", port, size, cpu=1)
                client = start(a, "recv-client", "10.88.0.2", port, size, cpu=0)
            else:
                server = start(b, "recv-server", "10.88.0.2", port, size, cpu=1)
                client = start(a, "send-client", "10.88.0.2", port, size, cpu=0)
            wall, cpu = finish(client)
            finish(server)
            rows.append(bulk_row(f"kernel veth {direction}", size, wall, cpu_us=None))
    return rows


# ---------------------------------------------------------------- http
def wrk(ns, url: str, seconds: float, conns: int) -> dict:
    r = ns.exec(H.pinned(["wrk", "-t2", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s", url], 1),
                capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed: {r.stderr.strip()}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    errors = re.search(r"Socket errors: (.*)", r.stdout)
    return {"req_s": float(m.group(1)), "errors": errors.group(1) if errors else "none"}


def user_http(seconds: float, conns: int, root: str) -> dict:
    import threadlib
    from apps.webserver import WebServer
    from threadlib.io import tcpsockio

    with namespaces(1) as (ns,), on_core(0):
        net = tcpsockio.open_network(tun="tlb1", netns=ns.name)
        try:
            def main():
                shutdown = threadlib.Event()
                server = WebServer(root, network=net)
                t = yield from threadlib.spawn(server.serve(("", 8080), shutdown))
                try:
                    yield from threadlib.sleep(0.05)
                    c0 = H.self_cpu_ns()
                    res = yield from threadlib.blocking(wrk, ns, "http://10.77.0.2:8080/1k.txt", seconds, conns)
                    res["cpu_us"] = (H.self_cpu_ns() - c0) / 1e3 / max(1, res["req_s"] * seconds)
                    return res
                finally:
                    shutdown.set()
                    yield from t.join()

            res = threadlib.run(main())
        finally:
            net.close()
    return {"name": "user-stack http", **res}


def kernel_http(seconds: float, conns: int, root: str) -> dict:
    with namespaces(2) as (a, b):
        veth_pair(a, b)
        server = b.popen(H.pinned([sys.executable, "-m", "apps.webserver", "--root", root, "--host", "10.88.0.2",
                                   "--port", "8080", "--quiet"], 0), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=str(H.ROOT), env=H.child_env())
        try:
            deadline = time.monotonic() + 20
            while b.exec(["curl", "-s", "-o", "/dev/null", "http://10.88.0.2:8080/1k.txt"]).returncode != 0:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("kernel-stack web server did not start")
                time.sleep(0.1)
            before = H.stat_ns(server.pid)
            res = wrk(a, "http://10.88.0.2:8080/1k.txt", seconds, conns)
            # `ip netns exec` execs the server in place, so its pid is the server's.
            res["cpu_us"] = (H.stat_ns(server.pid) - before) / 1e3 / max(1, res["req_s"] * seconds)
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(10)
            if server.poll() is None:
                server.kill()
                server.wait()
    return {"name": "kernel veth http", **res}


def main(argv: list[str] | None = None) -> None:
    p = H.arg_parser(__doc__)
    p.add_argument("--mib", type=int, default=64, help="bulk transfer size in MiB")
    p.add_argument("-d", "--seconds", type=float, default=5.0, help="wrk duration")
    p.add_argument("-c", "--connections", type=int, default=100, help="wrk connections")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("usertcp_bench needs root (TUN devices, network namespaces)")
    size = args.mib << 20
    print(H.machine_line(), flush=True)
    bulk: list[dict] = []
    for name, fn in (("user-stack", lambda: user_bulk(size, True)),
                     ("user-stack 1500B", lambda: user_bulk(size, False)),
                     ("kernel veth", lambda: kernel_bulk(size))):
        if H.selected(name, args.only) or any(H.selected(f"{name} {d}", args.only) for d in ("download", "upload")):
            try:
                bulk += fn()
            except Exception as e:  # a failing peer is a row, not the end of the run
                bulk.append({"name": name, "error": f"failed: {type(e).__name__}: {e}"})
    for r in bulk:
        if r["name"].startswith("user-stack"):
            r["anchor"] = "PyTCP ~7k pkt/s; smoltcp 3.7-7.9 Gbit/s"
    print(H.table(f"Bulk TCP over one link, {args.mib} MiB each way (1500-byte MTU)", bulk,
                  [("mb_s", "MB/s"), ("gbit_s", "Gbit/s"), ("segs_in_s", "pkts in/s"), ("segs_out_s", "pkts out/s"),
                   ("wire_segs_s", "wire segs/s"), ("cpu_us", "CPU µs/pkt"), ("cpu_s_gb", "CPU s/GB")]), flush=True)
    http: list[dict] = []
    if shutil.which("wrk") is None:
        http.append({"name": "http", "error": "skipped: wrk missing"})
    else:
        with tempfile.TemporaryDirectory() as root:
            with open(os.path.join(root, "1k.txt"), "wb") as f:
                f.write(BLOCK[:1024])
            for name, fn in (("user-stack http", user_http), ("kernel veth http", kernel_http)):
                if H.selected(name, args.only):
                    http.append(H.safe(name, lambda fn=fn: fn(args.seconds, args.connections, root)))
    if http:
        print(H.table(f"HTTP GET 1 KiB, wrk -c{args.connections} -d{args.seconds:g}s", http,
                      [("req_s", "req/s"), ("cpu_us", "server CPU µs/req"), ("errors", "socket errors")],
                      ref="kernel veth http", ratio_key="req_s"), flush=True)
    if args.json:
        print(H.save_json("usertcp", {"bulk": bulk, "http": http}))


if __name__ == "__main__":
    main()
