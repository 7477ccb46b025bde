"""The echo programs as a user runs them: real processes, real signals."""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

import threadlib
from tests import REPO_ROOT
from threadlib.io import sockio

from . import kill_group

ROOT = str(REPO_ROOT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args):
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # so kill_group reaches the workers too
    )
    return proc


def wait_listening(port, proc, deadline=15):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read()}")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server never listened")


def echo_once(sock, payload):
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk
        got += chunk
    return got


def test_echo_app_serves_and_stops_cleanly_on_sigterm():
    port = free_port()
    proc = start(["apps.echo", "--port", str(port)])
    try:
        conn = wait_listening(port, proc)
        conn.settimeout(5)
        assert echo_once(conn, b"hello echo" * 1000) == b"hello echo" * 1000
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    finally:
        kill_group(proc)


def test_echo_app_with_two_worker_processes_shares_the_port():
    port = free_port()
    proc = start(["apps.echo", "--port", str(port), "--workers", "2"])
    try:
        # Both workers come up and each reports its own listener (read as
        # they come: the second may fork well after the first serves).
        # Raw reads: select() on the buffered text file would miss a line
        # that readline() had already pulled into its buffer.
        out = b""
        fd = proc.stdout.fileno()
        end = time.monotonic() + 30
        while len(re.findall(rb"worker \d: echo on", out)) < 2:
            assert select.select([fd], [], [], max(0.0, end - time.monotonic()))[0], \
                f"both workers did not report listening within 30 s: {out!r}"
            chunk = os.read(fd, 4096)
            assert chunk, f"the program ended before both workers listened: {out!r}"
            out += chunk
        conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
        for i, c in enumerate(conns):
            c.settimeout(5)
            assert echo_once(c, f"conn {i}".encode()) == f"conn {i}".encode()
        for c in conns:
            c.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        kill_group(proc)


def test_rooster_style_echo_is_three_lines():
    from apps.rooster import server

    def echo(client, data):
        client.write(data)

    def main():
        ready = threadlib.Event()
        address = []
        srv = yield from threadlib.spawn(server(echo, ("127.0.0.1", 0), ready=lambda a: (address.append(a), ready.set())))
        yield from ready.wait()
        conn = yield from sockio.connect(address[0])
        yield from conn.sendall(b"rooster")
        got = yield from conn.recv_exactly(7, timeout=5)
        conn.close()
        yield from srv.cancel()
        return got

    assert threadlib.run(main()) == b"rooster"
