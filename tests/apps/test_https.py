"""HTTPS in the programs: the web server (alone, next to HTTP, with
workers, on the user-level stack), the load generator's https:// URLs and
handshake rate, and the proxy terminating TLS. Real certificates from
trustme, real clients (curl --cacert, Python's ssl, the programs
themselves), real processes; each bad client is named in one log line,
closed, and disturbs nobody else."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading

import pytest
import trustme

from apps.loadgen import LoadGen
from apps.webserver import BackgroundServer, WebServer
from tests import REPO_ROOT

from . import kill_group

ROOT = str(REPO_ROOT)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def pki(ca, tmp_path):
    """PEM files: cert (chain), key, cafile; and the server and client contexts."""
    cert = ca.issue_cert("localhost", "127.0.0.1", *[f"10.{n}.77.2" for n in (os.getpid() % 200 + 20,)])
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "cafile": tmp_path / "ca.pem"}
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["cafile"]))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return {k: str(v) for k, v in files.items()} | {"server": server, "client": client}


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "small.txt").write_bytes(b"0123456789" * 100)
    (root / "big.bin").write_bytes(os.urandom(300 * 1024 + 17))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Program:
    """A program started in its own session, its merged output read by a
    thread, so a test can wait for a line (a banner, a log line)."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        """The first line (from where the last wait stopped) matching ``pattern``."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; output:\n"
                                     + "".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"the program ended without a line matching {pattern!r}; output:\n"
                                     + "".join(self.lines))
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def stop(self) -> str:
        """SIGTERM; returns the whole output once the program has exited 0."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return "".join(self.lines)

    def kill(self) -> None:
        kill_group(self.proc)


def https_get(port: int, target: str, context: ssl.SSLContext, host: str = "localhost") -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    try:
        conn.request("GET", target)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def read_to_end(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def bad_client(port: int, data: bytes, meanwhile=None) -> int:
    """Send ``data`` to the TLS port, run ``meanwhile()`` while the server
    holds the connection, check it is closed unanswered; its local port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if meanwhile is not None:
            meanwhile()
        assert read_to_end(s) == b""
        return s.getsockname()[1]


PLAIN_HTTP = b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n"
HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # the start of a ClientHello


# ---------------------------------------------------------------------------
# The web server


