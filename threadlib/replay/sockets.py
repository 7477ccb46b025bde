"""The socket side of record/replay: what sockio's calls into the kernel
returned, written down while recording and given back while replaying.

``sockio`` reaches kernel sockets only through its *socket layer*: the
three hot calls (``recv``, ``recv_into``, ``send``), making a socket,
``sendfile``, and the socket object's own methods. Recording swaps in a
layer whose sockets are ``RecordingSocket`` (a ``socket.socket`` that
writes the result of every call that can differ between runs: bytes and
peers received, counts sent, addresses, errors); replaying swaps in one
whose sockets are ``ReplaySocket`` (a ``socket.socket`` with no kernel
socket behind it, answering every call from the log and checking each
output against the recorded one). sockio's own code runs unchanged in
both, so a replayed thread yields the same system calls, on the same fd
numbers, as the recorded one did.

Every record is ``SOCK | op | fd | ok-or-error | result``. Sends are
recorded as their count, a CRC-32 of the bytes taken and their first
``PREFIX`` bytes (for a readable report): enough to check the output,
not to store it. Nothing here touches the network while replaying.
"""

from __future__ import annotations

import os
import functools
import socket
import struct
import zlib
from typing import TYPE_CHECKING, Any, Callable

from .._kernel.compiled import speedups
from . import log as _log
# The operation codes are the log format's (its compiled decoders know them too).
from .log import (ACCEPT, BIND, CONNECT, CONNECT_EX, GETPEERNAME, GETSOCKNAME, GETSOCKOPT, LISTEN, NEW, OP_NAMES,
                  RECV, RECV_INTO, RECVFROM, SEND, SENDFILE, SENDTO, SETSOCKOPT, SHUTDOWN, SOCK_BYTES, SOCK_NOTHING,
                  SOCK_NUMBER, SOCK_SENT, SOCK_VALUE)

if TYPE_CHECKING:
    from .player import Player
    from .recorder import Recorder

#: How many bytes of each output are kept in the log for the report (< 0x80: one length byte).
PREFIX = 32
_U32 = struct.Struct("<I")

# The layer recording wraps: sockio's own calls (compiled when built), set at install.
_inner_recv: Callable[..., Any] = socket.socket.recv
_inner_recv_into: Callable[..., Any] = socket.socket.recv_into
_inner_send: Callable[..., Any] = socket.socket.send


def skip_record(reader: _log.LogReader) -> None:
    """Read past the fields of a SOCK record (its kind already read)."""
    op = reader.uint()
    reader.uint()
    if reader.uint():
        reader.outcome()
        return
    _read_result(reader, op)


def _read_result(reader: _log.LogReader, op: int) -> Any:
    if op in SOCK_NOTHING:
        return None
    if op in SOCK_VALUE:
        return reader.value()
    if op in SOCK_NUMBER:
        return reader.uint()
    if op in SOCK_BYTES:
        return reader.blob()
    if op in SOCK_SENT:
        return reader.uint(), reader.u32(), reader.blob()
    if op == ACCEPT:
        return reader.uint(), reader.value()
    if op == RECVFROM:
        return reader.blob(), reader.value()
    raise _log.LogError(f"unknown socket operation {op}", reader.record_start)


# -- recording -----------------------------------------------------------------

class _Recording:
    """The recorder of the layer now installed (one at a time per process)."""

    recorder: Recorder | None = None


def _begin(op: int, fd: int) -> bytearray:
    recorder = _Recording.recorder
    assert recorder is not None  # the layer is installed only while recording
    writer = recorder.writer
    if len(writer.buf) >= _log.FLUSH_AT:  # the previous record crossed the mark
        writer.flush()
    buf = writer.buf
    buf.append(_log.SOCK)
    buf.append(op)
    if 0 <= fd < 0x80:
        buf.append(fd)
    else:
        _log.put_uint(buf, fd if fd >= 0 else 0)
    return buf


