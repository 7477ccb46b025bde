"""apps.loadgen against the real web server (on a background OS thread) and
as a program: counts agree with the server's access log, errors are sorted
by kind, the summary is what was measured."""

import io
import json
import os
import socket
import subprocess
import sys

import pytest

from apps.loadgen import LatencyHistogram, LoadGen, Result
from apps.webserver import BackgroundServer, WebServer
from tests import REPO_ROOT

ROOT = str(REPO_ROOT)


@pytest.fixture
def logged_server(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a" * 1024)
    (root / "b.txt").write_bytes(b"b" * 5000)
    log = io.StringIO()
    srv = BackgroundServer(WebServer(str(root), access_log=log))
    address = srv.start()
    yield f"http://{address[0]}:{address[1]}", log, srv
    srv.stop()


def _log_lines(log, srv):
    srv.stop()  # flushes and ends the server thread, so the log is complete
    return log.getvalue().splitlines()


def test_request_count_matches_the_server_access_log(logged_server):
    base, log, srv = logged_server
    result = LoadGen([base + "/a.txt", base + "/b.txt"], connections=20, requests=3000, duration=None).run()
    assert result.requests == 3000, result.errors
    assert not result.errors
    assert result.statuses == {200: 3000}
    assert result.connections_opened == 20
    lines = _log_lines(log, srv)
    assert len(lines) == result.requests
    # both URLs were used, in turn
    a = sum('"GET /a.txt HTTP/1.1" 200 1024' in line for line in lines)
    b = sum('"GET /b.txt HTTP/1.1" 200 5000' in line for line in lines)
    assert a + b == 3000 and abs(a - b) <= 20
    # bytes counted are whole responses: bodies plus headers
    assert result.bytes > 1500 * 1024 + 1500 * 5000
    lat = [result.percentile(p) for p in (50, 90, 99, 99.9)]
    assert 0 < lat[0] <= lat[1] <= lat[2] <= lat[3] <= result.latencies.max
    assert len(result.latencies) == 3000


def test_duration_mode_stops_and_counts_only_complete_responses(logged_server):
    base, log, srv = logged_server
    result = LoadGen([base + "/a.txt"], connections=8, duration=0.5).run()
    assert 0.5 <= result.seconds < 5
    assert result.requests > 0 and not result.errors
    assert len(_log_lines(log, srv)) == result.requests


def test_no_keepalive_opens_a_connection_per_request(logged_server):
    base, log, srv = logged_server
    result = LoadGen([base + "/a.txt"], connections=4, requests=200, duration=None, keepalive=False).run()
    assert result.requests == 200 and result.connections_opened == 200 and not result.errors
    assert len(_log_lines(log, srv)) == 200


def test_errors_are_counted_by_kind(logged_server):
    base, log, srv = logged_server
    result = LoadGen([base + "/a.txt", base + "/missing"], connections=2, requests=40, duration=None).run()
    assert result.statuses == {200: 20, 404: 20}
    assert result.errors == {"HTTP 404": 20}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nobody listens here once closed
    result = LoadGen([f"http://127.0.0.1:{dead_port}/"], connections=2, duration=0.3).run()
    assert result.requests == 0
    assert set(result.errors) == {"connect: Connection refused"} and result.errors["connect: Connection refused"] > 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="only http:// and https://"):
        LoadGen(["ws://127.0.0.1/"], duration=1)
    with pytest.raises(ValueError, match="connections"):
        LoadGen(["http://127.0.0.1/"], connections=0, duration=1)
    r = subprocess.run([sys.executable, "-m", "apps.loadgen", "ftp://x/", "-d", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "only http://" in r.stderr


def test_program_prints_a_report_and_json(logged_server):
    base, log, srv = logged_server
    r = subprocess.run([sys.executable, "-m", "apps.loadgen", base + "/a.txt", "-c", "5", "-n", "300", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["requests"] == 300 and summary["errors"] == {} and summary["statuses"] == {"200": 300}
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "p99.9"}
    r = subprocess.run([sys.executable, "-m", "apps.loadgen", base + "/a.txt", "-c", "2", "-n", "50"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "50 requests in" in r.stdout and "requests/s" in r.stdout and "p99.9" in r.stdout
    assert "\r" not in r.stdout  # no progress line when stdout is not a terminal
    assert len(_log_lines(log, srv)) == 350


def histogram(values):
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    return h


def test_percentiles_are_nearest_rank_within_the_histogram_precision():
    r = Result(latencies=histogram(i / 1000 for i in range(1, 1001)))
    for p, exact in ((50, 0.5), (90, 0.9), (99.9, 0.999)):
        assert exact <= r.percentile(p) <= exact * (1 + 1 / 128), p
    assert r.percentile(100) == 1.0 == r.latencies.max  # capped at the largest recorded
    assert r.latencies.min == 0.001 and abs(r.latencies.mean - 0.5005) < 1e-9
    # Below 256 us every microsecond has its own bucket: exact.
    small = histogram(i / 1e6 for i in range(1, 201))
    assert small.percentile(50) == 100e-6 and small.percentile(99) == 198e-6 and small.percentile(0) == 1e-6
    assert Result().percentile(99) == 0.0


def test_the_histogram_stays_bounded_however_many_latencies_it_holds():
    h = LatencyHistogram()
    for i in range(200_000):
        h.record((i * 7919 % 100_000_007) / 1e3)  # 0 .. 100,000 s, spread
    h.record(10 ** 9)  # beyond the range: counted at the top
    h.record(-1.0)     # a clock step: counted as zero
    assert len(h) == 200_002
    assert len(h.counts) <= LatencyHistogram.EXACT + 36 * LatencyHistogram.SUB_BUCKETS
    assert h.max == LatencyHistogram.MAX_US / 1e6 and h.min == 0.0


def stalling_server(stall_at: int, stall: float):
    """An HTTP server on a plain OS thread answering every request at once
    but the ``stall_at``-th, which it holds for ``stall`` seconds (the fault
    an open-loop load must charge to the requests queued behind it)."""
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            buffered = b""
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                _, buffered = buffered.split(b"\r\n\r\n", 1)
                served.append(1)
                if len(served) == stall_at:
                    time.sleep(stall)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, served


def test_open_loop_charges_a_stall_to_every_request_due_during_it():
    """At 100 requests/s on one connection, a 1 s stall at the 20th request
    holds up the requests due in that second: counted from when each was
    due, about 75 of the 200 wait 0.25 s or more (a closed loop would show
    one slow request). The stall is a lower bound, not a speed claim."""
    listener, served = stalling_server(stall_at=20, stall=1.0)
    with listener:
        port = listener.getsockname()[1]
        result = LoadGen([f"http://127.0.0.1:{port}/"], connections=1, duration=2.0, rate=100.0).run()
    assert not result.errors and result.rate == 100.0
    assert 0 < result.requests <= 200  # never more than the schedule: 100/s for 2 s
    assert result.percentile(70) >= 0.25, result.report()
    assert result.latencies.max >= 0.95  # the request due when the stall began


def test_program_rate_option(logged_server):
    base, log, srv = logged_server
    r = subprocess.run([sys.executable, "-m", "apps.loadgen", base + "/a.txt", "-c", "4", "-d", "1", "-R", "200",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["target_rate"] == 200.0 and summary["errors"] == {}
    assert 0 < summary["requests"] <= 200
    assert len(_log_lines(log, srv)) == summary["requests"]
    for bad in ("0", "-5", "nan"):
        r = subprocess.run([sys.executable, "-m", "apps.loadgen", base + "/a.txt", "-n", "1", "-R", bad],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--rate" in r.stderr.splitlines()[-1], r.stderr


def test_progress_line_only_on_a_terminal(logged_server):
    import pty

    base, log, srv = logged_server
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "apps.loadgen", base + "/a.txt", "-c", "2", "-d", "1.6"],
                            cwd=ROOT, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0
    assert b"\r\x1b[K" in out and b"req/s" in out and b"requests in" in out
