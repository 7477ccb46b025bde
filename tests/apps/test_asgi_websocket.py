"""WebSocket in the ASGI server (apps.webserver.asgi with
apps.webserver.websocket): Starlette WebSocket endpoints served over real
sockets, driven by a real third-party client (the ``websockets`` library)
and, for what a well-behaved client never sends, by raw frames built here
by hand (RFC 6455 section 5.2) rather than with the codec under test."""

from __future__ import annotations

import base64
import hashlib
import logging
import queue
import select
import signal
import socket
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from . import asgi_apps, kill_group
from .test_asgi import ROOT, Background, raw

pytestmark = pytest.mark.timeout(90)

MASK = b"\x37\xfa\x21\x3d"
KEY = base64.b64encode(bytes(range(16)))


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://", 1) + path


def next_event(timeout: float = 20) -> tuple:
    """The next connection end an endpoint of asgi_apps reported."""
    return asgi_apps.websocket_events.get(timeout=timeout)


@pytest.fixture(autouse=True)
def no_leftover_events():
    while True:
        try:
            asgi_apps.websocket_events.get_nowait()
        except queue.Empty:
            break
    yield


# -- frames by hand: the client's side of RFC 6455, independent of the codec under test ----------


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = True,
          length: int | None = None) -> bytes:
    """One client frame; ``length`` overrides the length field (to lie)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client speaking raw frames over a plain socket."""

    def __init__(self, base: str, path: str = "/ws/echo", headers: bytes = b""):
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
                          % (path.encode(), KEY, headers))
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed during the handshake: {self.buffer!r}"
            self.buffer += chunk
        self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed with {self.buffer!r} read")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the server's next frame (never masked)."""
        first, second = self._exactly(2)
        assert not second & 0x80, "a server frame was masked"
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exactly(8))[0]
        return bool(first & 0x80), first & 0x0F, self._exactly(n)

    def read_close(self) -> tuple[int | None, bytes]:
        """The server's close frame (code, reason), skipping data frames; then the end of the stream."""
        while True:
            fin, opcode, payload = self.read_frame()
            if opcode == 0x8:
                break
        code = struct.unpack("!H", payload[:2])[0] if payload else None
        assert self.sock.recv(1) == b"", "the server kept the connection open after its close frame"
        return code, payload[2:]

    def close(self):
        self.sock.close()


# -- the real client: echo, fragments, pings, subprotocols, closes ---------------------------------


def test_echo_text_and_binary_byte_exact_including_1_mib_and_fragments():
    big = bytes(range(256)) * 4096  # 1 MiB
    text = "threadlib \u00e9\u4e2d\U0001f600 " * 40000  # about 1 MiB of UTF-8, multi-byte characters
    with Background(asgi_apps.app) as base:
        with connect(ws_url(base, "/ws/echo"), max_size=None, compression=None) as ws:
            ws.send("hello")
            assert ws.recv() == "hello"
            ws.send(b"\x00\xff\x00binary")
            assert ws.recv() == b"\x00\xff\x00binary"
            ws.send(b"")
            assert ws.recv() == b""
            ws.send(big)
            assert ws.recv() == big
            ws.send(text)
            assert ws.recv() == text
            # Fragmented messages (the client sends one frame per piece).
            ws.send([b"frag", b"", b"mented \xff", big])
            assert ws.recv() == b"fragmented \xff" + big
            ws.send(["a"] * 1000)
            assert ws.recv() == "a" * 1000
        # The client's normal close reaches the app as code 1000.
        assert next_event() == ("disconnect", 1000, "")
        # A character split across fragments, with a ping between them (control
        # frames may come amid a fragmented message).
        client = RawClient(base)
        client.sock.sendall(frame(0x1, b"caf\xc3", fin=False) + frame(0x9, b"mid") + frame(0x0, b"\xa9!"))
        assert client.read_frame() == (True, 0xA, b"mid")
        assert client.read_frame() == (True, 0x1, "caf\u00e9!".encode())
        client.sock.sendall(frame(0x8, struct.pack("!H", 1000) + "d\u00e9j\u00e0".encode()))
        assert client.read_close() == (1000, b"")
        assert next_event() == ("disconnect", 1000, "d\u00e9j\u00e0")


