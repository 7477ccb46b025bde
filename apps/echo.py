"""An echo server in threaded style: one thread per connection.

    python -m apps.echo --port 7000 [--host 0.0.0.0] [--workers N] [--io epoll|uring]

The main job before the web server existed, and the smallest complete
example of the runtime: listen, accept, spawn a thread that loops
recv/sendall. SIGTERM or SIGINT stops accepting and lets the connections
in flight finish (``--workers N`` runs N processes on one port; ``--io
uring`` serves through io_uring where the kernel allows it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import threadlib
from threadlib.io import sockio
from threadlib.net import Network
from threadlib.process import multicore

from . import add_io_backend_option, cannot_start, io_backend_of, program_name, summary

log = logging.getLogger("apps.echo")


def echo_connection(conn: sockio.Stream) -> Any:
    with conn:
        while True:
            data = yield from conn.recv(65536)
            if not data:
                return
            yield from conn.sendall(data)


def serve(host: str, port: int, network: Network = sockio.kernel, reuse_port: bool = False, ready: Any = None):
    """Thread body: accept until cancelled."""

    def main(index: int, shutdown: threadlib.Event) -> Any:
        try:
            listener = yield from network.listen((host, port), reuse_port=reuse_port)
        except OSError as exc:
            raise cannot_start("echo", exc) from None
        log.info("worker %d: echo on %s", index, listener.address)
        if ready is not None:
            ready(listener.address)
        acceptor = yield from threadlib.spawn(accept_loop(listener))
        yield from shutdown.wait()
        yield from acceptor.cancel()
        listener.close()

    return main


def accept_loop(listener: sockio.Listener) -> Any:
    while True:
        conn, _ = yield from listener.accept()
        yield from threadlib.spawn(echo_connection(conn))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program_name("echo"), description=summary(__doc__))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--record", metavar="FILE",
                        help="record the run to FILE for `python -m threadlib.replay check FILE` (one worker)")
    add_io_backend_option(parser)
    args = parser.parse_args(argv)
    if args.record is not None and args.workers > 1:
        parser.error("--record records one worker: leave out --workers")
    if args.record is not None and args.io == "uring":
        parser.error("--record records the epoll worker: leave out --io uring")
    args.parser = parser
    return args


def _body(args: argparse.Namespace) -> Any:
    def ready(address: Any) -> None:
        print(f"echo server listening on {address[0]}:{address[1]}", flush=True)

    return serve(args.host, args.port, reuse_port=args.workers > 1, ready=ready)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    io = io_backend_of(args.parser, args.io)
    return multicore.serve(_body(args), args.workers, record=args.record,
                           entry="apps.echo:replayed", entry_args=argv, io=io)


def replayed(*argv: str) -> Any:
    """The main thread of a run recorded with ``--record``, for
    ``python -m threadlib.replay check``."""
    return multicore.worker_thread(_body(_parse(list(argv))), 0)


if __name__ == "__main__":
    sys.exit(main())
