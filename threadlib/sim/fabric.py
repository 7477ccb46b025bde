"""The simulated fabric's parts: link parameters, one direction of a link
with its fault decisions, and the packet device a simulated host's stack
reads and writes.

A ``Direction`` decides the fate of every packet sent over it when it is
sent: lost, held, queued behind the bandwidth limit, corrupted (one bit
flipped), reordered (delayed past later packets), duplicated, and when it
arrives. Each direction draws from its own random stream, seeded from the
world's seed and the two host names, so the faults of one link do not
shift when traffic on another changes, and every decision is reported to
the world's trace (a later shrinker can replay or drop them one by one).

A ``SimDevice`` is what ``UserTcpWorker`` reads and writes instead of a TUN
device: it has no fd (``fileno()`` is -1), takes packets from the stack
and hands them to the world, and keeps delivered packets in an inbox
until the worker reads them.

Nothing here reads a clock or a global random source, and nothing waits:
the world calls in with its simulated time.
"""

from __future__ import annotations

import collections
import math
import random
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .world import Host


class LinkParams:
    """The behaviour of one direction of a link, checked at construction
    (``ValueError`` naming the parameter and the link).

    ``latency`` and ``jitter`` are seconds (each packet takes ``latency``
    plus a uniform draw from ``[0, jitter)``; jitter alone keeps packets in
    order); ``loss``, ``duplicate``, ``reorder`` and ``corrupt`` are
    per-packet probabilities; ``bandwidth`` is bytes per second (None:
    unlimited) and ``queue`` the packets that may wait for the
    transmitter behind it (None: unlimited; a full queue drops, as a
    router's tail drop)."""

    __slots__ = ("latency", "jitter", "loss", "duplicate", "reorder", "corrupt", "bandwidth", "queue")

    def __init__(self, link: str, latency: float = 0.0, jitter: float = 0.0, loss: float = 0.0,
                 duplicate: float = 0.0, reorder: float = 0.0, corrupt: float = 0.0,
                 bandwidth: float | None = None, queue: int | None = None) -> None:
        self.latency = _seconds(link, "latency", latency)
        self.jitter = _seconds(link, "jitter", jitter)
        self.loss = _probability(link, "loss", loss)
        self.duplicate = _probability(link, "duplicate", duplicate)
        self.reorder = _probability(link, "reorder", reorder)
        self.corrupt = _probability(link, "corrupt", corrupt)
        if bandwidth is not None:
            if not _real(bandwidth) or not bandwidth > 0 or bandwidth == math.inf:
                raise ValueError(f"link {link}: bandwidth must be a positive number of bytes per second "
                                 f"or None, got {bandwidth!r}")
            bandwidth = float(bandwidth)
        self.bandwidth = bandwidth
        if queue is not None and (isinstance(queue, bool) or not isinstance(queue, int) or queue < 1):
            raise ValueError(f"link {link}: queue must be a positive number of packets or None, got {queue!r}")
        self.queue = queue

    def as_tuple(self) -> tuple[Any, ...]:
        """The parameters, in the order of ``__slots__`` (for the trace)."""
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        return "LinkParams(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _seconds(link: str, name: str, value: Any) -> float:
    if not _real(value) or value < 0 or value == math.inf:
        raise ValueError(f"link {link}: {name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _probability(link: str, name: str, value: Any) -> float:
    if not _real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"link {link}: {name} must be a probability in [0, 1], got {value!r}")
    return float(value)


# The world's side of a direction: schedule(arrival time, packet) and
# report(event fields..., packet).
Schedule = Callable[[float, bytes], None]
Report = Callable[..., None]


class FaultSchedule:
    """Which faults a world may inject, and the list of those it did.

    Every fault has an id that names it within its seed's run: a link
    fault is ``"src->dst#N:kind"`` (the Nth packet decided on that
    direction; kind ``lost``, ``corrupted``, ``reordered`` or
    ``duplicated``), a planned one ``"at#N:label"`` (the Nth
    ``world.fault_at``). With ``allowed=None`` every fault the seed draws
    happens; with a set of ids only those do, every other decision is
    taken as "no fault" (the random streams are drawn alike either way,
    so the faults kept fall where they fell). ``fired`` lists the ids of
    the faults that happened, in order: run again with ``allowed`` set to
    it, the run is the same. ``enabled=False`` (``world.heal_all``) stops
    every fault from then on."""

    __slots__ = ("allowed", "enabled", "fired")

    def __init__(self, allowed: Any = None) -> None:
        if allowed is not None:
            if isinstance(allowed, (str, bytes)):
                raise ValueError(f"faults must be a collection of fault ids or None, got the string {allowed!r}")
            allowed = frozenset(allowed)
            for fault in allowed:
                if not isinstance(fault, str) or "#" not in fault or ":" not in fault:
                    raise ValueError(f"not a fault id (src->dst#N:kind or at#N:label): {fault!r}")
        self.allowed: frozenset[str] | None = allowed
        self.enabled = True
        self.fired: list[str] = []

    def allow(self, fault: str) -> bool:
        """Whether the fault ``fault`` (an id) happens; a fault that does
        is added to ``fired``."""
        if not self.enabled or (self.allowed is not None and fault not in self.allowed):
            return False
        self.fired.append(fault)
        return True


