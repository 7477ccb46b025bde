"""A TCP forwarder: every connection to --listen is proxied to --target.

    python -m apps.proxy --listen HOST:PORT --target HOST:PORT
                         [--connect-timeout 5] [--fallback] [--workers N] [--grace 30]
                         [--tls-cert FILE --tls-key FILE] [--io epoll|uring]

One thread per connection connects to the target (giving up after
--connect-timeout seconds) and runs ``threadlib.io.splice.proxy``: both
directions at once, zero-copy with splice(2) on Linux (--fallback forces the
copy loop with one buffer per direction), half-close passed on (end of file
from one side becomes shutdown(SHUT_WR) on the other). When a connection
ends, one log line gives its byte counts each way, its duration, the path
used and the error if any; a reset on one side is passed on to the other
(abortive close).

With ``--tls-cert``/``--tls-key`` the proxy terminates TLS: clients speak
TLS to --listen (``threadlib.io.tls``; the handshake runs in the
connection's thread, bounded by --handshake-timeout, before the target is
dialled), the target gets plaintext, and the bytes move through the copy
loop (there is no zero-copy path through TLS). A client's close without a
TLS close_notify is taken as its end of data, as a half-close, like a FIN
(the protocol inside frames its own messages or does not care). A failed
handshake is one log line naming the client and the reason.

SIGTERM or SIGINT stops accepting at once and lets the transfers in flight
finish; those still running after --grace seconds are cut. ``--workers N``
runs N processes sharing the port (SO_REUSEPORT). The first line on stdout
per worker is ``proxy listening on HOST:PORT -> HOST:PORT``. ``--io uring``
serves through io_uring where the kernel allows it (else epoll, saying why).
"""

from __future__ import annotations

import argparse
import logging
import socket
import ssl
import struct
import sys
from typing import Any, Callable

import threadlib
from threadlib.io import sockio, tls
from threadlib.io import splice as tsplice
from threadlib.net import Network
from threadlib.process import multicore

from . import add_io_backend_option, cannot_start, io_backend_of, positive_seconds, program_name, tls_server_context