def _failed(op: int, fd: int, exc: BaseException) -> None:
    buf = _begin(op, fd)
    buf.append(1)
    _log.put_exception(buf, exc, None)


def _sent_fields(buf: bytearray, data: Any, count: int) -> None:
    if type(data) is not bytes or count != len(data):
        data = memoryview(data).cast("B")[:count]
    buf.append(0)
    _log.put_uint(buf, count)
    buf += _U32.pack(zlib.crc32(data))
    prefix = data[:PREFIX]
    buf.append(len(prefix))
    buf += prefix


def _recorded(op: int, method: Callable[..., Any]) -> Callable[..., Any]:
    """A RecordingSocket method: ``method``'s result (or error) is written down."""

    def call(self: socket.socket, *args: Any) -> Any:
        fd = self.fileno()
        try:
            result = method(self, *args)
        except OSError as exc:
            _failed(op, fd, exc)
            raise
        buf = _begin(op, fd)
        buf.append(0)
        if op in SOCK_VALUE:
            _log.put_value(buf, result)
        elif op == CONNECT_EX:
            _log.put_uint(buf, result)
        elif op == ACCEPT:
            _log.put_uint(buf, result[0])
            _log.put_value(buf, result[1])
        elif op == RECVFROM:
            _log.put_bytes(buf, result[0])
            _log.put_value(buf, result[1])
        elif op == SENDTO:
            buf.pop()
            _sent_fields(buf, args[0], result)
        return result

    call.__name__ = method.__name__
    call.__doc__ = f"``socket.socket.{method.__name__}``, its result written to the replay log."
    return call


class RecordingSocket(socket.socket):
    """A kernel socket whose every call that can differ between runs is
    written to the replay log of the recording in progress."""

    bind = _recorded(BIND, socket.socket.bind)
    listen = _recorded(LISTEN, socket.socket.listen)
    _accept = _recorded(ACCEPT, socket.socket._accept)  # type: ignore[attr-defined]
    connect = _recorded(CONNECT, socket.socket.connect)
    connect_ex = _recorded(CONNECT_EX, socket.socket.connect_ex)
    setsockopt = _recorded(SETSOCKOPT, socket.socket.setsockopt)
    getsockopt = _recorded(GETSOCKOPT, socket.socket.getsockopt)
    getsockname = _recorded(GETSOCKNAME, socket.socket.getsockname)
    getpeername = _recorded(GETPEERNAME, socket.socket.getpeername)
    shutdown = _recorded(SHUTDOWN, socket.socket.shutdown)
    recvfrom = _recorded(RECVFROM, socket.socket.recvfrom)
    sendto = _recorded(SENDTO, socket.socket.sendto)


