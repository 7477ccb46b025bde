"""Command line of the web server: options, logging, worker processes.

Runs ``WebServer`` under ``threadlib.process.multicore`` so that ``--workers N``
forks N processes sharing the port and SIGTERM/SIGINT stop accepting and
finish the responses in flight.  With ``--stack user --workers N`` the
parent creates one multi-queue TUN device with N queues before forking,
worker i runs its own user-level stack on queue i (the kernel steers each
connection to one queue), and the device goes when the parent and its
workers have closed their queues. ``--tls-cert``/``--tls-key`` serve HTTPS
on ``--port`` (or, with ``--tls-port``, HTTP on ``--port`` and HTTPS on
the other), on either stack and in every worker. ``--wsgi MODULE:APP`` serves
that WSGI application instead of files (imported before forking; one that
does not import is a one-line error); ``--asgi MODULE:APP`` serves an ASGI 3
application on ``threadlib.loop`` (``asgi.py``), WebSockets included
(``--ws-max-message``). ``--io`` names how file bodies leave the disk
(``sendfile``, ``aio``) and the kernel interface for IO (``epoll``,
``uring``: io_uring where the kernel allows it, else epoll saying why);
it may be given twice (``--io aio --io uring``). It must never start serving with a bad
option: every mistake is reported before the port is opened.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from threadlib.io import sockio
from threadlib.process import multicore

from .. import IO_BACKENDS, cannot_start, io_backend_of, positive_count, positive_seconds, program_name, tls_server_context
from .http import Limits
from .server import IO_MODES, SAMPLE_SITE, WebServer, user_network
from .wsgi import WSGI_MAX_BODY

log = logging.getLogger("apps.webserver")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("webserver"),
        description="A static-file HTTP/1.1 server on threadlib: one user-level thread per connection.",
    )
    parser.add_argument("--root", default=SAMPLE_SITE, help="directory to serve (default: the built-in sample site)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; with --stack user, every "
                                       "address of the user-level stack)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--io", choices=IO_MODES + IO_BACKENDS, action="append", default=[],
                        help="how file bodies leave the disk: sendfile(2) or Linux AIO reads (threadlib.io.fileio); "
                             "and/or the kernel interface for IO: epoll, or io_uring where the kernel allows it "
                             "(default: $THREADLIB_IO or epoll); may be given twice, e.g. --io aio --io uring")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--stack", choices=("kernel", "user"), default="kernel",
                        help="TCP/IP stack: the kernel's, or threadlib's user-level stack")
    parser.add_argument("--tun", metavar="NAME", help="with --stack user: the TUN device to create "
                                                      "(default $TL_TUN or tl0)")
    parser.add_argument("--netns", metavar="NAME", help="with --stack user: create the TUN device in this "
                                                        "network namespace (default $TL_NETNS or none)")
    parser.add_argument("--access-log", metavar="FILE", help="append one line per request (common log format); '-' is stdout")
    parser.add_argument("--header-timeout", type=positive_seconds, default=10.0, help="seconds a client has to send a whole request head")
    parser.add_argument("--backlog", type=positive_count, default=1024,
                        help="connections the kernel (or the user-level stack) holds for accept, and "
                             "on the user-level stack its half-open connections too (default 1024)")
    parser.add_argument("--keepalive-timeout", type=positive_seconds, default=15.0, help="seconds an idle keep-alive connection stays open")
    parser.add_argument("--send-timeout", type=positive_seconds, default=30.0, help="seconds a response may wait for the client to read")
    parser.add_argument("--drain-timeout", type=positive_seconds, default=10.0, help="seconds responses in flight get after SIGTERM")
    parser.add_argument("--max-header-bytes", type=int, default=16384, help="request header bytes allowed (431 beyond)")
    parser.add_argument("--max-headers", type=int, default=100, help="request header fields allowed (431 beyond)")
    parser.add_argument("--max-request-line", type=int, default=8192, help="request target bytes allowed (414 beyond)")
    parser.add_argument("--cache-max-body", type=int, default=65536,
                        help="keep bodies up to this size in memory (0: every body is read from disk)")
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve HTTPS (with --tls-key)")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-port", type=int, metavar="P",
                        help="serve HTTPS on P and plain HTTP on --port (default: HTTPS on --port)")
    parser.add_argument("--handshake-timeout", type=positive_seconds, default=10.0,
                        help="seconds a client has to finish the TLS handshake")
    parser.add_argument("--wsgi", metavar="MODULE:APP", help="serve this WSGI application instead of files "
                                                             "(APP defaults to 'app'; one green thread per connection)")
    parser.add_argument("--max-body", type=int, metavar="BYTES",
                        help="request body bytes allowed (413 beyond; default 64 KiB, 1 GiB with --wsgi)")
    parser.add_argument("--asgi", metavar="MODULE:APP",
                        help="serve this ASGI 3 application (HTTP and lifespan) instead of static files")
    parser.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                        help="with --asgi: run the app's lifespan startup/shutdown (auto: if it supports it)")
    parser.add_argument("--ws-max-message", type=int, default=16 * 1024 * 1024, metavar="BYTES",
                        help="with --asgi: the largest WebSocket message a client may send (close code 1009 beyond)")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.add_argument("--record", metavar="FILE",
                        help="record the run to FILE for `python -m threadlib.replay check FILE` "
                             "(static files on either stack, one worker)")
    args = parser.parse_args(argv)
    modes = [v for v in args.io if v in IO_MODES]
    backends = [v for v in args.io if v in IO_BACKENDS]
    if len(set(modes)) > 1 or len(set(backends)) > 1:
        parser.error(f"--io {' --io '.join(args.io)}: give at most one of {', '.join(IO_MODES)} "
                     f"and one of {', '.join(IO_BACKENDS)}")
    args.io = modes[0] if modes else "sendfile"
    args.io_backend = backends[0] if backends else None
    args.parser = parser
    if args.record is not None and args.io_backend == "uring":
        parser.error("--record records the epoll worker: leave out --io uring")
    if args.record is not None and (args.workers > 1 or args.io != "sendfile"
                                    or args.wsgi or args.asgi or args.tls_cert):
        parser.error("--record covers the static file server (either stack) with --io sendfile, "
                     "one worker, no TLS, WSGI or ASGI")
    args.wsgi_app = args.asgi_app = None
    if args.wsgi is not None and args.asgi is not None:
        parser.error("--wsgi and --asgi: serve one application or the other")
    if args.wsgi is not None:
        from .wsgi import AppNotFound, load_app

        try:
            args.wsgi_app = load_app(args.wsgi)
        except AppNotFound as exc:
            print(f"{parser.prog}: error: --wsgi {exc}", file=sys.stderr)
            sys.exit(2)
    if args.max_body is not None and args.max_body < 0:
        parser.error("--max-body must not be negative")
    if args.ws_max_message < 1:
        parser.error("--ws-max-message must be at least 1")
    if args.asgi is not None:
        if args.io != "sendfile" or args.root != SAMPLE_SITE or args.tls_port is not None or args.access_log:
            parser.error("--root, --io, --tls-port and --access-log belong to the static file server: "
                         "they do not apply with --asgi")
        from .asgi import load_app as load_asgi_app

        try:
            args.asgi_app = load_asgi_app(args.asgi)
        except ValueError as exc:
            # One line and status 2, before any port is opened.
            print(f"{parser.prog}: error: --asgi {args.asgi}: {exc}", file=sys.stderr)
            sys.exit(2)
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root!r} is not a directory")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.stack != "user" and (args.tun is not None or args.netns is not None):
        parser.error("--tun and --netns only apply to --stack user")
    if args.stack == "user" and args.workers > 256:
        parser.error("--stack user --workers is at most 256 (one TUN queue per worker)")
    if args.netns is not None and not os.path.exists(os.path.join("/var/run/netns", args.netns)):
        parser.error(f"--netns {args.netns!r}: no such network namespace")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_port is not None:
        if args.tls_cert is None:
            parser.error("--tls-port needs --tls-cert and --tls-key")
        if not 0 <= args.tls_port <= 65535:
            parser.error(f"--tls-port {args.tls_port} is not a TCP port")
        if args.tls_port == args.port and args.port != 0:
            parser.error(f"--tls-port {args.tls_port} is --port too: give HTTP and HTTPS different ports")
    args.tls = None
    if args.tls_cert is not None:
        try:
            args.tls = tls_server_context(args.tls_cert, args.tls_key, alpn=["http/1.1"])
        except ValueError as exc:
            parser.error(str(exc))
    if args.host is None:
        args.host = "127.0.0.1" if args.stack == "kernel" else "0.0.0.0"
    if args.io == "aio":
        try:
            from threadlib.io import fileio  # noqa: F401
        except ImportError as exc:
            parser.error(f"--io aio needs threadlib.io.fileio, which does not import: {exc}")
    return args


def _turned_away(network: Any) -> str:
    """What the user-level stack's listeners refused (their SYN backlog or
    accept queue was full: the client's SYN is dropped and it retries),
    for the worker's last log line; nothing on the kernel's stack, whose
    counters are the kernel's (``nstat``)."""
    stats = getattr(getattr(network, "stack", None), "stats", None)
    if stats is None or not (stats.syn_queue_overflow or stats.accept_queue_overflow):
        return ""
    return (f"; the user-level stack dropped {stats.syn_queue_overflow} SYNs with its SYN backlog full and "
            f"{stats.accept_queue_overflow} with its accept queue full")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    io_backend = args.io_backend = io_backend_of(args.parser, args.io_backend)
    worker, queues, startup_failed = _program(args)
    try:
        status = multicore.serve(worker, args.workers, record=args.record,
                                 entry="apps.webserver.__main__:replayed", entry_args=argv, io=io_backend)
        return 3 if startup_failed else status
    finally:
        if queues is not None:
            queues.close()  # the device goes once the workers' copies are closed too