def test_subprotocol_negotiation():
    with Background(asgi_apps.app) as base:
        with connect(ws_url(base, "/ws/echo"), subprotocols=["mqtt", "chat.v1", "chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v1"  # the first offered that the app knows
            assert ws.response.headers["Sec-WebSocket-Protocol"] == "chat.v1"
        with connect(ws_url(base, "/ws/echo"), subprotocols=["mqtt"]) as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Protocol" not in ws.response.headers
        with connect(ws_url(base, "/ws/echo")) as ws:
            assert ws.subprotocol is None
            ws.send("still works")
            assert ws.recv() == "still works"


def test_pings_are_answered_with_their_payload():
    with Background(asgi_apps.app) as base:
        with connect(ws_url(base, "/ws/echo")) as ws:
            pong = ws.ping(b"are you there")
            assert pong.wait(20)
        client = RawClient(base)
        client.sock.sendall(frame(0x9, b"\x00payload\xff") + frame(0x1, b"after the ping"))
        assert client.read_frame() == (True, 0xA, b"\x00payload\xff")
        assert client.read_frame() == (True, 0x1, b"after the ping")
        # An unsolicited pong is allowed and ignored.
        client.sock.sendall(frame(0xA, b"unasked") + frame(0x2, b"next"))
        assert client.read_frame() == (True, 0x2, b"next")
        client.sock.sendall(frame(0x8, struct.pack("!H", 1000)))
        assert client.read_close() == (1000, b"")
        client.close()


def test_close_codes_both_ways():
    with Background(asgi_apps.app) as base:
        # The client closes: the app sees its code and reason, the server echoes the code.
        with connect(ws_url(base, "/ws/echo")) as ws:
            ws.close(4001, "client leaves")
            assert ws.close_code == 4001
        assert next_event() == ("disconnect", 4001, "client leaves")
        # The app closes: the client receives its code and reason.
        with connect(ws_url(base, "/ws/echo")) as ws:
            ws.send("close 4002 server says bye")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 4002
            assert closed.value.rcvd.reason == "server says bye"
        assert next_event() == ("closed", 4002, "server says bye")
        # A close frame without a code: the app gets 1005 and the answer carries none.
        client = RawClient(base)
        client.sock.sendall(frame(0x8, b""))
        assert client.read_close() == (None, b"")
        assert next_event() == ("disconnect", 1005, "")


def test_a_refused_handshake_is_a_403_or_the_apps_own_response():
    with Background(asgi_apps.app) as base:
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(base, "/ws/reject"))
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as denied:
            connect(ws_url(base, "/ws/deny"))
        assert denied.value.response.status_code == 401
        assert denied.value.response.body == b"members only"
        with pytest.raises(InvalidStatus) as missing:
            connect(ws_url(base, "/ws/no-such-route"))
        assert missing.value.response.status_code == 403  # Starlette closes unrouted WebSockets


@pytest.mark.parametrize("headers, status", [
    (b"Sec-WebSocket-Version: 8\r\n", 426),
    (b"", 426),  # no version at all
    (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n", 400),  # a 5-byte key
    (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not base64!!!!!!!!!!!\r\n", 400),
    (b"Sec-WebSocket-Version: 13\r\n", 400),  # no key
])
def test_bad_handshakes_are_400_or_426(headers, status):
    with Background(asgi_apps.app) as base:
        reply = raw(base, b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          + headers + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 %d " % status), reply
        if status == 426:
            assert b"\r\nSec-WebSocket-Version: 13\r\n" in reply
        # Upgrade without 'Connection: Upgrade', and a POST, are refused too.
        reply = raw(base, b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: " + KEY + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 ")
        reply = raw(base, b"POST /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + KEY + b"\r\nContent-Length: 0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400 ")


def test_the_handshake_answer_byte_exact_and_frames_sent_with_it():
    with Background(asgi_apps.app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            # The first frame arrives in the same segment as the handshake.
            sock.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         + frame(0x1, b"early"))
            expected = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"  # RFC 6455 section 1.3's example
                        b"\x81\x05early")
            got = b""
            while len(got) < len(expected):
                chunk = sock.recv(65536)
                assert chunk
                got += chunk
            assert got == expected


def test_an_oversize_message_is_closed_with_1009():
    with Background(asgi_apps.app, websocket_max_message=1000) as base:
        with connect(ws_url(base, "/ws/echo"), compression=None) as ws:
            ws.send(b"x" * 1000)  # the limit itself passes
            assert ws.recv() == b"x" * 1000
            ws.send(b"y" * 1001)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 1009
        assert next_event()[:2] == ("disconnect", 1009)
        # Fragments that add up to too much, refused at the fragment crossing the limit.
        client = RawClient(base)
        client.sock.sendall(frame(0x2, b"a" * 600, fin=False) + frame(0x0, b"b" * 401, fin=True))
        assert client.read_close()[0] == 1009
        # A frame header declaring 2**40 bytes is refused without waiting for them.
        client = RawClient(base)
        client.sock.sendall(frame(0x2, b"", length=1 << 40)[:-4] + MASK)
        assert client.read_close()[0] == 1009


def test_a_client_that_vanishes_is_a_1006_disconnect():
    with Background(asgi_apps.app) as base:
        client = RawClient(base)
        client.sock.sendall(frame(0x1, b"hi"))
        assert client.read_frame() == (True, 0x1, b"hi")
        client.close()  # no close frame
        assert next_event() == ("disconnect", 1006, "")
        # Reset mid-frame.
        client = RawClient(base)
        client.sock.sendall(frame(0x2, b"z" * 100)[:30])
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert next_event() == ("disconnect", 1006, "")
        # The server goes on.
        with connect(ws_url(base, "/ws/echo")) as ws:
            ws.send("alive")
            assert ws.recv() == "alive"


def test_app_failures_are_1011_after_accept_and_500_before(caplog):
    caplog.set_level(logging.INFO, logger="apps.webserver.asgi")
    with Background(asgi_apps.app, app_name="ws-app") as base:
        with connect(ws_url(base, "/ws/boom")) as ws:
            ws.send("go")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 1011
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(base, "/ws/boom-early"))
        assert refused.value.response.status_code == 500
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert failures == ["ASGI app ws-app raised while serving the WebSocket /ws/boom",
                        "ASGI app ws-app raised while serving the WebSocket /ws/boom-early"]


def test_backpressure_the_server_stops_reading_for_an_app_that_does_not():
    piece = bytes(range(256)) * 256  # 64 KiB
    with Background(asgi_apps.app) as base:
        client = RawClient(base, "/ws/hold")
        client.sock.setblocking(False)
        message = frame(0x2, piece)
        sent = 0
        # Send while the socket takes more, waiting up to 2 s each time it is
        # full: a server that reads without bound empties it again and again
        # (until the 64 MiB cap), one that stops leaves it full.
        while sent < 64 * 1024 * 1024:
            try:
                sent += client.sock.send(message[sent % len(message):])
            except BlockingIOError:
                if not select.select([], [client.sock], [], 2.0)[1]:
                    break
        assert sent < 64 * 1024 * 1024, "the server kept reading for an app that reads nothing"
        with connect(ws_url(base, "/ws/release")) as release:
            with pytest.raises(ConnectionClosed):
                release.recv()
        client.sock.setblocking(True)
        rest = len(message) - sent % len(message)
        client.sock.sendall(message[sent % len(message):] + frame(0x1, b"end"))
        count = (sent + rest) // len(message)
        _, opcode, reply = client.read_frame()
        digest = hashlib.sha256(piece * count).hexdigest()
        assert reply.decode() == f"{count} {count * len(piece)} {digest}"
        client.sock.sendall(frame(0x8, struct.pack("!H", 1000)))
        assert client.read_close() == (1000, b"")


def test_sigterm_drain_closes_websockets_with_1001():
    background = Background(asgi_apps.app)
    base = background.__enter__()
    try:
        with connect(ws_url(base, "/ws/echo")) as ws:
            ws.send("before")
            assert ws.recv() == "before"
            # Background's exit stops the server (and returns once it has):
            # the open WebSocket gets a Going Away first.
            background.__exit__(None, None, None)
            background = None
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
    finally:
        if background is not None:
            background.__exit__(None, None, None)
    assert closed.value.rcvd.code == 1001
    assert next_event() == ("disconnect", 1001, "the server is shutting down")


# -- frames a client must not send ----------------------------------------------------------------

MALFORMED = [
    ("reserved bit 1 without an extension", frame(0x1, b"x", rsv=4), 1002),
    ("reserved bits 2 and 3", frame(0x2, b"x", rsv=3), 1002),
    ("unknown data opcode 3", frame(0x3, b"x"), 1002),
    ("unknown control opcode 0xB", frame(0xB, b""), 1002),
    ("unmasked frame", frame(0x1, b"x", masked=False), 1002),
    ("ping over 125 bytes", frame(0x9, b"p" * 126), 1002),
    ("fragmented ping", frame(0x9, b"p", fin=False), 1002),
    ("fragmented close", frame(0x8, struct.pack("!H", 1000), fin=False), 1002),
    ("continuation with no message", frame(0x0, b"x"), 1002),
    ("new message inside a fragmented one", frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002),
    ("64-bit length with its top bit set", frame(0x2, b"", length=1 << 63)[:-4] + MASK, 1002),
    ("text not UTF-8", frame(0x1, b"ok \xff"), 1007),
    ("a surrogate in UTF-8", frame(0x1, b"\xed\xa0\x80"), 1007),
    ("UTF-8 broken across fragments", frame(0x1, b"\xc3", fin=False) + frame(0x0, b"("), 1007),
    ("UTF-8 truncated at the message's end", frame(0x1, b"caf\xc3"), 1007),
    ("close payload of one byte", frame(0x8, b"\x03"), 1002),
    ("close code 1005 on the wire", frame(0x8, struct.pack("!H", 1005)), 1002),
    ("close code 1006 on the wire", frame(0x8, struct.pack("!H", 1006)), 1002),
    ("close code 999", frame(0x8, struct.pack("!H", 999)), 1002),
    ("close code 2000 (reserved)", frame(0x8, struct.pack("!H", 2000)), 1002),
    ("close code 5000", frame(0x8, struct.pack("!H", 5000)), 1002),
    ("close reason not UTF-8", frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
]


def test_each_malformed_frame_is_refused_with_its_close_code(caplog):
    caplog.set_level(logging.INFO, logger="apps.webserver.asgi")
    with Background(asgi_apps.app) as base:
        for what, data, code in MALFORMED:
            client = RawClient(base)
            client.sock.sendall(frame(0x1, b"fine"))
            assert client.read_frame() == (True, 0x1, b"fine"), what
            client.sock.sendall(data)
            assert client.read_close()[0] == code, what
            client.close()
            assert next_event()[:2] == ("disconnect", code), what
        # A frame that is fine after all that: the server serves on.
        with connect(ws_url(base, "/ws/echo")) as ws:
            ws.send("still serving")
            assert ws.recv() == "still serving"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("broke the protocol" in r.getMessage() for r in caplog.records) == len(MALFORMED)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda op, payload, fin, rsv, masked: frame(op, payload, fin, rsv, masked),
              st.integers(0, 15), st.binary(max_size=200), st.booleans(), st.integers(0, 7),
              st.booleans())), min_size=1, max_size=8))
