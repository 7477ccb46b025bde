"""ASGI applications the ASGI server's tests serve: a Starlette app with a
lifespan, streamed request and response bodies and a failing route, and
plain ASGI callables for the edges a framework would hide. Importable as
``tests.apps.asgi_apps:NAME`` by ``python -m apps.webserver --asgi``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


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
