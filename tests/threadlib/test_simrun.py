"""The seed runner (python -m threadlib.sim run), invariants, liveness,
the fault schedule and its shrinking, and the scenarios that ship."""

import os
import re
import shlex
import subprocess
import sys

import pytest

import threadlib
from apps import simscenarios
from threadlib import sim
from threadlib.sim import runner

from . import sim_planted

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLANTED = "tests.threadlib.sim_planted:scenario"


def cli(*args, timeout=240):
    """Run the seed runner's command line in a process of its own."""
    proc = subprocess.run([sys.executable, "-m", "threadlib.sim", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})
    return proc.returncode, proc.stdout, proc.stderr


def run_printed(command):
    """Run a command the runner printed (``python -m threadlib.sim ...``)."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "threadlib.sim"], command
    return cli(*words[3:])


def summary_row(stdout):
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("seeds run"))
    seeds, failed = lines[head + 1].split()[:2]
    return int(seeds), int(failed)


# ---------------------------------------------------------------------------
# The shipped scenarios, through the runner and the determinism check


@pytest.mark.parametrize("name", ["proxied_load", "web_crash"])
def test_the_runner_passes_a_shipped_scenario_over_a_range_of_seeds(name):
    code, out, err = cli("run", f"apps.simscenarios:{name}", "--seeds", "1-6", "--jobs", "2")
    assert code == 0, out + err
    assert summary_row(out) == (6, 0)
    assert "simulated s" in out and "sim/wall" in out and "events/s" in out
    assert "6/6 seeds, 0 failed" in err  # the progress line


@pytest.mark.parametrize("scenario", [simscenarios.proxied_load, simscenarios.web_crash, sim_planted.scenario])
def test_every_shipped_scenario_passes_the_determinism_check(scenario):
    sim.check_determinism(scenario, 5)


def test_the_proxied_load_scenario_checks_its_counts_and_fires_link_faults_and_partitions():
    # Some seed among the first few draws a partition; every seed loses packets.
    partitions = 0
    for seed in range(1, 5):
        result = runner.run_seed("apps.simscenarios:proxied_load", seed, runner.RunOptions())
        assert result.passed, result.error
        assert any(f.endswith(":lost") for f in result.faults)
        assert any(f.endswith(":reordered") for f in result.faults)
        assert result.sometimes["a partition happened"][0] == 1
        partitions += result.sometimes["a partition happened"][1]
    assert partitions


def test_the_web_crash_scenario_sees_errors_only_at_the_crash_and_recovers():
    seen = 0
    for seed in range(1, 5):
        result = runner.run_seed("apps.simscenarios:web_crash", seed, runner.RunOptions())
        assert result.passed, result.error
        assert [f for f in result.faults if f.startswith("at#")] == ["at#1:crash web"]
        seen += result.sometimes["a client saw the crash"][1]
    assert seen
    # Without the crash (the planned fault removed), no client sees an error.
    quiet = runner.run_seed("apps.simscenarios:web_crash", 1, runner.RunOptions(faults=()))
    assert quiet.passed and quiet.faults == [] and quiet.sometimes["a client saw the crash"][1] == 0


# ---------------------------------------------------------------------------
# The planted bug: found, reproduced, shrunk


def test_the_runner_finds_reproduces_and_shrinks_the_planted_race():
    code, out, err = cli("run", PLANTED, "--seeds", "1-1000", "--jobs", "2", "--fail-fast", "--shrink")
    assert code == 1, out + err
    failed = re.search(r"^seed (\d+) FAILED: (InvariantFailed: .*no deposit is lost.*)$", out, re.M)
    assert failed, out
    seed = failed.group(1)
    commands = re.findall(r"^  reproduce: (.*)$", out, re.M)
    assert commands[0] == f"python -m threadlib.sim run {PLANTED} --seeds {seed}"
    # The printed command reproduces the failure, in another process.
    code2, out2, _ = run_printed(commands[0])
    assert code2 == 1 and f"seed {seed} FAILED: InvariantFailed" in out2 and "no deposit is lost" in out2
    # Shrinking printed a smaller (or equal) schedule that still fails...
    shrunk = re.search(r"^smallest fault schedule: (\d+) of (\d+) faults \((\d+) runs\): (.*)$", out, re.M)
    assert shrunk, out
    kept, original = int(shrunk.group(1)), int(shrunk.group(2))
    assert 1 <= kept <= original
    assert "--faults" in commands[-1]
    code3, out3, _ = run_printed(commands[-1])
    assert code3 == 1 and "no deposit is lost" in out3
    # ... and is minimal: the seed passes with no faults at all, and with
    # any one of the kept faults removed.
    faults = shrunk.group(4).split(", ")
    assert len(faults) == kept
    assert cli("run", PLANTED, "--seeds", seed, "--faults", "none")[0] == 0
    for i in range(kept):
        rest = faults[:i] + faults[i + 1:]
        assert cli("run", PLANTED, "--seeds", seed, "--faults", ",".join(rest) or "none")[0] == 0


def test_a_schedule_of_the_faults_that_fired_replays_the_same_run():
    full = sim.World(86)
    with pytest.raises(sim.InvariantFailed):
        sim.run_scenario(sim_planted.scenario, full)
    full.close()
    fired = list(full.faults.fired)
    assert fired
    again = sim.World(86, faults=fired)
    with pytest.raises(sim.InvariantFailed):
        sim.run_scenario(sim_planted.scenario, again)
    again.close()
    assert again.trace_hash() == full.trace_hash() and again.faults.fired == fired
    none = sim.World(86, faults=())
    sim.run_scenario(sim_planted.scenario, none)
    none.close()
    assert none.faults.fired == [] and none.trace_hash() != full.trace_hash()


# ---------------------------------------------------------------------------
# Invariants, liveness, livelock


def swallowed_invariant(world):
    a = world.host("a", "10.0.0.1")

    def careless():
        try:
            sim.always(1 + 1 == 3, "arithmetic holds")
        except Exception:
            pass  # a server that catches everything must not hide a failed invariant
        yield from threadlib.sleep(1.0)
        return "went on"

    world.run(a.spawn(careless))


def test_a_failed_always_fails_the_seed_even_when_a_thread_catches_it():
    result = runner.run_seed("tests.threadlib.test_simrun:swallowed_invariant", 1, runner.RunOptions())
    assert not result.passed
    assert result.error == "InvariantFailed: invariant failed at t=0.000000 s (simulated): arithmetic holds"


def never_converges(world):
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b)
    sim.sometimes(False, "the impossible happened")
    sim.sometimes(True, "the obvious happened")
    return lambda: False


def partitioned_then_healed(world):
    a = world.host("a", "10.0.0.1")
    b = world.host("b", "10.0.0.2")
    world.link(a, b, latency=0.01, loss=0.5)
    a.spawn(_echo_server, a.network)
    world.partition([a], [b])
    b.crash()
    probe = []

    def converged():
        if not probe and b.up:
            probe.append(b.spawn(_echo_once, b.network))
        return bool(probe) and probe[0].done and probe[0].result() == b"ping"

    return converged


def _echo_server(net):
    with (yield from net.listen(("", 7))) as listener:
        while True:
            conn, _ = yield from listener.accept()
            with conn:
                yield from conn.sendall((yield from conn.recv(100)))


def _echo_once(net):
    with (yield from net.connect(("a", 7), timeout=10)) as conn:
        yield from conn.sendall(b"ping")
        return (yield from conn.recv(100))


def test_the_liveness_phase_heals_everything_then_needs_converged_within_its_deadline():
    ok = runner.run_seed("tests.threadlib.test_simrun:partitioned_then_healed", 1, runner.RunOptions())
    assert ok.passed, ok.error
    assert ok.faults == []  # heal_all stopped the link's loss: no fault fired after it
    bad = runner.run_seed("tests.threadlib.test_simrun:never_converges", 1, runner.RunOptions(liveness=5.0))
    assert bad.error.startswith("NotConverged: not converged: never_converges.<locals>.<lambda>() still false "
                                "at t=5.000000 s (simulated)")


def test_the_runner_reports_sometimes_never_true_across_the_run():
    code, out, _ = cli("run", "tests.threadlib.test_simrun:never_converges", "--seeds", "1-3", "--liveness", "1")
    assert code == 1
    assert "sometimes never true: 'the impossible happened' (asked 3 times)" in out
    assert "the obvious happened" not in out
    assert summary_row(out) == (3, 3)


def test_a_sleep_zero_loop_is_stopped_as_a_livelock():
    world = sim.World(1, step_limit=5000)
    a = world.host("a", "10.0.0.1")

    def spinner():
        while True:
            yield from threadlib.sleep(0)

    with pytest.raises(sim.Livelock, match=r"^livelock: 5000 steps of threads at t=0.000000 s \(simulated\)"):
        world.run(a.spawn(spinner, name="spinner"))
    assert "'spinner' ready" in world.waiting_threads()
    world.close()


# ---------------------------------------------------------------------------
# Bad input


def test_bad_runner_input_is_named():
    code, _, err = cli("run", "no_such_module_x:scenario", "--seeds", "1")
    assert code == 2 and "cannot import module 'no_such_module_x'" in err
    code, _, err = cli("run", "apps.simscenarios:nothing", "--seeds", "1")
    assert code == 2 and "module 'apps.simscenarios' has no 'nothing'" in err
    code, _, err = cli("run", "apps.simscenarios", "--seeds", "1")
    assert code == 2 and "a scenario is MODULE:FUNCTION" in err
    code, _, err = cli("run", PLANTED, "--seeds", "5-2")
    assert code == 2 and "the range '5-2' is empty" in err
    code, _, err = cli("run", PLANTED, "--seeds", "x")
    assert code == 2 and "'x' is not a seed" in err
    code, _, err = cli("run", PLANTED, "--faults", "lost")
    assert code == 2 and "not a fault id" in err
    with pytest.raises(ValueError, match="step_limit must be a positive number"):
        sim.World(1, step_limit=0)
    with pytest.raises(ValueError, match="label must be a non-empty string without commas"):
        sim.World(1).fault_at(1.0, print, label="a,b")
