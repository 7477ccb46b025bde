"""The compiled run loop (threadlib/_kernel/_speedups.c) and the pure one
(scheduler.Scheduler._run_ready) behave the same. The whole suite runs
under both (the README's test command runs it twice); these tests compare
the two directly, in child processes, since the choice is made at import."""

from __future__ import annotations

import os
import subprocess
import sys

from tests import REPO_ROOT

TRACE = os.path.join(os.path.dirname(__file__), "loop_trace.py")


def run_trace(pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "THREADLIB_PURE"}
    if pure:
        env["THREADLIB_PURE"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, TRACE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_compiled_loop_is_built_and_used_unless_pure_is_asked():
    # setup.sh installs the compiler the build needs, so here it is built.
    assert run_trace(pure=False)[0] == "True"
    assert run_trace(pure=True)[0] == "False"


def test_both_loops_do_the_same_things_in_the_same_order():
    compiled, pure = run_trace(pure=False)[1:], run_trace(pure=True)[1:]
    assert compiled == pure
    # And what they agree on is right, not merely the same.
    assert compiled[:4] == ["a0", "a0<-None", "a1", "b0"]
    assert "cancel -> True 'returned from a throw'" in compiled
    assert "joined failure fails" in compiled
    assert any(line.startswith("spinner cancelled at its wait after") for line in compiled)
    assert compiled.index("w1 sees -") < compiled.index("w1 sees w1 after a step")
    assert "w2 sees -" in compiled and "main sees -" in compiled
    assert any(line.startswith("unknown call: thread misuses") for line in compiled)
    assert "worker error: ZeroDivisionError" in compiled
    assert compiled[-2:] == ["now 0.5", "run raised KeyboardInterrupt(from main)"]
