"""Network namespaces for the TUN device, tests and demo apps.

Creates and deletes named namespaces (the `ip netns` kind, bound under
/var/run/netns so `ip netns exec NAME ...` finds them), runs a callable
inside one, and builds `ip netns exec` command lines.  Entering a
namespace happens only in a short-lived helper thread: setns(2) changes
the calling thread only, so the caller's own thread never leaves its
namespace, even when the callable raises.

These are setup-time helpers: they block briefly (netlink, a thread join,
child processes) and must never be called on a packet path.  Root needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess
import threading
from typing import Any, Callable, Iterator, Sequence, TypeVar

from pyroute2 import netns as _pyroute2_netns

__all__ = [
    "NetNamespace",
    "create_netns",
    "delete_netns",
    "netns_exists",
    "netns_path",
    "run_in_netns",
    "temporary_netns",
    "unique_netns_name",
]

NETNS_RUN_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()
T = TypeVar("T")


def netns_path(name: str) -> str:
    _check_name(name)
    return os.path.join(NETNS_RUN_DIR, name)


def unique_netns_name(prefix: str = "tl") -> str:
    """A name no other process or test is using: prefix, pid, counter, random."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{os.urandom(3).hex()}"


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def create_netns(name: str, loopback_up: bool = True) -> None:
    """Create the named namespace (FileExistsError if it exists) and, by
    default, bring its loopback up so local sockets work inside it."""
    if netns_exists(name):
        raise FileExistsError(f"network namespace {name!r} already exists")
    _pyroute2_netns.create(name)
    if loopback_up:
        try:
            run_in_netns(name, _bring_loopback_up)
        except BaseException:
            delete_netns(name)
            raise


def delete_netns(name: str) -> None:
    """Remove the named namespace; a missing one is not an error.  Devices
    in it vanish once nothing (no process, no open fd) holds it any more."""
    if netns_exists(name):
        _pyroute2_netns.remove(name)


def run_in_netns(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call fn(*args, **kwargs) in a fresh thread that has entered the
    namespace; return its result or re-raise its exception here.  Sockets
    and devices fn creates belong to that namespace."""
    outcome: list = []

    def body() -> None:
        try:
            _enter(name)
            outcome.append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # handed to the calling thread
            outcome.append((False, exc))

    thread = threading.Thread(target=body, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if ok:
        return value
    raise value


def _enter(name: str) -> None:
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name!r} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def _bring_loopback_up() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid network namespace name {name!r}")


class NetNamespace:
    """A named network namespace; `delete()` (or leaving `with`) removes it."""

    def __init__(self, name: str) -> None:
        _check_name(name)
        self.name = name

    @classmethod
    def create(cls, name: str | None = None, prefix: str = "tl") -> NetNamespace:
        name = name or unique_netns_name(prefix)
        create_netns(name)
        return cls(name)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return run_in_netns(self.name, fn, *args, **kwargs)

    def command(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs argv inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv), **kwargs)

    def exec(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(argv), **kwargs)

    def exists(self) -> bool:
        return netns_exists(self.name)

    def delete(self) -> None:
        delete_netns(self.name)

    def __enter__(self) -> NetNamespace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"NetNamespace({self.name!r})"


@contextlib.contextmanager
def temporary_netns(prefix: str = "tl") -> Iterator[NetNamespace]:
    """A new uniquely named namespace, deleted on exit even after errors."""
    ns = NetNamespace.create(prefix=prefix)
    try:
        yield ns
    finally:
        ns.delete()
