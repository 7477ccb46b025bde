"""Bounded waits on a condition, for tests that must wait for another
thread or process before they assert: poll the condition itself, never a
fixed sleep.  The bounds only turn a hang into a clear failure; they are
never a claim about speed, so they are generous.  This module must never
sleep a fixed time and then assume something happened.

``wait_until`` is for plain code (an OS thread, the test body outside a
scheduler); ``until`` is for a threadlib thread (``yield from until(...)``),
which must not block its scheduler while it waits.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import threadlib

HANG = 30.0  # seconds: far beyond anything a working test waits


def wait_until(predicate: Callable[[], Any], timeout: float = HANG, what: str = "",
               interval: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns something true, and return that;
    fail naming ``what`` if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"still not {what or predicate!r} after {timeout} s")
        time.sleep(interval)


def until(predicate: Callable[[], Any], timeout: float = HANG, what: str = "",
          interval: float = 0.001):
    """``yield from until(predicate)`` in a threadlib thread: poll on the
    scheduler's clock (other threads run meanwhile) until ``predicate``
    returns something true, and return that; fail naming ``what`` if
    ``timeout`` seconds pass first."""
    deadline = threadlib.now() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if threadlib.now() >= deadline:
            raise AssertionError(f"still not {what or predicate!r} after {timeout} s")
        yield from threadlib.sleep(interval)
