"""Many HTTP client connections driven from one OS thread with epoll, and
what the tests of faults under load read about a server process in /proc.

A `Crowd` opens thousands of real TCP connections to a server, sends each
a request and reads each one complete response (by its Content-Length),
so that a test can hold 10,000 keep-alive connections, or find exactly
which of them a killed worker took down, without 10,000 OS threads.  The
/proc helpers report a process's open fds, its RSS, its children and which
client ports its sockets are connected to.

This module only drives clients and reads /proc; it never asserts
anything about speed, never sleeps a fixed time, and every wait in it is
bounded by a deadline that turns a hang into a clear failure.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import time
from contextlib import contextmanager

HANG = 60.0  # seconds: far beyond anything a working exchange needs


@contextmanager
def fd_limit(soft: int):
    """Raise (or lower) this process's soft RLIMIT_NOFILE for a block."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def hard_fd_limit() -> int:
    """This process's hard RLIMIT_NOFILE (what a soft limit may be raised to)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


class Response:
    """One parsed response: status, headers (lower-cased names), body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"


def parse_response(data: bytes) -> tuple[Response, bytes] | None:
    """The first complete response in ``data`` and what follows it, or
    None while it is incomplete."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = data[:head_end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    end = head_end + 4 + length
    if len(data) < end:
        return None
    return Response(status, headers, data[head_end + 4:end]), data[end:]


class Failed(Exception):
    """A connection of the crowd was closed or reset instead of answering."""


class Crowd:
    """``n`` client connections to ``address``; `exchange` sends each a
    request and returns each one's response (or the exception that ended
    it).  Connections are opened in batches so that the server's accept
    queue is not overrun."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.socks: list[socket.socket] = []
        self._buffers: dict[int, bytes] = {}

    def open(self, n: int, batch: int = 500, timeout: float = HANG) -> None:
        """Open ``n`` more connections, ``batch`` at a time, each
        established before the next batch starts."""
        deadline = time.monotonic() + timeout
        while n > 0:
            pending = {}
            ep = select.epoll()
            try:
                for _ in range(min(batch, n)):
                    s = socket.socket()
                    s.setblocking(False)
                    err = s.connect_ex(self.address)
                    if err not in (0, errno.EINPROGRESS):
                        s.close()
                        raise OSError(err, f"connect to {self.address}: {os.strerror(err)}")
                    pending[s.fileno()] = s
                    ep.register(s.fileno(), select.EPOLLOUT)
                n -= len(pending)
                while pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AssertionError(f"{len(pending)} connections to {self.address} not established "
                                             f"after {timeout} s")
                    for fd, _ in ep.poll(min(left, 1.0)):
                        s = pending.pop(fd)
                        ep.unregister(fd)
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            s.close()
                            raise OSError(err, f"connect to {self.address}: {os.strerror(err)}")
                        self.socks.append(s)
            finally:
                ep.close()

    def exchange(self, request: bytes, socks=None, timeout: float = HANG, missing_ok: bool = False) -> dict:
        """Send ``request`` on each of ``socks`` (default: all) and read one
        response each; returns {socket: Response or Failed}.  With
        ``missing_ok`` a connection still unanswered after ``timeout`` is
        left out of the result (its response can be read later with
        `responses`) instead of failing the exchange."""
        socks = list(self.socks if socks is None else socks)
        results: dict = {}
        sent = []
        for s in socks:
            try:
                s.send(request)       # small: fits an empty send buffer
            except OSError as exc:
                results[s] = Failed(f"send: {exc}")
                continue
            sent.append(s)
        results.update(self.responses(sent, timeout, missing_ok))
        return results

    def responses(self, socks, timeout: float = HANG, missing_ok: bool = False) -> dict:
        """Read one response on each of ``socks`` (their requests already
        sent); {socket: Response or Failed}, without the ones still
        unanswered after ``timeout`` if ``missing_ok``."""
        results: dict = {}
        ep = select.epoll()
        by_fd = {}
        try:
            for s in socks:
                by_fd[s.fileno()] = s
                self._buffers.setdefault(s.fileno(), b"")
                ep.register(s.fileno(), select.EPOLLIN)
            deadline = time.monotonic() + timeout
            while by_fd:
                left = deadline - time.monotonic()
                if left <= 0:
                    if missing_ok:
                        break
                    raise AssertionError(f"{len(by_fd)} of {len(socks)} responses missing after {timeout} s")
                for fd, _ in ep.poll(min(left, 1.0)):
                    s = by_fd[fd]
                    try:
                        chunk = s.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        chunk = None
                        results[s] = Failed(f"recv: {exc}")
                    if chunk is not None:
                        buf = self._buffers[fd] + chunk
                        parsed = parse_response(buf)
                        if parsed is not None:
                            results[s], self._buffers[fd] = parsed
                        elif not chunk:
                            results[s] = Failed(f"closed after {len(buf)} bytes")
                        else:
                            self._buffers[fd] = buf
                            continue
                    del by_fd[fd]
                    ep.unregister(fd)
        finally:
            ep.close()
        return results

    def close(self) -> None:
        """Close every connection of the crowd."""
        for s in self.socks:
            s.close()
        self.socks.clear()
        self._buffers.clear()


# --------------------------------------------------------------------- /proc

def open_fds(pid: int) -> int:
    """How many fds process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """Process ``pid``'s resident set size."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    """The pids of process ``pid``'s children (its workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def socket_inodes(pid: int) -> set[int]:
    """The inode numbers of the sockets process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def peer_ports(pid: int, local_port: int) -> set[int]:
    """Remote ports of the TCP connections ``pid`` holds on ``local_port``
    (IPv4, from /proc/net/tcp)."""
    inodes = socket_inodes(pid)
    ports = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            if inode in inodes and int(local.split(":")[1], 16) == local_port:
                rport = int(remote.split(":")[1], 16)
                if rport:
                    ports.add(rport)
    return ports


def listens(pid: int, local_port: int) -> bool:
    """Whether ``pid`` holds a listening TCP socket on ``local_port``
    (IPv4, from /proc/net/tcp): a forked worker is not yet serving until
    it does."""
    inodes = socket_inodes(pid)
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes and int(fields[1].split(":")[1], 16) == local_port:
                return True
    return False
