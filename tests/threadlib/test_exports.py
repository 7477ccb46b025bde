"""The public surface: every public name is importable from where the docs
say, nothing private is re-exported, the layers import only downward, and
the wheel installs no top-level name but threadlib and iolib."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys
import zipfile

import pytest

import threadlib
from tests import REPO_ROOT

ROOT = REPO_ROOT

PUBLIC_MODULES = [
    "threadlib", "threadlib.lowlevel", "threadlib.net", "threadlib.syscalls", "threadlib.sync",
    "threadlib.calls",
    "threadlib.io.sockio", "threadlib.io.fileio", "threadlib.io.aioworker", "threadlib.io.splice",
    "threadlib.io.tcpsockio", "threadlib.io.tls",
    "threadlib.frontends.green", "threadlib.process.multicore", "threadlib.process.signals",
    "threadlib.process.subprocess", "threadlib.loop", "threadlib.io.happy_eyeballs", "threadlib.testing.pytest_plugin",
    "threadlib.sim", "threadlib.sim.runner", "threadlib.replay",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_name_in_all_exists_and_none_is_private(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name in ("threadlib.sync", "threadlib.calls", "threadlib.syscalls"):
        exported = exported or [n for n in vars(module) if not n.startswith("_")]
    assert exported, f"{name} has no __all__"
    for attr in exported:
        assert not attr.startswith("_"), f"{name} exports the private name {attr}"
        assert hasattr(module, attr), f"{name}.__all__ lists {attr}, which does not exist"
        obj = getattr(module, attr)
        origin = getattr(obj, "__module__", None)
        if isinstance(obj, type) and origin not in (None, "typing"):
            assert origin.startswith(("threadlib", "iolib")), f"{name}.{attr} comes from {origin}"
            assert "._" not in origin.replace("threadlib._kernel", "threadlib.kernel"), \
                f"{name}.{attr} is defined in the private module {origin}"


def test_the_top_level_is_the_user_api_only():
    assert set(threadlib.__all__) == {
        "run", "spawn", "sleep", "current", "current_thread", "blocking", "join_all", "join_any", "now",
        "wall_time", "timeout", "timeout_at", "current_scheduler", "Thread", "ThreadCancelled", "WorkerError",
        "Event", "Mutex", "Semaphore", "Condition", "Queue", "QueueClosed", "QueueFull", "QueueEmpty",
        "CancelScope", "move_on_after", "move_on_at", "fail_after", "fail_at", "TaskGroup", "task_group",
        "uring_workers",
    }
    # Extender names live in lowlevel, not at the top.
    for name in ("Scheduler", "Worker", "WaitQueue", "SystemCall", "Park", "TimerWorker", "IOWorker"):
        assert not hasattr(threadlib, name), name
        assert hasattr(threadlib.lowlevel, name), name
    # Subpackages load on first use, and only the documented ones.
    for sub in ("io", "net", "frontends", "process", "lowlevel", "syscalls", "loop", "sim", "replay"):
        assert getattr(threadlib, sub).__name__ == f"threadlib.{sub}"
    with pytest.raises(AttributeError):
        threadlib.recorder  # noqa: B018 (no such subpackage)


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return found


@pytest.mark.parametrize("layer, forbidden", [
    ("iolib", ("threadlib", "apps")),
    ("threadlib", ("apps",)),
])
def test_layers_import_only_downward(layer, forbidden):
    for path in sorted((ROOT / layer).rglob("*.py")):
        for name in _imports(path):
            assert name.split(".")[0] not in forbidden, f"{path.relative_to(ROOT)} imports {name}"


def _scheduler_and_worker_modules() -> set[str]:
    from threadlib.lowlevel import Scheduler, Worker

    found = {Scheduler.__module__}
    todo = [Worker]
    while todo:
        cls = todo.pop()
        found.add(cls.__module__)
        todo.extend(cls.__subclasses__())
    # every worker threadlib ships, imported so that its class is seen
    assert {"threadlib._kernel.timers", "threadlib._kernel.scheduler"} <= found
    return {m for m in found if m.startswith("threadlib")}


def test_syscalls_never_imports_the_scheduler_or_a_worker():
    # design.md §2: threadlib.syscalls is the vocabulary both sides share
    # and must never import the scheduler or a worker. Two checks: every
    # import statement in the file (also inside functions), and what
    # importing it alone really loads (threadlib's __init__ is kept out with
    # an empty package, so only syscalls.py and what it pulls in run).
    for name in ("threadlib.process.signals", "threadlib.io.aioworker", "threadlib.loop",
                 "threadlib.io.tcpsockio", "threadlib.io.splice"):
        importlib.import_module(name)  # so that their workers are among the subclasses
    forbidden = _scheduler_and_worker_modules()
    path = ROOT / "threadlib" / "syscalls.py"
    for name in _imports(path):
        assert not any(name == m or m.startswith(name + ".") or name.startswith(m + ".") for m in forbidden
                       if name != "threadlib"), f"threadlib/syscalls.py imports {name}"
    probe = (
        "import sys, types\n"
        f"package = types.ModuleType('threadlib'); package.__path__ = [{str(ROOT / 'threadlib')!r}]\n"
        "sys.modules['threadlib'] = package\n"
        "import threadlib.syscalls\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('threadlib'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(done.stdout.split())
    assert "threadlib.syscalls" in loaded
    assert not loaded & forbidden, f"importing threadlib.syscalls loads {sorted(loaded & forbidden)}"


def test_the_kernel_is_private_to_threadlib():
    for path in sorted((ROOT / "apps").rglob("*.py")):
        for name in _imports(path):
            assert "_kernel" not in name, f"{path.relative_to(ROOT)} imports the private {name}"


@pytest.mark.timeout(240)
def test_the_wheel_installs_only_threadlib_and_iolib_plus_console_scripts(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=230,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("threadlib-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        assert tops == {"threadlib", "iolib"}
        assert "threadlib/apps/webserver/__main__.py" in names
        assert "threadlib/apps/sample_site/index.html" in names
        assert "threadlib/py.typed" in names and "iolib/py.typed" in names
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert any(n.endswith("/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    for script, target in [("threadlib-webserver", "threadlib.apps.webserver.__main__:main"),
                           ("threadlib-loadgen", "threadlib.apps.loadgen:main"),
                           ("threadlib-proxy", "threadlib.apps.proxy:main"),
                           ("threadlib-echo", "threadlib.apps.echo:main")]:
        assert f"{script} = {target}" in entry_points
    # The pytest plugin (threadlib.testing.pytest_plugin) is found by pytest through this entry point.
    assert "threadlib/testing/pytest_plugin.py" in names
    pytest11 = entry_points.split("[pytest11]", 1)[1].split("\n[", 1)[0]
    assert "threadlib = threadlib.testing.pytest_plugin" in pytest11


def test_the_console_script_runs_the_installed_program():
    script = pathlib.Path(sys.executable).with_name("threadlib-echo")
    assert script.exists(), "setup.sh installs the package with its console scripts"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage" in result.stdout.lower()
    bad = subprocess.run([str(script), "--port", "notaport"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "notaport" in bad.stderr
