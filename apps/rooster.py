"""A handler-style server framework in the spirit of Rooster (seeds/004):
the programmer writes only what to do with the bytes that arrive.

    from apps.rooster import serve
    def echo(client, data): client.write(data)
    serve(echo, ("127.0.0.1", 7000))

``handler(client, data)`` runs for every chunk a client sends. It may be a
plain function or a generator function (to wait on other threadlib calls);
``client.write`` queues bytes that are sent once the handler returns,
``client.close()`` ends the connection after that. Under the hood each
connection is one threadlib thread; the framework is twenty lines of it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import threadlib
from threadlib.io import sockio
from threadlib.net import Network


class Client:
    __slots__ = ("conn", "address", "_out", "_closing")

    def __init__(self, conn: sockio.Stream, address: Any) -> None:
        self.conn = conn
        self.address = address
        self._out: list[bytes] = []
        self._closing = False

    def write(self, data: bytes) -> None:
        self._out.append(data)

    def close(self) -> None:
        self._closing = True


def _client_thread(conn: sockio.Stream, address: Any, handler: Callable[..., Any]) -> Any:
    client = Client(conn, address)
    is_generator = inspect.isgeneratorfunction(handler)
    with conn:
        while not client._closing:
            data = yield from conn.recv(65536)
            if not data:
                return
            if is_generator:
                yield from handler(client, data)
            else:
                handler(client, data)
            if client._out:
                out = client._out
                client._out = []
                yield from conn.sendall(out[0] if len(out) == 1 else b"".join(out))


def server(handler: Callable[..., Any], address: tuple[str, int], network: Network = sockio.kernel, ready: Any = None) -> Any:
    """The accept loop as a thread body (to spawn next to other threads)."""
    listener = yield from network.listen(address)
    if ready is not None:
        ready(listener.address)
    with listener:
        while True:
            conn, peer = yield from listener.accept()
            yield from threadlib.spawn(_client_thread(conn, peer, handler))


def serve(handler: Callable[..., Any], address: tuple[str, int], network: Network = sockio.kernel) -> None:
    """Run a server forever (until Ctrl-C) calling ``handler(client, data)``."""
    try:
        threadlib.run(server(handler, address, network))
    except KeyboardInterrupt:
        pass