log = logging.getLogger("apps.proxy")


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` as ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port_n = int(port)
    if not 0 <= port_n <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return (host or default_host, port_n)


def _fmt(address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


class ProxyServer:
    """The forwarder's state in one worker process: the connections in
    flight, counters, and the shutdown that waits for them."""

    def __init__(self, target: tuple[str, int], connect_timeout: float | None = 5.0, fallback: bool = False,
                 chunk_size: int | None = None, network: Network = sockio.kernel) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.fallback = fallback
        self.chunk_size = chunk_size
        self.network = network
        self.active: dict[int, threadlib.Thread] = {}  # connection id -> its thread
        self.accepted = 0
        self.finished = 0
        self.failed_connects = 0
        self.failed_handshakes = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._idle = threadlib.Event()
        self._idle.set()
        self._ids = 0

    # -- accepting ------------------------------------------------------------
    def accept_loop(self, listener: Any) -> Any:
        while True:
            conn, peer = yield from listener.accept()
            self._ids += 1
            self.accepted += 1
            self._idle.clear()
            cid = self._ids
            t = yield from threadlib.spawn(self.handle(conn, peer, cid), name=f"proxy-conn-{cid}")
            if not t.done:  # (the new thread runs first and may be over already)
                self.active[cid] = t

    # -- one connection -------------------------------------------------------
    def handle(self, client: Any, peer: Any, cid: int) -> Any:
        started = threadlib.now()
        upstream = None
        try:
            if isinstance(client, tls.TlsStream):
                try:
                    yield from client.do_handshake()
                except (OSError, TimeoutError) as exc:
                    self.failed_handshakes += 1
                    log.warning("conn %d from %s: TLS handshake failed: %s", cid, _fmt(peer), tls.describe_error(exc))
                    return
            try:
                upstream = yield from self.network.connect(self.target, timeout=self.connect_timeout)
            except OSError as exc:  # refused, unreachable, TimeoutError
                self.failed_connects += 1
                why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
                log.warning("conn %d from %s: connect to %s failed: %s", cid, _fmt(peer), _fmt(self.target), why)
                return
            result = yield from tsplice.proxy(client, upstream, self.chunk_size, fallback=self.fallback)
            up, down = result.a_to_b.bytes, result.b_to_a.bytes
            self.bytes_up += up
            self.bytes_down += down
            error = result.error
            if error is not None:
                # Pass a reset on: close both abortively so each peer sees RST.
                _abort(client)
                _abort(upstream)
            log.info(
                "conn %d %s -> %s closed: up %d B, down %d B, %.3f s, %s%s",
                cid, _fmt(peer), _fmt(self.target), up, down, threadlib.now() - started,
                "splice" if result.zero_copy else "copy",
                f", error: {type(error).__name__}: {error}" if error is not None else "",
            )
        finally:
            client.close()
            if upstream is not None:
                upstream.close()
            self.finished += 1
            self.active.pop(cid, None)
            if not self.active:
                self._idle.set()

    # -- stopping -------------------------------------------------------------
    def drain(self, grace: float | None) -> Any:
        """Wait until no connection is in flight; after ``grace`` seconds
        (None: forever) cancel those left. Returns how many were cut."""
        if self.active:
            log.info("draining %d connection(s) in flight", len(self.active))
        try:
            with threadlib.timeout(grace):
                yield from self._idle.wait()
            return 0
        except TimeoutError:
            left = list(self.active.values())
            log.warning("grace period over: cutting %d connection(s)", len(left))
            for t in left:
                yield from t.cancel()
            return len(left)


def _abort(conn: Any) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass


def serve(listen: tuple[str, int], target: tuple[str, int], connect_timeout: float | None = 5.0,
          fallback: bool = False, reuse_port: bool = False, grace: float | None = 30.0,
          chunk_size: int | None = None, network: Network = sockio.kernel,
          ready: Callable[[Any], None] | None = None, tls_context: ssl.SSLContext | None = None,
          handshake_timeout: float = tls.DEFAULT_HANDSHAKE_TIMEOUT) -> Callable[[int, threadlib.Event], Any]:
    """A worker main for ``threadlib.process.multicore``: proxy until ``shutdown``
    is set, then stop accepting and drain. With ``tls_context`` clients
    speak TLS to ``listen`` and the target gets plaintext."""

    def main(index: int, shutdown: threadlib.Event) -> Any:
        server = ProxyServer(target, connect_timeout, fallback, chunk_size, network)
        try:
            listener: Any = yield from network.listen(listen, reuse_port=reuse_port)
        except OSError as exc:
            raise cannot_start("proxy", exc) from None
        if tls_context is not None:
            listener = tls.TlsListener(listener, tls_context, handshake_timeout=handshake_timeout, ragged_eof=True)
        path = "copy" if fallback or not tsplice.AVAILABLE or tls_context is not None else "splice"
        path += ", TLS terminated here" if tls_context is not None else ""
        log.info("worker %d: proxy on %s -> %s (%s)", index, _fmt(listener.address), _fmt(target), path)
        if ready is not None:
            ready(listener.address)
        acceptor = yield from threadlib.spawn(server.accept_loop(listener), name="proxy-accept")
        try:
            yield from shutdown.wait()
        finally:
            yield from acceptor.cancel()
            listener.close()
        cut = yield from server.drain(grace)
        log.info(
            "worker %d: stopped; %d connection(s), %d B up, %d B down, %d connect failure(s)%s%s",
            index, server.accepted, server.bytes_up, server.bytes_down, server.failed_connects,
            f", {server.failed_handshakes} failed TLS handshake(s)" if server.failed_handshakes else "",
            f", {cut} cut at shutdown" if cut else "",
        )
        return server

    return main


def _parse(argv: list[str]) -> argparse.Namespace:
    doc = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog=program_name("proxy"), description=doc)
    parser.add_argument("--listen", type=parse_address, required=True, help="HOST:PORT to accept on (port 0: any)")
    parser.add_argument("--target", type=parse_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--connect-timeout", type=positive_seconds, default=5.0, help="seconds to connect to the target")
    parser.add_argument("--fallback", action="store_true", help="copy through user space instead of splice(2)")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds to let transfers finish after SIGTERM (negative: no limit)")
    parser.add_argument("--chunk-size", type=int, default=None, help="bytes per splice or copy (default: pipe size)")
    parser.add_argument("--tls-cert", metavar="FILE", help="terminate TLS on --listen with this PEM certificate "
                                                           "chain (with --tls-key); the target gets plaintext")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument("--handshake-timeout", type=positive_seconds, default=10.0,
                        help="seconds a client has to finish the TLS handshake")
    parser.add_argument("--quiet", action="store_true", help="no per-connection log lines")
    parser.add_argument("--record", metavar="FILE",
                        help="record the run to FILE for `python -m threadlib.replay check FILE` (one worker, "
                             "no TLS; copies through user space, as --fallback, so that every byte is seen)")
    add_io_backend_option(parser)
    args = parser.parse_args(argv)
    args.parser = parser
    if args.record is not None and args.io == "uring":
        parser.error("--record records the epoll worker: leave out --io uring")
    if args.record is not None and (args.workers > 1 or args.tls_cert is not None):
        parser.error("--record records one worker without TLS: leave out --workers and --tls-cert")
    if args.record is not None:
        args.fallback = True
    if args.workers > 1 and args.listen[1] == 0:
        parser.error("--workers N needs a fixed --listen port (port 0 would give each worker its own)")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    args.context = None
    if args.tls_cert is not None:
        try:
            args.context = tls_server_context(args.tls_cert, args.tls_key)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def _body(args: argparse.Namespace) -> Callable[[int, threadlib.Event], Any]:
    def ready(address: Any) -> None:
        # One write per line: with --workers N, N processes share stdout.
        sys.stdout.write(f"proxy listening on {_fmt(address)} -> {_fmt(args.target)}\n")
        sys.stdout.flush()

    body = serve(
        args.listen, args.target, connect_timeout=args.connect_timeout, fallback=args.fallback,
        reuse_port=args.workers > 1, grace=None if args.grace < 0 else args.grace,
        chunk_size=args.chunk_size, ready=ready, tls_context=args.context, handshake_timeout=args.handshake_timeout,
    )
    return body


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quiet:
        log.setLevel(logging.WARNING)
    io = io_backend_of(args.parser, args.io)
    return multicore.serve(_body(args), args.workers, record=args.record, entry="apps.proxy:replayed",
                           entry_args=argv, io=io)


def replayed(*argv: str) -> Any:
    """The main thread of a run recorded with ``--record``, for
    ``python -m threadlib.replay check``."""
    return multicore.worker_thread(_body(_parse(list(argv))), 0)


if __name__ == "__main__":
    sys.exit(main())