def test_https_program_serves_curl_and_the_load_generator(site, pki, tmp_path):
    port = free_port()
    server = Program("apps.webserver", "--root", str(site), "--port", str(port),
                     "--tls-cert", pki["cert"], "--tls-key", pki["key"])
    try:
        server.wait_for(rf"serving .* on https://127\.0\.0\.1:{port}/ ")
        out = tmp_path / "got.bin"
        r = curl("--cacert", pki["cafile"], "-o", str(out), f"https://localhost:{port}/big.bin")
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == (site / "big.bin").read_bytes()
        untrusted = curl(f"https://localhost:{port}/small.txt")  # the system's CAs do not know ours
        assert untrusted.returncode == 60, untrusted.stderr  # curl: peer certificate cannot be authenticated
        server.wait_for(rf"TLS handshake with 127\.0\.0\.1:\d+ failed: .*(unknown ca|certificate unknown)")

        gen = subprocess.run([sys.executable, "-m", "apps.loadgen", f"https://localhost:{port}/small.txt",
                              "-c", "2", "-n", "40", "--no-keepalive", "--cacert", pki["cafile"], "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert gen.returncode == 0, gen.stdout + gen.stderr
        summary = json.loads(gen.stdout)
        assert summary["requests"] == summary["tls_handshakes"] == summary["connections_opened"] == 40
        assert summary["statuses"] == {"200": 40} and summary["tls_handshakes_per_second"] > 0
        server.stop()
    finally:
        server.kill()


def test_http_and_https_at_once_and_bad_clients_are_logged_once_each(site, pki):
    http_port, https_port = free_port(), free_port()
    server = Program("apps.webserver", "--root", str(site), "--port", str(http_port), "--tls-port", str(https_port),
                     "--tls-cert", pki["cert"], "--tls-key", pki["key"], "--handshake-timeout", "1.5")
    small = (site / "small.txt").read_bytes()
    try:
        server.wait_for(rf"on http://127\.0\.0\.1:{http_port}/ https://127\.0\.0\.1:{https_port}/ ")
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        plain.request("GET", "/small.txt")
        assert plain.getresponse().read() == small
        plain.close()

        # Plain HTTP on the HTTPS port: closed unanswered, one log line.
        port_a = bad_client(https_port, PLAIN_HTTP)
        server.wait_for(rf"TLS handshake with 127\.0\.0\.1:{port_a} failed: a plaintext HTTP request on the TLS port")

        # Garbage instead of a ClientHello.
        port_b = bad_client(https_port, b"\x00" * 64)
        server.wait_for(rf"TLS handshake with 127\.0\.0\.1:{port_b} failed: not a TLS handshake")

        # A client stalling mid-handshake: a good client is served meanwhile,
        # and the staller is cut at the handshake timeout.
        def good():
            assert https_get(https_port, "/small.txt", pki["client"]) == (200, small)

        port_c = bad_client(https_port, HELLO_START, meanwhile=good)
        server.wait_for(rf"TLS handshake with 127\.0\.0\.1:{port_c} failed: TLS handshake with "
                        rf"127\.0\.0\.1:{port_c} not finished within 1\.5 s")

        assert https_get(https_port, "/small.txt", pki["client"]) == (200, small)
        output = server.stop()
        for port in (port_a, port_b, port_c):
            assert len(re.findall(rf"TLS handshake with 127\.0\.0\.1:{port} failed", output)) == 1, output
        assert "Traceback" not in output
    finally:
        server.kill()


@pytest.mark.parametrize("problem", ["missing cert", "key as cert", "cert as key", "wrong key", "key alone"])
def test_bad_certificate_or_key_files_are_one_line_errors(pki, ca, tmp_path, problem):
    other_key = tmp_path / "other.key"
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(other_key))
    missing = str(tmp_path / "nope.pem")
    args, named = {
        "missing cert": (["--tls-cert", missing, "--tls-key", pki["key"]], missing),
        "key as cert": (["--tls-cert", pki["key"], "--tls-key", pki["key"]], pki["key"]),
        "cert as key": (["--tls-cert", pki["cafile"], "--tls-key", pki["cafile"]], pki["cafile"]),
        "wrong key": (["--tls-cert", pki["cert"], "--tls-key", str(other_key)], str(other_key)),
        "key alone": (["--tls-key", pki["key"]], "--tls-cert"),
    }[problem]
    for program in ("apps.webserver", "apps.proxy"):
        extra = ["--port", str(free_port())] if program == "apps.webserver" else \
            ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9"]
        r = subprocess.run([sys.executable, "-m", program, *extra, *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and named in last and "error:" in last, r.stderr
        assert "Traceback" not in r.stderr


def test_https_with_two_worker_processes(site, pki):
    port = free_port()
    server = Program("apps.webserver", "--root", str(site), "--port", str(port), "--workers", "2", "--quiet",
                     "--tls-cert", pki["cert"], "--tls-key", pki["key"])
    try:
        server.wait_for("serving")
        big = (site / "big.bin").read_bytes()
        for _ in range(10):
            assert https_get(port, "/big.bin", pki["client"]) == (200, big)
        server.stop()
    finally:
        server.kill()


def _user_stack_usable() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


@pytest.mark.skipif(not _user_stack_usable(), reason="needs root and /dev/net/tun")
def test_http_and_https_on_the_user_level_stack(site, pki):
    n = os.getpid() % 200 + 20  # a device and subnet of its own, as test_webserver does
    env = dict(os.environ, TL_TUN=f"tlhs{n}", TL_PEER=f"10.{n}.77.1/24", TL_ADDRESS=f"10.{n}.77.2/24",
               TL_PEER6="", TL_ADDRESS6="")
    server = Program("apps.webserver", "--stack", "user", "--root", str(site), "--port", "8080", "--tls-port", "8443",
                     "--tls-cert", pki["cert"], "--tls-key", pki["key"], env=env)
    try:
        server.wait_for(rf"http://10\.{n}\.77\.2:8080/ https://10\.{n}\.77\.2:8443/ .*stack=user")
        address = f"10.{n}.77.2"
        big = (site / "big.bin").read_bytes()
        assert https_get(8443, "/big.bin", pki["client"], host=address) == (200, big)
        plain = http.client.HTTPConnection(address, 8080, timeout=10)
        plain.request("GET", "/big.bin")
        assert plain.getresponse().read() == big
        plain.close()
        server.stop()
    finally:
        server.kill()


# ---------------------------------------------------------------------------
# The load generator


@pytest.fixture
def https_server(site, pki):
    srv = BackgroundServer(WebServer(str(site), tls_context=pki["server"]))
    host, port = srv.start()
    yield port, srv
    srv.stop()


def test_load_generator_counts_handshakes(https_server, pki):
    port, srv = https_server
    url = f"https://localhost:{port}/small.txt"
    keep = LoadGen([url], connections=3, requests=90, duration=None, cafile=pki["cafile"]).run()
    assert keep.requests == 90 and not keep.errors and keep.handshakes == keep.connections_opened == 3
    fresh = LoadGen([url], connections=3, requests=30, duration=None, keepalive=False, insecure=True).run()
    assert fresh.requests == fresh.handshakes == 30 and not fresh.errors
    assert "handshakes" in fresh.report() and fresh.summary()["tls_handshakes"] == 30
    refused = LoadGen([url], connections=1, requests=2, duration=None).run()  # system CAs only
    assert refused.requests == 0 and refused.handshakes == 0
    [(kind, count)] = refused.errors.items()
    assert kind.startswith("tls: certificate verify failed") and count >= 1


def test_load_generator_refuses_bad_tls_options(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("no certificate here\n")
    for args, message in [(["--cacert", str(bad)], f"--cacert {bad}: no usable CA certificate"),
                          (["--cacert", str(tmp_path / "nope")], "No such file"),
                          (["--cacert", str(bad), "--insecure"], "not allowed with")]:
        r = subprocess.run([sys.executable, "-m", "apps.loadgen", "https://127.0.0.1:9/", "-n", "1", *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and message in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# The proxy terminating TLS


def test_proxy_terminates_tls_in_front_of_a_plain_server(site, pki, tmp_path):
    backend = BackgroundServer(WebServer(str(site)))
    host, backend_port = backend.start()
    port = free_port()
    proxy = Program("apps.proxy", "--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{backend_port}",
                    "--tls-cert", pki["cert"], "--tls-key", pki["key"], "--handshake-timeout", "1.5")
    try:
        proxy.wait_for("proxy listening on")
        out = tmp_path / "got.bin"
        r = curl("--cacert", pki["cafile"], "-o", str(out), f"https://localhost:{port}/big.bin")
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == (site / "big.bin").read_bytes()
        proxy.wait_for(r"closed: up \d+ B, down \d+ B")

        port_a = bad_client(port, PLAIN_HTTP)
        proxy.wait_for(rf"from 127\.0\.0\.1:{port_a}: TLS handshake failed: a plaintext HTTP request on the TLS port")

        def good():
            assert https_get(port, "/small.txt", pki["client"]) == (200, (site / "small.txt").read_bytes())

        port_b = bad_client(port, HELLO_START, meanwhile=good)
        proxy.wait_for(rf"from 127\.0\.0\.1:{port_b}: TLS handshake failed: .*not finished within 1\.5 s")
        output = proxy.stop()
        assert "2 failed TLS handshake(s)" in output and "Traceback" not in output
    finally:
        proxy.kill()
        backend.stop()
