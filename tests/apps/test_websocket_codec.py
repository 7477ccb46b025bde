"""The sans-IO WebSocket codec (apps.webserver.websocket) on its own: the
handshake checks, frames built and parsed (against RFC 6455's worked
examples and hand-made frames), and a bounded fuzz of the frame reader:
whatever bytes arrive, in whatever pieces, it yields events or raises
ProtocolError with a close code a server may send, and nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.webserver import websocket as ws

MASK = b"\x37\xfa\x21\x3d"


def events(reader: ws.FrameReader) -> list:
    found = []
    while (event := reader.next_event()) is not None:
        found.append(event)
    return found


def summary(event) -> tuple:
    if isinstance(event, ws.Message):
        return ("text", event.text) if event.text is not None else ("binary", event.data)
    if isinstance(event, ws.Close):
        return ("close", event.code, event.reason)
    return (type(event).__name__.lower(), event.payload)


# -- RFC 6455's own examples -----------------------------------------------------------------------


def test_rfc_examples():
    # Section 1.3: the accept key of "the sample nonce".
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    # Section 5.7: a masked "Hello" from a client, and a fragmented unmasked one.
    reader = ws.FrameReader()
    reader.feed(bytes.fromhex("818537fa213d7f9f4d5158"))
    assert [summary(e) for e in events(reader)] == [("text", "Hello")]
    reader = ws.FrameReader(require_mask=False)
    reader.feed(bytes.fromhex("010348656c") + bytes.fromhex("80026c6f"))
    assert [summary(e) for e in events(reader)] == [("text", "Hello")]
    # A server's unmasked "Hello", and the masked client one built back.
    assert ws.encode_frame(ws.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    assert ws.encode_frame(ws.TEXT, b"Hello", mask_key=MASK) == bytes.fromhex("818537fa213d7f9f4d5158")
    # 256 bytes and 64 KiB: the 16-bit and 64-bit length forms.
    assert ws.encode_frame(ws.BINARY, b"\0" * 256)[:4] == bytes.fromhex("827e0100")
    assert ws.encode_frame(ws.BINARY, b"\0" * 65536)[:10] == bytes.fromhex("827f0000000000010000")


def test_handshake_checks():
    good = [(b"host", b"t"), (b"upgrade", b"WebSocket"), (b"connection", b"keep-alive, Upgrade"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"sec-websocket-version", b"13"),
            (b"sec-websocket-protocol", b"chat, superchat"), (b"sec-websocket-protocol", b"v3")]
    assert ws.wants_websocket(good)
    assert not ws.wants_websocket([(b"upgrade", b"h2c")])
    assert ws.check_handshake(b"GET", "1.1", good) == (b"dGhlIHNhbXBsZSBub25jZQ==", ["chat", "superchat", "v3"])

    def refused(headers, method=b"GET", version="1.1"):
        with pytest.raises(ws.HandshakeError) as error:
            ws.check_handshake(method, version, headers)
        return error.value.status, error.value.reason

    without = lambda name: [(k, v) for k, v in good if k != name]  # noqa: E731
    assert refused(good, method=b"POST") == (400, "a WebSocket handshake must be a GET, not POST")
    assert refused(good, version="1.0")[0] == 400
    assert refused(without(b"connection")) == (400, "a WebSocket handshake needs 'Connection: Upgrade'")
    assert refused(without(b"host"))[0] == 400
    assert refused(without(b"sec-websocket-version"))[0] == 426
    assert refused(without(b"sec-websocket-version") + [(b"sec-websocket-version", b"8")])[0] == 426
    assert refused(without(b"sec-websocket-key"))[0] == 400
    assert refused(good + [(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")])[0] == 400  # two keys
    assert refused(without(b"sec-websocket-key") + [(b"sec-websocket-key", b"c2hvcnQ=")]) == (
        400, "the Sec-WebSocket-Key is not 16 bytes in base64")


def test_close_payloads():
    assert ws.close_frame(1000) == b"\x88\x02\x03\xe8"
    assert ws.close_frame(4000, "bye") == b"\x88\x05\x0f\xa0bye"
    assert ws.close_frame(ws.NO_STATUS_RECEIVED) == b"\x88\x00"
    for code in (999, 1004, 1005 + 1, 1015, 2999, 5000):
        with pytest.raises(ValueError, match=f"close code {code} may not be sent"):
            ws.close_payload(code)
    with pytest.raises(ValueError, match="124 bytes of UTF-8; at most 123"):
        ws.close_payload(1000, "x" * 124)
    assert ws.close_payload(1000, "\u00e9" * 61) == b"\x03\xe8" + "\u00e9".encode() * 61


def test_limits_are_checked_from_the_header_and_reader_stays_failed():
    reader = ws.FrameReader(max_message=10)
    reader.feed(ws.encode_frame(ws.BINARY, b"0123456789", mask_key=MASK))
    assert [summary(e) for e in events(reader)] == [("binary", b"0123456789")]
    # The header of an 11-byte frame is enough: its payload is never awaited.
    reader.feed(bytes([0x82, 0x80 | 11]) + MASK)
    with pytest.raises(ws.ProtocolError) as error:
        reader.next_event()
    assert error.value.code == 1009
    reader.feed(ws.encode_frame(ws.TEXT, b"ignored", mask_key=MASK))
    with pytest.raises(ws.ProtocolError) as again:
        reader.next_event()
    assert again.value is error.value
    # After a close frame, nothing more is read.
    reader = ws.FrameReader()
    reader.feed(ws.encode_frame(ws.CLOSE, struct.pack("!H", 1001) + b"away", mask_key=MASK)
                + ws.encode_frame(ws.TEXT, b"late", mask_key=MASK))
    assert [summary(e) for e in events(reader)] == [("close", 1001, "away")]
    with pytest.raises(ValueError, match="at least 1 byte"):
        ws.FrameReader(max_message=0)


# -- properties -----------------------------------------------------------------------------------

messages = st.lists(st.one_of(
    st.tuples(st.just("text"), st.text(max_size=300)),
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
), max_size=8)


def client_frames(draw_pieces, kind, value, key):
    """One message as client frames, fragmented at the given cut points."""
    if kind == "ping":
        return ws.encode_frame(ws.PING, value, mask_key=key)
    payload = value.encode() if kind == "text" else value
    cuts = sorted({c % (len(payload) + 1) for c in draw_pieces})
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
    out = []
    for i, piece in enumerate(pieces):
        opcode = (ws.TEXT if kind == "text" else ws.BINARY) if i == 0 else ws.CONTINUATION
        out.append(ws.encode_frame(opcode, piece, fin=i == len(pieces) - 1, mask_key=key))
    return b"".join(out)


@settings(max_examples=150, deadline=None)
@given(messages, st.lists(st.integers(0, 400), max_size=3), st.binary(min_size=4, max_size=4),
       st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_any_fragmentation_and_any_read_sizes_give_the_same_messages(sent, cuts, key, reads):
    stream = b"".join(client_frames(cuts, kind, value, key) for kind, value in sent)
    reader = ws.FrameReader()
    got = []
    position = 0
    i = 0
    while position < len(stream):
        size = reads[i % len(reads)]
        reader.feed(stream[position:position + size])
        position += size
        i += 1
        got += [summary(e) for e in events(reader)]
    assert got == [(kind, value) for kind, value in sent]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=30),
    st.builds(lambda first, payload, masked: bytes([first]) + (
        bytes([0x80 | len(payload)]) + MASK + ws.mask(payload, MASK) if masked
        else bytes([len(payload)]) + payload), st.integers(0, 255), st.binary(max_size=125), st.booleans()),
), max_size=10), st.integers(1, 16))
def test_fuzz_the_reader_only_ever_yields_events_or_protocol_errors(chunks, read_size):
    reader = ws.FrameReader(max_message=200)
    stream = b"".join(chunks)
    for start in range(0, len(stream), read_size):
        reader.feed(stream[start:start + read_size])
        try:
            for event in events(reader):
                assert isinstance(event, (ws.Message, ws.Ping, ws.Pong, ws.Close))
                if isinstance(event, ws.Close):
                    assert event.code == ws.NO_STATUS_RECEIVED or ws.valid_close_code(event.code)
        except ws.ProtocolError as error:
            assert error.code in (ws.PROTOCOL_ERROR, ws.INVALID_DATA, ws.MESSAGE_TOO_BIG)
            assert len(ws.close_payload(error.code, error.reason)) <= ws.MAX_CONTROL_PAYLOAD
            return


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_mask_is_its_own_inverse_and_matches_the_rfc_formula(data, key):
    masked = ws.mask(data, key)
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert ws.mask(masked, key) == data
