"""The replay log: its file format, a streaming writer and a checking reader.

A log is a header and a sequence of records, written as they happen and
read back in the same order (never searched, never loaded whole):

    header   b"TLREC\\n" | u16 version | u32 length | that many bytes of JSON
    record   u8 kind | fields (unsigned varints, f64 little-endian, byte strings
             as varint length + bytes, values and outcomes as below)

A *value* (what a worker resumed a thread with, a socket option, an
address) is tagged: None, an int (zigzag varint), bytes, a str, or a
pickle for anything else. An *outcome* is a value or an exception: an
``OSError`` as its errno and message (re-made as the same subclass), the
exception of a cancel scope as the scope's depth in the thread's scope
chain (so replay raises that scope's own exception, which the scope
recognises), anything else pickled. A value that cannot be pickled is
kept as its repr: replaying past it stops with a clear error.

The reader never trusts the file: a bad magic, an unknown version, a
record kind it does not know or a record cut short raises ``LogError``
naming the byte offset, and unless told the log is trusted it unpickles
only plain data and exception classes (unpickling calls what a pickle
names: a log from elsewhere must not run code). It must never touch anything but the file it was
given; deciding what a record means is the player's job.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import struct
import sys
import zlib
from typing import TYPE_CHECKING, Any, BinaryIO

from .._kernel.compiled import speedups

MAGIC = b"TLREC\n"
VERSION = 1

# Record kinds.
HANDLER = 1   # a worker served a system call: thread, call class, the threads it woke at once
POLL = 2      # the scheduler polled: 0, or 1 (2: so far, more follows), the clock and the threads woken
CLOCK = 3     # the program read the clock (threadlib.now, a timeout's start)
WALL = 4      # the program read the time of day
SOCK = 5      # a socket operation: op code, fd, its result
END = 6       # main ended: its outcome
USER = 7      # the user-level stack's worker ran (userstack): on a device event, or at its deadline
DEVIN = 8     # the packets one read of its TUN device gave
DEVOUT = 9    # a write to its TUN device: packets given, taken, their CRC and the start of the first
UCLOCK = 10   # the worker (or a user-stack stream) read the clock
USERSTATE = 11  # a user-stack worker joined: the stack's random state, the device's header size and name
KIND_NAMES = {HANDLER: "handler", POLL: "poll", CLOCK: "clock", WALL: "wall", SOCK: "socket", END: "end",
              USER: "user-stack event", DEVIN: "device read", DEVOUT: "device write", UCLOCK: "user-stack clock",
              USERSTATE: "user-stack start"}

# A SOCK record's operation codes, and what its result holds when the call succeeded.
NEW, RECV, RECV_INTO, SEND, ACCEPT, CONNECT, CONNECT_EX, BIND, LISTEN, SETSOCKOPT, GETSOCKOPT, \
    GETSOCKNAME, GETPEERNAME, SHUTDOWN, SENDFILE, RECVFROM, SENDTO = range(1, 18)
OP_NAMES = {NEW: "socket", RECV: "recv", RECV_INTO: "recv_into", SEND: "send", ACCEPT: "accept",
            CONNECT: "connect", CONNECT_EX: "connect_ex", BIND: "bind", LISTEN: "listen",
            SETSOCKOPT: "setsockopt", GETSOCKOPT: "getsockopt", GETSOCKNAME: "getsockname",
            GETPEERNAME: "getpeername", SHUTDOWN: "shutdown", SENDFILE: "sendfile",
            RECVFROM: "recvfrom", SENDTO: "sendto"}
SOCK_NOTHING = frozenset({CONNECT, BIND, LISTEN, SETSOCKOPT, SHUTDOWN})   # ok carries no result
SOCK_VALUE = frozenset({GETSOCKOPT, GETSOCKNAME, GETPEERNAME})             # ok carries one value
SOCK_NUMBER = frozenset({NEW, CONNECT_EX, SENDFILE})                       # ok carries a number
SOCK_BYTES = frozenset({RECV, RECV_INTO})                                   # ok carries the bytes
SOCK_SENT = frozenset({SEND, SENDTO})                                       # ok carries count, CRC, prefix

# Value and outcome tags.
T_NONE, T_INT, T_BYTES, T_STR, T_PICKLE, T_OSERROR, T_EXC, T_SCOPE, T_OPAQUE = range(9)

#: A writer's buffer is flushed once it holds this much (after the record that crossed it).
FLUSH_AT = 1 << 16

_F64 = struct.Struct("<d")
_KIND_F64 = struct.Struct("<Bd")  # a clock record: its kind, then its time
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


# Emptying the writer's buffer: compiled, the allocation is kept for the
# next records (del buf[:] gives it back and they regrow it).
_clear: Any = speedups.log_clear if speedups is not None else bytearray.clear
#: Appending a record's bytes to the buffer: compiled, as the compiled recorders append.
append: Any = speedups.log_append if speedups is not None else bytearray.extend


class LogError(Exception):
    """The log file is damaged, truncated or not a replay log; the message
    names the byte offset where reading failed."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"replay log, offset {offset}: {message}")
        self.offset = offset


