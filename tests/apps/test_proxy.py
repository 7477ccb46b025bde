"""apps.proxy as a user runs it: a real subprocess, real sockets, signals.

The backends and clients are plain blocking sockets in Python threads of
the test process; the proxy is ``python -m apps.proxy``.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests import REPO_ROOT
from tests.waiting import wait_until

ROOT = str(REPO_ROOT)
MiB = 1 << 20
_BLOCK = os.urandom(MiB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pattern(size: int, seed: int):
    buf = bytearray(_BLOCK)
    i = 0
    while size > 0:
        struct.pack_into("<II", buf, 0, seed, i)
        n = min(size, MiB)
        yield memoryview(buf)[:n]
        size -= n
        i += 1


def send_pattern(sock: socket.socket, size: int, seed: int, shut: bool = True) -> str:
    h = hashlib.sha256()
    for chunk in pattern(size, seed):
        h.update(chunk)
        sock.sendall(chunk)
    if shut:
        sock.shutdown(socket.SHUT_WR)
    return h.hexdigest()


def recv_all(sock: socket.socket) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    while True:
        data = sock.recv(MiB)
        if not data:
            return n, h.hexdigest()
        h.update(data)
        n += len(data)


class Proxy:
    """``python -m apps.proxy ...`` with its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apps.proxy", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group: kill() reaches forked workers too
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, regex: str, timeout: float = 15, count: int = 1) -> list[re.Match]:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in (re.search(regex, line) for line in self.lines) if m]
                if len(found) >= count:
                    return found
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {regex!r} in proxy output:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.1))

    def address(self) -> tuple[str, int]:
        m = self.wait_for(r"proxy listening on ([\d.]+):(\d+)")[0]
        return m.group(1), int(m.group(2))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the workers too, if any survived
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._reader.join(5)


@pytest.fixture
def proxies():
    started: list[Proxy] = []

    def start(*args: str) -> Proxy:
        p = Proxy(*args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


class Backend:
    """A TCP server in a thread; ``handler(conn)`` runs per connection in
    its own thread; results are kept in ``results``."""

    def __init__(self, handler, backlog: int = 128) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.address = self.sock.getsockname()
        self.handler = handler
        self.results: list = []
        self.threads: list[threading.Thread] = []
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.results.append(self.handler(conn))
            except OSError as exc:
                self.results.append(exc)

    def wait(self, n: int = 1, timeout: float = 30) -> list:
        """The results once ``n`` connections have ended (bounded)."""
        wait_until(lambda: len(self.results) >= n, timeout, f"{n} backend connection(s) ended")
        return self.results

    def target(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        # close() alone would not wake the accept() blocked in _serve.
        self.sock.shutdown(socket.SHUT_RDWR)
        self._t.join(30)
        self.sock.close()
        for t in self.threads:
            t.join(30)


def exchange(address, size_up: int, size_down_seed: int = 2) -> tuple:
    """Client side: send size_up bytes and read everything back, at once."""
    with socket.create_connection(address, timeout=30) as c:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("sent", send_pattern(c, size_up, 1)))
        t.start()
        got = recv_all(c)
        t.join()
        return box["sent"], got


def test_proxy_app_moves_bytes_both_ways_logs_counts_and_stops_on_sigterm(proxies):
    size_up, size_down = 24 * MiB + 17, 9 * MiB + 3

    def handler(conn):
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("sent", send_pattern(conn, size_down, 2)))
        t.start()
        got = recv_all(conn)
        t.join()
        return got, box["sent"]

    backend = Backend(handler)
    proxy = proxies("--listen", "127.0.0.1:0", "--target", backend.target())
    try:
        address = proxy.address()
        sent, got = exchange(address, size_up)
        assert got[0] == size_down
        (backend_got, backend_sent), = backend.wait()
        assert backend_got == (size_up, sent)
        assert got == (size_down, backend_sent)
        m = proxy.wait_for(r"conn 1 \S+ -> \S+ closed: up (\d+) B, down (\d+) B, [\d.]+ s, (\w+)$")[0]
        assert (int(m.group(1)), int(m.group(2)), m.group(3)) == (size_up, size_down, "splice")
        assert proxy.stop() == 0
        assert "stopped; 1 connection(s)" in proxy.output()
        with pytest.raises(OSError):
            socket.create_connection(address, timeout=1)
    finally:
        backend.close()


def test_fallback_flag_uses_the_copy_loop_with_the_same_bytes(proxies):
    def handler(conn):
        got = recv_all(conn)
        conn.sendall(hashlib.sha256(str(got).encode()).digest())
        return got

    backend = Backend(handler)
    proxy = proxies("--listen", "127.0.0.1:0", "--target", backend.target(), "--fallback")
    try:
        address = proxy.address()
        with socket.create_connection(address, timeout=30) as c:
            sent = send_pattern(c, 7 * MiB + 1, 5)
            reply = recv_all(c)
        assert backend.wait() == [(7 * MiB + 1, sent)]
        assert reply[0] == 32
        m = proxy.wait_for(r"closed: up (\d+) B, down (\d+) B, [\d.]+ s, (\w+)")[0]
        assert m.groups() == (str(7 * MiB + 1), "32", "copy")
        assert proxy.stop() == 0
    finally:
        backend.close()