class Direction:
    """One way of a link (``src`` to ``dst``): its parameters, its own
    random stream and its state (the transmitter's backlog, the last
    arrival time that keeps packets in order, packets held)."""

    __slots__ = ("src", "dst", "name", "params", "rng", "busy_until", "departures", "last_arrival", "held",
                 "holding", "faults", "sent")

    def __init__(self, src: Host, dst: Host, params: LinkParams, seed: Any, faults: FaultSchedule) -> None:
        self.src = src
        #: ``"src->dst"`` (a host's name never changes).
        self.name = f"{src.name}->{dst.name}"
        self.faults = faults
        self.sent = 0  # packets decided on so far: the number in a fault's id
        self.dst = dst
        self.params = params
        self.rng = random.Random(f"{seed}/link/{src.name}/{dst.name}")
        self.busy_until = 0.0
        self.departures: collections.deque[float] = collections.deque()
        self.last_arrival = 0.0
        self.held: list[bytes] = []
        self.holding = False

    def transmit(self, now: float, packet: bytes, schedule: Schedule, report: Report) -> None:
        """Decide ``packet``'s fate, sent at ``now``: report each decision
        and schedule each copy that will arrive.

        Every packet draws the same numbers from the stream whatever is
        decided (one per enabled parameter, in a fixed order), and each
        fault goes through ``faults.allow`` under an id naming this
        direction, the packet's number on it and the fault: a run with
        some faults removed draws exactly as the full run did, so the
        faults left keep hitting the same packets numbers."""
        if self.holding:
            self.held.append(packet)
            report("held", now, self.name, packet)
            return
        self.sent += 1
        p = self.params
        rng = self.rng
        lose = bool(p.loss) and rng.random() < p.loss
        jitter = rng.random() * p.jitter if p.jitter else 0.0
        corrupt = False
        where = bit = 0
        if p.corrupt:
            corrupt = rng.random() < p.corrupt
            where = int(rng.random() * len(packet))
            bit = int(rng.random() * 8)
        reorder = False
        extra = 0.0
        if p.reorder:
            reorder = rng.random() < p.reorder
            extra = (0.05 + rng.random()) * max(2 * p.latency + p.jitter, 0.001)
        duplicate = False
        again = 0.0
        if p.duplicate:
            duplicate = rng.random() < p.duplicate
            again = rng.random() * max(p.jitter, 0.0001)
        faults = self.faults
        if lose and faults.allow(self._fault_id("lost")):
            report("lost", now, self.name, packet)
            return
        depart = now
        if p.bandwidth is not None:
            waiting = self.departures
            while waiting and waiting[0] <= now:
                waiting.popleft()
            if p.queue is not None and len(waiting) >= p.queue:
                report("queue-full", now, self.name, packet)
                return
            depart = max(now, self.busy_until) + len(packet) / p.bandwidth
            self.busy_until = depart
            waiting.append(depart)
        arrive = depart + p.latency + jitter
        if corrupt and packet and faults.allow(self._fault_id("corrupted")):
            packet = packet[:where] + bytes((packet[where] ^ (1 << bit),)) + packet[where + 1:]
            report("corrupted", now, self.name, where, bit, packet)
        if reorder and faults.allow(self._fault_id("reordered")):
            # Held back past the packets sent after it; it does not hold
            # them up (last_arrival is left alone).
            arrive += extra
            report("reordered", now, self.name, arrive, packet)
        else:
            if arrive < self.last_arrival:
                arrive = self.last_arrival  # jitter alone never reorders
            self.last_arrival = arrive
        schedule(arrive, packet)
        if duplicate and faults.allow(self._fault_id("duplicated")):
            again += arrive
            report("duplicated", now, self.name, again, packet)
            schedule(again, packet)

    def _fault_id(self, kind: str) -> str:
        return f"{self.name}#{self.sent}:{kind}"

    def release(self, now: float, schedule: Schedule, report: Report) -> None:
        """Stop holding: the held packets go now, in the order they were sent."""
        self.holding = False
        held, self.held = self.held, []
        for packet in held:
            self.transmit(now, packet, schedule, report)


class SimDevice:
    """A simulated host's packet device: what its stack's worker reads
    (the inbox the world delivers to) and writes (handed to the world).
    No fd; the worker is told of new input through ``on_input``."""

    __slots__ = ("name", "closed", "_inbox", "_notify", "_send")

    def __init__(self, name: str, send: Callable[[bytes], None]) -> None:
        self.name = name
        self.closed = False
        self._inbox: collections.deque[bytes] = collections.deque()
        self._notify: Callable[[], None] | None = None
        self._send = send

    def fileno(self) -> int:
        """-1: nothing to poll."""
        return -1

    def on_input(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever packets arrive (the worker's
        ``input_waiting``)."""
        self._notify = callback
        if self._inbox:
            callback()

    def deliver(self, packet: bytes) -> None:
        """The world hands over an arriving packet."""
        if self.closed:
            return
        self._inbox.append(packet)
        notify = self._notify
        if notify is not None:
            notify()

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Up to ``max_packets`` arrived packets, oldest first."""
        inbox = self._inbox
        if len(inbox) <= max_packets:
            out = list(inbox)
            inbox.clear()
            return out
        return [inbox.popleft() for _ in range(max_packets)]

    def send_packets(self, packets: Any) -> int:
        """Hand every packet to the world (all are taken: a full link
        drops, it never pushes back). A closed device drops them."""
        count = 0
        for packet in packets:
            count += 1
            if not self.closed:
                self._send(packet if type(packet) is bytes else bytes(packet))
        return count

    def close(self) -> None:
        """Nothing enters or leaves from now on (a crashed host)."""
        self.closed = True
        self._inbox.clear()

    def __repr__(self) -> str:
        return f"<SimDevice {self.name}{' closed' if self.closed else ''}>"