class ScopeRaised:
    """An outcome read from a log: the exception of the cancel scope at
    ``depth`` in the woken thread's scope chain (0 is the innermost)."""

    __slots__ = ("depth",)

    def __init__(self, depth: int) -> None:
        self.depth = depth


class Opaque:
    """A recorded value that could not be pickled: only its repr is known."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<unrecorded value {self.text}>"


class LogWriter:
    """Appends records to a log file through a buffer (``buf``, which the
    recorder appends to) flushed once it holds ``FLUSH_AT`` bytes and at
    ``close``, so memory stays bounded however long the run. The flush is
    a plain ``write`` into the page cache."""

    def __init__(self, path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
        self._file: BinaryIO = open(path, "wb")
        self.path = os.fspath(path)
        body = json.dumps(meta, sort_keys=True).encode()
        self.buf = bytearray(MAGIC + _U16.pack(VERSION) + _U32.pack(len(body)) + body)
        self.written = 0  # bytes already flushed to the file

    def flush(self) -> None:
        """Write the buffer to the file and empty it (in place: the compiled
        socket calls append to this very bytearray)."""
        buf = self.buf
        if buf:
            self._file.write(buf)
            self.written += len(buf)
            _clear(buf)
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    @property
    def size(self) -> int:
        """Bytes written so far, buffered ones included."""
        return self.written + len(self.buf)


def put_uint(buf: bytearray, n: int) -> None:
    """Append ``n`` (>= 0) as a varint. (Hot callers append n < 0x80
    themselves: one byte, no call.)"""
    while n >= 0x80:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def put_int(buf: bytearray, n: int) -> None:
    """Append ``n`` as a zigzag varint."""
    put_uint(buf, (n << 1) if n >= 0 else ((-n) << 1) - 1)


def put_bytes(buf: bytearray, data: Any) -> None:
    """Append a length-prefixed byte string."""
    put_uint(buf, len(data))
    buf += data


def put_f64(buf: bytearray, x: float) -> None:
    """Append a little-endian double."""
    buf += _F64.pack(x)


def put_str(buf: bytearray, text: str) -> None:
    """Append a length-prefixed UTF-8 string."""
    put_bytes(buf, text.encode("utf-8", "surrogateescape"))


def put_value(buf: bytearray, value: Any) -> None:
    """Append a tagged value (see the module's docstring)."""
    if value is None:
        buf.append(T_NONE)
    elif type(value) is int:
        buf.append(T_INT)
        put_int(buf, value)
    elif type(value) is bytes:
        buf.append(T_BYTES)
        put_bytes(buf, value)
    elif type(value) is str:
        buf.append(T_STR)
        put_str(buf, value)
    else:
        _put_pickled(buf, T_PICKLE, value)


def _put_pickled(buf: bytearray, tag: int, obj: Any) -> None:
    # A pickle that also loads again, tagged; else the repr, marked opaque.
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
    except Exception:
        buf.append(T_OPAQUE)
        put_str(buf, repr(obj)[:200])
    else:
        buf.append(tag)
        put_bytes(buf, data)


def put_exception(buf: bytearray, exc: BaseException, scope_depth: int | None) -> None:
    """Append a tagged exception: a scope's by its depth, an OSError by errno."""
    if scope_depth is not None:
        buf.append(T_SCOPE)
        put_uint(buf, scope_depth)
    elif isinstance(exc, OSError) and exc.errno is not None and type(OSError(exc.errno, "")) is type(exc):
        # OSError(errno, text) makes the same subclass again (ConnectionResetError...).
        buf.append(T_OSERROR)
        put_uint(buf, exc.errno)
        # The usual text is left out (EAGAIN is the commonest record of all).
        put_str(buf, "" if exc.strerror == os.strerror(exc.errno) else (exc.strerror or ""))
    else:
        _put_pickled(buf, T_EXC, exc)


class _Refused(Exception):
    pass


# What an untrusted log's pickles may name: exception classes and socket
# enums (plain data needs no names). Unpickling calls what it names, so
# nothing that acts (a function, subprocess.Popen) or allocates what it is
# told (list(range(10**10)), bytes(10**10)) may be reachable, and nothing
# is imported for a pickle.
_SAFE_ELSEWHERE = {("socket", "AddressFamily"), ("socket", "SocketKind")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_ELSEWHERE and module in sys.modules:
            return getattr(sys.modules[module], name)
        found = getattr(sys.modules.get(module), name, None) if "." not in name else None
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
        raise _Refused(f"{module}.{name} in it")


def _check_memo(data: bytes) -> None:
    # The C unpickler grows its memo to the largest index a PUT names:
    # LONG_BINPUT 577074281 in a 30-byte pickle asks for gigabytes.
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int) and arg > len(data):
            raise _Refused(f"memo index {arg} in a {len(data)}-byte pickle")


class _Bail(Exception):
    """A record decoder met what it does not decode itself (another record,
    a mismatch, a rare value tag, the end of the data): it puts the reader
    back and returns None, and the player's Python reads that record."""


class _ReaderCore:
    """The reader's window on the file, its primitives and its per-record
    decoders. This pure Python is the specification of
    ``_speedups.LogCore``, which replaces it when compiled: same values,
    same ``LogError`` messages and offsets. ``offset`` is where the next
    record starts; every read past the end of the data or of a record
    raises ``LogError`` with the offset of the record being read.

    A decoder (``clock``, ``handler``, ``poll``, ``sock_result``,
    ``check_sent``) reads one whole record of the common kind and returns
    what it holds, or puts the reader back where it was and returns None:
    the player then reads that record with the primitives, which raise
    the errors. The window keeps the current record's bytes so that a
    decoder can go back."""

    def __init__(self, file: BinaryIO, chunk: int = 1 << 16) -> None:
        self._file = file
        self._chunk = max(1, chunk)
        self._data = b""
        self._pos = 0        # in _data
        self._base = 0       # file offset of _data[0]
        self.record_start = 0
        self.records = 0

    @property
    def offset(self) -> int:
        """The file offset of the next byte to read."""
        return self._base + self._pos

    def _fill(self, need: int) -> bool:
        # Keep at least `need` bytes after _pos, reading more of the file;
        # what is dropped is before both _pos and the record's start.
        while len(self._data) - self._pos < need:
            more = self._file.read(max(self._chunk, need))
            if not more:
                return False
            keep = self.record_start - self._base
            if not 0 <= keep <= self._pos:
                keep = self._pos
            self._base += keep
            self._data = self._data[keep:] + more
            self._pos -= keep
        return True

    def _take(self, n: int, what: str = "a record") -> bytes:
        if not self._fill(n):
            raise LogError(f"the log ends inside {what} (it was cut short or damaged)", self.record_start)
        data = self._data[self._pos:self._pos + n]
        self._pos += n
        return data

    def at_end(self) -> bool:
        """Whether every byte of the file has been read."""
        return not self._fill(1)

    def peek(self) -> int:
        """The next byte, without consuming it; -1 at the end of the file."""
        return self._data[self._pos] if self._fill(1) else -1

    def kind(self) -> int:
        """The next record's kind, without consuming it; 0 at the end of the file."""
        if not self._fill(1):
            return 0
        kind = self._data[self._pos]
        if kind not in KIND_NAMES:
            raise LogError(f"unknown record kind {kind}", self.offset)
        return kind

    def begin(self) -> int:
        """Consume the next record's kind byte and return it."""
        self.record_start = self.offset
        kind = self._take(1)[0]
        if kind not in KIND_NAMES:
            raise LogError(f"unknown record kind {kind}", self.record_start)
        self.records += 1
        return kind

    def uint(self) -> int:
        """An unsigned varint."""
        shift = 0
        n = 0
        while True:
            if self._pos >= len(self._data) and not self._fill(1):
                raise LogError("the log ends inside a record (it was cut short or damaged)", self.record_start)
            b = self._data[self._pos]
            self._pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7
            if shift > 70:
                raise LogError("a number in a record is too long (damaged log)", self.record_start)

    def sint(self) -> int:
        """A zigzag-encoded signed varint."""
        n = self.uint()
        return (n >> 1) if not n & 1 else -((n + 1) >> 1)

    def u32(self) -> int:
        """A little-endian unsigned 32-bit integer."""
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def f64(self) -> float:
        """A little-endian double."""
        value: float = _F64.unpack(self._take(8))[0]
        return value

    def blob(self) -> bytes:
        """A length-prefixed byte string."""
        n = self.uint()
        if n > 1 << 31:
            raise LogError(f"a byte string of {n} bytes (damaged log)", self.record_start)
        return self._take(n)

    def text(self) -> str:
        """A length-prefixed UTF-8 string."""
        return self.blob().decode("utf-8", "surrogateescape")

    # -- the per-record decoders ------------------------------------------------
    def _decoded(self, decode: Any, *args: Any) -> Any:
        # Run a decoder; on _Bail or LogError, put the reader back: None.
        mark, record_start, records = self.offset, self.record_start, self.records
        try:
            return decode(*args)
        except (_Bail, LogError):
            self._pos = mark - self._base
            self.record_start, self.records = record_start, records
            return None

    def _begin_kind(self, kind: int) -> None:
        if self.peek() != kind:
            raise _Bail
        self.begin()

    def _uint63(self) -> int:
        n = self.uint()
        if n >> 63:  # the compiled decoders read 63 bits; longer ones are the Python's
            raise _Bail
        return n

    def _outcome(self) -> tuple[Any, Any]:
        # The common outcomes: None, an int, bytes, a str, an OSError, a scope's.
        tag = self._take(1)[0]
        if tag == T_NONE:
            return None, None
        if tag == T_INT:
            n = self._uint63()
            return ((n >> 1) if not n & 1 else -((n + 1) >> 1)), None
        if tag == T_BYTES:
            return self._blob63(), None
        if tag == T_STR:
            return self._blob63().decode("utf-8", "surrogateescape"), None
        if tag == T_OSERROR:
            err = self._uint63()
            if not 0 < err < 4096:
                raise _Bail
            exc = OSError(err, self._blob63().decode("utf-8", "surrogateescape") or os.strerror(err))
            exc.threadlib_replayed = True  # type: ignore[attr-defined]
            return None, exc
        if tag == T_SCOPE:
            return None, ScopeRaised(self._uint63())
        raise _Bail

    def _blob63(self) -> bytes:
        n = self._uint63()
        if n > 1 << 31:
            raise _Bail
        return self._take(n)

    def _wakes(self) -> list[tuple[int, Any, Any]]:
        return [(self._uint63(), *self._outcome()) for _ in range(self._uint63())]

    def _clock(self, kind: int) -> float:
        self._begin_kind(kind)
        return self.f64()

    def clock(self, kind: int) -> float | None:
        """A clock record of ``kind``: its time."""
        return self._decoded(self._clock, kind)  # type: ignore[no-any-return]

    def _handler(self, tid: int, index: int) -> list[tuple[int, Any, Any]]:
        self._begin_kind(HANDLER)
        if self._uint63() != tid or self._uint63() != index:
            raise _Bail
        return self._wakes()

    def handler(self, tid: int, index: int) -> list[tuple[int, Any, Any]] | None:
        """A HANDLER record of thread ``tid`` waiting in call class ``index``:
        its wakes, ``(thread id, value, exception or None)``."""
        return self._decoded(self._handler, tid, index)  # type: ignore[no-any-return]

    def _poll(self) -> tuple[int, Any, Any]:
        self._begin_kind(POLL)
        flag = self._uint63()
        if not flag:
            return 0, None, None
        return flag, self.f64(), self._wakes()

    def poll(self) -> tuple[int, Any, Any] | None:
        """A POLL record: ``(flag, time, wakes)`` (time and wakes None when the flag is 0)."""
        return self._decoded(self._poll)  # type: ignore[no-any-return]

    def _sock(self, op: int, fd: int) -> tuple[bool, Any]:
        self._begin_kind(SOCK)
        recorded_op, recorded_fd = self._uint63(), self._uint63()
        if recorded_op != op or (fd >= 0 and recorded_fd != fd):
            raise _Bail
        if self._uint63():
            _, exc = self._outcome()
            if not isinstance(exc, BaseException):
                raise _Bail
            return False, exc
        if op in SOCK_NOTHING:
            return True, None
        if op in SOCK_NUMBER:
            return True, self._uint63()
        if op in SOCK_BYTES:
            return True, self._blob63()
        if op in SOCK_SENT:
            return True, (self._uint63(), self.u32(), self._blob63())
        raise _Bail                     # a value, a peer, a datagram: the Python's

    def sock_result(self, op: int, fd: int) -> tuple[bool, Any] | None:
        """A SOCK record of socket operation ``op`` on ``fd`` (any fd if
        ``fd`` < 0): ``(True, result)`` or ``(False, exception)``."""
        return self._decoded(self._sock, op, fd)  # type: ignore[no-any-return]

    def _sent(self, op: int, fd: int, data: Any) -> int:
        if op not in SOCK_SENT:
            raise _Bail
        try:
            view = memoryview(data).cast("B")
        except (TypeError, ValueError):
            raise _Bail from None
        ok, result = self._sock(op, fd)
        if not ok:
            raise _Bail
        count, crc, _ = result
        if count > len(view) or zlib.crc32(view[:count]) != crc:
            raise _Bail
        return int(count)

    def check_sent(self, op: int, fd: int, data: Any) -> int | None:
        """A SOCK record of a send (``op`` on ``fd``) whose recorded count and
        CRC ``data`` matches: the count."""
        return self._decoded(self._sent, op, fd, data)  # type: ignore[no-any-return]


# For the type checker _Records extends the core it is mixed with (the
# Python one or the compiled one, which has the same methods).
if TYPE_CHECKING:
    _CoreForTyping = _ReaderCore
else:
    _CoreForTyping = object


class _Records(_CoreForTyping):
    """What LogReader adds to its core: the header, values and outcomes
    (pickles, exceptions), closing."""

    def __init__(self, path: str | os.PathLike[str] | BinaryIO, chunk: int = 1 << 16,
                 trusted: bool = False) -> None:
        self.trusted = trusted
        if hasattr(path, "read"):
            self.path = getattr(path, "name", "<stream>")
            file: BinaryIO = path  # type: ignore[assignment]
        else:
            self.path = os.fspath(path)
            try:
                file = open(path, "rb")
            except OSError as exc:
                raise LogError(f"cannot open {self.path}: {exc.strerror}", 0) from None
        super().__init__(file, chunk)
        head = self._take(len(MAGIC), "the header")
        if head != MAGIC:
            raise LogError(f"not a threadlib replay log (starts with {head!r})", 0)
        version = _U16.unpack(self._take(2, "the header"))[0]
        if version != VERSION:
            raise LogError(f"log version {version}, this threadlib reads version {VERSION}", len(MAGIC))
        length = _U32.unpack(self._take(4, "the header"))[0]
        try:
            self.meta: dict[str, Any] = json.loads(self._take(length, "the header"))
        except ValueError:
            raise LogError("the header's metadata is not JSON", len(MAGIC) + 6) from None
        self.record_start = self.offset

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _unpickle(self, data: bytes) -> Any:
        try:
            if self.trusted:
                return pickle.loads(data)
            _check_memo(data)
            return _SafeUnpickler(io.BytesIO(data)).load()
        except _Refused as exc:
            raise LogError(f"the log holds a pickle with {exc}, which replay unpickles only from a trusted log "
                           f"(replay(..., trusted=True), check --trusted)", self.record_start) from None
        except Exception as exc:
            raise LogError(f"a recorded value does not unpickle ({exc!r})", self.record_start) from None

    def value(self) -> Any:
        """A tagged value (an exception tag gives the exception as the value)."""
        tag = self._take(1)[0]
        if tag == T_NONE:
            return None
        if tag == T_INT:
            return self.sint()
        if tag == T_BYTES:
            return self.blob()
        if tag == T_STR:
            return self.text()
        if tag == T_PICKLE:
            return self._unpickle(self.blob())
        if tag == T_OPAQUE:
            return Opaque(self.text())
        return self._raised(tag)

    def outcome(self) -> tuple[Any, BaseException | ScopeRaised | Opaque | None]:
        """``(value, None)`` or ``(None, exception)``."""
        tag = self.peek()
        if tag in (T_OSERROR, T_EXC, T_SCOPE):
            self._take(1)
            return None, self._raised(tag)
        return self.value(), None

    def _raised(self, tag: int) -> Any:
        if tag == T_OSERROR:
            err = self.uint()
            if not 0 < err < 4096:
                raise LogError(f"errno {err} is not an error number", self.record_start)
            exc = OSError(err, self.text() or os.strerror(err))
            exc.threadlib_replayed = True  # type: ignore[attr-defined]
            return exc
        if tag == T_EXC:
            exc = self._unpickle(self.blob())
            if not isinstance(exc, BaseException):
                raise LogError(f"a recorded exception is a {type(exc).__name__}", self.record_start)
            try:  # marked as the log's, not the player's own failure (fuzz/replay_log checks)
                exc.threadlib_replayed = True  # type: ignore[attr-defined]
            except AttributeError:
                pass
            return exc
        if tag == T_SCOPE:
            return ScopeRaised(self.uint())
        raise LogError(f"unknown value tag {tag}", self.record_start)


class PyLogReader(_Records, _ReaderCore):
    """The log reader on the pure-Python core (the specification)."""


if speedups is not None:
    speedups.log_configure(LogError, ScopeRaised)

    class LogReader(_Records, speedups.LogCore):  # type: ignore[misc]
        """Reads a log record by record (see ``_ReaderCore``), its core compiled."""
else:
    class LogReader(PyLogReader):  # type: ignore[no-redef]
        """Reads a log record by record (see ``_ReaderCore``)."""


def describe(path: str | os.PathLike[str] | BinaryIO) -> dict[str, Any]:
    """The header and a count of records by kind (reads the whole log:
    for ``python -m threadlib.replay info``)."""
    reader = LogReader(path)
    counts: dict[str, int] = {}
    try:
        while not reader.at_end():
            kind = reader.begin()
            _skip(reader, kind)
            counts[KIND_NAMES[kind]] = counts.get(KIND_NAMES[kind], 0) + 1
        return {"meta": reader.meta, "records": counts, "bytes": reader.offset}
    finally:
        reader.close()


def _skip(reader: LogReader, kind: int) -> None:
    from . import sockets  # the socket records' layouts live with the socket layer

    if kind == HANDLER:
        reader.uint()
        reader.uint()
        _skip_wakes(reader)
    elif kind == POLL:
        if reader.uint():
            reader.f64()
            _skip_wakes(reader)
    elif kind in (CLOCK, WALL, UCLOCK):
        reader.f64()
    elif kind == USER:
        reader.uint()
        if reader.uint() == 0:
            reader.uint()
        else:
            reader.f64()
    elif kind == DEVIN:
        reader.uint()
        for _ in range(reader.uint()):
            reader.blob()
    elif kind == DEVOUT:
        reader.uint()
        reader.uint()
        reader.uint()
        reader.u32()
        reader.blob()
    elif kind == USERSTATE:
        reader.uint()
        reader.value()
        reader.value()
        reader.uint()
        reader.text()
    elif kind == SOCK:
        sockets.skip_record(reader)
    elif kind == END:
        reader.outcome()


def _skip_wakes(reader: LogReader) -> None:
    for _ in range(reader.uint()):
        reader.uint()
        reader.outcome()


__all__ = ["LogError", "LogReader", "LogWriter", "describe"]
