"""The replay log reader's two cores agree: the compiled ``LogCore``
(threadlib/_kernel/_speedups.c) and its specification, the pure-Python
``_ReaderCore`` (threadlib/replay/log.py). On real recordings, cut short
at every byte and damaged at every byte, both give the same values, the
same decoded records and the same ``LogError`` messages and offsets; a
decoder either reads the whole record or leaves the reader where it was.
Runs in both modes: the compiled core is imported directly."""

from __future__ import annotations

import importlib
import io
import random
import struct
from pathlib import Path
from typing import Any

import pytest

import threadlib
from threadlib.io import sockio
from threadlib.replay import log as L
from threadlib.replay import sockets as S

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus" / "replay_log"


def _compiled_reader() -> type:
    try:
        speedups = importlib.import_module("threadlib._kernel._speedups")
    except ImportError:
        pytest.skip("the compiled module is not built")
    speedups.log_configure(L.LogError, L.ScopeRaised)

    class CLogReader(L._Records, speedups.LogCore):  # type: ignore[misc, name-defined]
        pass

    return CLogReader


def _norm(x: Any) -> Any:
    """Values made comparable: exceptions by type and fields."""
    if isinstance(x, OSError):
        return ("OSError", type(x).__name__, x.errno, x.strerror, getattr(x, "threadlib_replayed", False))
    if isinstance(x, L.ScopeRaised):
        return ("scope", x.depth)
    if isinstance(x, float):  # by its bits: a NaN equals itself
        return ("f64", struct.pack("<d", x))
    if isinstance(x, L.Opaque):
        return ("opaque", x.text)
    if isinstance(x, BaseException):
        return (type(x).__name__, str(x))
    if isinstance(x, (list, tuple)):
        return type(x)(_norm(i) for i in x)
    return x


def _state(r: Any) -> tuple[int, int, int]:
    return r.offset, r.record_start, r.records


def _fields(r: Any, kind: int) -> list[Any]:
    """The record's fields through the primitives (its kind already read)."""
    out: list[Any] = []
    if kind == L.SOCK:
        op, fd, failed = r.uint(), r.uint(), r.uint()
        out += [op, fd, failed, r.outcome() if failed else S._read_result(r, op)]
    elif kind == L.HANDLER:
        out += [r.uint(), r.uint()]
        out += [[(r.uint(), *r.outcome()) for _ in range(r.uint())]]
    elif kind == L.POLL:
        flag = r.uint()
        out.append(flag)
        if flag:
            out += [r.f64(), [(r.uint(), *r.outcome()) for _ in range(r.uint())]]
    else:
        L._skip(r, kind)
    return out


def _decoders(r: Any, ref: list[Any] | None) -> list[Any]:
    """Every decoder, with the arguments the record needs (from ``ref``, its
    fields as the primitives read them) and with wrong ones: what each
    returned and where it left the reader; a decoder that read nothing
    must not have moved it."""
    out = []
    op, fd = (ref[0], ref[1]) if ref else (S.RECV, 5)
    sent = ref[3][2] if ref and len(ref) > 3 and isinstance(ref[3], tuple) and len(ref[3]) == 3 else b"x" * 64
    calls = [("clock", (L.CLOCK,)), ("clock", (L.UCLOCK,)), ("handler", (op + 1, fd)), ("handler", (op, fd + 1)),
             ("sock_result", (op, fd + 1)), ("sock_result", (op + 1, fd)), ("check_sent", (op, fd, b"")),
             ("check_sent", (op, fd, b"?" + sent)), ("check_sent", (op, fd, sent)), ("handler", (op, fd)),
             ("poll", ()), ("sock_result", (op, -1)), ("sock_result", (op, fd))]
    for name, args in calls:
        before = _state(r)
        got = getattr(r, name)(*args)
        if got is None:
            assert _state(r) == before, f"{name}{args} read nothing but moved the reader"
        out.append((name, _norm(got), _state(r)))
        if got is not None:
            return out  # it read the record
    return out


def walk(cls: type, data: bytes, chunk: int = 7) -> list[Any]:
    """Read ``data`` record by record with a reader of class ``cls`` (a
    small chunk: every record straddles reads): the decoders' answers,
    then the fields through the primitives; the LogError that stops it."""
    events: list[Any] = []
    try:
        r = cls(io.BytesIO(data), chunk=chunk)
        events.append(("header", r.meta, _state(r)))
        ahead = L.PyLogReader(io.BytesIO(data))  # reads each record first, for the decoders' arguments
        while not r.at_end():
            mark = _state(r)
            try:
                kind = ahead.begin()
                fields = _fields(ahead, kind)
                ref = fields if kind in (L.SOCK, L.HANDLER) else None
            except L.LogError:
                ref = None
            decoded = _decoders(r, ref)
            if decoded[-1][1] is None:
                kind = r.begin()
                events.append(("fields", kind, _norm(_fields(r, kind)), _state(r)))
            events.append(("decoders", mark, decoded))
    except L.LogError as exc:
        events.append(("LogError", str(exc), exc.offset))
    return events


