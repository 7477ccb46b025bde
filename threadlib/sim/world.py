"""The simulated world: hosts with their own TCP/IP stacks and schedulers,
links with faults between them, one virtual clock and one seed.

Each host is a small machine of its own: an ``iolib.tcp`` stack, a
``SimNetwork`` (the ``threadlib.net.Network`` contract, through the same
stream and listener code as the TUN-backed ``UserNetwork``) and a
scheduler of its own with a timer worker and the stack's worker: no
epoll, no fd, no OS thread. The world drives the schedulers in turn on one
simulated timeline. When no host has a ready thread or a due timer and no
packet is due, time jumps to the next event: a packet's arrival, a host's
timer, the end of a pause, a ``world.at`` callback. A host's clock follows
the world's, faster or slower after ``host.skew``.

One seed drives everything random, each through a stream of its own
derived from it: the stacks' ISN secrets and ephemeral ports (per host
and incarnation), every link direction's fault decisions, the order in
which ready threads and hosts run (``shuffle=True``) and ``world.rng``,
which scenarios use for their own choices. Every event goes into the
trace (``trace_hash()``); ``check_determinism`` runs a scenario twice and
names the first event where the runs part.

This module must never read the wall clock, the global ``random``,
``os.urandom`` or anything keyed by object addresses on the simulated
path, and never opens a real fd: a run is a function of its seed and its
scenario.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import heapq
import inspect
import ipaddress
import math
import random
import types
from typing import Any, Callable, Iterable, Iterator, TypeVar

from iolib.tcp import Stack

from .._kernel import Scheduler, Thread, TimerWorker, current_scheduler
from .._kernel.clocks import VIRTUAL_EPOCH
from .._kernel.threads import InContext, as_coroutine
from ..io.happy_eyeballs import HostTable
from ..io.tcpsockio.network import DEFAULT_CONN_OPTIONS, UserNetwork
from ..syscalls import Waits
from . import snapshot as _snap
from .disk import DiskParams, SimDisk, SimDiskWorker
from .fabric import Direction, FaultSchedule, LinkParams, SimDevice
from .snapshot import Snapshot, SnapshotError, SnapshotMismatch
from .trace import Trace, TraceInstrument

_R = TypeVar("_R")
_STALE: Any = object()  # a host's deadline memo when it must be asked again
_NEG_INF = -math.inf


class SimulationError(RuntimeError):
    """Base class of the errors a simulation reports about a scenario."""


class Deadlock(SimulationError):
    """``world.run(thread)`` cannot finish: no thread is ready, no timer
    is pending, no packet is in flight. The message lists the waiting
    threads per host and the simulated time."""


class TimeLimitReached(SimulationError):
    """``world.run(thread)`` reached its simulated-time limit with the
    thread still running (a scenario that never ends)."""


class HostCrashed(SimulationError):
    """The thread ``world.run`` waited for was on a host that crashed."""


class Nondeterminism(SimulationError):
    """Two runs of one scenario with one seed differed; the message names
    the first differing event. ``index`` is its position in the trace,
    ``first`` and ``second`` the two versions (None past a run's end)."""

    def __init__(self, message: str, index: int, first: str | None, second: str | None) -> None:
        super().__init__(message)
        self.index = index
        self.first = first
        self.second = second


class InvariantFailed(SimulationError):
    """A ``sim.always`` condition was false: the seed fails. ``message``
    is the invariant's text, ``time`` the simulated time."""

    def __init__(self, message: str, time: float | None) -> None:
        where = f" at t={time:.6f} s (simulated)" if time is not None else ""
        super().__init__(f"invariant failed{where}: {message}")
        self.message = message
        self.time = time


class NotConverged(SimulationError):
    """The liveness phase's condition did not hold within its simulated
    deadline (``world.run_until``)."""


class Livelock(SimulationError):
    """Threads kept running without simulated time passing (a thread that
    never waits for time, such as a ``sleep(0)`` loop): more passes of
    thread steps at one simulated instant than ``World(step_limit=...)``."""


class HostClock:
    """A host's clock: the world's time, at a rate of its own after
    ``host.skew``. The scheduler reads it; only the world moves it
    (``advance_to`` and ``idle`` do nothing: a host never moves time)."""

    virtual = True

    def __init__(self, now: float, epoch: float) -> None:
        self._now = now
        self.epoch = epoch
        self._rate = 1.0
        self._world_anchor = now
        self._host_anchor = now
        self._identity = True  # host time == world time, exactly

    def now(self) -> float:
        """The host's time, in seconds."""
        return self._now

    def wall(self) -> float:
        """The host's time of day: the world's epoch plus its time."""
        return self.epoch + self._now

    def idle(self, seconds: float) -> None:
        """Nothing: the world moves time."""

    def advance_to(self, when: float) -> None:
        """Nothing: the world moves time (``follow``)."""

    @property
    def rate(self) -> float:
        """Host seconds per world second (1.0 until skewed)."""
        return self._rate

    def set_rate(self, world_now: float, rate: float) -> None:
        """From ``world_now`` on, run at ``rate`` host seconds per world second."""
        self._world_anchor = world_now
        self._host_anchor = self._now
        self._rate = rate
        self._identity = rate == 1.0 and self._now == world_now

    def host_time(self, world_time: float) -> float:
        """The host's time when the world's is ``world_time``."""
        if self._identity:
            return world_time
        return self._host_anchor + (world_time - self._world_anchor) * self._rate

    def world_time(self, host_time: float) -> float:
        """The world's time when the host's is ``host_time``."""
        if self._identity:
            return host_time
        return self._world_anchor + (host_time - self._host_anchor) / self._rate

    def follow(self, world_now: float, due: float | None = None) -> None:
        """Move to the world's ``world_now``; at least to ``due`` (a host
        deadline the world woke up for, which rounding must not miss)."""
        t = self.host_time(world_now)
        if due is not None and due > t:
            t = due
        if t > self._now:
            self._now = t


class _CountedReady(collections.deque[Thread]):
    """A host scheduler's ready queue that counts the steps taken at one
    simulated instant (every step starts with a ``popleft``): past the
    world's ``step_limit`` it raises ``Livelock``, since simulated time
    cannot pass while threads keep running (a ``sleep(0)`` loop would
    otherwise hang the world, out of reach of its time limit)."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self.host = host

    def popleft(self) -> Thread:
        """The next ready thread; ``Livelock`` past the step budget."""
        world = self.host.world
        world._steps += 1
        if world._steps > world.step_limit:
            world._steps = 0
            raise Livelock(f"livelock: {world.step_limit} steps of threads at t={world.now:.6f} s (simulated) "
                           f"without time passing, last on host {self.host.name}: a thread that never waits for "
                           f"time (a sleep(0) loop?); World(step_limit=...) sets the bound.\n"
                           f"{world.waiting_threads()}")
        return super().popleft()


class _ShuffledReady(_CountedReady):
    """A host scheduler's ready queue that runs a random ready thread next
    (``World(shuffle=True)``): other interleavings of the same program."""

    def __init__(self, host: Host, rng: random.Random) -> None:
        super().__init__(host)
        self.rng = rng

    def popleft(self) -> Thread:
        """A ready thread drawn at random from the queue."""
        n = len(self)
        if n > 1:
            i = self.rng.randrange(n)
            if i:
                self[0], self[i] = self[i], self[0]
        return super().popleft()


class SimNetwork(UserNetwork):
    """A simulated host's network: ``UserNetwork`` (listen, connect,
    resolve; streams and listeners of the user-level stack) on a
    ``SimDevice``. Names resolve through the world's host table only."""

    name = "sim"

    def __init__(self, host: Host, device: SimDevice, stack: Stack, resolver: Any) -> None:
        # The device has the shape UserNetwork needs of a TUN device.
        super().__init__(device, stack, routes=("0.0.0.0/0", "::/0"), resolver=resolver)  # type: ignore[arg-type]
        self.host = host

    def __repr__(self) -> str:
        return f"<SimNetwork {self.host.name} {', '.join(self.addresses)}>"


