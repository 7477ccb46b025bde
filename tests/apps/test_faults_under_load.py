"""Faults under load (issue 14 part 3): apps.webserver as a real program,
real clients by the thousand, and the faults a server meets in the field:
10,000 idle keep-alive connections, slowloris, SIGTERM and ``kill -9``
during ``wrk``, an EMFILE storm, clients that reset, half-close or vanish,
and a soak.  Each test's load is bounded in counts and seconds; the
figures (memory per connection, latencies, times) are printed for
docs/reliability.md and never asserted: speed is bench/'s business.  What
is asserted is what was lost: nothing beyond what the fault destroys.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests import REPO_ROOT

from ..waiting import wait_until
from . import kill_group
from .crowd import (
    Crowd,
    Failed,
    children,
    fd_limit,
    hard_fd_limit,
    listens,
    open_fds,
    peer_ports,
    rss_bytes,
)

SMALL = b"small and served\n" * 4
GET_SMALL = b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n"
GET_SMALL_CLOSE = b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture
def site(tmp_path):
    (tmp_path / "small.txt").write_bytes(SMALL)
    (tmp_path / "medium.bin").write_bytes(bytes(range(256)) * 256)          # 64 KiB
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4096 * 8)        # 8 MiB
    return tmp_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m apps.webserver`` started with a soft fd limit of
    ``nofile`` (the limit is inherited by its workers)."""

    def __init__(self, site, *args: str, nofile: int | None = None) -> None:
        self.port = _free_port()
        root = ["--root", str(site)] if site is not None else []  # None: an application, no files
        argv = [sys.executable, "-m", "apps.webserver", *root, "--port", str(self.port), *args]
        if nofile is not None:
            # The child sets its own limit before it runs the program (a
            # preexec_fn is unsafe in a test process with threads).
            limit = min(nofile, hard_fd_limit())
            bootstrap = ("import resource, runpy, sys; "
                         f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {hard_fd_limit()})); "
                         "sys.argv[0] = 'apps.webserver'; "
                         "runpy.run_module('apps.webserver', run_name='__main__', alter_sys=True)")
            argv[1:3] = ["-c", bootstrap]
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if "serving" not in line:
            kill_group(self.proc)
            raise AssertionError(f"no banner: {line}{self.proc.stdout.read()}")
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        self.address = ("127.0.0.1", self.port)

    def _read_output(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        kill_group(self.proc)


@pytest.fixture
def server(site):
    started = []

    def start(*args: str, nofile: int | None = None, files: bool = True) -> Server:
        started.append(Server(site if files else None, *args, nofile=nofile))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def _served(results: dict, body: bytes = SMALL) -> list:
    """The connections whose response was not a whole 200 with ``body``."""
    return [(s, r) for s, r in results.items()
            if isinstance(r, Failed) or r.status != 200 or r.body != body]


# ---------------------------------------------------------------- 10,000 idle

@pytest.mark.skipif(hard_fd_limit() < 10_200, reason="the hard fd limit is below 10,200")
def test_ten_thousand_keep_alive_connections_are_held_and_served_by_one_worker(server):
    """One worker holds 10,000 idle keep-alive connections (its soft fd
    limit raised to the hard one); each is served, held idle, and served
    again; the RSS each idle connection costs is reported."""
    n = 10_000
    srv = server("--quiet", "--keepalive-timeout", "600", "--header-timeout", "600", nofile=hard_fd_limit())
    crowd = Crowd(srv.address)
    with fd_limit(hard_fd_limit()):
        try:
            fds_start = open_fds(srv.pid)
            warm = Crowd(srv.address)              # the first requests fill caches: not per connection
            warm.open(50)
            assert not _served(warm.exchange(GET_SMALL))
            warm.close()
            wait_until(lambda: open_fds(srv.pid) <= fds_start, what="the warm-up connections closed")
            fds_before, rss_before = open_fds(srv.pid), rss_bytes(srv.pid)
            started = time.monotonic()
            crowd.open(n)
            opened = time.monotonic() - started
            assert not _served(crowd.exchange(GET_SMALL, timeout=120))
            first = time.monotonic() - started - opened
            wait_until(lambda: open_fds(srv.pid) >= fds_before + n, what="the server holding every connection")
            rss_held = rss_bytes(srv.pid)
            assert not _served(crowd.exchange(GET_SMALL, timeout=120))      # all still open, all served
            second = time.monotonic() - started - opened - first
            assert open_fds(srv.pid) == fds_before + n
        finally:
            crowd.close()
    wait_until(lambda: open_fds(srv.pid) <= fds_before, what="the server closing the connections the clients closed")
    per_conn = (rss_held - rss_before) / n
    print(f"\n10,000 keep-alive connections on one worker: opened in {opened:.2f} s, first round of requests "
          f"{first:.2f} s, second {second:.2f} s; RSS {rss_before / 2**20:.1f} MiB -> {rss_held / 2**20:.1f} MiB, "
          f"{per_conn / 1024:.1f} KiB per idle connection")
    assert srv.stop() == 0


# ---------------------------------------------------------------- slowloris

class Slowloris:
    """``crowd``'s connections each send the start of a request head, then
    one more header byte every ``drip`` seconds, from one OS thread, until
    the server ends them; `ended` maps each to what the server sent before
    closing (or the error that ended it)."""

    def __init__(self, crowd: Crowd, drip: float) -> None:
        self.crowd = crowd
        self.drip = drip
        self.ended: dict = {}
        self.drips = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def run_until_all_ended(self, meanwhile, started: float, limit: float = 60.0) -> None:
        """Start, call ``meanwhile()`` over and over until every connection
        has ended or ``limit`` seconds have passed since ``started``, then
        stop; asserts that every one ended."""
        n = len(self.crowd.socks)
        self.start()
        while len(self.ended) < n and time.monotonic() - started < limit:
            meanwhile()
        self.stop()
        assert len(self.ended) == n, f"{n - len(self.ended)} slow clients still open after {limit:g} s"

    def statuses(self) -> dict[str, int]:
        """How the ended connections ended: the count of each status line
        the server sent first ("HTTP/1.1 408"), or of "closed" with none."""
        counts: dict[str, int] = {}
        for sent in self.ended.values():
            key = sent[:12].decode("latin-1") if sent.startswith(b"HTTP/1.1 ") else "closed"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _run(self) -> None:
        import select

        ep = select.epoll()
        live = {}
        received = {}
        for s in self.crowd.socks:
            s.send(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            live[s.fileno()] = s
            received[s.fileno()] = b""
            ep.register(s.fileno(), select.EPOLLIN)
        next_drip = time.monotonic() + self.drip
        try:
            while live and not self._stop.is_set():
                for fd, _ in ep.poll(max(0.0, min(next_drip - time.monotonic(), 0.2))):
                    s = live[fd]
                    try:
                        chunk = s.recv(65536)
                    except OSError as exc:
                        chunk, received[fd] = b"", received[fd] or f"{exc}".encode()
                    if chunk:
                        received[fd] += chunk
                        continue
                    self.ended[s] = received[fd]
                    ep.unregister(fd)
                    del live[fd]
                if time.monotonic() >= next_drip:
                    next_drip += self.drip
                    self.drips += 1
                    for fd, s in list(live.items()):
                        try:
                            s.send(b"a")
                        except OSError:
                            pass          # reset: the read side reports it
        finally:
            ep.close()


def _latencies(crowd: Crowd, rounds: int, body: bytes = SMALL) -> list[float]:
    """Rounds of one request on every connection of ``crowd``; each
    round's time; asserts every response whole (``body``)."""
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        bad = _served(crowd.exchange(GET_SMALL), body)
        times.append(time.monotonic() - started)
        assert not bad, bad[:3]
    return times


def _ms(times: list[float]) -> str:
    times = sorted(times)
    return f"median {1000 * times[len(times) // 2]:.1f} ms, max {1000 * times[-1]:.1f} ms"


def test_five_thousand_slowloris_clients_are_cut_off_by_the_header_timeout_while_others_are_served(server):
    """5,000 clients send a request head one byte every 2.5 s; with a
    6-second header timeout (a deadline for the whole head, which drips do
    not extend) each gets a 408 (or is closed) and its fd is
    reclaimed, while 20 normal keep-alive clients are served throughout."""
    n, drip, header_timeout = 5_000, 2.5, 6.0  # the "one header byte every few seconds"
    srv = server("--quiet", "--header-timeout", str(header_timeout), "--keepalive-timeout", "60",
                 nofile=hard_fd_limit())
    with fd_limit(hard_fd_limit()):
        normal = Crowd(srv.address)
        slow = Crowd(srv.address)
        try:
            normal.open(20)
            before = _latencies(normal, 20)
            fds_before = open_fds(srv.pid)
            started = time.monotonic()
            slow.open(n)
            loris = Slowloris(slow, drip)
            during: list[float] = []
            loris.run_until_all_ended(lambda: during.extend(_latencies(normal, 1)), started)
            reclaimed = time.monotonic() - started
            statuses = loris.statuses()
            # Each got the 408 and nothing else (a reset before it arrived
            # would show as "closed"; none is expected on loopback).
            assert statuses == {"HTTP/1.1 408": n}, statuses
            wait_until(lambda: open_fds(srv.pid) <= fds_before, what="the slow clients' fds reclaimed")
            after = _latencies(normal, 20)
        finally:
            normal.close()
            slow.close()
    print(f"\nslowloris: {n} clients dripping a header byte every {drip:g} s, header timeout "
          f"{header_timeout:.0f} s: all {n} answered 408 and closed {reclaimed:.2f} s after the first connected "
          f"({loris.drips} drips); 20 normal keep-alive clients, one request each per round: before {_ms(before)}; "
          f"during {len(during)} rounds, {_ms(during)}; after {_ms(after)}")
    assert srv.stop() == 0


@pytest.mark.skipif(hard_fd_limit() < 3_500, reason="the hard fd limit is below 3,500")
def test_the_asgi_server_reclaims_idle_and_slowloris_crowds_while_others_are_served(server):
    """``--asgi``: 2,000 keep-alive connections served once and left idle
    are closed by the idle sweeper after the keep-alive timeout (3 s) and
    not before; then 1,000 slowloris clients (a header byte a second) each
    get a 408 at the header timeout (3 s). Every fd comes back, and 20
    normal keep-alive clients are served throughout (a request each per
    round keeps them from idling out)."""
    n_idle, n_slow, timeout = 2_000, 1_000, 3.0
    body = b"abcdefghi"  # tests.apps.asgi_apps.fixed_length's
    srv = server("--quiet", "--asgi", "tests.apps.asgi_apps:fixed_length", "--lifespan", "off",
                 "--keepalive-timeout", str(timeout), "--header-timeout", str(timeout), nofile=hard_fd_limit(),
                 files=False)
    with fd_limit(hard_fd_limit()):
        normal, idle, slow = Crowd(srv.address), Crowd(srv.address), Crowd(srv.address)
        try:
            normal.open(20)
            before = _latencies(normal, 5, body)
            fds_before = open_fds(srv.pid)
            idle.open(n_idle)
            started = time.monotonic()  # no idle wait of the crowd began before this
            assert not _served(idle.exchange(GET_SMALL), body)
            held, first_closed, during = open_fds(srv.pid), None, []
            assert held == fds_before + n_idle
            while time.monotonic() - started < 60:
                during += _latencies(normal, 1, body)
                fds = open_fds(srv.pid)
                if first_closed is None and fds < held:
                    first_closed = time.monotonic() - started
                if fds <= fds_before:
                    break
            idle_reclaimed = time.monotonic() - started
            assert open_fds(srv.pid) <= fds_before, "idle connections still open after 60 s"
            assert first_closed is not None and first_closed >= timeout - 0.05, first_closed
            slow.open(n_slow)
            slow_started = time.monotonic()
            loris = Slowloris(slow, 1.0)
            loris.run_until_all_ended(lambda: during.extend(_latencies(normal, 1, body)), slow_started)
            slow_reclaimed = time.monotonic() - slow_started
            statuses = loris.statuses()
            assert statuses == {"HTTP/1.1 408": n_slow}, statuses
            wait_until(lambda: open_fds(srv.pid) <= fds_before, what="the slow clients' fds reclaimed")
            after = _latencies(normal, 5, body)
        finally:
            normal.close()
            idle.close()
            slow.close()
    print(f"\nASGI: {n_idle} idle keep-alive connections (timeout {timeout:g} s): the first closed "
          f"{first_closed:.2f} s after they were served, all {idle_reclaimed:.2f} s; {n_slow} slowloris clients "
          f"(header timeout {timeout:g} s): all answered 408 and closed in {slow_reclaimed:.2f} s; 20 normal "
          f"clients: before {_ms(before)}; during {len(during)} rounds, {_ms(during)}; after {_ms(after)}")
    assert srv.stop() == 0


# ---------------------------------------------------------------- wrk

def _wrk(address, path: str, connections: int, seconds: float, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", *extra,
                             f"http://{address[0]}:{address[1]}{path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wrk_result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    assert m, out
    result = {"requests": int(m.group(1)), "seconds": float(m.group(2)), "connect": 0, "read": 0, "write": 0,
              "timeout": 0, "non2xx": 0, "text": out}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        result.update(connect=int(m.group(1)), read=int(m.group(2)), write=int(m.group(3)), timeout=int(m.group(4)))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        result["non2xx"] = int(m.group(1))
    return result


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing")
def test_sigterm_during_wrk_completes_every_response_in_flight_and_exits_0(server, tmp_path):
    """SIGTERM while 50 wrk connections fetch 64 KiB each: the server stops
    accepting, every response it began arrives whole (wrk counts exactly
    as many complete responses as the access log has lines, with no read
    error, timeout or non-2xx), and it exits 0 within the drain timeout.
    What wrk reports as connect or write errors are its reconnections
    after the listener closed, refused by the kernel."""
    drain = 10.0
    log = tmp_path / "access.log"
    srv = server("--quiet", "--drain-timeout", str(drain), "--access-log", str(log))
    fds_idle = open_fds(srv.pid)
    # wrk runs long enough for the server to get busy even on a loaded
    # machine (at 4 s it sometimes ended first); the SIGTERM comes as soon
    # as it is, and wrk's remaining seconds are refused reconnections.
    wrk = _wrk(srv.address, "/medium.bin", 50, 12)
    wait_until(lambda: open_fds(srv.pid) >= fds_idle + 50, what="wrk's 50 connections accepted")
    cpu = _cpu_seconds(srv.pid)
    wait_until(lambda: _cpu_seconds(srv.pid) >= cpu + 0.5, what="the server busy under wrk")
    signalled = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    status = srv.proc.wait(timeout=drain + 20)
    exited = time.monotonic() - signalled
    result = _wrk_result(wrk)
    print(f"\nSIGTERM during wrk -c50 (64 KiB responses): exit status {status} {exited:.2f} s after the signal "
          f"(drain timeout {drain:.0f} s); wrk: {result['requests']} requests in {result['seconds']} s, "
          f"socket errors connect {result['connect']}, read {result['read']}, write {result['write']} (refused "
          f"reconnections), timeout {result['timeout']}, non-2xx {result['non2xx']}; access log "
          f"{len(log.read_text().splitlines())} lines")
    assert status == 0 and exited < drain + 5
    assert result["requests"] > 0
    assert (result["read"], result["timeout"], result["non2xx"]) == (0, 0, 0), result["text"]
    logged = log.read_text().splitlines()
    assert all('" 200 65536' in line for line in logged)
    assert result["requests"] == len(logged), result["text"]


# ---------------------------------------------------------------- kill -9

@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing")
def test_kill_9_of_one_worker_under_wrk_loses_only_its_connections_and_it_is_replaced(server):
    """``--workers 2`` under wrk (20 connections) with 200 more keep-alive
    clients whose worker is known (from /proc): ``kill -9`` of one worker
    fails exactly the clients it held; every client of the other worker
    is served on; the supervisor forks a replacement, which serves."""
    srv = server("--quiet", "--workers", "2", "--keepalive-timeout", "120")
    workers = wait_until(lambda: children(srv.pid) if len(children(srv.pid)) == 2 else None,
                         what="two workers")
    # Forked is not listening: a client that connects before the second
    # worker's socket joins the SO_REUSEPORT group goes to the first.
    wait_until(lambda: all(listens(pid, srv.port) for pid in workers), what="both workers listening")
    crowd = Crowd(srv.address)
    try:
        crowd.open(200)
        assert not _served(crowd.exchange(GET_SMALL))
        wrk = _wrk(srv.address, "/small.txt", 20, 4)
        wait_until(lambda: sum(len(peer_ports(pid, srv.port)) for pid in workers) >= 220,
                   what="wrk's 20 connections accepted")
        owner = {}
        for pid in workers:
            for port in peer_ports(pid, srv.port):
                owner[port] = pid
        by_port = {s.getsockname()[1]: s for s in crowd.socks}
        assert set(by_port) <= set(owner), "a client connection held by no worker"
        victim = workers[0]
        victims = {s for port, s in by_port.items() if owner[port] == victim}
        wrk_on_victim = len(set(peer_ports(victim, srv.port)) - set(by_port))
        assert victims and len(victims) < 200, "SO_REUSEPORT gave every client to one worker"
        os.kill(victim, signal.SIGKILL)
        replacement = wait_until(
            lambda: [p for p in children(srv.pid) if p not in workers] if len(children(srv.pid)) == 2 else None,
            what="the supervisor replacing the killed worker")[0]
        results = crowd.exchange(GET_SMALL)
        failed = {s for s, r in results.items() if isinstance(r, Failed)}
        assert failed == victims
        assert not _served({s: r for s, r in results.items() if s not in victims})
        # The replacement serves: new clients until one lands on it.
        newcomers = Crowd(srv.address)

        def one_served_by_replacement():
            newcomers.open(10)
            assert not _served(newcomers.exchange(GET_SMALL, newcomers.socks[-10:]))
            mine = {s.getsockname()[1] for s in newcomers.socks}
            return mine & peer_ports(replacement, srv.port)

        wait_until(one_served_by_replacement, what="a client served by the replacement worker", interval=0)
        newcomers.close()
        result = _wrk_result(wrk)
    finally:
        crowd.close()
    print(f"\nkill -9 of one of 2 workers under wrk -c20: {len(victims)} of 200 keep-alive clients were on it and "
          f"failed, the other {200 - len(victims)} were served on; replacement forked and serving; wrk "
          f"({wrk_on_victim} of its 20 connections on the killed worker; a reconnection queued on it is lost too): {result['requests']} requests, socket "
          f"errors connect {result['connect']}, read {result['read']}, write {result['write']}, timeout "
          f"{result['timeout']}, non-2xx {result['non2xx']}")
    assert result["requests"] > 0 and result["non2xx"] == 0 and result["timeout"] == 0
    assert srv.stop() == 0


# ---------------------------------------------------------------- EMFILE

def test_emfile_storm_backs_off_keeps_existing_clients_and_serves_everyone_after(server):
    """The server's fd limit lowered to 256, 50 keep-alive clients held,
    then 1,000 clients connect at once (the kernel queues them; accept
    fails with EMFILE): the server backs off instead of spinning or dying,
    the 50 are served throughout, and as the storm's connections are
    answered and closed, every one of the 1,000 is served."""
    srv = server("--keepalive-timeout", "120", nofile=256)
    with fd_limit(4096):
        existing = Crowd(srv.address)
        storm = Crowd(srv.address)
        try:
            existing.open(50)
            assert not _served(existing.exchange(GET_SMALL))
            fds_before = open_fds(srv.pid)
            started = time.monotonic()
            storm.open(1_000)
            # The storm sends nothing until the server has run out of fds
            # holding its idle connections: a connection whose request is
            # already there when it is accepted is served and closed before
            # the next accept, so a server that fell behind the connects
            # (a loaded machine) met requests only and never hit the limit.
            wait_until(lambda: any("Too many open files" in line for line in srv.output),
                       what="an accept back-off (EMFILE) logged while the storm's connections are idle")
            outcome = {}
            storm_thread = threading.Thread(target=lambda: outcome.update(storm.exchange(GET_SMALL_CLOSE, timeout=120)))
            storm_thread.start()
            rounds = 0
            while storm_thread.is_alive():
                assert not _served(existing.exchange(GET_SMALL))
                rounds += 1
            storm_thread.join()
            served_all = time.monotonic() - started
            assert len(outcome) == 1_000 and not _served(outcome)
            assert not _served(existing.exchange(GET_SMALL))
            wait_until(lambda: open_fds(srv.pid) <= fds_before, what="the storm's fds released")
        finally:
            existing.close()
            storm.close()
    backoffs = sum("Too many open files" in line for line in srv.output)
    print(f"\nEMFILE storm: fd limit 256, 50 keep-alive clients held, 1,000 clients at once: all 1,000 served in "
          f"{served_all:.2f} s, {backoffs} accept back-offs logged; the 50 were "
          f"served in all {rounds} rounds during the storm")
    assert backoffs > 0          # the storm did hit the limit
    assert srv.stop() == 0


# ---------------------------------------------------------------- resets, half-closes, vanishing clients

BAD_CLIENTS = r'''
import socket, struct, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"


def connect():
    return socket.create_connection((host, port), timeout=30)


def one_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    assert head.startswith(b"HTTP/1.1 200 ") and len(body) == length, head
    return body


# Reset mid-response: read 64 KiB of 8 MiB, then RST (SO_LINGER 0).
for _ in range(n):
    s = connect()
    s.sendall(GET % b"/big.bin")
    got = 0
    while got < 65536:
        got += len(s.recv(65536))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
# Half-close after the request: the whole response still comes, then EOF.
for _ in range(n):
    s = connect()
    s.sendall(GET % b"/small.txt")
    s.shutdown(socket.SHUT_WR)
    one_response(s)
    assert s.recv(10) == b""
    s.close()
print("resets and half-closes done", flush=True)
sys.stdin.readline()   # the test's go-ahead
# Then hold n idle keep-alive connections (served once) and n with half a
# request head, until this process vanishes.
held = []
for _ in range(n):
    s = connect()
    s.sendall(GET % b"/small.txt")
    one_response(s)
    held.append(s)
for _ in range(n):
    s = connect()
    s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nX-Cut: ")
    held.append(s)
print("holding", flush=True)
sys.stdin.read()
'''


def _user_stack_usable() -> bool:
    import os as _os

    return _os.geteuid() == 0 and _os.path.exists("/dev/net/tun") and shutil.which("nft") is not None


@pytest.mark.skipif(not _user_stack_usable(), reason="needs root, /dev/net/tun and nft (TUN device, namespace, "
                                                     "nftables)")
def test_user_stack_reclaims_clients_that_reset_half_close_or_vanish_without_a_fin(site):
    """apps.webserver on the user-level stack; from a kernel client in a
    test namespace, 100 clients reset mid-response and 100 half-close
    after their request (each answered whole); then the client process
    holds 100 idle keep-alive connections and 100 half-sent heads and
    vanishes: nftables drops everything on the TUN link both ways before
    it is killed, so no FIN or RST reaches the stack.  The stack's
    keep-alive (the server's keep-alive timeout is 10 minutes) reclaims
    the idle ones, the header timeout and the stack's user timeout the
    half-sent ones; the stack ends with no connection, and a new client is
    served."""
    import threadlib
    from apps.webserver import WebServer
    from iolib.netns import NetNamespace
    from threadlib.io import tcpsockio

    from ..waiting import until

    n, tun, kernel_ip, user_ip, port = 100, "tlf0", "10.81.0.1", "10.81.0.2", 8081
    ns = NetNamespace.create(prefix="tlf")
    try:
        net = tcpsockio.open_network(tun=tun, peer=f"{kernel_ip}/24", address=f"{user_ip}/24", netns=ns.name,
                                     seed=14, keepalive=True, keepidle=1.0, keepintvl=0.5, keepcnt=3,
                                     user_timeout=3.0)
        try:
            server = WebServer(str(site), network=net, header_timeout=2.0, keepalive_timeout=600.0,
                               send_timeout=5.0)
            figures = {}
            procs = []

            def start_clients():
                proc = ns.popen([sys.executable, "-c", BAD_CLIENTS, user_ip, str(port), str(n)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                procs.append(proc)
                for expected in ("resets and half-closes done", "holding"):
                    line = proc.stdout.readline()
                    assert line.strip() == expected, line + proc.stdout.read()
                    if expected != "holding":
                        proc.stdin.write("go\n")
                        proc.stdin.flush()

            def vanish():
                # Nothing crosses the link any more, then the process dies:
                # its FINs and RSTs are dropped with everything else.
                r = ns.exec(["nft", "-f", "-"], capture_output=True, text=True, timeout=30, input=f"""
table inet tl_vanish {{
    chain in {{ type filter hook input priority -300; policy accept; iifname "{tun}" drop; }}
    chain out {{ type filter hook output priority -300; policy accept; oifname "{tun}" drop; }}
}}
""")
                assert r.returncode == 0, r.stderr
                procs[0].kill()
                procs[0].wait()

            def main():
                shutdown = threadlib.Event()
                t = yield from threadlib.spawn(server.serve(("", port), shutdown))
                try:
                    yield from until(lambda: server.address is not None or t.done, what="the web server listening")
                    probes = net.stack.stats.keepalive_probes
                    try:
                        yield from threadlib.blocking(start_clients)
                        yield from until(lambda: net.stack.connection_states().get("ESTABLISHED", 0) >= 2 * n,
                                         what=f"{2 * n} connections established")
                        figures["held"] = net.stack.connection_states()["ESTABLISHED"]
                        yield from threadlib.blocking(vanish)
                    finally:
                        for proc in procs:
                            proc.kill()
                            proc.wait()
                    vanished = threadlib.now()
                    yield from until(lambda: not net.stack.connection_states(), timeout=60,
                                     what="the stack holding no connection")
                    figures["reclaimed"] = threadlib.now() - vanished
                    figures["probes"] = net.stack.stats.keepalive_probes - probes
                    ns.exec(["nft", "delete", "table", "inet", "tl_vanish"], check=True, timeout=30)
                    return (yield from threadlib.blocking(
                        lambda: ns.exec(["curl", "-sS", "--max-time", "20", f"http://{user_ip}:{port}/small.txt"],
                                        capture_output=True, timeout=60)))
                finally:
                    shutdown.set()
                    yield from t.join()

            after = threadlib.run(main())
        finally:
            net.close()
    finally:
        ns.delete()
    assert after.returncode == 0 and after.stdout == SMALL, after
    assert figures["probes"] >= n          # the idle ones were found dead by keep-alive probes
    print(f"\nuser stack: {n} clients reset mid-response, {n} half-closed (answered whole); {figures['held']} "
          f"established connections then vanished without a FIN (idle keep-alive and half-sent heads); all "
          f"reclaimed {figures['reclaimed']:.2f} s later ({figures['probes']} keep-alive probes); a new client served")


def test_kernel_stack_reclaims_clients_that_reset_half_close_or_go_silent(server):
    """The same bad clients against the program on the kernel's stack: 100
    reset mid-response and 100 half-close (each answered whole, no fd
    kept); then 100 idle keep-alive connections and 100 half-sent heads
    go silent while their sockets stay open: the keep-alive (3 s) and
    header (2 s) timeouts close every one, and the fds return to the
    baseline."""
    n = 100
    srv = server("--quiet", "--header-timeout", "2", "--keepalive-timeout", "3", "--send-timeout", "5")
    fds_before = open_fds(srv.pid)
    proc = subprocess.Popen([sys.executable, "-c", BAD_CLIENTS, "127.0.0.1", str(srv.port), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "resets and half-closes done", line + proc.stdout.read()
        wait_until(lambda: open_fds(srv.pid) <= fds_before, what="reset and half-closed connections closed")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.strip() == "holding", line + proc.stdout.read()
        wait_until(lambda: open_fds(srv.pid) - fds_before >= 2 * n, what="the server holding the silent connections")
        held = open_fds(srv.pid) - fds_before
        silent = time.monotonic()
        wait_until(lambda: open_fds(srv.pid) <= fds_before, what="the silent connections reclaimed")
        reclaimed = time.monotonic() - silent
        assert proc.poll() is None          # the client still holds its sockets: the server closed them
    finally:
        proc.kill()
        proc.wait()
    print(f"\nkernel stack: {n} clients reset mid-response, {n} half-closed (answered whole), fds back to the "
          f"baseline; {held} silent connections (idle keep-alive, half-sent heads) reclaimed {reclaimed:.2f} s "
          f"after the last was made")
    assert srv.stop() == 0


# ---------------------------------------------------------------- soak

@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing")
def test_soak_through_one_worker_leaks_no_memory_and_no_fd(server):
    """Five fifths of 2 s of wrk (20 keep-alive connections, new ones each
    fifth) through one worker, about 400,000 requests on this machine:
    every response 200, the RSS after the last fifth within 5 % of the RSS
    after the first, and the open fds back to the baseline after each.
    (bench/soak.py runs the issue's 5 million.)"""
    fifths, seconds_each = 5, 2
    srv = server("--quiet")
    fds_before = open_fds(srv.pid)
    rss, served, seconds = [], 0, 0.0
    for _ in range(fifths):
        result = _wrk_result(_wrk(srv.address, "/small.txt", 20, seconds_each))
        assert (result["connect"], result["read"], result["write"], result["timeout"], result["non2xx"]) == \
            (0, 0, 0, 0, 0), result["text"]
        assert result["requests"] > 0
        served += result["requests"]
        seconds += result["seconds"]
        wait_until(lambda: open_fds(srv.pid) <= fds_before, what="wrk's connections closed")
        rss.append(rss_bytes(srv.pid))
    growth = (rss[-1] - rss[0]) / rss[0]
    print(f"\nsoak: {served:,} requests through one worker in {seconds:.1f} s of wrk (-c20); RSS after each fifth "
          f"{', '.join(f'{r / 2**20:.1f}' for r in rss)} MiB (last vs first {100 * growth:+.1f} %); open fds back to "
          f"{open_fds(srv.pid)} (baseline {fds_before})")
    assert abs(growth) <= 0.05
    assert open_fds(srv.pid) == fds_before
    assert srv.stop() == 0
