"""threadlib.sim snapshots (checkpoint by replay: restore, fork, across
processes, damaged snapshots, changed code) and the simulated disk that
serves fileio on simulated hosts (latency, EIO, unsynced writes lost in a
crash). Times asserted are simulated times, which the simulation
computes; the setups and programs are in ``sim_snapshots.py``."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys

import pytest

import threadlib
from tests import REPO_ROOT
from threadlib import sim
from threadlib.io import fileio

from . import sim_snapshots as progs

TWO_HOSTS = "tests.threadlib.sim_snapshots:two_hosts"


def drive(world, until):
    """The driver's part of the runs below: inputs between runs."""
    world.run(until=0.4)
    world.partition(["a"], ["b"])
    world.run(until=0.7)
    world.heal()
    b = world.hosts[1]
    world.run(b.spawn(progs.chatter, b.network, "a", 5, 1024, 0.01, name="late"))
    world.at(world.now + 0.2, world.hosts[0].pause, 0.1)
    world.run(until=until)


# ---------------------------------------------------------------------------
# Restore and fork


def test_a_restored_world_continues_with_the_trace_hash_of_the_uninterrupted_run():
    with sim.World(11, setup=TWO_HOSTS, config={"loss": 0.05}) as world:
        drive(world, 1.2)
        snap = world.snapshot()
        assert isinstance(snap, bytes)
        at_snapshot = world.trace_hash()
        world.run(until=4.0)
        uninterrupted = world.trace_hash()
        assert world.event_count > 1000
    with sim.World.restore(snap) as restored:
        assert restored.now == 1.2
        assert restored.trace_hash() == at_snapshot
        restored.run(until=4.0)
        assert restored.trace_hash() == uninterrupted
    # And without the snapshot: the same world run straight through.
    with sim.World(11, setup=TWO_HOSTS, config={"loss": 0.05}) as straight:
        drive(straight, 4.0)
        assert straight.trace_hash() == uninterrupted


def test_a_fork_is_identical_up_to_the_snapshot_and_diverges_only_after():
    with sim.World(3, setup=TWO_HOSTS, keep_events=True) as world:
        world.run(until=0.5)
        snap = world.snapshot()
        cut = world.event_count
        world.run(until=2.5)
        original = list(world.events)
    with sim.World.restore(snap, seed=8, keep_events=True) as fork:
        assert fork.seed == 8
        fork.run(until=2.5)
        forked = list(fork.events)
    assert forked[:cut] == original[:cut]
    assert forked[cut] == repr(("fork", 0.5, "8"))
    # The fork's later packets differ: its link faults and ISNs come from seed 8.
    assert forked[cut + 1:] != original[cut:]
    assert sum(1 for e in forked[cut + 1:] if e.startswith("('lost'")) != \
        sum(1 for e in original[cut:] if e.startswith("('lost'"))
    # Two forks with one seed are the same run; the fork itself snapshots and restores.
    with sim.World.restore(snap, seed=8) as again:
        again.run(until=2.5)
        assert again.trace_hash() == fork.trace_hash()
        snap2 = again.snapshot()
    with sim.World.restore(snap2) as resumed:
        assert resumed.trace_hash() == fork.trace_hash()


def test_a_setup_may_run_the_world_and_driver_inputs_may_name_functions_and_host_methods():
    with sim.World(5, setup="tests.threadlib.sim_snapshots:setup_that_runs") as world:
        assert world.now == 0.3
        a, b = world.hosts
        world.at(0.5, a.crash)
        world.at(0.9, a.restart)
        world.after(0.1, b.skew, 0.25)
        world.run(until=1.0)
        snap = world.snapshot()
        world.run(until=2.0)
        expected = world.trace_hash()
        assert a.incarnation == 2
    with sim.World.restore(snap) as restored:
        restored.run(until=2.0)
        assert restored.trace_hash() == expected
        assert restored.hosts[0].incarnation == 2


CROSS_PROCESS = """
import sys
sys.path.insert(0, {root!r})
from threadlib import sim
with open(sys.argv[1], "rb") as f:
    world = sim.World.restore(f.read())
world.run(until=3.0)
print(world.trace_hash())
"""


def test_a_snapshot_written_to_a_file_restores_in_another_process(tmp_path):
    with sim.World(21, setup=TWO_HOSTS, shuffle=True) as world:
        drive(world, 1.0)
        path = tmp_path / "world.snap"
        path.write_bytes(world.snapshot())
        world.run(until=3.0)
        expected = world.trace_hash()
    for hash_seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", CROSS_PROCESS.format(root=str(REPO_ROOT)), str(path)],
                                capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, PYTHONHASHSEED=hash_seed))
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == expected


# ---------------------------------------------------------------------------
# What cannot be snapshotted or restored, and says so


