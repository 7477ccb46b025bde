"""Counting a process's open fds, for tests that check nothing leaks."""

from __future__ import annotations

import gc
import os

import pytest

from threadlib.io import sockio


def open_fds() -> set[int]:
    """This process's open fds (less the one listdir used to read them),
    after a collection: an fd an earlier test left to the collector must
    not close between two counts."""
    gc.collect()
    return {int(name) for name in os.listdir("/proc/self/fd") if os.path.lexists(f"/proc/self/fd/{name}")}


def make_epoll():
    """Wait once, so the scheduler's epoll fd exists before fds are counted."""
    a, b = sockio.socketpair()
    with a, b:
        with pytest.raises(TimeoutError):
            yield from a.recv(1, timeout=0)
