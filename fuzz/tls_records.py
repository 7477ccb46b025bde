"""Fuzz target: the TLS record path (threadlib.io.tls) of a server-side
``TlsStream`` over an in-memory transport, fed garbage during and after
the handshake.

Input: a configuration byte (bit 0: the client first completes a real
handshake, else the input is the client's bytes from the first one;
bit 1: the stream tolerates a ragged EOF; bit 2: the client speaks TLS 1.2
rather than 1.3), then, after a handshake, records, each an op byte and
its operands:

* ``op % 4 == 0``: the client sends application data (a length byte and
  that many plaintext bytes, encrypted by the client);
* ``1``: raw bytes (a length byte and the bytes) go onto the wire as they are;
* ``2``: one byte of the next chunk delivered is XORed (2-byte position,
  modulo the chunk's length, and the XOR byte);
* ``3``: the client sends close_notify.

Each record's bytes reach the server as one transport read. The server
echoes every byte it reads until the end, then closes. The client is an
``ssl.SSLObject`` over memory BIOs driven by the transport's reads;
certificates come from trustme, made once per process.

Invariants: nothing escapes the server's calls but ``OSError`` (which
``ssl.SSLError``, ``HandshakeTimeout`` and the transport's errors are);
the plaintext the server reads is always a prefix of what the client
encrypted (TLS never yields forged or reordered bytes) and is all of it
when nothing on the wire was tampered with and the client did its part
cleanly; the echo decrypts at the client to exactly what the server read;
the transport is closed at the end and never written after its
half-close or its close.

This module must never use a socket or the network.
"""

from __future__ import annotations

import ssl
import types
from typing import Any

import threadlib
import trustme
from threadlib.io import tls
from threadlib.lowlevel import Scheduler, TimerWorker, VirtualClock

from .memory import ScriptedStream

INSTRUMENT = ["threadlib.io.tls"]

OP_DATA, OP_RAW, OP_FLIP, OP_CLOSE_NOTIFY = range(4)
HANDSHAKE, RAGGED_EOF, TLS12 = 1, 2, 4
SERVER_NAME = "fuzz.threadlib.test"

_CA = trustme.CA()
_CERT = _CA.issue_cert(SERVER_NAME)
_SERVER_CONTEXT = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
_CERT.configure_cert(_SERVER_CONTEXT)


