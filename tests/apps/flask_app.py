"""A small Flask application the WSGI tests serve (in-process and with
``python -m apps.webserver --wsgi tests.apps.flask_app:app``): routing,
form and JSON bodies, a streamed upload, a streamed response that blocks
on a threadlib Event with a plain call, a file, and a failure."""

from __future__ import annotations

import hashlib
import os

from flask import Flask, Response, jsonify, request, send_file

import threadlib
from threadlib.frontends import green

app = Flask(__name__)
# A view's exception reaches the server (which answers 500 and logs it)
# instead of Flask's own handler.
app.config["PROPAGATE_EXCEPTIONS"] = True

_gates: dict[str, threadlib.Event] = {}


def _gate(name: str) -> threadlib.Event:
    return _gates.setdefault(name, threadlib.Event())


@app.get("/")
def front() -> str:
    return "front page\n"


@app.get("/items/<int:number>")
def item(number: int) -> Response:
    return jsonify(number=number, q=request.args.get("q"))


@app.post("/form")
def form() -> Response:
    return jsonify(sorted(request.form.items()))


@app.post("/json")
def json_body() -> Response:
    return jsonify(got=request.get_json())


@app.route("/upload", methods=["POST", "PUT"])
def upload() -> Response:
    # Streamed: the body is read piece by piece, never held whole.
    digest = hashlib.sha256()
    size = 0
    while piece := request.stream.read(65536):
        digest.update(piece)
        size += len(piece)
    return jsonify(size=size, sha256=digest.hexdigest())


@app.get("/stream/<name>")
def stream(name: str) -> Response:
    def pieces():
        yield b"first\n"
        green.call(_gate(name).wait())  # blocks this green thread only
        yield b"second\n"

    return Response(pieces(), mimetype="text/plain")


@app.post("/release/<name>")
def release(name: str) -> str:
    _gate(name).set()
    return "released\n"


@app.get("/wait-for-file")
def wait_for_file() -> Response:
    path = request.args["path"]

    def pieces():
        yield b"begun\n"
        while not os.path.exists(path):
            green.sleep(0.01)
        yield b"ended\n"

    return Response(pieces(), mimetype="text/plain")


@app.get("/file")
def a_file() -> Response:
    return send_file(request.args["path"], mimetype="application/octet-stream")


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("the view failed on purpose")
