"""An HTTP/1.1 load generator on threadlib: C connections, each a thread
sending GET requests one after another (keep-alive, or a new connection per
request with ``--no-keepalive``) for a duration or a request count.

    python -m apps.loadgen URL [URL ...] -c 100 -d 10 [-n 50000] [-R 2000] [--no-keepalive] [--json]
                           [--cacert FILE | --insecure] [--io epoll|uring]

Like the LoadGen of the original work, it assembles its own scheduler
from workers: only a timer worker and the IO worker (epoll, or io_uring
with ``--io uring``), no blocking pool, so the run loop is a tight
poll-plus-timers loop. Names are
resolved once, before the run. It prints requests/s, bytes/s, latency
percentiles (p50, p90, p99, p99.9) and errors by kind, with a live
progress line when stdout is a terminal. Latencies go into a bounded
log-linear histogram (0.8 % precision), so a long run's memory does not
grow. By default each connection sends its next request when the last
response is in (closed loop); ``-R RATE`` paces the requests at RATE per
second in all, each due at a fixed time, and counts each latency from
when it was due (open loop, as wrk2 does), so a server that stalls is
charged for the requests that queued behind the stall. ``https://`` URLs are fetched
over ``threadlib.io.tls`` (verifying the server against the system's CAs,
``--cacert FILE``, or not at all with ``--insecure``), and the report adds
TLS handshakes per second: with ``--no-keepalive`` every request is a
new connection and a full handshake (no session resumption).

It must never send traffic to anything but the URLs it was given, and
never count a response it did not read completely.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import itertools
import json
import logging
import math
import os
import socket
import ssl
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

import threadlib
from threadlib.io import sockio, tls
from threadlib.lowlevel import IOWorker, Scheduler, TimerWorker, UringWorker, WaitWrite, usable_io_backend

from . import add_io_backend_option, io_backend_of, positive_seconds, program_name, summary

__all__ = ["Target", "LoadGen", "LatencyHistogram", "Result", "main"]


@dataclass(frozen=True)
class Target:
    """One URL, resolved, with its request bytes prebuilt."""

    url: str
    address: tuple[str, int]
    request: bytes
    request_close: bytes
    tls: bool = False       # https://
    hostname: str = ""      # the name sent by SNI and verified

    @classmethod
    def parse(cls, url: str, resolve: bool = True) -> "Target":
        """The target ``url`` names. ``resolve=False`` leaves a host name
        unresolved in ``address`` (for a network that resolves names
        itself: ``LoadGen`` resolves it there before the run)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: only http:// and https:// URLs are supported")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        if resolve:
            try:
                infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise ValueError(f"{url!r}: host {parts.hostname!r} does not resolve ({exc.strerror})") from None
            if not infos:
                raise ValueError(f"{url!r}: {parts.hostname} does not resolve")
            address = infos[0][4][:2]
        else:
            address = (parts.hostname, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = parts.netloc.rsplit("@", 1)[-1]
        head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: threadlib-loadgen\r\n"
        return cls(url, address, (head + "\r\n").encode(), (head + "Connection: close\r\n\r\n").encode(),
                   parts.scheme == "https", parts.hostname)


class LatencyHistogram:
    """Latencies in bounded memory: log-linear buckets (HdrHistogram's
    layout) of whole microseconds, exact below 256 us and within 1/128
    (0.8 %) above, up to about 19 hours (longer ones count as that). A run of
    any length keeps at most a few thousand counters, never one entry per
    request. Values go in and come out in seconds."""

    SUB_BUCKETS = 128            # per power of two above the exact range
    EXACT = 2 * SUB_BUCKETS      # microseconds counted one by one
    MAX_US = (1 << 36) - 1

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.count = 0
        self.total_us = 0
        self.min_us = 0
        self.max_us = 0

    def _index(self, us: int) -> int:
        if us < self.EXACT:
            return us
        shift = us.bit_length() - 8  # sub-bucket in [128, 256)
        return self.EXACT + (shift - 1) * self.SUB_BUCKETS + ((us >> shift) - self.SUB_BUCKETS)

    def _highest_in(self, index: int) -> int:
        """The largest microsecond value counted in bucket ``index``."""
        if index < self.EXACT:
            return index
        shift, sub = divmod(index - self.EXACT, self.SUB_BUCKETS)
        shift += 1
        return ((sub + self.SUB_BUCKETS + 1) << shift) - 1

    def record(self, seconds: float) -> None:
        """Count one latency of ``seconds`` (negative counts as 0)."""
        us = min(self.MAX_US, max(0, int(seconds * 1e6 + 0.5)))
        index = self._index(us)
        counts = self.counts
        if index >= len(counts):
            counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
        if self.count == 0 or us < self.min_us:
            self.min_us = us
        if us > self.max_us:
            self.max_us = us
        self.count += 1
        self.total_us += us

    def __len__(self) -> int:
        return self.count

    @property
    def max(self) -> float:
        """The largest latency recorded, in seconds (exact)."""
        return self.max_us / 1e6

    @property
    def min(self) -> float:
        """The smallest latency recorded, in seconds (exact)."""
        return self.min_us / 1e6

    @property
    def mean(self) -> float:
        """The mean latency in seconds (0 with none recorded)."""
        return self.total_us / self.count / 1e6 if self.count else 0.0

    def percentile(self, p: float) -> float:
        """Latency at percentile ``p`` (0-100) by nearest rank, as the top
        of its bucket (never above the largest recorded), in seconds."""
        if not self.count:
            return 0.0
        rank = max(1, min(self.count, math.ceil(round(p / 100.0 * self.count, 6))))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self._highest_in(index), self.max_us) / 1e6
        return self.max