def _client_context(tls12: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    _CA.configure_trust(context)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


_CLIENT_CONTEXTS = {False: _client_context(False), True: _client_context(True)}


def data_record(plaintext: bytes) -> bytes:
    """The client sends ``plaintext`` (at most 255 bytes)."""
    return bytes((OP_DATA, len(plaintext))) + plaintext


def raw_record(wire: bytes) -> bytes:
    """``wire`` goes onto the wire untouched (at most 255 bytes)."""
    return bytes((OP_RAW, len(wire))) + wire


def flip_record(position: int, xor: int) -> bytes:
    """One byte of the next chunk delivered is XORed with ``xor``."""
    return bytes((OP_FLIP,)) + position.to_bytes(2, "big") + bytes((xor,))


class _Client:
    """The scripted TLS client: the transport's reads ask it for the next chunk."""

    def __init__(self, config: int, script: bytes, server_out: bytearray) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = _CLIENT_CONTEXTS[bool(config & TLS12)].wrap_bio(self.incoming, self.outgoing,
                                                                      server_hostname=SERVER_NAME)
        self.handshaking = bool(config & HANDSHAKE)
        self.raw = b"" if self.handshaking else script
        self.script = script if self.handshaking else b""
        self.pos = 0
        self.server_out = server_out
        self.delivered_out = 0
        self.sent = bytearray()          # plaintext the client encrypted
        self.tampered = not self.handshaking
        self.closed_notify = False
        self.handshake_failed = False
        self.flip: tuple[int, int] | None = None  # (position, xor) for the next chunk


    def _take_server_output(self) -> None:
        new = self.server_out[self.delivered_out:]
        self.delivered_out = len(self.server_out)
        if new:
            self.incoming.write(bytes(new))

    def next_chunk(self) -> bytes:
        """What the client puts on the wire next; b"" is its EOF."""
        chunk = self._next_chunk()
        if chunk and self.flip is not None:
            where, xor = self.flip
            self.flip = None
            flipped = bytearray(chunk)
            flipped[where % len(flipped)] ^= xor
            self.tampered = True
            return bytes(flipped)
        return chunk

    def _next_chunk(self) -> bytes:
        if self.raw:
            chunk, self.raw = self.raw, b""
            return chunk
        self._take_server_output()
        if self.handshaking:
            try:
                self.ssl.do_handshake()
                self.handshaking = False
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                self.handshake_failed = True
                self.handshaking = False
                self.script = b""
            chunk = self.outgoing.read()
            if chunk:
                return chunk
            if self.handshaking:
                return b""  # the server wants input the client cannot give: end
        while self.pos < len(self.script):
            chunk = self._record()
            if chunk:
                return chunk
        return self.outgoing.read()

    def _record(self) -> bytes:
        script, pos = self.script, self.pos
        op = script[pos] & 3
        if op in (OP_DATA, OP_RAW):
            length = script[pos + 1] if pos + 1 < len(script) else 0
            body = script[pos + 2:pos + 2 + length]
            self.pos = pos + 2 + length
            if op == OP_RAW:
                self.tampered = True
                return self.outgoing.read() + body
            if self.closed_notify or not body:
                return b""
            self.ssl.write(body)
            self.sent += body
            return self.outgoing.read()
        if op == OP_FLIP:
            self.pos = pos + 4
            where = int.from_bytes(script[pos + 1:pos + 3], "big")
            xor = script[pos + 3] if pos + 3 < len(script) else 0
            if xor:
                self.flip = (where, xor)
            return b""
        self.pos = pos + 1
        if not self.closed_notify:
            self.closed_notify = True
            try:
                self.ssl.unwrap()
            except ssl.SSLError:
                pass  # it waits for the server's: the client's own is queued
        return self.outgoing.read()

    def read_echo(self) -> bytes:
        """Decrypt what the server sent after the handshake."""
        self._take_server_output()
        got = bytearray()
        while True:
            try:
                piece = self.ssl.read(65536)
            except ssl.SSLError:
                # The end of what came (want-read), close_notify, or the
                # alert the server's OpenSSL sends as it fails: the echo
                # is what was decrypted before it.
                return bytes(got)
            if not piece:
                return bytes(got)
            got += piece


def serve(config: int, script: bytes) -> tuple[_Client, ScriptedStream, bytes, BaseException | None]:
    """Run the server side over the scripted client; (client, transport,
    plaintext read, the exception that ended it or None)."""
    holder: dict[str, Any] = {}
    transport = ScriptedStream(lambda: holder["client"].next_chunk())
    client = holder["client"] = _Client(config, script, transport.written)
    stream = tls.TlsStream(transport, _SERVER_CONTEXT, server_side=True, ragged_eof=bool(config & RAGGED_EOF))
    received = bytearray()
    ended: list[BaseException | None] = [None]

    @types.coroutine
    def server() -> Any:
        try:
            yield from stream.do_handshake()
            while data := (yield from stream.recv(65536)):
                received.extend(data)
                yield from stream.sendall(data)
        except OSError as exc:  # what the stream documents (ssl.SSLError is one)
            ended[0] = exc
        finally:
            stream.close()

    threadlib.run(server(), scheduler=Scheduler([TimerWorker()], clock=VirtualClock()), handle_sigint=False)
    return client, transport, bytes(received), ended[0]


def TestOneInput(data: bytes) -> None:
    """Serve ``data`` (see the module docstring) and check the invariants."""
    if not data:
        return
    client, transport, received, ended = serve(data[0], data[1:])
    assert transport.closed, "the transport was not closed"
    assert not transport.misuse, f"transport misuse: {transport.misuse}"
    sent = bytes(client.sent)
    assert sent.startswith(received), "the server read plaintext the client never sent"
    clean = not client.tampered and not client.handshake_failed
    if clean:
        if client.closed_notify or data[0] & RAGGED_EOF:
            assert ended is None, f"a clean session ended in {ended!r}"
        else:
            assert ended is None or isinstance(ended, ssl.SSLEOFError), f"a clean session ended in {ended!r}"
        assert received == sent, f"read {len(received)} of {len(sent)} bytes sent cleanly"
    if clean and not client.closed_notify:
        assert client.read_echo() == received, "the echo is not what the server read"