def _real_logs(tmp_path: Path) -> list[bytes]:
    logs = [p.read_bytes()[1:] for p in sorted(CORPUS.glob("recorded-*"))]  # the mode byte dropped
    logs.append(_echo_log(tmp_path))
    return logs


def _echo_log(tmp_path: Path, n: int = 20) -> bytes:
    """A real recording: an echo over loopback, with a receive that times
    out (a cancel scope's outcome) and a clock read."""
    path = tmp_path / "echo.tlrec"

    def main() -> Any:
        listener = yield from sockio.listen(("127.0.0.1", 0))
        port = listener.address[1]

        def server(s: Any) -> Any:
            with s:
                try:
                    yield from s.recv(10, timeout=0.01)
                except TimeoutError:
                    pass
                while (data := (yield from s.recv(65536))):
                    yield from s.sendall(data)

        def client() -> Any:
            s = yield from sockio.connect(("127.0.0.1", port))
            yield from threadlib.sleep(0.03)
            with s:
                for i in range(n):
                    yield from s.sendall(b"%d" % i * 40)
                    yield from s.recv(65536)
            return threadlib.now()

        c = yield from threadlib.spawn(client())
        conn, _ = yield from listener.accept()
        srv = yield from threadlib.spawn(server(conn))
        yield from c.join()
        yield from srv.join()
        listener.close()
        return n

    threadlib.run(main, record=str(path))
    return path.read_bytes()


def test_both_cores_read_real_logs_alike_and_the_decoders_read_what_the_primitives_do(tmp_path):
    c_reader = _compiled_reader()
    decoded_kinds = set()
    for data in _real_logs(tmp_path):
        python = walk(L.PyLogReader, data)
        assert walk(c_reader, data) == python
        assert walk(c_reader, data, chunk=1 << 16) == walk(L.PyLogReader, data, chunk=1 << 16)
        assert python[-1][0] != "LogError", python[-1]
        # What a decoder returns is what the primitives read there.
        primitive = L.PyLogReader(io.BytesIO(data))
        for event in python[1:]:
            if event[0] != "decoders":
                continue
            name, got, _ = event[2][-1]
            kind = primitive.begin()
            fields = _norm(_fields(primitive, kind))
            if got is None:
                continue
            decoded_kinds.add(name)
            if name == "sock_result":
                assert got == ((True, fields[3]) if not fields[2] else (False, fields[3][1]))
            elif name == "handler":
                assert got == fields[2]
            elif name == "poll":
                assert got == ((0, None, None) if not fields[0] else (fields[0], fields[1], fields[2]))
            elif name == "check_sent":
                assert got == fields[3][0]
            elif name == "clock":
                assert kind in (L.CLOCK, L.UCLOCK)
    # The common records were read by the decoders, not all left to the Python.
    assert {"sock_result", "handler", "poll", "clock"} <= decoded_kinds


def test_both_cores_give_the_same_errors_at_the_same_offsets_for_cut_and_damaged_logs(tmp_path):
    c_reader = _compiled_reader()
    rng = random.Random(10)
    for data in _real_logs(tmp_path):
        # Every byte of the small logs; of the larger, a sample (seeded: the same every run).
        cuts = range(len(data)) if len(data) < 800 else sorted(rng.sample(range(len(data)), 300))
        for cut in cuts:
            assert walk(c_reader, data[:cut]) == walk(L.PyLogReader, data[:cut]), f"cut at {cut}"
        for at in (cuts if len(data) < 800 else cuts[::3]):
            for byte in (0x00, 0xFF, data[at] ^ 0x01, 0x80):
                damaged = data[:at] + bytes([byte]) + data[at + 1:]
                assert walk(c_reader, damaged) == walk(L.PyLogReader, damaged), f"byte {at} set to {byte:#x}"
    # The cut logs do fail, and name where.
    cut = walk(L.PyLogReader, data[:-1])
    assert cut[-1][0] == "LogError" and "the log ends inside" in cut[-1][1]


HEADER = L.MAGIC + struct.pack("<HI", L.VERSION, 2) + b"{}"