def test_a_damaged_truncated_or_foreign_snapshot_is_refused_naming_what_is_wrong():
    with sim.World(2, setup=TWO_HOSTS) as world:
        world.run(until=0.2)
        snap = world.snapshot()
    damaged = bytearray(snap)
    damaged[len(damaged) // 2] ^= 0x01
    with pytest.raises(sim.SnapshotError, match="damaged or truncated snapshot: its checksum"):
        sim.World.restore(bytes(damaged))
    with pytest.raises(sim.SnapshotError, match="checksum"):
        sim.World.restore(snap[:-5])
    with pytest.raises(sim.SnapshotError, match="truncated snapshot"):
        sim.World.restore(snap[:10])
    with pytest.raises(sim.SnapshotError, match="not a threadlib simulation snapshot"):
        sim.World.restore(b"PK\x03\x04 a zip file, say")
    with pytest.raises(sim.SnapshotError, match="a snapshot is bytes"):
        sim.World.restore("world.snap")


def test_restoring_after_the_code_changed_raises_a_mismatch_naming_the_time(monkeypatch):
    with sim.World(4, setup="tests.threadlib.sim_snapshots:disk_hosts") as world:
        app = world.hosts[1]
        world.run(app.spawn(progs.ask, app.network, "db", [b"1!", b"2"]))
        snap = world.snapshot()
        when = world.now
    monkeypatch.setattr(progs, "LOG_RECORD", b"rec %d\n")  # the server now writes other bytes
    with pytest.raises(sim.SnapshotMismatch, match=rf"at t={when:.6f}: the replayed run is not the one snapshotted"):
        sim.World.restore(snap)


def test_worlds_that_cannot_be_rebuilt_refuse_to_snapshot_and_say_why():
    with sim.World(1) as plain:
        with pytest.raises(sim.SnapshotError, match="not built by a setup function"):
            plain.snapshot()
    with pytest.raises(ValueError, match="importable by name"):
        sim.World(1, setup=lambda world: None)
    with pytest.raises(ValueError, match="cannot import module"):
        sim.World(1, setup="no.such.module:build")
    with pytest.raises(ValueError, match="config must be plain data"):
        sim.World(1, setup=TWO_HOSTS, config={"loss": object()})
    with sim.World(1, setup=TWO_HOSTS) as world:
        b = world.hosts[1]
        b.spawn(lambda: (yield from threadlib.sleep(1)))
        with pytest.raises(sim.SnapshotError, match=r"spawn\(\) at t=0.000000 .* cannot be imported back by name"):
            world.snapshot()


def test_a_driver_that_draws_from_the_world_rng_after_setup_is_caught_on_restore():
    with sim.World(6, setup=TWO_HOSTS) as world:
        world.run(until=0.2)
        world.rng.random()  # not an input the snapshot can replay
        snap = world.snapshot()
    with pytest.raises(sim.SnapshotMismatch, match="this state differs: world"):
        sim.World.restore(snap)


def test_snapshot_is_refused_from_inside_the_simulation():
    with sim.World(6, setup=TWO_HOSTS) as world:
        errors = []

        def try_snapshot():
            try:
                world.snapshot()
            except sim.SnapshotError as exc:
                errors.append(str(exc))

        world.at(0.1, try_snapshot)
        world.run(until=0.2)
        assert errors and "between runs" in errors[0]


# ---------------------------------------------------------------------------
# The simulated disk


def test_fsynced_records_survive_a_crash_and_unsynced_ones_are_lost():
    with sim.World(9, setup="tests.threadlib.sim_snapshots:disk_hosts") as world:
        db, app = world.hosts
        answers = world.run(app.spawn(progs.ask, app.network, "db", [b"1!", b"2!", b"3", b"4", b"count"]))
        assert answers[:4] == ["synced", "synced", "kept", "kept"]
        assert answers[4].startswith("4 ")  # the page cache holds all four
        assert db.disk.contents("/var/log/records") == b"".join(progs.LOG_RECORD % i for i in (1, 2, 3, 4))
        db.crash()
        db.restart()
        answers = world.run(app.spawn(progs.ask, app.network, "db", [b"count", b"5!", b"count"]))
        synced = b"".join(progs.LOG_RECORD % i for i in (1, 2))
        assert answers[0] == f"2 {hashlib.sha256(synced).hexdigest()}"
        assert answers[1:] == ["synced", f"3 {hashlib.sha256(synced + progs.LOG_RECORD % 5).hexdigest()}"]
        assert db.disk.contents("/var/log/records", durable=True) == synced + progs.LOG_RECORD % 5


def test_a_file_never_fsynced_is_gone_after_a_crash_and_nothing_reaches_the_real_disk(tmp_path):
    real = str(tmp_path / "only-simulated.txt")

    def writer():
        f = yield from fileio.open(real, "w")
        yield from f.pwrite(b"hello", 0)
        with pytest.raises(io.UnsupportedOperation, match="simulated disk"):
            f.fileno()
        st = yield from fileio.stat(real)
        yield from f.close()
        return st.st_size

    with sim.World(1) as world:
        h = world.host("h", "10.0.0.1")
        assert world.run(h.spawn(writer)) == 5
        assert h.disk.paths() == [real]
        h.crash()
        h.restart()
        assert h.disk.paths() == []

        def missing():
            with pytest.raises(FileNotFoundError):
                yield from fileio.open(real, "r")
            return True

        assert world.run(h.spawn(missing))
    assert not os.path.exists(real)


def test_eio_surfaces_as_oserror_eio_at_the_caller_planned_or_drawn_from_the_seed():
    def write_and_sync(n):
        errors = []
        f = yield from fileio.open("/data/f", "w")
        for i in range(n):
            try:
                yield from f.pwrite(b"x" * 100, i * 100)
                yield from f.fsync()
            except OSError as exc:
                errors.append(exc.errno)
        yield from f.close()
        return errors

    with sim.World(2) as world:
        h = world.host("h", "10.0.0.1")
        h.fail_disk(1, "fsync")
        assert world.run(h.spawn(write_and_sync, 3)) == [errno.EIO]
    with sim.World(2) as world:
        h = world.host("h", "10.0.0.1", disk=sim.DiskParams(eio=0.2))
        errors = world.run(h.spawn(write_and_sync, 30))
        fired = [f for f in world.faults.fired if f.startswith("disk:h#")]
        assert errors == [errno.EIO] * len(fired) and len(fired) >= 2
    # The disk faults are in the fault schedule: a run allowing none has no EIO.
    with sim.World(2, faults=[]) as world:
        h = world.host("h", "10.0.0.1", disk={"eio": 0.2})
        assert world.run(h.spawn(write_and_sync, 30)) == []


def test_disk_requests_take_the_configured_simulated_time():
    def timed():
        f = yield from fileio.open("/d", "w")
        t0 = threadlib.now()
        yield from f.pwrite(b"a" * 4096, 0)  # aligned: one write request
        t1 = threadlib.now()
        yield from f.fsync()
        t2 = threadlib.now()
        yield from f.close()
        return t1 - t0, t2 - t1

    with sim.World(1) as world:
        h = world.host("h", "10.0.0.1", disk=sim.DiskParams(latency=0.003, fsync_latency=0.02))
        write, sync = world.run(h.spawn(timed))
    assert write == pytest.approx(0.003)
    assert sync == pytest.approx(0.02)


def disk_scenario(world):
    progs.disk_hosts(world, latency=0.001, eio=0.05)
    db, app = world.hosts
    world.at(0.05, db.crash)
    world.at(0.2, db.restart)
    first = app.spawn(progs.ask, app.network, "db", [b"%d%s" % (i, b"!" if i % 3 else b"") for i in range(20)])
    try:
        world.run(first)
    except OSError:
        pass  # the crash may reset the connection
    world.run(until=0.3)
    return world.run(app.spawn(progs.ask, app.network, "db", [b"count"]))


def test_a_disk_scenario_passes_the_determinism_check_and_its_snapshot_restores():
    sim.check_determinism(disk_scenario, seed=12)
    with sim.World(12, setup="tests.threadlib.sim_snapshots:disk_hosts", config={"eio": 0.1}) as world:
        db, app = world.hosts
        world.run(app.spawn(progs.ask, app.network, "db", [b"%d!" % i for i in range(8)]))
        db.crash()
        db.restart()
        snap = world.snapshot()
        world.run(app.spawn(progs.ask, app.network, "db", [b"count"]))
        expected = (world.trace_hash(), db.disk.contents("/var/log/records", durable=True))
    with sim.World.restore(snap) as restored:
        db, app = restored.hosts
        restored.run(app.spawn(progs.ask, app.network, "db", [b"count"]))
        assert (restored.trace_hash(), db.disk.contents("/var/log/records", durable=True)) == expected


@pytest.mark.parametrize("params, name", [({"latency": -1}, "latency"), ({"eio": 1.5}, "eio"),
                                          ({"fsync_latency": float("nan")}, "fsync_latency")])
def test_bad_disk_parameters_raise_valueerror_naming_them(params, name):
    with sim.World(1) as world:
        with pytest.raises(ValueError, match=f"disk: {name} must be"):
            world.host("h", "10.0.0.1", disk=params)
        with pytest.raises(ValueError, match="op must be one of"):
            world.host("g", "10.0.0.2").fail_disk(1, "seek")


def test_a_request_whose_thread_times_out_never_reaches_the_disk():
    def slow_write():
        f = yield from fileio.open("/slow", "w")
        with threadlib.move_on_after(0.01) as scope:
            yield from f.pwrite(b"z" * 4096, 0)
        yield from threadlib.sleep(1.0)  # long past the write's latency
        size = f.size
        yield from f.close()
        return scope.cancelled_caught, size

    with sim.World(1) as world:
        h = world.host("h", "10.0.0.1", disk=sim.DiskParams(latency=0.1))
        assert world.run(h.spawn(slow_write)) == (True, 0)
        assert h.disk.contents("/slow") == b""
