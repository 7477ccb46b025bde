"""The pytest plugin: test functions that are threads.

A generator function or an ``async def`` function marked
``@pytest.mark.threadlib`` runs as the main thread of a fresh scheduler
(``Scheduler.run``), with its fixtures as arguments; its return value is
ignored, its exception fails the test, and the threads it leaves behind
are cancelled when it ends, as ``threadlib.run`` does. The mark may sit on
a function, a class or a module (``pytestmark``); plain functions under a
class or module mark run as usual.

``@pytest.mark.threadlib(virtual_clock=True)``, or asking for the
``virtual_clock`` fixture, runs the test on a ``VirtualClock``: time jumps
to the next deadline whenever every thread waits, so a test of a 60 s
timeout takes milliseconds, and the same test always sees the same times.
(A scheduler polls fds only once a worker watches one; a virtual clock
jumps over IO waits as well, so it suits tests of timers, timeouts and
sync objects, not of real network peers.)
``@pytest.mark.threadlib(scheduler=factory)`` builds the scheduler with
``factory()`` (``factory(clock=...)`` with a virtual clock), e.g.
``threadlib.process.signals.scheduler``.

Fixtures are ordinary pytest fixtures, set up before the test's scheduler
starts and torn down after it ended: make what needs a running scheduler
(a listener, a thread) inside the test.

Registered by the ``pytest11`` entry point ``threadlib`` when threadlib is
installed (``-p no:threadlib`` turns it off). This module never imports
anything the runtime does not already, besides pytest.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pytest

from .._kernel import Scheduler, VirtualClock

__all__ = ["virtual_clock", "MARKER"]

#: The marker's name: ``@pytest.mark.threadlib``.
MARKER = "threadlib"

_OPTIONS = ("virtual_clock", "scheduler")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(virtual_clock=False, scheduler=None): run this generator or async def test as the main "
        "thread of a fresh threadlib scheduler, on a VirtualClock if asked")


def _is_thread_function(obj: Any) -> bool:
    func = getattr(obj, "__func__", obj)
    return inspect.isgeneratorfunction(func) or inspect.iscoroutinefunction(func)


def _marked(collector: pytest.Collector, obj: Any) -> bool:
    own = getattr(obj, "pytestmark", [])
    if any(mark.name == MARKER for mark in (own if isinstance(own, list) else [own])):
        return True
    return collector.get_closest_marker(MARKER) is not None


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> Any:
    """Collect marked generator test functions, which pytest itself refuses
    (``yield`` tests were removed in pytest 4)."""
    if not isinstance(collector, (pytest.Module, pytest.Class)) or not inspect.isgeneratorfunction(obj):
        return None
    if not collector.istestfunction(obj, name) or not _marked(collector, obj):
        return None
    # pytest's own way of making the items of a test function (parametrize included).
    return list(collector._genfunctions(name, obj))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a marked generator or ``async def`` test on a fresh scheduler."""
    marker = pyfuncitem.get_closest_marker(MARKER)
    if marker is None or not _is_thread_function(pyfuncitem.obj):
        return None
    if marker.args:
        raise pytest.UsageError(f"{pyfuncitem.nodeid}: @pytest.mark.{MARKER} takes keyword arguments only "
                                f"({', '.join(_OPTIONS)}), got {marker.args!r}")
    unknown = sorted(set(marker.kwargs) - set(_OPTIONS))
    if unknown:
        raise pytest.UsageError(f"{pyfuncitem.nodeid}: unknown @pytest.mark.{MARKER} option(s) "
                                f"{', '.join(unknown)}; known: {', '.join(_OPTIONS)}")
    funcargs = pyfuncitem.funcargs
    argnames = pyfuncitem._fixtureinfo.argnames  # what pytest's own pyfunc_call passes
    kwargs = {name: funcargs[name] for name in argnames}
    clock = funcargs.get("virtual_clock")
    if clock is None and marker.kwargs.get("virtual_clock"):
        clock = VirtualClock()
    factory: Callable[..., Scheduler] = marker.kwargs.get("scheduler") or Scheduler
    sched = factory(clock=clock) if clock is not None else factory()
    sched.run(pyfuncitem.obj(**kwargs))
    return True


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """The ``VirtualClock`` a ``@pytest.mark.threadlib`` test asking for it
    runs on (starting at 0.0): read it, or ``advance_to`` it by hand."""
    return VirtualClock()