def test_sigterm_stops_accepting_and_lets_the_transfer_in_flight_finish(proxies):
    """SIGTERM in the middle of a transfer: the listener closes at once
    (new connections are refused), the transfer in flight completes byte
    for byte, then the process exits 0."""
    release = threading.Event()

    def handler(conn):
        got = recv_all(conn)
        release.wait(30)
        sent = send_pattern(conn, 3 * MiB, 9)
        return got, sent

    backend = Backend(handler)
    proxy = proxies("--listen", "127.0.0.1:0", "--target", backend.target())
    try:
        address = proxy.address()
        c = socket.create_connection(address, timeout=30)
        h = hashlib.sha256()
        chunks = list(pattern(8 * MiB, 4))
        for chunk in chunks[:4]:
            h.update(chunk)
            c.sendall(chunk)
        proxy.proc.send_signal(signal.SIGTERM)
        proxy.wait_for(r"draining 1 connection")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2)
        for chunk in chunks[4:]:
            h.update(chunk)
            c.sendall(chunk)
        c.shutdown(socket.SHUT_WR)
        release.set()
        got = recv_all(c)
        c.close()
        assert proxy.proc.wait(15) == 0
        (backend_got, backend_sent), = backend.wait()
        assert backend_got == (8 * MiB, h.hexdigest())
        assert got == (3 * MiB, backend_sent)
        proxy.wait_for(rf"closed: up {8 * MiB} B, down {3 * MiB} B")
        assert "cut at shutdown" not in proxy.output()
    finally:
        release.set()
        backend.close()


def test_grace_period_cuts_idle_connections_at_shutdown(proxies):
    def handler(conn):
        return recv_all(conn)

    backend = Backend(handler)
    proxy = proxies("--listen", "127.0.0.1:0", "--target", backend.target(), "--grace", "0.5")
    try:
        address = proxy.address()
        c = socket.create_connection(address, timeout=10)
        c.sendall(b"idle")
        wait_until(lambda: backend.threads, what="the proxy connected to the backend")
        t0 = time.monotonic()
        # Without the grace period the idle connection would keep the proxy
        # up forever: stop() failing at its 15 s bound would show that.
        assert proxy.stop(timeout=15) == 0
        assert time.monotonic() - t0 >= 0.45   # the grace period was given
        assert "1 cut at shutdown" in proxy.output()
        assert c.recv(10) in (b"",)  # the proxy closed our side
        c.close()
    finally:
        backend.close()


def test_a_backend_reset_is_passed_on_to_the_client(proxies):
    def handler(conn):
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "reset"  # the with-block closes it: RST

    backend = Backend(handler)
    proxy = proxies("--listen", "127.0.0.1:0", "--target", backend.target())
    try:
        address = proxy.address()
        with socket.create_connection(address, timeout=10) as c:
            c.sendall(b"hello")
            with pytest.raises(ConnectionResetError):
                while True:
                    if not c.recv(100):
                        raise AssertionError("got a clean end of file, not a reset")
                    c.sendall(b"more")
        proxy.wait_for(r"closed: .*error: ConnectionResetError")
        assert proxy.stop() == 0
    finally:
        backend.close()


def test_connect_timeout_and_refused_target(proxies):
    # A listener whose accept queue is full drops further SYNs: connecting
    # to it hangs, which is what --connect-timeout is for.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(full.getsockname())
        fillers.append(s)

    def queue_full():
        # A connect completed: the one-slot accept queue holds it now.
        writable = select.select([], fillers, [], 0)[1]
        return any(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in writable)

    wait_until(queue_full, what="the listener's accept queue full")
    proxy = proxies("--listen", "127.0.0.1:0", "--target", "%s:%d" % full.getsockname(), "--connect-timeout", "0.5")
    refused_port = free_port()
    proxy2 = proxies("--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{refused_port}")
    try:
        address = proxy.address()
        with socket.create_connection(address, timeout=30) as c:
            t0 = time.monotonic()
            assert c.recv(10) == b""   # the 30 s socket timeout guards a hang
            waited = time.monotonic() - t0
        assert waited >= 0.3, waited   # not before the 0.5 s connect timeout
        proxy.wait_for(r"connect to \S+ failed: timed out")
        # Refused at once, and the next connection still works the same way
        # (a failed connect must not leave the scheduler confused).
        address2 = proxy2.address()
        for i in range(3):
            with socket.create_connection(address2, timeout=30) as c:
                assert c.recv(10) == b""
            proxy2.wait_for(r"failed: Connection refused", count=i + 1)
        assert proxy.stop() == 0 and proxy2.stop() == 0
    finally:
        for s in fillers:
            s.close()
        full.close()


def test_two_worker_processes_share_the_port(proxies):
    def handler(conn):
        data = recv_all(conn)
        conn.sendall(str(data[0]).encode())
        return data

    backend = Backend(handler)
    port = free_port()
    proxy = proxies("--listen", f"127.0.0.1:{port}", "--target", backend.target(), "--workers", "2")
    try:
        proxy.wait_for(r"proxy listening on", count=2)
        for i in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                send_pattern(c, 100_000 + i, i)
                assert recv_all(c)[0] == len(str(100_000 + i))
        assert proxy.stop(signal.SIGINT) == 0
        assert len(re.findall(r"worker \d: proxy on", proxy.output())) == 2
        assert len(re.findall(r"closed: up \d+ B", proxy.output())) == 20
    finally:
        backend.close()


def test_addresses_on_the_command_line():
    import argparse

    from apps.proxy import parse_address

    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("[::1]:443") == ("::1", 443)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("example.org:0") == ("example.org", 0)
    for bad in ("8080", "host:", "host:port", "h:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_address(bad)