@pytest.mark.parametrize("body", [
    bytes([L.SOCK, S.RECV]) + b"\xff" * 9 + b"\x01",           # a 10-byte varint: more than 63 bits
    bytes([L.SOCK, S.RECV]) + b"\xff" * 10 + b"\x01",          # 11 bytes: 77 bits, the longest allowed
    bytes([L.SOCK, S.RECV]) + b"\xff" * 11 + b"\x01",          # 12 bytes: too long
    bytes([L.SOCK, S.RECV, 3, 0]) + b"\x81\x80\x80\x80\x08",   # a blob of more than 2**31 bytes
    bytes([L.SOCK, S.RECV, 3, 1, L.T_OSERROR, 0, 0]),          # errno 0 is no error
    bytes([L.SOCK, S.RECV, 3, 1, L.T_SCOPE, 0]),               # a failure without an exception
    bytes([L.SOCK, S.RECV, 3, 1, 42]),                         # an unknown value tag
    bytes([L.HANDLER, 1, 0, 1, 1, L.T_INT]) + b"\xff" * 9 + b"\x7f",  # an int of 64 bits
    bytes([L.POLL, 1]) + struct.pack("<d", 1.5) + bytes([1, 1, L.T_STR, 2]) + b"\xff\xfe",
    bytes([L.POLL, 2]) + struct.pack("<d", -0.0) + bytes([0, L.POLL, 0]),
    bytes([L.SOCK, S.SEND, 4, 0, 5]) + struct.pack("<I", 0x3610A686) + bytes([5]) + b"hello",
    bytes([99]),                                              # an unknown record kind
])
def test_both_cores_agree_on_forged_records(body):
    c_reader = _compiled_reader()
    data = HEADER + body
    for chunk in (1, 3, 1 << 16):
        assert walk(c_reader, data, chunk) == walk(L.PyLogReader, data, chunk)
        for cut in range(len(HEADER), len(data)):
            assert walk(c_reader, data[:cut], chunk) == walk(L.PyLogReader, data[:cut], chunk)


def test_both_cores_agree_on_random_bytes_read_by_random_primitives():
    c_reader = _compiled_reader()
    rng = random.Random(2026)
    names = ["uint", "sint", "u32", "f64", "blob", "text", "kind", "begin", "peek", "at_end", "value", "outcome"]

    def run(cls: type, data: bytes, script: list[str]) -> list[Any]:
        r = cls(io.BytesIO(HEADER + data), chunk=5)
        out = []
        for name in script:
            try:
                out.append((name, _norm(getattr(r, name)()), _state(r)))
            except L.LogError as exc:
                out.append((name, str(exc), exc.offset))
        return out

    for _ in range(400):
        data = bytes(rng.choice((0, 1, 2, 3, 5, 7, 0x7F, 0x80, 0xFF, rng.randrange(256)))
                     for _ in range(rng.randrange(40)))
        script = [rng.choice(names) for _ in range(12)]
        assert run(c_reader, data, script) == run(L.PyLogReader, data, script)


def test_a_send_decoder_checks_the_bytes_against_the_recorded_crc():
    c_reader = _compiled_reader()
    import zlib

    body = bytes([L.SOCK, S.SEND, 4, 0, 5]) + struct.pack("<I", zlib.crc32(b"hello")) + bytes([5]) + b"hello"
    for cls in (c_reader, L.PyLogReader):
        r = cls(io.BytesIO(HEADER + body))
        assert r.check_sent(S.SEND, 4, b"hellO there") is None and r.records == 0
        assert r.check_sent(S.SEND, 4, b"hel") is None  # fewer bytes than were sent
        assert r.check_sent(S.SEND, 4, memoryview(b"hello there")) == 5 and r.at_end()


def test_the_send_decoder_computes_zlibs_crc_for_every_length_and_alignment():
    # The compiled CRC-32 takes eight bytes a step: every remainder and
    # every start offset within a buffer must give zlib's value.
    import zlib

    c_reader = _compiled_reader()
    rng = random.Random(3)
    blob = bytes(rng.randrange(256) for _ in range(5000))
    for n in [*range(0, 80), 255, 1000, 4097]:
        start = rng.randrange(8)
        data = memoryview(blob)[start:start + n]
        length = bytearray()
        L.put_uint(length, n)
        body = bytes([L.SOCK, S.SEND, 4, 0]) + bytes(length) + struct.pack("<I", zlib.crc32(data)) + \
            bytes([min(n, 32)]) + bytes(data[:32])
        for cls in (c_reader, L.PyLogReader):
            assert cls(io.BytesIO(HEADER + body)).check_sent(S.SEND, 4, data) == n, (cls, n)
