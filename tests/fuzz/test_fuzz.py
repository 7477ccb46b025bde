"""The fuzz targets in CI: each runs under atheris for a bounded time
(``THREADLIB_FUZZ_SECONDS``, default 20) from a copy of its seed corpus and
must find no crash; every saved crasher and every seed replays through its
target's ``TestOneInput`` in this process, as a regression test; the
committed seeds are the ones ``fuzz.seeds`` builds."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import TARGETS, seeds

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "fuzz"
SECONDS = int(os.environ.get("THREADLIB_FUZZ_SECONDS", "20"))


def _inputs(kind: str) -> list:
    return [pytest.param(target, path, id=f"{target}/{path.name}")
            for target in TARGETS for path in sorted((FUZZ / kind / target).glob("*"))]


@pytest.mark.parametrize("target", TARGETS)
def test_bounded_fuzzing_finds_no_crash(target, tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / target, corpus)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    command = [sys.executable, "-m", "fuzz.run", target, f"-max_total_time={SECONDS}", "-timeout=10",
               "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    dictionary = FUZZ / "dicts" / f"{target}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    command.append(str(corpus))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=SECONDS + 120)
    crashes = sorted(p.name for p in artifacts.iterdir())
    tail = "\n".join(done.stderr.splitlines()[-40:])
    assert done.returncode == 0 and not crashes, (
        f"fuzzing {target} found {crashes or 'a failure'} (exit {done.returncode}); fix it, and save the "
        f"input as fuzz/crashers/{target}/<name> for the regression test:\n{tail}")
    assert "stat::number_of_executed_units" in done.stderr, f"atheris did not run:\n{tail}"


@pytest.mark.parametrize(("target", "path"), _inputs("crashers"))
def test_saved_crasher_is_fixed(target, path):
    importlib.import_module(f"fuzz.{target}").TestOneInput(path.read_bytes())


@pytest.mark.parametrize(("target", "path"), _inputs("corpus"))
def test_seed_keeps_the_invariants(target, path):
    importlib.import_module(f"fuzz.{target}").TestOneInput(path.read_bytes())


@pytest.mark.parametrize("target", TARGETS)
def test_committed_seeds_are_the_built_ones(target):
    built = {seeds.seed_name(data) for data in seeds.SEEDS[target]()}
    committed = {p.name for p in (FUZZ / "corpus" / target).glob("seed-*")}
    assert built == committed, "run python -m fuzz.seeds and commit fuzz/corpus"