@dataclass
class Result:
    """What a run measured. Latencies are in seconds, in a bounded
    histogram. In open-loop runs (a fixed ``rate``) each latency counts
    from the moment its request was due, not from when it was sent, so a
    stalled server's backlog shows in the percentiles (no coordinated
    omission)."""

    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    connections_opened: int = 0
    handshakes: int = 0  # TLS handshakes completed
    errors: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)
    rate: float | None = None  # requests/s the run was paced at (open loop), None: closed loop

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def handshakes_per_second(self) -> float:
        return self.handshakes / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        """Latency at percentile ``p`` (0-100), nearest rank, within the
        histogram's precision (see ``LatencyHistogram``)."""
        return self.latencies.percentile(p)

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 4),
            "requests_per_second": round(self.requests_per_second, 1),
            "bytes": self.bytes,
            "bytes_per_second": round(self.bytes_per_second, 1),
            "connections_opened": self.connections_opened,
            "target_rate": self.rate,
            "tls_handshakes": self.handshakes,
            "tls_handshakes_per_second": round(self.handshakes_per_second, 1),
            "latency_ms": {name: round(self.percentile(p) * 1e3, 3)
                           for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))},
            "latency_max_ms": round(self.latencies.max * 1e3, 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
        }

    def report(self) -> str:
        s = self.summary()
        lat = s["latency_ms"]
        lines = [
            f"{self.requests} requests in {self.seconds:.2f}s over {self.connections_opened} connections",
            f"  requests/s  {self.requests_per_second:,.1f}"
            + (f" (open loop, paced at {self.rate:,.1f}/s)" if self.rate else ""),
            f"  bytes/s     {_human(self.bytes_per_second)}B/s ({self.bytes:,} bytes)",
        ]
        if self.handshakes:
            lines.append(f"  handshakes  {self.handshakes_per_second:,.1f}/s ({self.handshakes:,} TLS handshakes)")
        lines += [
            "  latency     " + "  ".join(f"{k} {v:.3f} ms" for k, v in lat.items())
            + f"  max {s['latency_max_ms']:.3f} ms",
            "  statuses    " + (", ".join(f"{k}: {v}" for k, v in s["statuses"].items()) or "none"),
            "  errors      " + (", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"),
        ]
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("", "Ki", "Mi", "Gi"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} Ti"


class _Response:
    """httptools callbacks for one response: only completion matters (the
    status and keep-alive are read at completion: llhttp resets them for
    the next message right after)."""

    __slots__ = ("parser", "complete", "status", "keep_alive")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.complete = False
        self.status = 0
        self.keep_alive = False

    def on_message_complete(self) -> None:
        self.complete = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()


class _ConnectionClosed(Exception):
    pass


def _kind(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)