def test_random_frames_over_a_socket_end_in_a_close_code_never_a_crash(junk, caplog):
    """Random (mostly malformed) frame sequences: whatever the server
    answers is a well-formed close with a protocol code, or the echo of
    what was valid; it logs no error and keeps serving."""
    with caplog.at_level(logging.INFO, logger="apps.webserver.asgi"):
        client = RawClient(SERVER["base"])
        # Then the end of the stream: junk may leave a frame the server waits to complete.
        client.sock.sendall(b"".join(junk))
        client.sock.shutdown(socket.SHUT_WR)
        code = "no close frame"
        try:
            while True:
                fin, opcode, payload = client.read_frame()
                assert opcode in (0x1, 0x2, 0xA, 0x8), f"the server sent opcode {opcode:#x}"
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if payload else None
                    break
        except EOFError:
            pass  # the stream ended inside a frame: the server closed without a close frame (1006)
        assert code in ("no close frame", None, 1002, 1007, 1009) or 1000 <= code <= 1014 or 3000 <= code <= 4999
        assert client.sock.recv(1) == b""
        client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


SERVER: dict = {}


@pytest.fixture(scope="module", autouse=True)
def shared_server():
    with Background(asgi_apps.app, websocket_max_message=4096) as base:
        SERVER["base"] = base
        yield