def _record_new(family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> socket.socket:
    if fileno is not None:  # an accepted connection: its fd is in the accept record
        return RecordingSocket(family, type, proto, fileno)
    try:
        sock = RecordingSocket(family, type, proto)
    except OSError as exc:
        _failed(NEW, -1, exc)
        raise
    buf = _begin(NEW, sock.fileno())
    buf.append(0)
    _log.put_uint(buf, sock.fileno())
    return sock


def _record_recv(sock: socket.socket, size: int) -> bytes:
    try:
        data: bytes = _inner_recv(sock, size)
    except OSError as exc:
        _failed(RECV, sock.fileno(), exc)
        raise
    buf = _begin(RECV, sock.fileno())
    buf.append(0)
    _log.put_bytes(buf, data)
    return data


def _record_recv_into(sock: socket.socket, buffer: Any, nbytes: int = 0) -> int:
    try:
        n: int = _inner_recv_into(sock, buffer, nbytes)
    except OSError as exc:
        _failed(RECV_INTO, sock.fileno(), exc)
        raise
    buf = _begin(RECV_INTO, sock.fileno())
    buf.append(0)
    _log.put_bytes(buf, memoryview(buffer).cast("B")[:n])
    return n


def _record_send(sock: socket.socket, data: Any) -> int:
    try:
        n: int = _inner_send(sock, data)
    except OSError as exc:
        _failed(SEND, sock.fileno(), exc)
        raise
    _sent_fields(_begin(SEND, sock.fileno()), data, n)
    return n


def _record_sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    try:
        n = os.sendfile(out_fd, in_fd, offset, count)
    except OSError as exc:
        _failed(SENDFILE, out_fd, exc)
        raise
    buf = _begin(SENDFILE, out_fd)
    buf.append(0)
    _log.put_uint(buf, n)
    return n


def recording_layer(log: bytearray, previous: tuple[Any, ...]) -> tuple[Any, ...]:
    """The socket layer of a recording into ``log`` (the writer's buffer),
    over ``previous`` (sockio's layer as it was). Where sockio's hot calls
    are the compiled ones, the recording ones are too (``rec_recv`` &c.,
    which write the same records as ``_record_recv`` &c. here)."""
    global _inner_recv, _inner_recv_into, _inner_send
    _inner_recv, _inner_recv_into, _inner_send = previous[:3]
    if speedups is not None and previous[0] is speedups.sock_recv:
        recv = functools.partial(speedups.rec_recv, log)
        recv_into = functools.partial(speedups.rec_recv_into, log)
        send = functools.partial(speedups.rec_send, log)
        return recv, recv_into, send, _record_new, _record_sendfile
    return _record_recv, _record_recv_into, _record_send, _record_new, _record_sendfile


# -- replaying -------------------------------------------------------------------

class _Replaying:
    player: Player | None = None
    reader: Any = None  # the player's LogReader, for its decoders


def _expect(op: int, fd: int, what: str) -> tuple[bool, Any]:
    """The next record, which must be ``op`` on ``fd``: ``(True, result)``
    or ``(False, exception)``."""
    player = _Replaying.player
    assert player is not None  # the layer is installed only while replaying
    answer: tuple[bool, Any] = player.socket_result(op, fd, what)
    return answer


def _give(op: int, fd: int, what: str) -> Any:
    ok, result = _expect(op, fd, what)
    if not ok:
        raise result
    return result


def _replayed(op: int) -> Callable[..., Any]:
    def call(self: ReplaySocket, *args: Any) -> Any:
        return _give(op, self._replay_fd, f"{OP_NAMES[op]}{_args(args)}")

    call.__name__ = OP_NAMES[op]
    call.__doc__ = f"``socket.{OP_NAMES[op]}``, answered from the replay log."
    return call


def _args(args: tuple[Any, ...]) -> str:
    text = ", ".join(repr(a) for a in args)
    return f"({text[:80]})"


class ReplaySocket(socket.socket):
    """A socket with no kernel socket behind it: it has the fd number,
    family and type the recorded one had, and answers from the log."""

    def __init__(self, family: int, type: int, proto: int, fd: int) -> None:
        # socket.socket.__init__ would make a kernel socket: not called.
        self._replay_fd = fd
        self._replay_family = family
        self._replay_type = type
        self._replay_proto = proto
        self._replay_closed = False

    @property
    def family(self) -> socket.AddressFamily:
        """The recorded socket's family."""
        return socket.AddressFamily(self._replay_family)

    @property
    def type(self) -> socket.SocketKind:
        """The recorded socket's type."""
        return socket.SocketKind(self._replay_type)

    @property
    def proto(self) -> int:
        """The recorded socket's protocol."""
        return self._replay_proto

    def fileno(self) -> int:
        """The recorded fd number; -1 once closed."""
        return -1 if self._replay_closed else self._replay_fd

    def setblocking(self, flag: bool) -> None:
        """Nothing: there is no kernel socket to change."""

    def close(self) -> None:
        """Mark closed; nothing to release."""
        self._replay_closed = True

    def detach(self) -> int:
        """The fd number, the socket marked closed."""
        fd = self._replay_fd
        self._replay_closed = True
        return fd

    def __repr__(self) -> str:
        return f"<ReplaySocket fd={self._replay_fd}>"

    bind = _replayed(BIND)
    listen = _replayed(LISTEN)
    _accept = _replayed(ACCEPT)
    connect = _replayed(CONNECT)
    connect_ex = _replayed(CONNECT_EX)
    setsockopt = _replayed(SETSOCKOPT)
    getsockopt = _replayed(GETSOCKOPT)
    getsockname = _replayed(GETSOCKNAME)
    getpeername = _replayed(GETPEERNAME)
    shutdown = _replayed(SHUTDOWN)
    recvfrom = _replayed(RECVFROM)

    def sendto(self, data: Any, *args: Any) -> int:
        """``socket.sendto``: the count recorded, once ``data`` is checked
        against the recorded output."""
        return _check_sent(SENDTO, self._replay_fd, data)


def _replay_new(family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0,
                fileno: int | None = None) -> socket.socket:
    if fileno is None:
        fileno = _give(NEW, -1, f"socket({family}, {type})")
    sock = ReplaySocket.__new__(ReplaySocket)
    ReplaySocket.__init__(sock, int(family), int(type), proto if proto >= 0 else 0, fileno)
    return sock


def _replay_recv(sock: socket.socket, size: int) -> bytes:
    fd = sock.fileno()
    got = _Replaying.reader.sock_result(RECV, fd)  # the common record in one call; else the player's
    data: bytes
    ok, data = got if got is not None else _expect(RECV, fd, f"recv({size})")
    if not ok:
        raise data  # type: ignore[misc]
    if len(data) > size:
        _Replaying.player.diverged(f"recv({size}) on fd {sock.fileno()}", f"{len(data)} bytes recorded")  # type: ignore[union-attr]
    return data


def _replay_recv_into(sock: socket.socket, buffer: Any, nbytes: int = 0) -> int:
    fd = sock.fileno()
    got = _Replaying.reader.sock_result(RECV_INTO, fd)
    ok, data = got if got is not None else _expect(RECV_INTO, fd, f"recv_into({nbytes or len(buffer)})")
    if not ok:
        raise data
    view = memoryview(buffer).cast("B")
    if len(data) > (nbytes or len(view)):
        _Replaying.player.diverged(  # type: ignore[union-attr]
            f"recv_into of {nbytes or len(view)} bytes on fd {sock.fileno()}", f"{len(data)} bytes recorded")
    view[:len(data)] = data
    return len(data)


def _check_sent(op: int, fd: int, data: Any) -> int:
    ok, result = _expect(op, fd, f"{OP_NAMES[op]} of {len(data)} bytes")
    if not ok:
        raise result
    count, crc, prefix = result
    view = memoryview(data).cast("B")
    player = _Replaying.player
    assert player is not None
    if count > len(view) or zlib.crc32(view[:count]) != crc:
        player.output_diverged(fd, count, prefix, bytes(view[:max(count, PREFIX)]))
    player.count_output(fd, count)
    return int(count)


def _replay_send(sock: socket.socket, data: Any) -> int:
    fd = sock.fileno()
    count = _Replaying.reader.check_sent(SEND, fd, data)  # a send that matches, in one call
    if count is None:
        return _check_sent(SEND, fd, data)  # the player reads it and reports what differs
    output = _Replaying.player._output  # type: ignore[union-attr]  # count_output's body, inline
    sends, sent = output.get(fd, (0, 0))
    output[fd] = (sends + 1, sent + count)
    return count  # type: ignore[no-any-return]


def _replay_sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    n: int = _give(SENDFILE, out_fd, f"sendfile of {count} bytes")
    return n


REPLAY_LAYER = (_replay_recv, _replay_recv_into, _replay_send, _replay_new, _replay_sendfile)