class _Incarnation:
    """One life of a host, from boot to crash: its stack, network,
    device and scheduler."""

    __slots__ = ("number", "stack", "device", "network", "sched", "alive", "ready_rng")

    def __init__(self, number: int, stack: Stack, device: SimDevice, network: SimNetwork, sched: Scheduler,
                 ready_rng: random.Random | None) -> None:
        self.number = number
        self.ready_rng = ready_rng
        self.stack = stack
        self.device = device
        self.network = network
        self.sched = sched
        self.alive = True


class Host:
    """A simulated machine: addresses, a user-level TCP/IP stack reached
    through ``network``, and threads (``spawn``) on a scheduler of its own.

    ``crash()`` stops it at once: its device is cut first (nothing more is
    sent or received), then every thread is closed at its wait (its
    ``finally`` blocks run, but reach nothing; one that tries to wait is
    stopped there). ``restart()`` boots a fresh stack on the same
    addresses (a new ISN secret) and runs the host's ``start`` function
    again. ``pause(s)`` stops the host for ``s`` simulated seconds, stack
    included, as SIGSTOP would; ``skew(x)`` makes its clock run ``1 + x``
    times as fast as the world's from now on.

    These calls made from inside a thread (of any host) take effect when
    the running host's current pass of ready threads ends (a host cannot
    tear itself down mid-step); from outside the simulation, at once.
    """

    def __init__(self, world: World, name: str, addresses: list[str], start: Callable[..., Any] | None,
                 mtu: int, conn_options: dict[str, Any], disk: DiskParams) -> None:
        self.world = world
        self._disk = SimDisk(name, disk, world.seed, world.faults, world._trace, world._clock_now)
        self.name = name
        self.addresses = addresses
        self.start = start
        self.mtu = mtu
        self.conn_options = conn_options
        self.clock = HostClock(world.now, world.epoch)
        self.paused_until: float | None = None
        self.crashes = 0
        self._life: _Incarnation | None = None
        self._incarnations = 0
        # The earliest worker deadline, remembered while the host does not
        # run (_STALE: not known). Between its runs only a packet delivered
        # to it, a planned or deferred action, or the driver can change it:
        # each of those forgets it.
        self._deadline_memo: Any = _STALE
        self._last_deadline: Any = _STALE  # what the last _keep_going of a run found

    # -- what a scenario uses ----------------------------------------------
    @property
    def network(self) -> SimNetwork:
        """This incarnation's network (a new one after each restart)."""
        return self._alive("use its network").network

    @property
    def stack(self) -> Stack:
        """This incarnation's ``iolib.tcp`` stack (counters, connections)."""
        return self._alive("use its stack").stack

    @property
    def scheduler(self) -> Scheduler:
        """This incarnation's scheduler (thread dumps, ``threads()``)."""
        return self._alive("use its scheduler").sched

    @property
    def disk(self) -> SimDisk:
        """The host's simulated disk: it outlives crashes (what was fsynced
        survives them)."""
        return self._disk

    @property
    def up(self) -> bool:
        """Whether the host runs (booted and not crashed)."""
        return self._life is not None and self._life.alive

    @property
    def incarnation(self) -> int:
        """How many times the host has booted (1 after the first boot)."""
        return self._incarnations

    def spawn(self, target: Any, *args: Any, name: str | None = None) -> Thread:
        """Start a thread on this host running ``target`` (a function
        called with ``args``, or a generator or coroutine object); returns
        its ``Thread`` (``world.run(thread)`` runs until it ends)."""
        world = self.world
        if world._log is not None and not world._inside:
            return world._input(self.name, "spawn", (target, *args), {"name": name},
                                lambda: self.spawn(target, *args, name=name))
        life = self._alive("spawn threads")
        coro = as_coroutine(target, args)
        thread = life.sched.spawn(coro, name)
        self.world._homes[thread] = (self, life)
        return thread

    def crash(self) -> None:
        """Stop the host at once (see the class docstring)."""
        if self.world._log is not None and not self.world._inside:
            return self.world._input(self.name, "crash", (), {}, self.crash)
        self.world._apply(self._crash)

    def restart(self) -> None:
        """Boot the host again (crashing it first if it runs): a fresh
        stack on the same addresses, and ``start(host)`` if it has one."""
        if self.world._log is not None and not self.world._inside:
            return self.world._input(self.name, "restart", (), {}, self.restart)
        self.world._apply(self._restart)

    def pause(self, seconds: float) -> None:
        """Stop the host (threads and stack) for ``seconds`` simulated
        seconds; packets for it wait on its device meanwhile."""
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds < math.inf:
            raise ValueError(f"host {self.name}: pause needs a positive finite number of seconds, got {seconds!r}")
        if self.world._log is not None and not self.world._inside:
            return self.world._input(self.name, "pause", (seconds,), {}, lambda: self.pause(seconds))
        self.world._apply(lambda: self._pause(float(seconds)))

    def skew(self, rate: float) -> None:
        """From now on the host's clock runs ``1 + rate`` times as fast as
        the world's (0.2: 20% fast; -0.1: 10% slow; 0: in step again)."""
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not -1 < rate < math.inf:
            raise ValueError(f"host {self.name}: skew must be a number greater than -1, got {rate!r}")
        if self.world._log is not None and not self.world._inside:
            return self.world._input(self.name, "skew", (rate,), {}, lambda: self.skew(rate))
        self.world._apply(lambda: self._skew(float(rate)))

    def fail_disk(self, count: int = 1, op: str | None = None) -> None:
        """The next ``count`` requests to this host's disk (of ``op``:
        "read", "write" or "fsync"; None: any) fail with ``OSError(EIO)``.
        Plan it for a time with ``world.at(t, host.fail_disk, ...)``."""
        if self.world._log is not None and not self.world._inside:
            return self.world._input(self.name, "fail_disk", (count, op), {}, lambda: self.fail_disk(count, op))
        self.disk.fail(count, op)

    # -- the world's side ------------------------------------------------------
    def _alive(self, what: str) -> _Incarnation:
        life = self._life
        if life is None or not life.alive:
            raise RuntimeError(f"host {self.name} is down (crashed {self.crashes} times): "
                               f"restart() it before you {what}")
        return life

    def _boot(self) -> None:
        world = self.world
        self._incarnations += 1
        number = self._incarnations
        rng = random.Random(f"{world.seed}/host/{self.name}/{number}")
        options = dict(DEFAULT_CONN_OPTIONS)
        options.update(self.conn_options)
        # Checksums on (no offload): a corrupted packet must be caught by
        # the stack, as a real NIC without offload would leave it to.
        stack = Stack(self.addresses, rng=rng, mtu=self.mtu, offload=False, **options)
        device = SimDevice(f"{self.name}#{number}", functools.partial(world._transmit, self))
        network = SimNetwork(self, device, stack, world._resolve)
        sched = Scheduler(workers=[TimerWorker(), network.worker, SimDiskWorker(self.disk)], clock=self.clock)
        ready_rng = None
        if world.shuffle:
            ready_rng = random.Random(f"{world.seed}/ready/{self.name}/{number}")
            sched._ready = _ShuffledReady(self, ready_rng)
        else:
            sched._ready = _CountedReady(self)
        sched.add_instrument(TraceInstrument(world._trace, self.name, number, world._clock_now))
        self._life = _Incarnation(number, stack, device, network, sched, ready_rng)
        self._deadline_memo = _STALE
        world._trace.event("boot", world.now, self.name, number)
        if self.start is not None:
            self.spawn(self.start, self, name=f"{self.name}-start")

    def _crash(self) -> None:
        life = self._life
        if life is None or not life.alive:
            return
        life.alive = False
        self._deadline_memo = _STALE
        self.crashes += 1
        self.paused_until = None
        self.world._trace.event("crash", self.world.now, self.name, life.number)
        life.device.close()  # first: nothing the dying threads do leaves the host
        _close_threads(life.sched)
        self.disk.crash()  # after: a dying thread's finally cannot make its writes durable

    def _restart(self) -> None:
        self._crash()
        self._boot()

    def _pause(self, seconds: float) -> None:
        if not self.up:
            return
        until = self.world.now + seconds
        if self.paused_until is None or until > self.paused_until:
            self.paused_until = until
        self.world._trace.event("pause", self.world.now, self.name, self.paused_until)

    def _skew(self, rate: float) -> None:
        self.clock.set_rate(self.world.now, 1.0 + rate)
        self.world._trace.event("skew", self.world.now, self.name, rate)

    def _deadline(self) -> float | None:
        """The earliest deadline of this host's workers (host time), or None."""
        life = self._life
        if life is None or not life.alive:
            return None
        memo = self._deadline_memo
        if memo is not _STALE:
            return memo  # type: ignore[no-any-return]
        best: float | None = None
        for w in life.sched._timed:  # the other workers never have a deadline
            d = w.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        if self.world._running is None:
            self._deadline_memo = best
        else:  # while it runs, its threads move it at every step
            self._last_deadline = best
        return best

    def _has_work(self) -> bool:
        life = self._life
        if life is None or not life.alive:
            return False
        if self.paused_until is not None:
            if self.world.now < self.paused_until:
                return False
            self.paused_until = None
            self.world._trace.event("resume", self.world.now, self.name)
        if life.sched._ready:
            return True
        d = self._deadline_memo
        if d is _STALE:
            d = self._deadline()
        return d is not None and d <= self.clock._now  # clock.now(), without the call

    def _keep_going(self) -> bool:
        # A fault asked for from inside (a crash, a pause) is applied once
        # the pass of ready threads in progress ends.
        self._last_deadline = _STALE
        if self.world._deferred:
            return False
        life = self._life
        if life is None or not life.alive or self.paused_until is not None:
            return self._has_work()
        sched = life.sched
        if sched._ready:
            return True
        # _has_work and _deadline inlined: the scheduler asks this three or
        # four times per run, a few times per packet. While the host runs
        # its deadline memo is stale (its threads move the deadline at
        # every step), so the workers are asked each time.
        best: float | None = None
        for w in sched._timed:
            d = w.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        self._last_deadline = best
        return best is not None and best <= self.clock._now

    def _run(self) -> None:
        """Run this host's threads and workers until nothing is due."""
        life = self._life
        assert life is not None
        self._deadline_memo = _STALE
        ended = False
        try:
            life.sched.run_while(self._keep_going)
            ended = True
        finally:
            # The run ends at a _keep_going that said no: the deadline it
            # found (if it had to look) still holds.
            self._deadline_memo = self._last_deadline if ended else _STALE

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<Host {self.name} {', '.join(self.addresses)} {state}>"


