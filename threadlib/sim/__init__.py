"""Deterministic simulation: whole networks of unchanged servers on one
virtual clock, with faults drawn from one seed.

```python
from threadlib import sim

world = sim.World(seed=7)
a = world.host("a", "10.0.0.1")
b = world.host("b", "10.0.0.2", ipv6="fd00::2")
world.link(a, b, latency=0.002, jitter=0.001, loss=0.01, duplicate=0.001, reorder=0.05)
srv = a.spawn(server_main, a.network)
cli = b.spawn(client_main, b.network)
result = world.run(cli)          # or world.run(until=60.0)
world.partition([a], [b]); world.heal(); a.crash(); a.restart(); a.pause(0.5); a.skew(0.2)
world.trace_hash()
sim.check_determinism(scenario, seed=7)

world = sim.World(seed=7, setup="mypkg.scenarios:build")     # snapshots need an importable setup
world.run(until=5.0)
snap = world.snapshot()                                     # bytes
w2 = sim.World.restore(snap); w3 = sim.World.restore(snap, seed=8)   # resume, or fork
```

Every host runs its own ``iolib.tcp`` stack (real IPv4/IPv6 segments,
real checksums and retransmissions) behind ``host.network``, a
``threadlib.net.Network``, and its own scheduler; the world moves one
simulated clock and decides every packet's fate from the seed. A host's
``fileio`` calls go to its simulated disk (``DiskParams``): latency, EIO,
and writes not yet fsynced lost in a crash. Snapshots are taken by
replay: the setup, the seed and the driver's inputs, run again to the
snapshot's time and checked. See
``docs/simulation.md`` for how to write a scenario and what breaks
determinism.

This package must never read the wall clock, the global ``random`` or
``os.urandom``, never open a real fd and never iterate over anything in an
order that depends on object addresses.
"""

from .disk import DiskParams, SimDisk
from .fabric import FaultSchedule, LinkParams
from .snapshot import Snapshot, SnapshotError, SnapshotMismatch
from .world import (
    Deadlock,
    Host,
    HostCrashed,
    InvariantFailed,
    Link,
    Livelock,
    Nondeterminism,
    NotConverged,
    SimNetwork,
    SimulationError,
    TimeLimitReached,
    World,
    always,
    check_determinism,
    current_world,
    run_scenario,
    sometimes,
)

__all__ = [
    "World", "Host", "Link", "LinkParams", "SimNetwork", "FaultSchedule",
    "check_determinism", "SimulationError", "Deadlock", "TimeLimitReached", "HostCrashed", "Nondeterminism",
    "InvariantFailed", "NotConverged", "Livelock", "always", "sometimes", "current_world", "run_scenario",
    "DiskParams", "SimDisk", "Snapshot", "SnapshotError", "SnapshotMismatch",
]
