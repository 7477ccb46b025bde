"""The WebSocket protocol (RFC 6455) on the wire, server side, sans-IO: the
opening handshake (checking a client's Upgrade request, the
Sec-WebSocket-Accept answer) and the framing (parsing a client's frames
into messages and control events, building the server's frames).

``FrameReader`` is fed whatever arrived and hands back one event at a time:
a whole text or binary message (fragments joined, text decoded), a ping,
a pong or a close. Everything RFC 6455 makes a client's fault raises
``ProtocolError`` carrying the close code the server must answer with:
1002 for a framing error (reserved bits without an extension, an unknown
opcode, a fragmented or long control frame, a continuation out of place,
an unmasked frame, a bad close payload), 1007 for text that is not
UTF-8, 1009 for a message over the size limit (refused from its header,
before its payload is buffered). The RFC's sections are the spec; the
names below follow them.

This module never touches sockets, clocks or randomness, never buffers
more than one message (up to the limit) plus one frame header, and never
lets an exception other than ``ProtocolError`` out of the reader.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
from typing import Iterable, Union

# Section 5.2: opcodes.
CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA
_DATA_OPCODES = frozenset((CONTINUATION, TEXT, BINARY))
_CONTROL_OPCODES = frozenset((CLOSE, PING, PONG))

# Section 7.4.1: close codes.
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
NO_STATUS_RECEIVED = 1005  # never on the wire: "the close frame had no code"
ABNORMAL_CLOSURE = 1006  # never on the wire: "the connection ended without a close frame"
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011

MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2
WEBSOCKET_VERSION = b"13"
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # section 1.3


def valid_close_code(code: int) -> bool:
    """May ``code`` appear in a close frame (section 7.4: the defined codes
    that are not reserved for local use, and 3000-4999 for libraries and
    applications)?"""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


class ProtocolError(Exception):
    """The peer broke RFC 6455: ``code`` is the close code to answer with,
    ``reason`` says what was wrong (short enough for a close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """An Upgrade request the server refuses: the HTTP ``status`` (400, or
    426 for a version other than 13) and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# -- the opening handshake (section 4.2) -----------------------------------------------------


def _tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The comma-separated tokens of every ``name`` header, lower-cased."""
    found = []
    for key, value in headers:
        if key == name:
            found.extend(token.strip().lower() for token in value.split(b","))
    return [token for token in found if token]


def wants_websocket(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Does a request (its lower-cased header names) ask to upgrade to a WebSocket?"""
    return b"websocket" in _tokens(headers, b"upgrade")


def check_handshake(method: bytes, http_version: str,
                    headers: list[tuple[bytes, bytes]]) -> tuple[bytes, list[str]]:
    """Check a client's opening handshake (section 4.2.1): its
    Sec-WebSocket-Key and the subprotocols it offers, in its order;
    ``HandshakeError`` naming what is wrong otherwise."""
    if method != b"GET":
        raise HandshakeError(400, f"a WebSocket handshake must be a GET, not {method.decode('latin-1')}")
    if http_version != "1.1":
        raise HandshakeError(400, f"a WebSocket handshake must be HTTP/1.1, not HTTP/{http_version}")
    if b"upgrade" not in _tokens(headers, b"connection"):
        raise HandshakeError(400, "a WebSocket handshake needs 'Connection: Upgrade'")
    if not any(key == b"host" for key, _ in headers):
        raise HandshakeError(400, "a WebSocket handshake needs a Host header")
    versions = [value.strip() for key, value in headers if key == b"sec-websocket-version"]
    if versions != [WEBSOCKET_VERSION]:
        raise HandshakeError(426, "this server speaks WebSocket version 13 only")
    keys = [value.strip() for key, value in headers if key == b"sec-websocket-key"]
    if len(keys) != 1:
        raise HandshakeError(400, "a WebSocket handshake needs exactly one Sec-WebSocket-Key")
    try:
        nonce = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:
        raise HandshakeError(400, "the Sec-WebSocket-Key is not 16 bytes in base64")
    try:
        offered = [token.decode("ascii") for key, value in headers if key == b"sec-websocket-protocol"
                   for token in (t.strip() for t in value.split(b",")) if token]
    except UnicodeDecodeError:
        raise HandshakeError(400, "a Sec-WebSocket-Protocol is not ASCII") from None
    return keys[0], offered


def accept_key(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept answering the client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


# -- frames (section 5) --------------------------------------------------------------------


def mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the 4-byte masking ``key`` repeated (section 5.3); its
    own inverse. One big-integer XOR: linear, no Python loop per byte."""
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """One frame: a server's (unmasked), or a client's with ``mask_key``."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask_key is not None:
        return head + mask_key + mask(payload, mask_key)
    return head + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: ``code`` and ``reason``; empty for 1005
    (no status). ValueError for a code that may not be sent or a reason
    over 123 bytes of UTF-8."""
    if code == NO_STATUS_RECEIVED:
        return b""
    if not valid_close_code(code):
        raise ValueError(f"WebSocket close code {code} may not be sent (1000-1003, 1007-1014 or 3000-4999)")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON:
        raise ValueError(f"WebSocket close reason is {len(encoded)} bytes of UTF-8; at most {MAX_CLOSE_REASON}")
    return code.to_bytes(2, "big") + encoded


def close_frame(code: int, reason: str = "") -> bytes:
    """A server's close frame (``close_payload`` says what may be in it)."""
    return encode_frame(CLOSE, close_payload(code, reason))


class Message:
    """A whole data message: ``text`` (str) for a text message, ``data``
    (bytes) for a binary one; the other is None."""

    __slots__ = ("text", "data")

    def __init__(self, text: str | None, data: bytes | None) -> None:
        self.text = text
        self.data = data

    def __repr__(self) -> str:
        return f"Message(text={self.text!r})" if self.text is not None else f"Message(data={self.data!r})"


class Ping:
    """A ping; the answer is a pong with the same ``payload``."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    """A pong (answered or unsolicited: section 5.5.3 allows both)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """The peer's close frame: its ``code`` (1005 if it gave none) and ``reason``."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


Event = Union[Message, Ping, Pong, Close]


class FrameReader:
    """Parses the frames a client sends (every one must be masked) into events.

    ``feed(data)`` adds bytes; ``next_event()`` returns the next complete
    event or None until more bytes are fed. A message whose fragments add
    up to more than ``max_message`` bytes is refused (1009) as soon as the
    frame header that crosses the limit arrives. After a ``Close`` or a
    ``ProtocolError`` the reader is finished: it returns None (after a
    close) or raises the same error again."""

    def __init__(self, max_message: int = 16 * 1024 * 1024, require_mask: bool = True) -> None:
        if max_message < 1:
            raise ValueError(f"max_message must be at least 1 byte, not {max_message}")
        self.max_message = max_message
        self.require_mask = require_mask
        self._buffer = bytearray()
        self._message_opcode: int | None = None  # TEXT or BINARY while a fragmented message is open
        self._parts: list[bytes] = []
        self._text_parts: list[str] = []
        self._message_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self._failure: ProtocolError | None = None
        self.closed = False  # a close frame was read

    def feed(self, data: bytes) -> None:
        """Add bytes received from the client."""
        if not self.closed and self._failure is None:
            self._buffer += data

    def next_event(self) -> Event | None:
        """The next event, or None until more bytes arrive; ProtocolError
        (with the close code to send) if the client broke the protocol."""
        if self._failure is not None:
            raise self._failure
        if self.closed:
            return None
        try:
            return self._next_event()
        except ProtocolError as error:
            self._fail(error)
            raise

    def _fail(self, error: ProtocolError) -> None:
        self._failure = error
        self._buffer = bytearray()
        self._parts, self._text_parts = [], []

    def _next_event(self) -> Event | None:
        while True:
            buffer = self._buffer
            have = len(buffer)
            if have < 2:
                return None
            first, second = buffer[0], buffer[1]
            fin = bool(first & 0x80)
            opcode = first & 0x0F
            length = second & 0x7F
            start = 2
            if length == 126:
                if have < 4:
                    return None
                length = int.from_bytes(buffer[2:4], "big")
                start = 4
            elif length == 127:
                if have < 10:
                    return None
                length = int.from_bytes(buffer[2:10], "big")
                start = 10
                if length >> 63:
                    raise ProtocolError(PROTOCOL_ERROR, "frame length has its most significant bit set")
            self._check_header(first, second, opcode, fin, length)
            masked = bool(second & 0x80)
            if masked:
                start += 4
            end = start + length
            if have < end:
                return None
            payload = bytes(buffer[start:end])
            if masked:
                payload = mask(payload, bytes(buffer[start - 4:start]))
            del buffer[:end]
            event = self._frame(opcode, fin, payload)
            if event is not None:
                return event

    def _check_header(self, first: int, second: int, opcode: int, fin: bool, length: int) -> None:
        """Refuse a frame from its header alone (section 5.2, 5.4, 5.5)."""
        if first & 0x70:
            raise ProtocolError(PROTOCOL_ERROR, "reserved bits set but no extension was negotiated")
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise ProtocolError(PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(PROTOCOL_ERROR, f"control frame payload over {MAX_CONTROL_PAYLOAD} bytes")
        elif opcode in _DATA_OPCODES:
            if opcode == CONTINUATION and self._message_opcode is None:
                raise ProtocolError(PROTOCOL_ERROR, "continuation frame without a message to continue")
            if opcode != CONTINUATION and self._message_opcode is not None:
                raise ProtocolError(PROTOCOL_ERROR, "new message before the fragmented one ended")
            if self._message_size + length > self.max_message:
                raise ProtocolError(MESSAGE_TOO_BIG, f"message over {self.max_message} bytes")
        else:
            raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if self.require_mask and not second & 0x80:
            raise ProtocolError(PROTOCOL_ERROR, "client frame not masked")

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        if opcode == PING:
            return Ping(payload)
        if opcode == PONG:
            return Pong(payload)
        if opcode == CLOSE:
            return self._close(payload)
        if opcode != CONTINUATION:
            self._message_opcode = opcode
            self._decoder = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None
        self._message_size += len(payload)
        if self._decoder is not None:
            try:
                # Decoding each fragment as it comes fails a bad message at
                # its first bad byte, not after the whole of it (section 8.1).
                self._text_parts.append(self._decoder.decode(payload, final=fin))
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_DATA, "text message is not valid UTF-8") from None
        else:
            self._parts.append(payload)
        if not fin:
            return None
        if self._decoder is not None:
            message = Message("".join(self._text_parts), None)
        else:
            message = Message(None, b"".join(self._parts))
        self._message_opcode = self._decoder = None
        self._parts, self._text_parts = [], []
        self._message_size = 0
        return message

    def _close(self, payload: bytes) -> Close:
        if not payload:
            code, reason = NO_STATUS_RECEIVED, ""
        elif len(payload) == 1:
            raise ProtocolError(PROTOCOL_ERROR, "close frame payload of one byte")
        else:
            code = int.from_bytes(payload[:2], "big")
            if not valid_close_code(code):
                raise ProtocolError(PROTOCOL_ERROR, f"close code {code} is not one a peer may send")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_DATA, "close reason is not valid UTF-8") from None
        self.closed = True
        self._buffer = bytearray()
        return Close(code, reason)
