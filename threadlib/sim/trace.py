"""The trace of a simulated run: one digest over every event, and (when
asked) the events themselves, so that two runs can be compared event by
event.

Events are tuples of plain values (strings, ints, floats): a packet sent,
a fault decided, a packet delivered, a thread's step and the system call
it ended in, a thread spawned or finished, a crash, a partition. Packets
go into the digest whole; the kept event list holds a short digest of
each instead. ``TraceInstrument`` is the scheduler instrument that reports
one host's thread steps.

Nothing here reads a clock or the address of an object: an event must
come out the same in every run that does the same thing, in any process.
"""

from __future__ import annotations

import hashlib
import marshal
from typing import TYPE_CHECKING, Any

from .._kernel.introspect import Instrument

if TYPE_CHECKING:
    from .._kernel import Thread


class Trace:
    """A running digest (BLAKE2b) of a run's events; with ``keep=True``
    also the list of events as text, for ``check_determinism``.

    The encoded events gather in a buffer that goes into the digest a
    batch at a time (a digest of a stream is the same however the stream
    is cut): one call into the hash per 64 KiB, not two per event."""

    __slots__ = ("_digest", "_pending", "events", "count")

    def __init__(self, keep: bool = False) -> None:
        self._digest = hashlib.blake2b(digest_size=16)
        self._pending = bytearray()
        self.events: list[str] | None = [] if keep else None
        self.count = 0

    def event(self, *fields: Any) -> None:
        """Add one event made of plain values."""
        pending = self._pending
        try:
            pending += marshal.dumps(fields, 2)  # see _BATCH
        except ValueError:
            pending += repr(fields).encode()
        self.count += 1
        if self.events is not None:
            self.events.append(repr(fields))
        if len(pending) >= _BATCH:
            self._digest.update(pending)
            pending.clear()

    def packet(self, packet: bytes, *fields: Any) -> None:
        """Add one event about ``packet``: the fields, then the bytes."""
        pending = self._pending
        try:
            pending += marshal.dumps(fields, 2)  # see _BATCH
        except ValueError:
            pending += repr(fields).encode()
        pending += packet
        self.count += 1
        if self.events is not None:
            short = hashlib.blake2b(packet, digest_size=6).hexdigest()
            self.events.append(f"{repr(fields)[:-1]}, {len(packet)} bytes {short})")
        if len(pending) >= _BATCH:
            self._digest.update(pending)
            pending.clear()

    def delivery(self, packet: bytes, *fields: Any) -> None:
        """Add one event about ``packet`` arriving, whose bytes went into
        the digest when it was sent (and again if a fault changed them):
        the fields, its length and its first ``DELIVERY_HEAD`` bytes,
        which hold its IP and TCP headers, the TCP checksum over the
        payload among them. (Hashing each packet whole twice was a fifth
        of a bulk transfer's cost.)"""
        pending = self._pending
        try:
            pending += marshal.dumps((*fields, len(packet)), 2)  # see _BATCH
        except ValueError:
            pending += repr((*fields, len(packet))).encode()
        pending += packet[:DELIVERY_HEAD]
        self.count += 1
        if self.events is not None:
            short = hashlib.blake2b(packet, digest_size=6).hexdigest()
            self.events.append(f"{repr(fields)[:-1]}, {len(packet)} bytes {short})")
        if len(pending) >= _BATCH:
            self._digest.update(pending)
            pending.clear()

    def hexdigest(self) -> str:
        """The digest of every event so far (the run goes on)."""
        pending = self._pending
        if pending:
            self._digest.update(pending)
            pending.clear()
        return self._digest.copy().hexdigest()


_BATCH = 65536  # bytes of encoded events gathered before they are hashed
DELIVERY_HEAD = 64  # bytes of a delivered packet that go into the digest
# An event's fields are encoded with marshal's version 2: it has no
# back-references (they would depend on object identity) and writes floats
# in binary, so the same plain values give the same bytes in every
# process, at a sixth of repr's cost. A field marshal cannot write is
# taken by its repr.


class TraceInstrument(Instrument):
    """Reports one host's threads to the world's trace: each spawn, each
    step (with the system call it ended in) and each end, at the world's
    simulated time."""

    def __init__(self, trace: Trace, host: str, incarnation: int, now: Any) -> None:
        self.trace = trace
        self.host = host
        self.incarnation = incarnation
        self.now = now  # the world's clock (a callable)

    def thread_spawned(self, thread: Thread) -> None:
        """A thread of this host was made."""
        self.trace.event("spawn", self.now(), self.host, self.incarnation, thread.id, thread.name)

    def system_call(self, thread: Thread, syscall: Any) -> None:
        """A step ended in ``syscall``."""
        what = getattr(syscall, "what", None)
        self.trace.event("step", self.now(), self.host, self.incarnation, thread.id, type(syscall).__name__,
                         what if isinstance(what, str) else None)

    def thread_finished(self, thread: Thread, value: Any, exc: BaseException | None) -> None:
        """A thread of this host ended (its outcome's type goes in the trace)."""
        outcome = "returned" if exc is None else type(exc).__name__
        self.trace.event("end", self.now(), self.host, self.incarnation, thread.id, outcome)
