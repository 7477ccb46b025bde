"""Fuzz target: the replay-log reader and the player (threadlib.replay),
fed damaged and forged logs of a small line server.

Input: a mode byte, then the log. Mode bit 0 set: the rest is a whole
log file, header included; clear: the rest is the records after a valid
header naming the standard workers' system calls (what mutating a real
recording mostly touches). The log is replayed, from memory, against
``program``: a server that accepts one connection, reads lines with a
receive timeout, computes in the blocking pool, reads the clock, sleeps
and answers each line.

Invariants: the replay returns the program's result, or raises
``Divergence`` or ``LogError`` (the documented failures), or the
exception the log made the program raise (OSError and its kin, EOFError,
TimeoutError, a ``ThreadCancelled``, or what a recorded wake-up threw,
KeyboardInterrupt included); ``describe`` of the same bytes reads them
or raises ``LogError``; nothing is unpickled beyond plain data and
exceptions (an untrusted log must not run code); the process's socket
layer is sockio's own again afterwards.

Corpus: ``recorded-*`` files are real recordings of ``program`` talking
to a client over loopback (``python -m fuzz.replay_log`` writes new ones);
they must replay cleanly.

This module must never use a socket or the network while fuzzing.
"""

from __future__ import annotations

import io
import json
import struct
import traceback
import zlib
from typing import Any

import threadlib
from threadlib.io import sockio
from threadlib.replay import Divergence, LogError, describe, replay
from threadlib.replay import log as L

INSTRUMENT = ["threadlib.replay"]

WHOLE_FILE = 1
_CLASSES = ["threadlib.syscalls:Blocking", "threadlib.syscalls:Sleep", "threadlib.syscalls:WaitRead",
            "threadlib.syscalls:WaitWrite"]
_META = json.dumps({"args": [], "classes": _CLASSES, "entry": None, "python": "3"}, sort_keys=True).encode()
HEADER = L.MAGIC + struct.pack("<HI", L.VERSION, len(_META)) + _META


def program(ready: Any = None) -> Any:
    """The server the logs are of: one connection, lines in, answers out;
    ``ready(port)`` is told the port it listens on."""
    listener = yield from sockio.listen(("127.0.0.1", 0))
    port = listener.address[1]
    if ready is not None:
        ready(port)
    with listener:
        conn, _ = yield from listener.accept()
    answered = 0
    with conn:
        pending = b""
        while True:
            try:
                data = yield from conn.recv(1024, timeout=0.5)
            except TimeoutError:
                continue
            if not data:
                return f"answered {answered} at {threadlib.now() > 0}"
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                crc = yield from threadlib.blocking(zlib.crc32, line)
                yield from threadlib.sleep(0.001)
                yield from conn.sendall(b"%08x %s\n" % (crc, line))
                answered += 1


def _socket_layer() -> tuple[Any, ...]:
    return (sockio._recv, sockio._recv_into, sockio._send, sockio._new_socket, sockio._sendfile)


def _raised_by_replay_code(exc: BaseException) -> bool:
    # An exception whose innermost frame is in threadlib/replay and that
    # the log did not provide is the player's own failure.
    if getattr(exc, "threadlib_replayed", False) or isinstance(exc, (Divergence, LogError)):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "/threadlib/replay/" in tb.tb_frame.f_code.co_filename


def TestOneInput(data: bytes) -> None:
    """Replay ``data`` (see the module docstring) and check the invariants."""
    if not data:
        return
    log = data[1:] if data[0] & WHOLE_FILE else HEADER + data[1:]
    layer = _socket_layer()
    try:
        replay(io.BytesIO(log), program())
    except (Divergence, LogError) as exc:
        cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        assert cause is None or not _raised_by_replay_code(cause), (
            "the player failed: " + "".join(traceback.format_exception(cause)))
    except BaseException as exc:  # the program's own end, as the log's end record says
        assert not _raised_by_replay_code(exc), "the player failed: " + "".join(traceback.format_exception(exc))
    assert _socket_layer() == layer, "the socket layer was not restored"
    try:
        describe(io.BytesIO(log))
    except LogError:
        pass


def record_seed(lines: list[bytes], pause_before: int = -1) -> bytes:
    """A real recording of ``program`` (over loopback, with a client in an
    OS thread sending ``lines``): a corpus file's content, mode byte first."""
    import os
    import socket
    import tempfile
    import threading
    import time

    port: list[int] = []

    def client() -> None:
        while not port:
            time.sleep(0.001)
        with socket.create_connection(("127.0.0.1", port[0])) as s:
            for i, line in enumerate(lines):
                if i == pause_before:
                    time.sleep(0.6)  # one receive timeout fires
                s.sendall(line + b"\n")
                s.recv(4096)

    thread = threading.Thread(target=client)
    thread.start()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "seed.tlrec")
        threadlib.run(program(port.append), record=path)
        thread.join()
        return bytes([WHOLE_FILE]) + open(path, "rb").read()


def write_seeds() -> None:
    """Record new ``recorded-*`` corpus files."""
    import hashlib
    from pathlib import Path

    directory = Path(__file__).parent / "corpus" / "replay_log"
    directory.mkdir(parents=True, exist_ok=True)
    for lines, pause in (([b"hello"], -1), ([b"one", b"two", b"three"], 2), ([b"x" * 900, b"", b"end"], -1)):
        data = record_seed(lines, pause)
        (directory / f"recorded-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)


if __name__ == "__main__":
    write_seeds()