def replayed(*argv: str) -> Any:
    """The main thread of a run recorded with ``--record``, built from the
    same arguments, for ``python -m threadlib.replay check`` (no access log
    is written while replaying)."""
    args = parse_args(list(argv))
    args.access_log = None
    worker, _, _ = _program(args)
    return multicore.worker_thread(worker, 0)


def _program(args: argparse.Namespace) -> tuple[Any, Any, list[int]]:
    """The worker main for ``args``, the multi-queue handle to close
    after (or None), and the list of workers whose ASGI startup failed."""
    queues = None  # the multi-queue handle, for --stack user --workers N
    if args.stack == "user":
        overrides = {k: v for k, v in (("tun", args.tun), ("netns", args.netns)) if v is not None}
        if args.workers > 1:
            queues = network = user_network(queues=args.workers, **overrides)
        else:
            network = user_network(**overrides)
    else:
        network = sockio.kernel
    limits = Limits(max_request_line=args.max_request_line, max_header_bytes=args.max_header_bytes,
                    max_headers=args.max_headers)
    if args.max_body is not None:
        limits.max_body = args.max_body
    elif args.wsgi_app is not None:
        limits.max_body = WSGI_MAX_BODY
    root = os.path.abspath(args.root)

    def worker(index: int, shutdown: Any) -> Any:
        # In worker i (a forked child): a stack of its own on queue i.
        net = queues.for_queue(index) if queues is not None else network
        if args.asgi_app is not None:
            return (yield from serve_asgi(index, shutdown, net))
        access_log = None
        if args.access_log == "-":
            access_log = sys.stdout
        elif args.access_log:
            access_log = open(args.access_log, "a", buffering=1 << 16)
        server = WebServer(
            root, io=args.io, network=net, limits=limits, header_timeout=args.header_timeout,
            keepalive_timeout=args.keepalive_timeout, send_timeout=args.send_timeout,
            drain_timeout=args.drain_timeout, cache_max_body=args.cache_max_body, access_log=access_log,
            tls_context=args.tls, handshake_timeout=args.handshake_timeout,
            wsgi=args.wsgi_app, wsgi_multiprocess=args.workers > 1,
        )

        def ready(address: Any) -> None:
            if index == 0:
                hosts = [address[0]]
                if args.stack == "user" and address[0] in ("", "0.0.0.0", "::"):
                    hosts = [a.split("/")[0] for a in getattr(network, "addresses", [])] or hosts
                if args.tls is None:
                    endpoints = [("http", address[1])]
                elif args.tls_port is None:
                    endpoints = [("https", address[1])]
                else:
                    endpoints = [("http", address[1]), ("https", server.tls_address[1])]
                urls = " ".join(f"{scheme}://{h if ':' not in h else f'[{h}]'}:{port}/"
                                for scheme, port in endpoints for h in hosts)
                what = f"WSGI app {args.wsgi}" if args.wsgi_app is not None else root
                print(f"serving {what} on {urls} (io={args.io}, {args.io_backend or 'epoll'}, stack={args.stack}, "
                      f"workers={args.workers})",
                      flush=True)

        tls_address = (args.host, args.tls_port) if args.tls_port is not None else None
        try:
            yield from server.serve((args.host, args.port), shutdown, reuse_port=args.workers > 1, ready=ready,
                                    tls_address=tls_address, backlog=args.backlog)
        except OSError as exc:
            if server.address is not None:  # failed while serving: a fault, not a start-up error
                raise
            raise cannot_start("webserver", exc) from None
        finally:
            if access_log is not None and access_log is not sys.stdout:
                access_log.close()
        log.info("worker %d stopped after %d requests on %d connections%s%s", index, server.requests,
                 server.connections,
                 f", {server.handshake_failures} failed TLS handshakes" if server.handshake_failures else "",
                 _turned_away(net))

    startup_failed: list[int] = []  # workers whose app failed its lifespan startup

    def serve_asgi(index: int, shutdown: Any, net: Any) -> Any:
        from .asgi import AsgiServer, LifespanFailed

        server = AsgiServer(
            args.asgi_app, app_name=args.asgi, network=net, limits=limits, header_timeout=args.header_timeout,
            keepalive_timeout=args.keepalive_timeout, send_timeout=args.send_timeout,
            drain_timeout=args.drain_timeout, lifespan=args.lifespan, tls_context=args.tls,
            handshake_timeout=args.handshake_timeout, websocket_max_message=args.ws_max_message,
        )

        def ready(address: Any) -> None:
            if index == 0:
                scheme = "https" if args.tls is not None else "http"
                print(f"serving ASGI app {args.asgi} on {scheme}://{address[0]}:{address[1]}/ "
                      f"(stack={args.stack}, workers={args.workers})", flush=True)

        try:
            yield from server.serve((args.host, args.port), shutdown, reuse_port=args.workers > 1, ready=ready,
                                    backlog=args.backlog)
        except LifespanFailed as exc:
            log.error("%s", exc)
            startup_failed.append(index)
            return 3
        log.info("worker %d stopped after %d requests on %d connections (%d app failures)", index,
                 server.requests, server.connections, server.app_failures)

    return worker, queues, startup_failed


if __name__ == "__main__":
    sys.exit(main())
