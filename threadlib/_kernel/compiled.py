"""Which implementation of the hot path runs: the compiled one
(``_speedups.c``, built at install when a C compiler is present) or the
pure Python it must match. ``THREADLIB_PURE=1`` in the environment at
import chooses pure Python. It only chooses; it never does IO itself.

The socket fast paths are chosen here: ``sock_recv(sock, n)``,
``sock_recv_into(sock, buffer, nbytes)`` and ``sock_send(sock, data)``
behave exactly as ``socket.socket``'s own methods on a non-blocking
socket (they are those methods, unbound, in pure Python), so sockio calls
them the same way under both.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable


def _load() -> Any:
    if os.environ.get("THREADLIB_PURE", "") not in ("", "0"):
        return None
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _speedups


speedups: Any = _load()
COMPILED: bool = speedups is not None

sock_recv: Callable[[socket.socket, int], bytes]
sock_recv_into: Callable[[socket.socket, Any, int], int]
sock_send: Callable[[socket.socket, Any], int]
if speedups is not None:
    sock_recv, sock_recv_into, sock_send = speedups.sock_recv, speedups.sock_recv_into, speedups.sock_send
else:
    sock_recv, sock_recv_into, sock_send = socket.socket.recv, socket.socket.recv_into, socket.socket.send
