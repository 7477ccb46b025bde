"""Snapshots of a simulated world, as bytes: checkpoint by replay.

CPython cannot pickle a generator's frame, so a world whose threads are
half-way through their code cannot be written out as it is. What can be
written is what *made* it: the importable setup function that built the
world (``MODULE:FUNCTION``) with its configuration, the world's options
and seed, and the log of every input the driver gave it since (a
partition, a crash, a thread spawned, how far it was run, a fork's new
seed), each with its simulated time. Restoring builds a fresh world with
the same setup and feeds it the same inputs at the same times; the run
being a function of these, it reaches the same state, and the snapshot's
checks prove it did: the trace hash and event count at the snapshot's
time, the state of every random stream, and a digest of each host's
pickled ``iolib.tcp`` stack (sans-IO state, which does pickle).

This module holds the snapshot's format and the encoding of the logged
inputs. The format is a magic line, then a JSON document, then a BLAKE2b
digest of it: plain data, so that loading a snapshot never runs code
from the file (no pickle), and a damaged or truncated one is refused
with an error naming what is wrong.

Nothing here reads a clock or a random source.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import math
from typing import Any, Callable

MAGIC = b"threadlib-sim-snapshot\n"
VERSION = 1
_DIGEST = 32  # bytes of BLAKE2b at the end


class SnapshotError(ValueError):
    """A snapshot cannot be taken (the world cannot be rebuilt from what
    it logged) or read (not a snapshot, damaged, truncated, another
    version)."""


class SnapshotMismatch(RuntimeError):
    """Restoring replayed the snapshot's inputs but did not reach the state
    it recorded: the setup function, the programs or the runtime changed
    since it was taken (or the driver did something the log does not
    hold, such as drawing from ``world.rng``). The message names what
    differs."""


class Snapshot:
    """A world's recipe up to a time: ``setup`` and ``config`` (what built
    it), ``options`` (``World``'s arguments, seed included), ``inputs``
    (the driver's inputs since, encoded) and what the state must be at
    ``time``: ``trace_hash``, ``events``, ``state`` (digests of the random
    streams and the stacks). ``to_bytes()`` / ``Snapshot.from_bytes()``."""

    __slots__ = ("setup", "config", "options", "inputs", "time", "trace_hash", "events", "state")

    def __init__(self, setup: str, config: dict[str, Any], options: dict[str, Any], inputs: list[Any], time: float,
                 trace_hash: str, events: int, state: dict[str, str]) -> None:
        self.setup = setup
        self.config = config
        self.options = options
        self.inputs = inputs
        self.time = time
        self.trace_hash = trace_hash
        self.events = events
        self.state = state

    def to_bytes(self) -> bytes:
        """The snapshot as bytes (write them to a file, send them away)."""
        body = json.dumps({"version": VERSION, "setup": self.setup, "config": self.config, "options": self.options,
                           "inputs": self.inputs, "time": self.time, "trace_hash": self.trace_hash,
                           "events": self.events, "state": self.state}, separators=(",", ":")).encode()
        return MAGIC + body + hashlib.blake2b(body, digest_size=_DIGEST).digest()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Snapshot:
        """Read a snapshot; ``SnapshotError`` saying what is wrong with a
        damaged, truncated or foreign one."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SnapshotError(f"a snapshot is bytes (from world.snapshot()), got {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(MAGIC):
            if MAGIC.startswith(data):
                raise SnapshotError(f"truncated snapshot: {len(data)} bytes, not even its header")
            raise SnapshotError("not a threadlib simulation snapshot (it does not start with "
                                f"{MAGIC.decode().strip()!r})")
        if len(data) < len(MAGIC) + _DIGEST + 2:
            raise SnapshotError(f"truncated snapshot: {len(data)} bytes")
        body, digest = data[len(MAGIC):-_DIGEST], data[-_DIGEST:]
        if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
            raise SnapshotError(f"damaged or truncated snapshot: its checksum does not match its {len(data)} bytes")
        try:
            doc = json.loads(body)
        except ValueError as exc:  # a checksum that matches garbage: made by hand
            raise SnapshotError(f"damaged snapshot: its body is not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            version = doc.get("version") if isinstance(doc, dict) else None
            raise SnapshotError(f"snapshot version {version!r} is not supported (this threadlib reads {VERSION})")
        try:
            return cls(str(doc["setup"]), dict(doc["config"]), dict(doc["options"]), list(doc["inputs"]),
                       float(doc["time"]), str(doc["trace_hash"]), int(doc["events"]), dict(doc["state"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"damaged snapshot: a field is missing or wrong ({exc!r})") from None

    def __repr__(self) -> str:
        return (f"<Snapshot {self.setup} seed={self.options.get('seed')!r} t={self.time:.6f} "
                f"inputs={len(self.inputs)} events={self.events}>")


# ---------------------------------------------------------------------------
# A digest of sans-IO state that is the same in every process


def state_digest(obj: Any) -> str:
    """A digest of ``obj``'s whole object graph, as pickle sees it
    (``__reduce_ex__``), but canonical: a ``set`` is taken in sorted
    order, so the digest is the same in every process (pickle's bytes are
    not: a set of bytes or strings is ordered by hashes that
    ``PYTHONHASHSEED`` changes)."""
    h = hashlib.blake2b(digest_size=12)
    memo: dict[int, int] = {}
    keep: list[Any] = []  # objects made while walking stay alive, so their ids stay unique
    _walk(obj, h, memo, keep)
    return h.hexdigest()


_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray)


def _walk(obj: Any, h: Any, memo: dict[int, int], keep: list[Any]) -> None:
    if isinstance(obj, _PLAIN):
        h.update(b"v" + repr(obj).encode())
        return
    if isinstance(obj, memoryview):
        h.update(b"m" + bytes(obj))
        return
    if isinstance(obj, type) or callable(obj) and not hasattr(obj, "__dict__") and hasattr(obj, "__qualname__"):
        h.update(f"c{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', repr(type(obj)))}".encode())
        return
    seen = memo.get(id(obj))
    if seen is not None:
        h.update(b"@%d" % seen)
        return
    memo[id(obj)] = len(memo)
    keep.append(obj)
    if isinstance(obj, (list, tuple)):
        h.update(b"(%d" % len(obj))
        for item in obj:
            _walk(item, h, memo, keep)
        h.update(b")")
        return
    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for key, value in obj.items():
            _walk(key, h, memo, keep)
            _walk(value, h, memo, keep)
        h.update(b"}")
        return
    if isinstance(obj, (set, frozenset)):
        h.update(b"<%d" % len(obj))
        for item in sorted(obj, key=repr):
            _walk(item, h, memo, keep)
        h.update(b">")
        return
    if callable(obj) and hasattr(obj, "__qualname__"):  # a function or bound method: its name
        h.update(f"f{getattr(obj, '__module__', '')}:{obj.__qualname__}".encode())
        return
    try:
        reduced = obj.__reduce_ex__(5)
    except Exception as exc:  # not picklable: its type is all the digest can say
        h.update(f"!{type(obj).__qualname__}:{type(exc).__name__}".encode())
        return
    if isinstance(reduced, str):
        h.update(b"g" + reduced.encode())
        return
    parts = list(reduced) + [None] * (6 - len(reduced))
    h.update(f"o{type(obj).__module__}:{type(obj).__qualname__}".encode())
    for part in parts[1:3]:
        keep.append(part)
        _walk(part, h, memo, keep)
    for items in parts[3:5]:
        if items is not None:
            listed = list(items)
            keep.append(listed)
            _walk(listed, h, memo, keep)


# ---------------------------------------------------------------------------
# References to code, and values in the input log


def reference(fn: Any) -> str | None:
    """``"module:qualname"`` if ``fn`` can be imported back by it (a
    module-level function or class, or a function of a class), else None."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    try:
        found = load(f"{module}:{qualname}")
    except SnapshotError:
        return None
    return f"{module}:{qualname}" if found is fn else None


def load(ref: str) -> Any:
    """The object ``"module:qualname"`` names (``SnapshotError`` if none)."""
    module_name, sep, name = ref.partition(":")
    if not sep or not module_name or not name:
        raise SnapshotError(f"a code reference is MODULE:NAME, got {ref!r}")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SnapshotError(f"{ref}: cannot import module {module_name!r}: {exc}") from None
    for part in name.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise SnapshotError(f"{ref}: module {module_name!r} has no {name!r}")
    return found


class Unencodable(Exception):
    """A driver input whose arguments cannot be written down (a lambda, a
    closure, an object of the program)."""


def encode(value: Any, known: Callable[[Any], dict[str, Any] | None]) -> Any:
    """``value`` as JSON data: plain values as they are, bytes, tuples, dicts,
    importable functions, and what ``known`` writes down (the world's
    hosts, their networks, methods of the world or a host: objects the
    restored world has its own of); ``Unencodable`` for anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [encode(v, known) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, known) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise Unencodable(f"a dict with keys that are not strings: {value!r:.80}")
        return {"$dict": {k: encode(v, known) for k, v in value.items()}}
    marker = known(value)
    if marker is not None:
        return marker
    if callable(value):
        ref = reference(value)
        if ref is not None:
            return {"$ref": ref}
        raise Unencodable(f"{value!r} cannot be imported back by name (a lambda, a closure or a nested function)")
    raise Unencodable(f"a {type(value).__name__} ({value!r:.80}) is not plain data")


def decode(data: Any, resolve: Callable[[dict[str, Any]], Any]) -> Any:
    """The value ``encode`` wrote as ``data``; ``resolve`` gives back what
    ``known`` wrote down."""
    if isinstance(data, list):
        return [decode(v, resolve) for v in data]
    if isinstance(data, dict):
        if "$tuple" in data:
            return tuple(decode(v, resolve) for v in data["$tuple"])
        if "$dict" in data:
            return {k: decode(v, resolve) for k, v in data["$dict"].items()}
        if "$ref" in data:
            return load(data["$ref"])
        if "$float" in data:
            return float(data["$float"])
        if "$bytes" in data:
            return base64.b64decode(data["$bytes"])
        return resolve(data)
    return data


__all__ = ["Snapshot", "SnapshotError", "SnapshotMismatch"]
