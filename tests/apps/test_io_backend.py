"""``--io epoll|uring`` on the programs, as a user runs them: each program
serves real sockets with the backend chosen, which the test reads from the
process's own open files (an io_uring instance is an ``anon_inode:[io_uring]``
fd, an epoll one ``anon_inode:[eventpoll]``); a bad value is a one-line
error; where io_uring cannot be used (here forced with
``THREADLIB_URING_DISABLE=all``, the documented switch) the program serves
on epoll and says why in one log line."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from tests import REPO_ROOT
from tests.waiting import wait_until
from threadlib.lowlevel import uring_unavailable_reason

from . import kill_group

REASON = uring_unavailable_reason()
needs_uring = pytest.mark.skipif(REASON is not None, reason=f"io_uring unavailable here: {REASON}")
FALLBACK_LINE = "threadlib: io_uring unavailable (disabled by THREADLIB_URING_DISABLE); using epoll"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Program:
    """A program run as ``python -m apps.NAME ARGS`` in a session of its
    own, its output collected by a reader thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("THREADLIB_")}
        environ.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO_ROOT, env=environ,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def kernel_objects(self) -> list[str]:
        """The anon-inode objects the program holds open (its rings, its epoll)."""
        found = []
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("anon_inode:"):
                found.append(target)
        return found

    def stop(self) -> int:
        self.proc.terminate()
        status = self.proc.wait(timeout=20)
        kill_group(self.proc)
        return status


def connect(port: int, program: Program) -> socket.socket:
    def attempt() -> socket.socket | None:
        assert program.proc.poll() is None, "\n".join(program.lines)
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return None

    sock = wait_until(attempt, timeout=20, what="the program listening")
    assert isinstance(sock, socket.socket)
    return sock


def round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "closed early"
        got += chunk
    return got


@pytest.fixture
def echo_backend():
    """A plain echo server in a Python thread, for the proxy to forward to."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def start_app(name: str, port: int, io: str | None, env: dict[str, str] | None = None,
              target: int | None = None) -> Program:
    args = {"echo": ["apps.echo", "--port", str(port)],
            "webserver": ["apps.webserver", "--port", str(port)],
            "proxy": ["apps.proxy", "--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{target}"]}[name]
    if io is not None:
        args += ["--io", io]
    return Program(*args, env=env)


def exercise(name: str, port: int, program: Program) -> None:
    """Real traffic through the program: echoed bytes, or a page."""
    if name == "webserver":
        connect(port, program).close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):  # keep-alive: several requests on one connection
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            assert b"<html" in response.read().lower()
        conn.close()
        return
    sock = connect(port, program)
    with sock:
        payload = os.urandom(200_000)
        assert round_trip(sock, payload) == payload
        assert round_trip(sock, b"x") == b"x"


@needs_uring
@pytest.mark.parametrize("name", ["echo", "webserver", "proxy"])
def test_io_uring_serves_real_sockets_through_a_ring(name, echo_backend):
    port = free_port()
    program = start_app(name, port, "uring", target=echo_backend)
    try:
        exercise(name, port, program)
        objects = program.kernel_objects()
        assert "anon_inode:[io_uring]" in objects, objects
        assert "anon_inode:[eventpoll]" not in objects, objects
        assert program.stop() == 0, "\n".join(program.lines)
        assert not any("io_uring unavailable" in line for line in program.lines), program.lines
    finally:
        kill_group(program.proc)


@pytest.mark.parametrize("name", ["echo", "webserver", "proxy"])
def test_io_epoll_serves_without_a_ring(name, echo_backend):
    port = free_port()
    program = start_app(name, port, "epoll", env={"THREADLIB_IO": "uring"}, target=echo_backend)
    try:
        exercise(name, port, program)
        objects = program.kernel_objects()
        assert "anon_inode:[eventpoll]" in objects and "anon_inode:[io_uring]" not in objects, objects
        assert program.stop() == 0
    finally:
        kill_group(program.proc)


@pytest.mark.parametrize("name", ["echo", "webserver", "proxy"])
def test_io_uring_where_it_is_disabled_falls_back_to_epoll_with_one_line(name, echo_backend):
    port = free_port()
    program = start_app(name, port, "uring", env={"THREADLIB_URING_DISABLE": "all"}, target=echo_backend)
    try:
        exercise(name, port, program)
        objects = program.kernel_objects()
        assert "anon_inode:[eventpoll]" in objects and "anon_inode:[io_uring]" not in objects, objects
        assert program.stop() == 0
        said = [line for line in program.lines if "io_uring" in line]
        assert len(said) == 1 and said[0].endswith(FALLBACK_LINE), program.lines
    finally:
        kill_group(program.proc)


def test_two_workers_fall_back_with_one_line_from_the_parent():
    port = free_port()
    program = Program("apps.echo", "--port", str(port), "--workers", "2", "--io", "uring",
                      env={"THREADLIB_URING_DISABLE": "all"})
    try:
        wait_until(lambda: sum("echo on" in line for line in program.lines) == 2, timeout=20,
                   what="both workers listening")
        sock = connect(port, program)
        with sock:
            assert round_trip(sock, b"ping") == b"ping"
        assert program.stop() == 0
        assert sum("io_uring unavailable" in line for line in program.lines) == 1, program.lines
    finally:
        kill_group(program.proc)


@pytest.mark.parametrize("args", [
    ["apps.echo", "--io", "kqueue"],
    ["apps.proxy", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1", "--io", "kqueue"],
    ["apps.webserver", "--io", "kqueue"],
    ["apps.loadgen", "http://127.0.0.1:1/", "--io", "kqueue"],
])
def test_a_bad_io_value_is_a_one_line_error(args):
    out = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors == [errors[0]] and "--io" in errors[0] and "'kqueue'" in errors[0], out.stderr


def test_a_bad_threadlib_io_is_a_one_line_error():
    env = dict(os.environ, THREADLIB_IO="kqueue")
    out = subprocess.run([sys.executable, "-m", "apps.echo", "--port", "0"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1].endswith("error: THREADLIB_IO must be 'epoll' or 'uring', got 'kqueue'")


def test_the_webserver_takes_one_body_mode_and_one_backend():
    out = subprocess.run([sys.executable, "-m", "apps.webserver", "--io", "uring", "--io", "epoll"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "give at most one of sendfile, aio and one of epoll, uring" in out.stderr.splitlines()[-1]


@needs_uring
def test_loadgen_runs_on_io_uring_against_the_webserver_on_io_uring():
    port = free_port()
    server = start_app("webserver", port, "uring")
    try:
        connect(port, server).close()
        out = subprocess.run([sys.executable, "-m", "apps.loadgen", f"http://127.0.0.1:{port}/", "-c", "3",
                              "-n", "60", "--json", "--io", "uring"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout.splitlines()[-1])
        assert summary["requests"] == 60 and not summary["errors"], summary
        assert "io_uring" not in out.stderr
        assert server.stop() == 0
    finally:
        kill_group(server.proc)
