"""A small line server for the record/replay tests: several connections
served at once, shared state whose order depends on the interleaving,
receive timeouts that fire, work in the blocking pool, and the clock.
``variant="changed"`` answers the fourth message differently: the bug fix
a replay must notice exactly there."""

from __future__ import annotations

import zlib
from typing import Any

import threadlib
from threadlib.io import sockio, tcpsockio  # noqa: F401 (loaded before a recording starts, as apps do)


def serve(port_file: str, variant: str = "same", conns: str = "2") -> Any:
    listener = yield from sockio.listen(("127.0.0.1", 0))
    with open(port_file + ".tmp", "w") as f:
        f.write(str(listener.address[1]))
    import os

    os.replace(port_file + ".tmp", port_file)
    order: list[str] = []
    timeouts = [0]
    handlers = []
    for index in range(int(conns)):
        conn, _ = yield from listener.accept()
        handlers.append((yield from threadlib.spawn(handle, conn, index, variant, order, timeouts)))
    for t in handlers:
        yield from t.join()
    listener.close()
    return f"{' '.join(order)} | timeouts {timeouts[0]} | took {threadlib.now() >= 0}"


def handle(conn: sockio.Stream, index: int, variant: str, order: list[str], timeouts: list[int]) -> Any:
    buffered = b""
    with conn:
        while True:
            try:
                data = yield from conn.recv(4096, timeout=0.05)
            except TimeoutError:
                timeouts[0] += 1
                continue
            if not data:
                return
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                order.append(f"{index}:{line.decode().replace(' ', '_')}")
                crc = yield from threadlib.blocking(zlib.crc32, line)
                reply = b"reply %s crc %08x\n" % (line, crc)
                if variant == "changed" and line.endswith(b" 3"):
                    reply = b"fixed " + reply
                yield from conn.sendall(reply)


def serve_user_stack(netns: str, variant: str = "same") -> Any:
    """The same line service on the user-level TCP/IP stack: a TUN device in
    ``netns`` (a ReplayDevice when replayed), one connection on port 7007."""
    net = tcpsockio.open_network(tun="tlrp0", netns=netns)
    try:
        listener = yield from net.listen(("", 7007))
        conn, _ = yield from listener.accept(timeout=30)
        order: list[str] = []
        timeouts = [0]
        yield from handle(conn, 0, variant, order, timeouts)
        listener.close()
        return f"{' '.join(order)} | took {threadlib.now() >= 0}"
    finally:
        net.close()
