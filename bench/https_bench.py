"""HTTPS: apps.webserver with --tls-cert against nginx with the same
certificate, TLS 1.3 only, on the sample site's 1 KiB file.

Two workloads, each with wrk pinned to core 1 and the server to core 0:
- keep-alive: `wrk -t1 -cN -dDs https://127.0.0.1:PORT/bench/1k.txt`, so
  the cost per request is the HTTP work plus one TLS record each way;
- new handshakes: the same with `-H "Connection: close"`: every request
  is a new TCP connection and a full TLS 1.3 handshake (wrk does not
  resume sessions; nginx has its session cache and tickets off besides),
  so requests/s is handshakes/s.

Peers: nginx (worker_processes 1, access_log off, `ssl_protocols TLSv1.3`,
no session cache or tickets, the sample site as root) and threadlib
(`python -m apps.webserver --tls-cert --tls-key --quiet`, TLS 1.2 and 1.3
offered, wrk picks 1.3). The certificate is an ECDSA P-256 leaf made at run
time by trustme (the `test` extra) in a temporary directory, the same file
for both. Reports requests/s and server CPU µs per request (schedstat over
the server's process group). Targets (reported, never asserted): server CPU
per keep-alive request at most 1.3x nginx's; handshakes/s at least 0.8x
nginx's. Traffic goes to 127.0.0.1 only.

    python -m bench.https_bench [-d 3] [-c 100] [--only nginx,threadlib] [--json]
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from bench import harness as H, peers

SITE = H.ROOT / "apps" / "sample_site"
TARGET = "/bench/1k.txt"
PEERS = ("nginx", "threadlib")
CPU_FACTOR = 1.3
HANDSHAKE_FACTOR = 0.8
NGINX_HTTP = ("default_type application/octet-stream;", "types { text/plain txt; text/html html; }")


def make_certificate(directory: str) -> tuple[str, str]:
    """(cert file, key file): a leaf for 127.0.0.1 and localhost from a fresh trustme CA."""
    try:
        import trustme
    except ImportError:
        raise H.Skip("trustme is not installed (pip install -e '.[test]')")
    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def server_argv(cert: str, key: str):
    def argv(peer: str, port: int, tmp: str) -> list[str]:
        if peer == "nginx":
            server = (f"root {SITE}; ssl_certificate {cert}; ssl_certificate_key {key}; "
                      "ssl_protocols TLSv1.3; ssl_session_cache off; ssl_session_tickets off;")
            return peers.nginx_argv(tmp, port, server, NGINX_HTTP, worker_connections=2048, listen=" ssl")
        return [sys.executable, "-m", "apps.webserver", "--port", str(port), "--tls-cert", cert, "--tls-key", key,
                "--quiet"]
    return argv


def wrk_https(port: int, conns: int, close: bool):
    url = f"https://127.0.0.1:{port}{TARGET}"

    def load(seconds: float) -> tuple[int, float]:
        if not close:
            return H.wrk(url, conns, int(seconds))
        out = H.run_load(["wrk", "-t1", f"-c{conns}", f"-d{int(seconds)}s", "-H", "Connection: close", url],
                         timeout=seconds + 30)
        return _parse(out)
    return load


def _parse(out: str) -> tuple[int, float]:
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output: {out.strip()[-200:]}")
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk: " + "; ".join(b.strip() for b in re.findall(r"(Non-2xx.*|Socket errors.*)", out)))
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    return int(m.group(1)), float(m.group(2)) * scale


def measure(peer: str, conns: int, duration: int, warmup: int) -> dict:
    H.require("wrk")
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as certs:
        cert, key = make_certificate(certs)
        with peers.running(peer, server_argv(cert, key)) as srv:
            keep = H.measure_load(srv, wrk_https(srv.port, conns, close=False), duration, warmup)
            fresh = H.measure_load(srv, wrk_https(srv.port, conns, close=True), duration, warmup)
    return {"keepalive": keep, "handshakes": fresh}


def run(duration: int = 3, conns: int = 100, warmup: int = 1, only: str = "", save: bool = False) -> list[str]:
    per_peer = {peer: H.safe(peer, lambda: measure(peer, conns, duration, warmup))
                for peer in PEERS if H.selected(peer, only)}
    tables = []
    for kind, title in (("keepalive", f"HTTPS keep-alive, {TARGET} (1 KiB), TLS 1.3: wrk -t1 -c{conns} -d{duration}s"),
                        ("handshakes", f"HTTPS new connection per request (full TLS 1.3 handshake), {TARGET}: "
                                       f"wrk -t1 -c{conns} -d{duration}s -H 'Connection: close'")):
        rows = [{"name": peer, **({"error": res["error"]} if "error" in res else res[kind])}
                for peer, res in per_peer.items()]
        nginx = next((r for r in rows if r["name"] == "nginx" and "error" not in r), None)
        if nginx is not None:
            for r in rows:
                if r["name"] == "threadlib":
                    r["target"] = ([("cpu_us", "<=", CPU_FACTOR * nginx["cpu_us"], " µs (1.3x nginx)")]
                                   if kind == "keepalive" else
                                   [("ops_s", ">=", HANDSHAKE_FACTOR * nginx["ops_s"], "/s (0.8x nginx)")])
        cols = [("ops_s", "requests/s" if kind == "keepalive" else "handshakes/s"), ("cpu_us", "server CPU µs/req"),
                ("cpu_us_stat", "(utime+stime)"), ("busy", "server busy %")]
        tables.append(H.table(title, rows, cols, ref="nginx"))
    if save:
        H.save_json("https", {"peers": per_peer, "duration": duration, "conns": conns})
    return tables


def main(argv: list[str]) -> None:
    p = H.load_args(__doc__, "wrk seconds per server and workload", "wrk connections",
                    "unmeasured wrk seconds first (0: none)")
    H.cli(argv, p, lambda a: run(a.duration, a.conns, a.warmup, a.only, a.json))


if __name__ == "__main__":
    main(sys.argv[1:])