def _close_threads(sched: Scheduler) -> None:
    """Close every live thread of a crashed host's scheduler at its wait,
    in the order they were spawned, inside that scheduler (their finally
    blocks may call the runtime); a finally that tries to wait stops there."""
    sched._enter()
    try:
        for t in sched.threads():
            coro = t._coro
            close: Callable[[], Any] | None
            if type(coro) is InContext:
                inner = getattr(coro.coro, "close", None)
                close = (lambda c=coro, f=inner: c.context.run(f)) if inner is not None else None
            else:
                close = getattr(coro, "close", None)
            if close is None:
                continue
            try:
                close()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # a finally that tried to wait, or failed: the host is gone anyway
                pass
    finally:
        sched._leave()


class Link:
    """The two directions between two hosts (``forward``: a to b), as
    made by ``world.link``; ``backward`` is None for a one-way link."""

    __slots__ = ("forward", "backward")

    def __init__(self, forward: Direction, backward: Direction | None) -> None:
        self.forward = forward
        self.backward = backward

    def __repr__(self) -> str:
        back = f", {self.backward.name}: {self.backward.params!r}" if self.backward is not None else ""
        return f"<Link {self.forward.name}: {self.forward.params!r}{back}>"


class World:
    """A deterministic simulated network (see the module docstring).

    ``World(seed)``; ``world.host(name, ipv4, ipv6=None)`` adds a host;
    ``world.link(a, b, latency=..., ...)`` connects two; ``host.spawn``
    starts threads; ``world.run(thread)`` runs until that thread ends and
    returns its result, ``world.run(until=t)`` until simulated time ``t``.
    ``shuffle=True`` runs ready threads (and hosts) in an order drawn from
    the seed, to explore interleavings. ``time_limit`` bounds each
    ``run(thread)`` without ``until`` (simulated seconds). ``keep_events``
    keeps every trace event as text (``events``), which
    ``check_determinism`` compares.

    ``setup`` (an importable function, or its ``"MODULE:FUNCTION"``) builds
    the world at once, called as ``setup(world, **config)``; a world made
    so logs what its driver does afterwards and can be snapshotted
    (``snapshot()``, ``World.restore``).
    """

    def __init__(self, seed: Any = 0, shuffle: bool = False, *, time_limit: float = 3600.0,
                 keep_events: bool = False, epoch: float = VIRTUAL_EPOCH, faults: Iterable[str] | None = None,
                 step_limit: int = 1_000_000, setup: Callable[..., Any] | str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        if not isinstance(seed, (int, str)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int or a str, got {seed!r}")
        if not isinstance(time_limit, (int, float)) or isinstance(time_limit, bool) or not 0 < time_limit < math.inf:
            raise ValueError(f"time_limit must be a positive finite number of simulated seconds, got {time_limit!r}")
        if isinstance(step_limit, bool) or not isinstance(step_limit, int) or step_limit < 1:
            raise ValueError(f"step_limit must be a positive number of steps, got {step_limit!r}")
        self.seed = seed
        #: The faults this world may inject and those it did (``fired``).
        self.faults = FaultSchedule(faults)
        self.step_limit = step_limit
        self._steps = 0  # thread steps taken at the current instant
        self._planned_faults = 0
        self._violation: InvariantFailed | None = None
        #: ``sim.sometimes`` tallies: message -> [times asked, times true].
        self.sometimes: dict[str, list[int]] = {}
        self.shuffle = bool(shuffle)
        self.time_limit = float(time_limit)
        self.epoch = epoch
        #: The scenario's own random choices (configurations, fault times).
        self.rng = random.Random(f"{seed}/scenario")
        self._shuffler = random.Random(f"{seed}/hosts")
        self.now = 0.0
        self._trace = Trace(keep=keep_events)
        self._hosts: dict[str, Host] = {}
        self._by_address: dict[bytes, Host] = {}
        self._names = HostTable({})
        self._directions: dict[tuple[str, str], Direction] = {}
        self._cut: set[tuple[str, str]] = set()  # (src, dst) pairs a partition separates
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._running: Host | None = None  # the host whose threads run now
        self._deferred: list[Callable[[], None]] = []
        # Bound once, so that _settle tells a packet's delivery (which
        # forgets only its host's deadline memo) from a planned action.
        self._deliver_event = self._deliver
        self._deliver_local_event = self._deliver_local
        self._schedulers: dict[Direction, Callable[[float, bytes], None]] = {}
        self._homes: dict[Thread, tuple[Host, _Incarnation]] = {}
        self._closed = False
        self._trace.event("world", repr(seed), self.shuffle)
        # Snapshots: the driver's inputs (None: no setup, no snapshots), how
        # deep in the world's own calls we are (inputs made there are not
        # the driver's), and why a snapshot is impossible, once it is.
        self._log: list[Any] | None = None
        self._inside = 0
        self._unsnapshottable: str | None = None
        self._mid_instant = False
        self._options = {"seed": seed, "shuffle": self.shuffle, "time_limit": self.time_limit, "epoch": epoch,
                         "faults": None if self.faults.allowed is None else sorted(self.faults.allowed),
                         "step_limit": step_limit}
        self._setup: tuple[str, dict[str, Any]] | None = None
        if setup is not None:
            self._build(setup, config)
        elif config is not None:
            raise ValueError("config is given to the setup function: World(seed, setup=..., config=...)")

    def _build(self, setup: Callable[..., Any] | str, config: dict[str, Any] | None) -> None:
        ref = setup if isinstance(setup, str) else _snap.reference(setup)
        if ref is None:
            raise ValueError(f"setup must be a function importable by name (MODULE:FUNCTION), so that a snapshot "
                             f"can rebuild the world; {setup!r} is not (a lambda, a closure or a nested function)")
        fn = _snap.load(ref)
        if not callable(fn):
            raise ValueError(f"setup {ref!r} is not a function")
        config = dict(config or {})
        try:
            encoded = _snap.encode(config, self._known)
        except _snap.Unencodable as exc:
            raise ValueError(f"config must be plain data (it goes into snapshots): {exc}") from None
        self._setup = (ref, encoded)
        self._log = []
        self._inside += 1
        try:
            fn(self, **config)
        except BaseException:
            self.close()
            raise
        finally:
            self._inside -= 1

    # -- building ----------------------------------------------------------------
    def host(self, name: str, ipv4: str | None, ipv6: str | None = None, *, start: Callable[..., Any] | None = None,
             mtu: int = 1500, disk: DiskParams | dict[str, float] | None = None, **conn_options: Any) -> Host:
        """A new host named ``name`` (also its name in the world's host
        table) with the given addresses, booted at once. ``start(host)``,
        if given, runs as a thread at boot and again at each restart.
        ``disk`` sets its simulated disk's latency and faults
        (``DiskParams`` or a dict of its arguments). ``conn_options`` are
        ``iolib.tcp`` connection options (``min_rto``, ``sndbuf``, ...)."""
        if self._closed:
            raise RuntimeError("this world is closed")
        if self._log is not None and not self._inside:
            logged = disk.as_dict() if isinstance(disk, DiskParams) else disk
            return self._input(None, "host", (name, ipv4, ipv6),
                               {"start": start, "mtu": mtu, "disk": logged, **conn_options},
                               lambda: self.host(name, ipv4, ipv6, start=start, mtu=mtu, disk=disk, **conn_options))
        if disk is None:
            disk = DiskParams()
        elif isinstance(disk, dict):
            disk = DiskParams(**disk)
        elif not isinstance(disk, DiskParams):
            raise ValueError(f"host {name}: disk must be a sim.DiskParams or a dict of its arguments, got {disk!r}")
        if not isinstance(name, str) or not name or name != name.strip() or "/" in name:
            raise ValueError(f"a host name must be a non-empty string without spaces at its ends or '/', got {name!r}")
        if name in self._hosts:
            raise ValueError(f"there is already a host named {name!r}")
        addresses: list[str] = []
        for family, address in ((4, ipv4), (6, ipv6)):
            if address is None:
                continue
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"host {name}: {address!r} is not an IP address") from None
            if ip.version != family:
                raise ValueError(f"host {name}: {address!r} is not an IPv{family} address")
            if ip.packed in self._by_address:
                raise ValueError(f"host {name}: {address} already belongs to host {self._by_address[ip.packed].name}")
            addresses.append(str(ip))
        if not addresses:
            raise ValueError(f"host {name} needs an IPv4 or an IPv6 address")
        host = Host(self, name, addresses, start, mtu, conn_options, disk)
        self._hosts[name] = host
        for address in addresses:
            self._by_address[ipaddress.ip_address(address).packed] = host
        self._names = HostTable({h.name: h.addresses for h in self._hosts.values()})
        self._trace.event("host", self.now, name, tuple(addresses))
        host._boot()
        return host

    @property
    def hosts(self) -> list[Host]:
        """Every host, in the order they were added."""
        return list(self._hosts.values())

    def link(self, a: Host | str, b: Host | str, *, latency: float = 0.001, jitter: float = 0.0, loss: float = 0.0,
             duplicate: float = 0.0, reorder: float = 0.0, corrupt: float = 0.0, bandwidth: float | None = None,
             queue: int | None = None, one_way: bool = False) -> Link:
        """Connect ``a`` and ``b`` (hosts or names) both ways with these
        parameters (see ``LinkParams``; a bad one raises ``ValueError``
        naming it), replacing an earlier link; ``one_way=True`` sets only
        ``a`` to ``b``. Hosts without a link cannot reach each other."""
        if self._log is not None and not self._inside:
            kwargs: dict[str, Any] = dict(latency=latency, jitter=jitter, loss=loss, duplicate=duplicate,
                                          reorder=reorder, corrupt=corrupt, bandwidth=bandwidth, queue=queue,
                                          one_way=one_way)
            return self._input(None, "link", (a, b), kwargs, lambda: self.link(a, b, **kwargs))
        src, dst = self._host(a), self._host(b)
        if src is dst:
            raise ValueError(f"link {src.name}<->{dst.name}: a host cannot be linked to itself")
        label = f"{src.name}{'->' if one_way else '<->'}{dst.name}"
        params = LinkParams(label, latency, jitter, loss, duplicate, reorder, corrupt, bandwidth, queue)
        forward = self._direction(src, dst, params)
        backward = None if one_way else self._direction(dst, src, params)
        self._trace.event("link", self.now, label, params.as_tuple())
        return Link(forward, backward)

    def _direction(self, src: Host, dst: Host, params: LinkParams) -> Direction:
        key = (src.name, dst.name)
        d = self._directions.get(key)
        if d is None:
            d = self._directions[key] = Direction(src, dst, params, self.seed, self.faults)
        else:
            d.params = params
        return d

    def _host(self, h: Host | str) -> Host:
        if isinstance(h, Host):
            if h.world is not self:
                raise ValueError(f"{h!r} belongs to another world")
            return h
        host = self._hosts.get(h) if isinstance(h, str) else None
        if host is None:
            raise ValueError(f"no host named {h!r} in this world")
        return host

    # -- faults --------------------------------------------------------------------
    def partition(self, *groups: Iterable[Host | str]) -> None:
        """Cut the network between the groups (``partition([a], [b, c])``):
        packets sent from a host of one group to a host of another are
        dropped until ``heal()``. Packets already in flight arrive."""
        if len(groups) < 2:
            raise ValueError("partition needs at least two groups of hosts")
        if self._log is not None and not self._inside:
            lists = tuple(list(g) for g in groups)
            return self._input(None, "partition", lists, {}, lambda: self.partition(*lists))
        members = [[self._host(h) for h in group] for group in groups]
        names = [h.name for group in members for h in group]
        if len(names) != len(set(names)):
            raise ValueError(f"partition: a host is in two groups: {names}")

        def cut() -> None:
            for i, group in enumerate(members):
                for other in members[i + 1:]:
                    for x in group:
                        for y in other:
                            self._cut.add((x.name, y.name))
                            self._cut.add((y.name, x.name))
            self._trace.event("partition", self.now, tuple(tuple(h.name for h in g) for g in members))

        self._apply(cut)

    def heal(self) -> None:
        """End every partition."""
        if self._log is not None and not self._inside:
            return self._input(None, "heal", (), {}, self.heal)

        def heal() -> None:
            self._cut.clear()
            self._trace.event("heal", self.now)

        self._apply(heal)

    def hold(self, a: Host | str, b: Host | str) -> None:
        """Hold the packets ``a`` sends to ``b`` (not lost: kept) until
        ``release(a, b)``."""
        if self._log is not None and not self._inside:
            return self._input(None, "hold", (a, b), {}, lambda: self.hold(a, b))
        d = self._linked(a, b)

        def hold() -> None:
            d.holding = True
            self._trace.event("hold", self.now, d.name)

        self._apply(hold)

    def release(self, a: Host | str, b: Host | str) -> None:
        """Send what ``hold(a, b)`` kept, in order, as if sent now."""
        if self._log is not None and not self._inside:
            return self._input(None, "release", (a, b), {}, lambda: self.release(a, b))
        d = self._linked(a, b)

        def release() -> None:
            self._trace.event("release", self.now, d.name, len(d.held))
            d.release(self.now, self._arrivals(d), self._report)

        self._apply(release)

    def _linked(self, a: Host | str, b: Host | str) -> Direction:
        src, dst = self._host(a), self._host(b)
        d = self._directions.get((src.name, dst.name))
        if d is None:
            raise ValueError(f"no link from {src.name} to {dst.name}")
        return d

    def at(self, when: float, action: Callable[..., Any], *args: Any) -> None:
        """Call ``action(*args)`` at simulated time ``when`` (between
        steps, outside every host): ``world.at(5.0, a.crash)``."""
        if not isinstance(when, (int, float)) or isinstance(when, bool) or math.isnan(when):
            raise ValueError(f"at() needs a simulated time, got {when!r}")
        if self._log is not None and not self._inside:
            return self._input(None, "at", (when, action, *args), {}, lambda: self.at(when, action, *args))
        self._schedule(max(float(when), self.now), _call, action, args)

    def after(self, delay: float, action: Callable[..., Any], *args: Any) -> None:
        """``at(now + delay, action, *args)``."""
        self.at(self.now + delay, action, *args)

    def fault_at(self, when: float, action: Callable[..., Any], *args: Any, label: str | None = None) -> str:
        """Plan a fault: ``at(when, action, *args)``, but part of the
        world's fault schedule (``faults``), so that a shrinker can remove
        it: it happens only if the schedule allows its id,
        ``"at#N:label"`` (the Nth call; ``label`` defaults to the action's
        name). Returns the id. Plan the recovery inside the action (a
        crash's restart), so that removing the fault removes both."""
        if self._log is not None and not self._inside:
            return self._input(None, "fault_at", (when, action, *args), {"label": label},
                               lambda: self.fault_at(when, action, *args, label=label))
        self._planned_faults += 1
        name = label if label is not None else getattr(action, "__name__", "fault")
        if not isinstance(name, str) or "," in name or not name.strip():
            raise ValueError(f"a fault's label must be a non-empty string without commas, got {name!r}")
        fault = f"at#{self._planned_faults}:{name}"

        def planned() -> None:
            if self.faults.allow(fault):
                self._trace.event("fault", self.now, fault)
                action(*args)

        self.at(when, planned)
        return fault

    def heal_all(self) -> None:
        """End every fault, for a liveness phase: no more faults are
        injected (link faults and planned ones), partitions heal, held
        packets go, paused hosts resume and crashed hosts restart. Links
        keep their latency, jitter and bandwidth."""
        if self._log is not None and not self._inside:
            return self._input(None, "heal_all", (), {}, self.heal_all)

        def heal_all() -> None:
            self.faults.enabled = False
            self._cut.clear()
            for d in self._directions.values():
                if d.holding or d.held:
                    d.release(self.now, self._arrivals(d), self._report)
            for host in self._hosts.values():
                host.paused_until = None
                if not host.up and host.incarnation:
                    host._restart()
            self._trace.event("heal-all", self.now)

        self._apply(heal_all)

    def run_until(self, condition: Callable[[], Any], *, timeout: float) -> float:
        """Run until ``condition()`` is true (asked whenever the world is
        settled at an instant), at most ``timeout`` simulated seconds;
        returns the simulated time it took. ``NotConverged`` names the
        time and the waiting threads when it does not hold in time."""
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 <= timeout < math.inf:
            raise ValueError(f"timeout must be a finite number of simulated seconds >= 0, got {timeout!r}")
        self._check_runnable()
        with self._driving():
            return self._run_until(condition, float(timeout))

    def _run_until(self, condition: Callable[[], Any], timeout: float) -> float:
        start = self.now
        limit = start + timeout
        with self._active():
            while True:
                self._settle()
                if condition():
                    return self.now - start
                nxt = self._next_time()
                if nxt is None or nxt > limit:
                    self._advance(limit)
                    self._settle()
                    if condition():
                        return self.now - start
                    name = getattr(condition, "__qualname__", repr(condition))
                    raise NotConverged(f"not converged: {name}() still false at t={self.now:.6f} s (simulated), "
                                       f"{timeout} s after t={start:.6f} s.\n{self.waiting_threads()}")
                self._advance(nxt)

    def _forget_deadlines(self) -> None:
        for host in self._hosts.values():
            host._deadline_memo = _STALE

    def _check_runnable(self) -> None:
        self._forget_deadlines()  # the driver may have changed any host since the last run
        if self._closed:
            raise RuntimeError("this world is closed")
        if self._running is not None or current_scheduler() is not None:
            raise RuntimeError("World.run() is called from outside the simulation, not from a thread")

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        # sim.always and sim.sometimes report to the world that runs.
        _active_worlds.append(self)
        try:
            yield
        finally:
            _active_worlds.pop()

    @contextlib.contextmanager
    def _driving(self) -> Iterator[None]:
        # A run made by the driver is an input too (how far time went);
        # what happens inside it is the world's own doing.
        driver = self._log is not None and not self._inside
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1
            if driver:
                if self._mid_instant and self._unsnapshottable is None:
                    self._unsnapshottable = (f"a run stopped in the middle of the instant t={self.now:.6f} "
                                             f"(an exception inside the simulation), a point replay cannot reach")
                self._log_input(None, "run", (), {})

    def _input(self, receiver: str | None, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
               apply: Callable[[], _R]) -> _R:
        """Do ``apply()`` (the driver's call) and log it as an input."""
        self._inside += 1
        try:
            result = apply()
        finally:
            self._inside -= 1
        self._log_input(receiver, method, args, kwargs)
        return result

    def _log_input(self, receiver: str | None, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        log = self._log
        if log is None:
            return
        try:
            entry = [self.now, receiver, method, _snap.encode(list(args), self._known),
                     _snap.encode(kwargs, self._known)]
        except _snap.Unencodable as exc:
            if self._unsnapshottable is None:
                self._unsnapshottable = (f"the driver called {'host ' + receiver + ': ' if receiver else ''}{method}() "
                                         f"at t={self.now:.6f} with something a snapshot cannot name: {exc}; make "
                                         f"that call from the setup function or from a thread instead")
            return
        if method == "run" and log and log[-1][2] == "run":
            log[-1] = entry  # runs in a row: only where the last one ended matters
        else:
            log.append(entry)

    def _known(self, value: Any) -> dict[str, Any] | None:
        """How a snapshot's log names an object of this world: a host, a
        host's network (the one it has when the input is replayed), a
        method of the world or of a host."""
        if isinstance(value, Host) and value.world is self:
            return {"$host": value.name}
        if isinstance(value, SimNetwork) and value.host.world is self:
            return {"$network": value.host.name}
        if value is self:
            return {"$world": None}
        if inspect.ismethod(value):
            owner = value.__self__
            if owner is self:
                return {"$method": [None, value.__name__]}
            if isinstance(owner, Host) and owner.world is self:
                return {"$method": [owner.name, value.__name__]}
        return None

    def _resolve_known(self, marker: dict[str, Any]) -> Any:
        """The object of this world ``_known`` named."""
        if "$host" in marker:
            return self._host(marker["$host"])
        if "$network" in marker:
            return self._host(marker["$network"]).network
        if "$world" in marker:
            return self
        if "$method" in marker:
            owner, method = marker["$method"]
            return getattr(self if owner is None else self._host(owner), method)
        raise SnapshotError(f"damaged snapshot: unknown value {marker!r:.80}")

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The world as bytes, to restore with ``World.restore`` here or in
        another process: its setup, configuration, seed, every input the
        driver gave it and what its state is now (checked on restore).
        Only for a world made with ``setup=``; taken between runs."""
        if self._log is None or self._setup is None:
            raise SnapshotError("this world was not built by a setup function, so it cannot be rebuilt: make it "
                                "with World(seed, setup='MODULE:FUNCTION') to snapshot it")
        if self._inside or self._running is not None:
            raise SnapshotError("snapshot() is taken by the driver between runs, not from inside the simulation "
                                "or the setup function")
        if self._closed:
            raise SnapshotError("this world is closed")
        if self._unsnapshottable is not None:
            raise SnapshotError(f"this world cannot be snapshotted: {self._unsnapshottable}")
        ref, config = self._setup
        snap = Snapshot(ref, config, dict(self._options), [list(e) for e in self._log], self.now, self.trace_hash(),
                        self.event_count, self._state_digests())
        return snap.to_bytes()

    @classmethod
    def restore(cls, snap: bytes | Snapshot, seed: Any = None, *, keep_events: bool = False) -> World:
        """Rebuild the world ``snap`` (from ``snapshot()``) describes and run
        it to the snapshot's time, checking that it got there in the same
        state (``SnapshotMismatch`` if not: the code changed). With
        ``seed``, a fork: identical up to that time, every random stream
        reseeded from ``seed`` after it."""
        s = snap if isinstance(snap, Snapshot) else Snapshot.from_bytes(snap)
        o = s.options
        try:
            config = _snap.decode(s.config, _no_objects)
            options = {"time_limit": o["time_limit"], "epoch": o["epoch"], "faults": o["faults"],
                       "step_limit": o["step_limit"]}
            seed0, shuffle = o["seed"], o["shuffle"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"damaged snapshot: bad options or configuration ({exc!r})") from None
        try:
            world = cls(seed0, shuffle, keep_events=keep_events, setup=s.setup, config=config, **options)
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotMismatch(f"restoring: the setup function {s.setup} raised {type(exc).__name__}: {exc} "
                                   f"(the code changed since the snapshot?)") from exc
        try:
            for i, entry in enumerate(s.inputs):
                world._replay(i, entry)
            world._check_restored(s)
            if seed is not None:
                world._input(None, "_fork", (seed,), {}, lambda: world._fork(seed))
        except BaseException:
            world.close()
            raise
        return world

    def _replay(self, index: int, entry: list[Any]) -> None:
        try:
            when, receiver, method, args, kwargs = entry
        except (TypeError, ValueError):
            raise SnapshotError(f"damaged snapshot: input {index} is {entry!r:.100}") from None
        if method == "run":
            try:
                self.run(until=when)
            except SimulationError as exc:
                raise SnapshotMismatch(f"restoring: replaying the run to t={when:.6f} failed: {exc}") from exc
            return
        if self.now != when:
            raise SnapshotMismatch(f"restoring: input {index} ({method}) was made at t={when!r}, but the world "
                                   f"is at t={self.now!r}: the snapshot's log is inconsistent")
        try:
            target: Any = self if receiver is None else self._host(receiver)
            args = _snap.decode(args, self._resolve_known)
            kwargs = _snap.decode(kwargs, self._resolve_known)
            if method not in _REPLAYABLE:
                raise SnapshotError(f"damaged snapshot: input {index} calls {method!r}")
            if method == "_fork":
                self._input(None, "_fork", tuple(args), {}, lambda: self._fork(*args))
            else:
                getattr(target, method)(*args, **kwargs)
        except SnapshotError:
            raise
        except Exception as exc:
            raise SnapshotMismatch(f"restoring: replaying input {index} ({method} at t={when:.6f}) failed: "
                                   f"{type(exc).__name__}: {exc} (the code changed since the snapshot?)") from exc

    def _check_restored(self, s: Snapshot) -> None:
        got_hash = self.trace_hash()
        if got_hash != s.trace_hash or self.event_count != s.events or self.now != s.time:
            raise SnapshotMismatch(
                f"restoring the snapshot of {s.setup} (seed {s.options.get('seed')!r}) at t={s.time:.6f}: the "
                f"replayed run is not the one snapshotted: trace hash {got_hash} after {self.event_count} events "
                f"at t={self.now:.6f}, the snapshot says {s.trace_hash} after {s.events} events. The setup "
                f"function, a program it runs or the runtime changed since the snapshot was taken.")
        state = self._state_digests()
        differ = [k for k in sorted(set(state) | set(s.state)) if state.get(k) != s.state.get(k)]
        if differ:
            raise SnapshotMismatch(
                f"restoring the snapshot of {s.setup} at t={s.time:.6f}: the trace matches but this state "
                f"differs: {', '.join(differ)}. The driver changed something the snapshot cannot replay (drew "
                f"from world.rng after setup?), or the code changed.")

    def _state_digests(self) -> dict[str, str]:
        """Digests of the state replay must reproduce beyond the trace: the
        random streams, the fault schedule, each host's stack (its whole
        sans-IO object graph, as pickle sees it) and disk."""

        def digest(value: Any) -> str:
            return hashlib.blake2b(repr(value).encode(), digest_size=12).hexdigest()

        state = {"world": digest((self.seed, self.rng.getstate(), self._shuffler.getstate(), self._seq,
                                  self._planned_faults, self.faults.fired, sorted(self._cut)))}
        for key, d in self._directions.items():
            state[f"link {key[0]}->{key[1]}"] = digest((d.rng.getstate(), d.sent, d.params.as_tuple(),
                                                        d.busy_until, d.last_arrival, d.holding, d.held))
        for host in self._hosts.values():
            life = host._life
            stack = "down"
            if life is not None and life.alive:
                stack = _snap.state_digest(life.stack)
            state[f"host {host.name}"] = digest((host.incarnation, host.crashes, host.paused_until, stack,
                                                 host.clock.now(), host.clock.rate))
            state[f"disk {host.name}"] = host.disk.state_digest()
        return state

    def _fork(self, seed: Any) -> None:
        """From now on every random stream draws from ``seed``."""
        if not isinstance(seed, (int, str)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int or a str, got {seed!r}")
        base = f"{seed}/fork@{self.now!r}"
        self.seed = seed
        self.rng.seed(f"{base}/scenario")
        self._shuffler.seed(f"{base}/hosts")
        for (src, dst), d in self._directions.items():
            d.rng.seed(f"{base}/link/{src}/{dst}")
        for host in self._hosts.values():
            host.disk.rng.seed(f"{base}/disk/{host.name}")
            life = host._life
            if life is not None and life.alive:
                life.stack.rng.seed(f"{base}/host/{host.name}/{life.number}")
                if life.ready_rng is not None:
                    life.ready_rng.seed(f"{base}/ready/{host.name}/{life.number}")
        self._trace.event("fork", self.now, repr(seed))

    def _apply(self, action: Callable[[], None]) -> None:
        # From inside a host's step the change waits until the step ends.
        if self._running is not None:
            self._deferred.append(action)
        else:
            action()

    # -- packets ---------------------------------------------------------------------
    def _transmit(self, src: Host, packet: bytes) -> None:
        now = self.now
        n = len(packet)
        version = packet[0] >> 4 if n else 0
        if version == 4 and n >= 20:
            dst_addr = packet[16:20]
        elif version == 6 and n >= 40:
            dst_addr = packet[24:40]
        else:
            self._trace.packet(packet, "malformed", now, src.name)
            return
        dst = self._by_address.get(dst_addr)
        if dst is None:
            self._trace.packet(packet, "unroutable", now, src.name)
            return
        if dst is src:  # to itself: the loopback, no link
            self._trace.packet(packet, "sent", now, src.name, src.name)
            self._schedule(now, self._deliver_local_event, src, packet)
            return
        self._trace.packet(packet, "sent", now, src.name, dst.name)
        pair = (src.name, dst.name)
        if self._cut and pair in self._cut:
            self._trace.packet(packet, "partitioned", now, src.name, dst.name)
            return
        d = self._directions.get(pair)
        if d is None:
            self._trace.packet(packet, "no-link", now, src.name, dst.name)
            return
        schedule = self._schedulers.get(d)
        if schedule is None:
            schedule = self._arrivals(d)
        d.transmit(now, packet, schedule, self._report)

    def _arrivals(self, d: Direction) -> Callable[[float, bytes], None]:
        """``schedule(when, packet)``: ``packet`` arrives over ``d`` at
        ``when`` (made once per direction: one per packet would be an
        allocation on the hot path)."""
        schedule = self._schedulers.get(d)
        if schedule is None:
            events = self._events
            deliver = self._deliver_event
            push = heapq.heappush

            def schedule(when: float, packet: bytes) -> None:
                self._seq += 1
                push(events, (when, self._seq, deliver, (d, packet)))

            self._schedulers[d] = schedule
        return schedule

    def _report(self, kind: str, *fields: Any) -> None:
        packet = fields[-1]
        self._trace.packet(packet, kind, *fields[:-1])

    def _deliver(self, d: Direction, packet: bytes) -> None:
        host = d.dst
        life = host._life
        if life is None or not life.alive:
            self._trace.packet(packet, "dropped-down", self.now, host.name)
            return
        self._trace.delivery(packet, "delivered", self.now, d.name)
        life.device.deliver(packet)
        host._deadline_memo = _STALE  # its stack has input to read

    def _deliver_local(self, host: Host, packet: bytes) -> None:
        if host.up:
            self._trace.delivery(packet, "delivered", self.now, host.name)
            assert host._life is not None
            host._life.device.deliver(packet)
            host._deadline_memo = _STALE

    def _schedule(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, fn, args))

    @types.coroutine
    def _resolve(self, host: str, port: int) -> Waits[list[tuple[int, Any]]]:
        """The world's resolver: the host table of every host's name."""
        return (yield from self._names(host, port))

    def _clock_now(self) -> float:
        return self.now

    # -- running -------------------------------------------------------------------
    def run(self, thread: Thread | None = None, *, until: float | None = None) -> Any:
        """Run the world. With ``thread`` (from ``host.spawn``): until it
        ends, returning its result or raising its exception; ``Deadlock``
        if nothing can ever happen again, ``HostCrashed`` if its host
        crashes, ``TimeLimitReached`` at ``until`` (default: now plus the
        world's ``time_limit``). Without: until simulated time ``until``.
        Call it from outside any scheduler; it may be called again to go on."""
        self._check_runnable()
        with self._driving(), self._active():
            return self._run(thread, until)

    def _run(self, thread: Thread | None, until: float | None) -> Any:
        home = None
        if thread is not None:
            home = self._homes.get(thread)
            if home is None:
                raise ValueError(f"{thread!r} was not started with host.spawn() in this world")
            limit = self.now + self.time_limit if until is None else float(until)
        elif until is None:
            raise ValueError("run() needs a thread to wait for or a simulated time (until=...)")
        else:
            limit = float(until)
        if math.isnan(limit):
            raise ValueError(f"until must be a simulated time, got {until!r}")
        while True:
            self._settle()
            if thread is not None and thread.done:
                return thread.result()
            if home is not None and not home[1].alive:
                raise HostCrashed(f"host {home[0].name} crashed at t={self.now:.6f} s while running "
                                  f"{thread!r}")
            nxt = self._next_time()
            if nxt is None or nxt > limit:
                if thread is None:
                    self._advance(max(limit, self.now))
                    self._settle()
                    return None
                if nxt is None:
                    raise Deadlock(f"deadlock at t={self.now:.6f} s (simulated): {thread.name} on host "
                                   f"{home[0].name if home else '?'} cannot end; no thread is ready, no timer is "
                                   f"pending and no packet is in flight.\n{self.waiting_threads()}")
                self._advance(limit)
                self._settle()
                if thread.done:
                    return thread.result()
                raise TimeLimitReached(f"simulated time limit reached at t={self.now:.6f} s with {thread.name} on "
                                       f"host {home[0].name if home else '?'} still running (limit: until="
                                       f"{limit}; World(time_limit=...) sets the default).\n"
                                       f"{self.waiting_threads()}")
            self._advance(nxt)

    def _settle(self) -> None:
        """Run everything due at the current time until nothing is."""
        events = self._events
        deliver, deliver_local = self._deliver_event, self._deliver_local_event
        self._mid_instant = True  # until this instant is settled (an exception may stop it)
        while True:
            if self._violation is not None:
                raise self._violation
            progressed = False
            while events and events[0][0] <= self.now:
                _when, _seq, fn, args = heapq.heappop(events)
                fn(*args)
                progressed = True
                if fn is not deliver and fn is not deliver_local:
                    self._forget_deadlines()  # a planned action may have touched any host
            hosts = []
            for host in self._hosts.values():
                d = host._deadline_memo
                if d is _STALE or host.paused_until is not None:
                    if host._has_work():
                        hosts.append(host)
                    continue
                # _has_work() for a host whose deadline is known, without
                # the call: asked of every host twice or more per instant.
                life = host._life
                if life is not None and life.alive and (life.sched._ready or d is not None and d <= host.clock._now):
                    hosts.append(host)
            if self.shuffle and len(hosts) > 1:
                # Drawn only when there is an order to choose: how the driver
                # slices time into runs must not move the stream.
                self._shuffler.shuffle(hosts)
            for i, host in enumerate(hosts):
                if not i or host._has_work():  # still: an earlier host's fault may have stopped it
                    self._running = host
                    try:
                        host._run()
                    finally:
                        self._running = None
                        deferred, self._deferred = self._deferred, []
                        for action in deferred:
                            action()
                        if deferred:
                            self._forget_deadlines()
                    progressed = True
            if not progressed:
                if self._violation is not None:
                    raise self._violation
                self._mid_instant = False
                return

    def _next_time(self) -> float | None:
        best = self._events[0][0] if self._events else None
        now = self.now
        for host in self._hosts.values():
            # When (world time) the host next needs to run, if ever.
            life = host._life
            if life is None or not life.alive:
                continue
            if host.paused_until is not None:
                t = host.paused_until
            elif life.sched._ready:
                t = now
            else:
                d = host._deadline_memo
                if d is _STALE:
                    d = host._deadline()
                if d is None:
                    continue
                if d == _NEG_INF:
                    t = now
                else:
                    clock = host.clock
                    t = d if clock._identity else clock.world_time(d)  # world_time() without the call
                    if t < now:
                        t = now
            if best is None or t < best:
                best = t
        return best

    def _advance(self, when: float) -> None:
        # Also at the same time: a host deadline the world woke for must be
        # reached on the host's clock even when float rounding says "just
        # before" (a skewed clock).
        if when > self.now:
            self.now = when
            self._steps = 0
        when = self.now
        for host in self._hosts.values():
            d = host._deadline_memo
            if d is _STALE:
                d = host._deadline()
            clock = host.clock
            if clock._identity:
                # follow() on an unskewed clock: a due deadline is never
                # past the world's time, so the host's time is the world's.
                if when > clock._now:
                    clock._now = when
                continue
            due = d if d is not None and d != -math.inf and clock.world_time(d) <= when else None
            clock.follow(when, due)

    # -- looking at it ------------------------------------------------------------------
    def trace_hash(self) -> str:
        """The digest (hex) of every event so far: packets sent, fault
        decisions, deliveries, thread steps, spawns, ends, crashes,
        partitions, each with its simulated time. Equal for two runs of
        one scenario with one seed."""
        return self._trace.hexdigest()

    @property
    def events(self) -> list[str] | None:
        """The trace's events as text (``World(keep_events=True)``), else None."""
        return self._trace.events

    @property
    def event_count(self) -> int:
        """How many events the trace holds."""
        return self._trace.count

    def waiting_threads(self) -> str:
        """Every live thread per host and what it waits in (for reports)."""
        lines = []
        for host in self._hosts.values():
            life = host._life
            if life is None or not life.alive:
                lines.append(f"  host {host.name}: down")
                continue
            threads = life.sched.threads()
            state = f", paused until t={host.paused_until:.6f}" if host.paused_until is not None else ""
            lines.append(f"  host {host.name} ({len(threads)} threads{state}):")
            for t in threads:
                wait = t.waiting_on
                if wait is None:
                    doing = "ready"
                else:
                    what = getattr(wait, "what", None)
                    doing = f"waiting in {type(wait).__name__}" + (f"({what})" if isinstance(what, str) else "")
                lines.append(f"    #{t.id} {t.name!r} {doing}")
        return "\n".join(lines)

    def close(self) -> None:
        """End the world: every host's threads are closed as in a crash
        (nothing waits, nothing is sent). A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        for host in self._hosts.values():
            life = host._life
            if life is not None and life.alive:
                life.alive = False
                life.device.close()
                _close_threads(life.sched)
        self._homes.clear()
        self._events.clear()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<World seed={self.seed!r} t={self.now:.6f} hosts={list(self._hosts)}>"


def _no_objects(marker: dict[str, Any]) -> Any:
    raise SnapshotError(f"damaged snapshot: the setup's configuration names an object: {marker!r:.80}")


# What a snapshot's log may call (anything else is a damaged snapshot).
_REPLAYABLE = frozenset({"host", "link", "partition", "heal", "hold", "release", "at", "fault_at", "heal_all",
                         "spawn", "crash", "restart", "pause", "skew", "fail_disk", "_fork"})


def _call(action: Callable[..., Any], args: tuple[Any, ...]) -> None:
    action(*args)


_active_worlds: list[World] = []


def current_world() -> World | None:
    """The world being run (inside ``world.run``, ``run_until`` or a
    scenario the runner or ``check_determinism`` calls), else None."""
    return _active_worlds[-1] if _active_worlds else None


def always(condition: Any, message: str) -> None:
    """An invariant: ``condition`` must hold whenever this is reached. When
    it does not, the seed fails: ``InvariantFailed`` is raised here and
    again by the world (a thread that catches it does not hide it)."""
    if condition:
        return
    world = current_world()
    failure = InvariantFailed(message, world.now if world is not None else None)
    if world is not None and world._violation is None:
        world._violation = failure
        world._trace.event("invariant-failed", world.now, message)
    raise failure


def sometimes(condition: Any, message: str) -> bool:
    """A sign that a run reached an interesting state: counted per
    ``message``; the seed runner reports every message that was never
    true across its seeds (a fault that never bit, a branch never taken).
    Returns ``bool(condition)``."""
    hit = bool(condition)
    world = current_world()
    if world is not None:
        tally = world.sometimes.get(message)
        if tally is None:
            tally = world.sometimes[message] = [0, 0]
        tally[0] += 1
        tally[1] += hit
    return hit


def run_scenario(scenario: Callable[[World], Any], world: World, *, liveness: float = 60.0) -> None:
    """Run ``scenario(world)`` as the seed runner does: the scenario runs
    (``sim.always`` failures and its exceptions fail it); if it returns a
    callable ``converged``, a liveness phase follows: ``world.heal_all()``
    and ``converged()`` must hold within ``liveness`` simulated seconds
    (``NotConverged`` otherwise)."""
    with world._active():
        converged = scenario(world)
        if world._violation is not None:
            raise world._violation
        if callable(converged):
            world.heal_all()
            world.run_until(converged, timeout=liveness)


def check_determinism(scenario: Callable[[World], Any], seed: Any, *, shuffle: bool = False,
                      time_limit: float = 3600.0) -> str:
    """Run ``scenario`` (a function taking a fresh ``World``) twice with
    ``seed`` and compare the traces. Returns the trace hash when the runs
    agree; raises ``Nondeterminism`` naming the first differing event
    otherwise (or the differing outcomes, when one run raised and the
    other did not). A scenario that raises the same way both times
    raises that exception."""
    runs = []
    for _ in range(2):
        world = World(seed, shuffle, time_limit=time_limit, keep_events=True)
        error: BaseException | None = None
        try:
            run_scenario(scenario, world)
        except Exception as exc:
            error = exc
        finally:
            world.close()
        runs.append((world.trace_hash(), world.events or [], error))
    (hash1, events1, error1), (hash2, events2, error2) = runs
    if hash1 != hash2:
        index = next((i for i, (x, y) in enumerate(zip(events1, events2)) if x != y), min(len(events1), len(events2)))
        first = events1[index] if index < len(events1) else None
        second = events2[index] if index < len(events2) else None
        before = events1[index - 1] if index else "(none: the runs differ from the start)"
        raise Nondeterminism(
            f"scenario {getattr(scenario, '__qualname__', scenario)!r} with seed {seed!r} is not deterministic: "
            f"the runs differ at event {index} of {len(events1)}/{len(events2)}.\n"
            f"  last common event: {before}\n  first run:  {first if first is not None else '(ended)'}\n"
            f"  second run: {second if second is not None else '(ended)'}",
            index, first, second)
    outcome1 = None if error1 is None else f"{type(error1).__name__}: {error1}"
    outcome2 = None if error2 is None else f"{type(error2).__name__}: {error2}"
    if outcome1 != outcome2:
        raise Nondeterminism(
            f"scenario {getattr(scenario, '__qualname__', scenario)!r} with seed {seed!r} is not deterministic: "
            f"same trace, different outcomes: first run {outcome1 or 'passed'}, second run {outcome2 or 'passed'}",
            len(events1), outcome1, outcome2)
    if error1 is not None:
        raise error1
    return hash1


__all__ = [
    "World", "Host", "Link", "SimNetwork", "HostClock", "check_determinism",
    "SimulationError", "Deadlock", "TimeLimitReached", "HostCrashed", "Nondeterminism",
    "InvariantFailed", "NotConverged", "Livelock", "always", "sometimes", "current_world", "run_scenario",
]