@types.coroutine
def _kernel_connect(address: tuple[str, int], timeout: float) -> Any:
    """A kernel TCP connection whose fd is forgotten by the IO worker when
    the attempt fails (``sockio.connect`` closes a failed socket without
    that, so a later socket reusing the fd number would wait forever)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    stream = sockio.Stream(socket.socket(family, socket.SOCK_STREAM))
    try:
        sock = stream.socket
        err = sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            with threadlib.timeout(timeout):
                yield WaitWrite(stream.fileno())
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream
    except BaseException:
        stream.close()
        raise


def client_context(cafile: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """The TLS client context for https:// targets: verifying against the
    system's CAs, or ``cafile``'s, or (``insecure``) not verifying at all.
    ALPN offers http/1.1 only: the requests are HTTP/1.1."""
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


class LoadGen:
    """One load run. ``run()`` builds its own scheduler (timers + epoll, no
    blocking pool) in the calling OS thread and returns a Result."""

    def __init__(
        self,
        urls: list[str],
        connections: int = 10,
        duration: float | None = 10.0,
        requests: int | None = None,
        keepalive: bool = True,
        timeout: float = 10.0,
        network: Any = None,
        progress: bool = False,
        cafile: str | None = None,
        insecure: bool = False,
        rate: float | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one URL is needed")
        if connections < 1:
            raise ValueError("connections must be at least 1")
        if duration is None and requests is None:
            raise ValueError("give a duration, a request count, or both")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of requests per second, not {rate!r}")
        # Names are resolved now through the kernel's resolver, or at the
        # start of the run through the network given (a simulated one has
        # its own host table).
        kernel = network is None or network is sockio.kernel
        self.targets = [Target.parse(u, resolve=kernel) for u in urls]
        self.connections = connections
        self.duration = duration
        self.requests = requests
        self.keepalive = keepalive
        self.timeout = timeout
        self.network = network if network is not None else sockio.kernel
        self.progress = progress
        self.tls_context = None
        if any(t.tls for t in self.targets):
            self.tls_context = client_context(cafile, insecure)
        self.rate = rate
        self.result = Result(rate=rate)
        self._remaining = requests if requests is not None else -1
        self._deadline = 0.0

    def run(self, io: str | None = None) -> Result:
        """Run in a scheduler of its own (timers and epoll, or io_uring with
        ``io="uring"``; None: ``$THREADLIB_IO``) in this OS thread; returns
        the Result."""
        if usable_io_backend(io) == "uring":
            io_worker: IOWorker = UringWorker()
        else:
            io_worker = IOWorker()
        sched = Scheduler(workers=[TimerWorker(), io_worker])
        return sched.run(self.main())

    @types.coroutine
    def main(self) -> Any:
        """The run as a thread body, for a scheduler someone else runs (a
        simulated host: ``host.spawn(gen.main)``); returns the Result.
        Time is the scheduler's (``threadlib.now()``)."""
        if self.network is not sockio.kernel:
            resolved = []
            for t in self.targets:
                infos = yield from self.network.resolve(t.address[0], t.address[1])
                if not infos:
                    raise ValueError(f"{t.url!r}: {t.hostname} does not resolve")
                resolved.append(dataclasses.replace(t, address=tuple(infos[0][1][:2])))
            self.targets = resolved
        start = threadlib.now()
        self._deadline = start + self.duration if self.duration is not None else float("inf")
        self._start = start
        threads = []
        for i in range(self.connections):
            threads.append((yield from threadlib.spawn(self._client(i), name=f"client-{i}")))
        reporter = None
        if self.progress:
            reporter = yield from threadlib.spawn(self._progress(start))
        yield from threadlib.join_all(threads)
        self.result.seconds = threadlib.now() - start
        if reporter is not None:
            yield from reporter.cancel()
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
        return self.result

    def _take(self) -> bool:
        """May this thread start another request?"""
        if threadlib.now() >= self._deadline:
            return False
        if self._remaining < 0:
            return True
        if self._remaining == 0:
            return False
        self._remaining -= 1
        return True

    @types.coroutine
    def _client(self, index: int) -> Any:
        result = self.result
        errors = result.errors
        statuses = result.statuses
        latencies = result.latencies
        targets = itertools.cycle(self.targets[index % len(self.targets):] + self.targets[:index % len(self.targets)])
        keepalive = self.keepalive
        timeout = self.timeout
        connect = _kernel_connect if self.network is sockio.kernel else self.network.connect
        monotonic = threadlib.now
        record = latencies.record
        conn = None
        conn_target = None
        # Open loop (wrk2's -R): this connection's share of the rate, its
        # requests due at fixed times, staggered across connections.
        interval = self.connections / self.rate if self.rate else 0.0
        due = self._start + interval * index / self.connections
        try:
            while True:
                if interval:
                    now = monotonic()
                    if due >= self._deadline:
                        break
                    if due > now:
                        yield from threadlib.sleep(due - now)
                if not self._take():
                    break
                target = next(targets)
                if conn is not None and conn_target is not target and target.address != conn_target.address:
                    conn.close()
                    conn = None
                if conn is None:
                    try:
                        # a connect still pending at the end of the run is abandoned, not an error
                        with threadlib.timeout(min(timeout, max(0.001, self._deadline - monotonic()))):
                            stream = yield from connect(target.address, None)
                            if target.tls:  # wrap closes the TCP connection if the handshake fails
                                stream = yield from tls.wrap(stream, self.tls_context,
                                                             server_hostname=target.hostname, handshake_timeout=None)
                                result.handshakes += 1
                        conn = stream
                    except TimeoutError:
                        if monotonic() < self._deadline:
                            errors["connect timeout"] += 1
                        continue
                    except ssl.SSLError as exc:
                        errors[f"tls: {tls.describe_error(exc)}"] += 1
                        yield from threadlib.sleep(0.01)
                        continue
                    except OSError as exc:
                        errors[f"connect: {_kind(exc)}"] += 1
                        yield from threadlib.sleep(0.01)  # a refusing server is not hammered in a spin
                        continue
                    result.connections_opened += 1
                    conn_target = target
                response = _Response()
                feed = response.parser.feed_data
                # Open loop: the latency counts from when the request was
                # due, so time spent waiting behind a slow response counts.
                started = min(due, monotonic()) if interval else monotonic()
                due += interval
                try:
                    yield from conn.sendall(target.request if keepalive else target.request_close, timeout=timeout)
                    received = 0
                    while not response.complete:
                        data = yield from conn.recv(65536, timeout=timeout)
                        if not data:
                            raise _ConnectionClosed()
                        received += len(data)
                        feed(data)
                except TimeoutError:
                    errors["timeout"] += 1
                    conn.close()
                    conn = None
                    continue
                except _ConnectionClosed:
                    errors["closed before the response ended"] += 1
                    conn.close()
                    conn = None
                    continue
                except httptools.HttpParserError as exc:
                    errors[f"malformed response: {exc}"] += 1
                    conn.close()
                    conn = None
                    continue
                except OSError as exc:
                    errors[f"read: {_kind(exc)}"] += 1
                    conn.close()
                    conn = None
                    continue
                record(monotonic() - started)
                status = response.status
                statuses[status] += 1
                if status >= 400:
                    errors[f"HTTP {status}"] += 1
                result.requests += 1
                result.bytes += received
                if not keepalive or not response.keep_alive:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    @types.coroutine
    def _progress(self, start: float) -> Any:
        last_requests, last_time = 0, start
        while True:
            yield from threadlib.sleep(1.0)
            now = threadlib.now()
            r = self.result
            rate = (r.requests - last_requests) / max(1e-9, now - last_time)
            last_requests, last_time = r.requests, now
            sys.stdout.write(f"\r\x1b[K{now - start:5.1f}s  {r.requests:,} requests  {rate:,.0f} req/s  "
                             f"errors {sum(r.errors.values())}")
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name("loadgen"), description=summary(__doc__))
    parser.add_argument("urls", nargs="+", metavar="URL", help="http:// URLs, used in turn")
    parser.add_argument("-c", "--connections", type=int, default=10, help="concurrent connections (threads)")
    parser.add_argument("-d", "--duration", type=float, help="seconds to run (default 10 unless -n is given)")
    parser.add_argument("-n", "--requests", type=int, help="stop after this many requests in total")
    parser.add_argument("-R", "--rate", type=float, metavar="REQ_PER_S",
                        help="open loop: send this many requests per second in all, each on its schedule, and "
                             "count latencies from when each was due (as wrk2 does); default: closed loop")
    parser.add_argument("--no-keepalive", action="store_true", help="a new connection for every request")
    parser.add_argument("--timeout", type=positive_seconds, default=10.0, help="seconds per connect and per response")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--cacert", metavar="FILE", help="https: trust the CA certificates in FILE (PEM)")
    verify.add_argument("--insecure", action="store_true", help="https: do not verify the server's certificate")
    add_io_backend_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    io = io_backend_of(parser, args.io)
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.connections < 1:
        parser.error("--connections must be at least 1")
    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        parser.error(f"--rate {args.rate}: must be a positive number of requests per second")
    try:
        gen = LoadGen(args.urls, args.connections, args.duration, args.requests, keepalive=not args.no_keepalive,
                      timeout=args.timeout, progress=sys.stdout.isatty() and not args.json, cafile=args.cacert,
                      insecure=args.insecure, rate=args.rate)
    except ssl.SSLError as exc:
        parser.error(f"--cacert {args.cacert}: no usable CA certificate in it ({exc.reason or exc})")
    except (ValueError, OSError) as exc:
        if args.cacert is not None and isinstance(exc, FileNotFoundError):
            parser.error(f"--cacert {args.cacert}: {exc.strerror}")
        parser.error(str(exc))
    result = gen.run(io)
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print(result.report())
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
