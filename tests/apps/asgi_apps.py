"""ASGI applications the ASGI server's tests serve: a Starlette app with a
lifespan, streamed request and response bodies, a failing route and
WebSocket endpoints (echo, refusals, failures, a slow reader), and
plain ASGI callables for the edges a framework would hide. Importable as
``tests.apps.asgi_apps:NAME`` by ``python -m apps.webserver --asgi``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    await asyncio.sleep(0)  # asyncio works during startup too
    print("lifespan startup", flush=True)
    yield {"token": "started-by-lifespan"}
    print("lifespan shutdown", flush=True)


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello, " + request.query_params.get("name", "world"))


async def digest(request: Request) -> Response:
    """The length and SHA-256 of the body, read as a stream."""
    h = hashlib.sha256()
    length = pieces = 0
    async for chunk in request.stream():
        h.update(chunk)
        length += len(chunk)
        pieces += bool(chunk)
    return PlainTextResponse(f"{length} {h.hexdigest()}")


async def echo(request: Request) -> Response:
    """The body back as it arrives: a streamed request into a streamed response."""
    async def chunks():
        async for chunk in request.stream():
            if chunk:
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def count(request: Request) -> Response:
    n = int(request.query_params.get("n", "5"))

    async def lines():
        for i in range(n):
            await asyncio.sleep(0)
            yield f"line {i}\n".encode()

    return StreamingResponse(lines(), media_type="text/plain")


async def state(request: Request) -> Response:
    return PlainTextResponse(f"{request.state.token} {type(asyncio.get_running_loop()).__name__}")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom from the route")


async def info(request: Request) -> Response:
    scope = request.scope
    return PlainTextResponse(f"{scope['method']} {scope['path']} {scope['raw_path']!r} "
                             f"{scope['query_string']!r} {scope['http_version']} {scope['scheme']}")


app = Starlette(routes=[
    Route("/hello", hello),
    Route("/digest", digest, methods=["POST"]),
    Route("/echo", echo, methods=["POST"]),
    Route("/count", count),
    Route("/state", state),
    Route("/boom", boom),
    Route("/info/{rest:path}", info, methods=["GET", "POST", "HEAD"]),
], lifespan=lifespan)


async def no_response(scope, receive, send):
    """Returns without answering (lifespan unsupported: it just returns)."""
    if scope["type"] == "http":
        await receive()


async def raises_before_start(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("no lifespan here")  # lifespan=auto: unsupported, not fatal
    raise ValueError("the app broke before answering")


async def bad_header(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-evil", b"a\r\nInjected: 1")]})


async def fixed_length(scope, receive, send):
    """Content-Length given by the app, body sent in three pieces."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"9"), (b"content-type", b"text/plain")]})
    for piece in (b"abc", b"def", b"ghi"):
        await send({"type": "http.response.body", "body": piece, "more_body": piece != b"ghi"})


@contextlib.asynccontextmanager
async def _failing_lifespan(app: Starlette):
    raise RuntimeError("the database is not there")
    yield  # an async generator, as a lifespan must be


failing_startup = Starlette(lifespan=_failing_lifespan)


not_callable = 42


# -- WebSocket ------------------------------------------------------------------------------
# What the WebSocket endpoints saw end their connections, for the tests
# (which run the server in-process) to wait on: ("disconnect", code,
# reason) from each endpoint that received one.
websocket_events: queue.Queue = queue.Queue()
# Set by /ws/release: /ws/hold starts reading its messages.
_released: asyncio.Event | None = None


def _release_event() -> asyncio.Event:
    global _released
    if _released is None:
        _released = asyncio.Event()
    return _released


async def ws_echo(websocket: WebSocket) -> None:
    """Echoes text as text and bytes as bytes, byte-exact. Picks the
    first subprotocol it knows of those offered. A text 'close CODE
    REASON' makes it close the connection with that code and reason."""
    known = ("chat.v2", "chat.v1")
    offered = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol=next((p for p in offered if p in known), None))
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            websocket_events.put(("disconnect", message["code"], message.get("reason", "")))
            return
        if message.get("text") is not None:
            text = message["text"]
            if text.startswith("close "):
                _, code, reason = text.split(" ", 2)
                await websocket.close(int(code), reason)
                websocket_events.put(("closed", int(code), reason))
                return
            await websocket.send_text(text)
        else:
            await websocket.send_bytes(message["bytes"])


async def ws_reject(websocket: WebSocket) -> None:
    """Closes before accepting: the handshake is refused (403)."""
    await websocket.close()


async def ws_deny(websocket: WebSocket) -> None:
    """Refuses the handshake with its own HTTP response."""
    await websocket.send_denial_response(PlainTextResponse("members only", status_code=401))


async def ws_boom(websocket: WebSocket) -> None:
    """Accepts, then raises: the client gets close code 1011."""
    await websocket.accept()
    await websocket.receive_text()
    raise RuntimeError("boom from the WebSocket route")


async def ws_boom_early(websocket: WebSocket) -> None:
    """Raises before accepting: the handshake is answered with a 500."""
    raise RuntimeError("boom before accepting")


async def ws_hold(websocket: WebSocket) -> None:
    """Accepts, reads nothing until /ws/release is opened, then counts
    what it receives until a text 'end' and sends the count, the total
    and the SHA-256 of all the bytes."""
    await websocket.accept()
    await _release_event().wait()
    h = hashlib.sha256()
    count = total = 0
    while (message := await websocket.receive())["type"] == "websocket.receive":
        if message.get("text") == "end":
            await websocket.send_text(f"{count} {total} {h.hexdigest()}")
            continue
        data = message["bytes"]
        count += 1
        total += len(data)
        h.update(data)
    websocket_events.put(("disconnect", message["code"], message.get("reason", "")))


async def ws_release(websocket: WebSocket) -> None:
    await websocket.accept()
    _release_event().set()
    await websocket.close()


app.router.routes.extend([
    WebSocketRoute("/ws/echo", ws_echo),
    WebSocketRoute("/ws/reject", ws_reject),
    WebSocketRoute("/ws/deny", ws_deny),
    WebSocketRoute("/ws/boom", ws_boom),
    WebSocketRoute("/ws/boom-early", ws_boom_early),
    WebSocketRoute("/ws/hold", ws_hold),
    WebSocketRoute("/ws/release", ws_release),
])


BIG_PIECE = bytes(range(256)) * 2048  # 512 KiB


async def big_stream(scope, receive, send):
    """64 pieces of 512 KiB (32 MiB) with a Content-Length: far more than a
    socket buffer holds, so most pieces wait for the client to read."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(64 * len(BIG_PIECE)).encode())]})
    for i in range(64):
        await send({"type": "http.response.body", "body": BIG_PIECE, "more_body": i < 63})


async def sleepy(scope, receive, send):
    """Answers after sleeping the seconds its query string names."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(float(scope["query_string"] or 0))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"awake"})


def header_shapes(headers):
    """An app that answers with ``headers`` as given (pairs of any shape)."""
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    return app