# -- the program ---------------------------------------------------------------------------------


def test_program_ws_max_message_and_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "apps.webserver", "--asgi", "tests.apps.asgi_apps:app",
                             "--port", "0", "--ws-max-message", "100"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline() == "lifespan startup\n"
        banner = proc.stdout.readline()
        base = banner.split(" on ")[1].split("/ ")[0]
        with connect(ws_url(base, "/ws/echo"), compression=None) as ws:
            ws.send(b"m" * 100)
            assert ws.recv() == b"m" * 100
            ws.send(b"m" * 101)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 1009
        with connect(ws_url(base, "/ws/echo")) as ws:
            ws.send("before SIGTERM")
            assert ws.recv() == "before SIGTERM"
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 1001
        out, _ = proc.communicate(timeout=30)
    finally:
        kill_group(proc)
    assert proc.returncode == 0
    assert "lifespan shutdown\n" in out


def test_program_refuses_a_bad_ws_max_message():
    result = subprocess.run([sys.executable, "-m", "apps.webserver", "--asgi", "tests.apps.asgi_apps:app",
                             "--ws-max-message", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--ws-max-message must be at least 1" in result.stderr


def test_a_client_that_never_answers_our_close_is_cut_after_the_close_timeout():
    with Background(asgi_apps.app, websocket_close_timeout=0.5) as base:
        client = RawClient(base)
        client.sock.sendall(frame(0x1, b"close 4003 going"))
        _, opcode, payload = client.read_frame()
        assert (opcode, payload) == (0x8, struct.pack("!H", 4003) + b"going")
        # No answer from us: the server closes the TCP connection itself, the app sees 1006.
        assert client.sock.recv(1) == b""
        assert next_event() == ("closed", 4003, "going")
        client.close()


def test_wss_over_tls(tmp_path):
    import ssl

    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with Background(asgi_apps.app, tls_context=server_context) as base:
        url = base.replace("http://", "wss://", 1) + "/ws/echo"
        with connect(url, ssl=client_context, subprotocols=["chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v2"
            payload = bytes(range(256)) * 1024
            ws.send(payload)
            assert ws.recv() == payload
            assert ws.ping(b"tls").wait(20)
        assert next_event() == ("disconnect", 1000, "")
