"""Connecting to a name with several addresses (Happy Eyeballs, RFC 8305),
and per-network name resolution (resolvers and host tables).

Every network's ``connect`` resolves the name with its own ``resolve``
and, when that gives more than one address, hands them to
``connect_first``: the addresses are interleaved by family (IPv6 first,
then alternating), attempts start one "Connection Attempt Delay" apart
(250 ms by default) or at once when the previous attempt failed, the first
to connect wins, and every other attempt is cancelled, which closes its
socket. The module knows nothing of sockets: an attempt is any waiting
call that returns something with ``close()``, so the kernel's network, the
user-level stack and simulated networks share the one algorithm.

A *resolver* is a function ``resolver(host, port)`` returning a waiting
call that gives ``[(family, sockaddr), ...]``; ``HostTable`` is one built
from a dict, falling back to another resolver (the system's, on the
blocking pool) for names it does not hold.

Nothing here blocks the process, reads the wall clock or any global random
source: time is the scheduler's, and the order of attempts is the
resolver's order interleaved by family.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import socket
import types
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, TypeVar

from ..calls import join_any, now, spawn
from ..calls import timeout as _timeout
from .._kernel import Thread
from ..syscalls import Cancel, Waits

if TYPE_CHECKING:
    from ..net import Call

__all__ = ["DEFAULT_DELAY", "Resolver", "interleave", "connect_first", "HostTable", "literal_family"]


class _Closable(Protocol):
    def close(self) -> None: ...


_T = TypeVar("_T", bound=_Closable)  # what an attempt gives: a stream

#: RFC 8305's recommended Connection Attempt Delay, in seconds.
DEFAULT_DELAY = 0.25

#: ``resolver(host, port)``: a waiting call giving ``[(family, sockaddr), ...]``.
Resolver = Callable[[str, int], Any]


def interleave(addresses: Iterable[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """``addresses`` (``(family, sockaddr)`` pairs, in the resolver's order
    of preference) reordered for connecting: IPv6 first, then alternating
    families, each family keeping its own order (RFC 8305 section 4, with
    a First Address Family Count of 1). Repeated addresses are dropped."""
    by_family: dict[int, collections.deque[tuple[int, Any]]] = {}
    seen: set[tuple[int, Any]] = set()
    for family, sockaddr in addresses:
        key = (family, tuple(sockaddr) if isinstance(sockaddr, list) else sockaddr)
        if key in seen:
            continue
        seen.add(key)
        by_family.setdefault(family, collections.deque()).append((family, sockaddr))
    # IPv6 first, then the other families in the order they first appeared.
    queues = sorted(by_family.values(), key=lambda q: q[0][0] != socket.AF_INET6)
    out: list[tuple[int, Any]] = []
    while queues:
        for queue in queues:
            out.append(queue.popleft())
        queues = [q for q in queues if q]
    return out


def _format(sockaddr: Any) -> str:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    return repr(sockaddr)


@types.coroutine
def _attempt(attempt: Callable[[tuple[int, Any]], Call[_T]], address: tuple[int, Any],
             won: list[Any]) -> Waits[tuple[bool, Any]]:
    # Outcomes are returned, not raised, so a failed attempt is never logged
    # as an exception nobody joined: connect_first reports them all. The
    # first attempt to connect claims the race here, in its own thread, so
    # one that connects in the same instant closes its stream at once.
    try:
        call = attempt(address)
        result = yield from (call if isinstance(call, types.GeneratorType) else call.__await__())
    except Exception as exc:
        return False, exc
    if won:
        result.close()
        return False, None
    won.append(result)
    return True, result


@types.coroutine
def connect_first(addresses: Iterable[tuple[int, Any]], attempt: Callable[[tuple[int, Any]], Call[_T]],
                  delay: float | None = DEFAULT_DELAY, label: str | None = None) -> Waits[_T]:
    """Run ``attempt((family, sockaddr))`` for the addresses in
    ``interleave`` order, each in its own thread, and return the first
    result; the others are cancelled (an attempt must close what it opened
    when cancelled) and a second success is closed.

    A new attempt starts ``delay`` seconds after the previous one, or at
    once when every running attempt has failed; ``delay=None`` makes the
    attempts strictly sequential (the next starts only when the previous
    failed). An enclosing ``threadlib.timeout`` bounds the whole race.

    Errors: one address that failed raises its own error. Several that all
    failed raise an ``OSError`` (the class for the errno, e.g.
    ``ConnectionRefusedError``) whose message names every address tried
    with its error; its errno is the one they share, else the first
    attempt's; its ``__cause__`` is an ``ExceptionGroup`` of the errors in
    the order tried. A timeout raises ``TimeoutError`` naming the
    addresses tried. ``label`` (e.g. ``"example.com:443"``) names the
    destination in those messages."""
    pending = collections.deque(interleave(addresses))
    if not pending:
        raise OSError(errno.EHOSTUNREACH, f"connect to {label or 'a name'}: no address to try")
    if delay is not None and delay < 0:
        raise ValueError(f"happy_eyeballs_delay must be >= 0 or None, got {delay!r}")
    running: dict[Thread, tuple[int, Any]] = {}
    failures: list[tuple[tuple[int, Any], Exception]] = []
    tried: list[tuple[int, Any]] = []
    won: list[Any] = []  # [result], once an attempt has connected (it claims the race itself)
    try:
        try:
            yield from _race(pending, attempt, delay, running, failures, tried, won)
        except TimeoutError as exc:
            names = ", ".join(_format(a[1]) for a in tried)
            raise TimeoutError(f"timed out connecting to {label or 'a name'} (tried {names})") from exc
        finally:
            yield from _stop(running)
    except BaseException:
        if won:
            won[0].close()  # it connected, but the caller was interrupted: nobody will get it
        raise
    if won:
        result: _T = won[0]
        return result
    raise _all_failed(label, failures)


@types.coroutine
def _race(pending: collections.deque[tuple[int, Any]], attempt: Callable[[tuple[int, Any]], Call[_T]],
          delay: float | None, running: dict[Thread, tuple[int, Any]],
          failures: list[tuple[tuple[int, Any], Exception]], tried: list[tuple[int, Any]],
          won: list[Any]) -> Waits[None]:
    """Start attempts and collect outcomes until one has connected (and put
    its result in ``won``) or every address has failed."""
    next_start = now()
    while True:
        if pending and (not running or (delay is not None and now() >= next_start)):
            address = pending.popleft()
            tried.append(address)
            t = yield from spawn(_attempt(attempt, address, won), name=f"connect {_format(address[1])}")
            running[t] = address
            if delay is not None:
                next_start = now() + delay
            continue
        if not running:
            return
        if pending and delay is not None:
            scope = _timeout(max(0.0, next_start - now()))
            try:
                with scope:
                    done = yield from join_any(running)
            except TimeoutError:
                if not scope.expired:  # (set on leaving the block) the caller's own deadline
                    raise
                continue  # the attempt delay passed: start the next one
        else:
            done = yield from join_any(running)
        address = running.pop(done)
        ok, value = done.result()
        if ok:
            return
        if value is not None:
            failures.append((address, value))
        next_start = now()  # a failure starts the next attempt at once


@types.coroutine
def _stop(running: dict[Thread, tuple[int, Any]]) -> Waits[None]:
    """Cancel every attempt still running. Every attempt is told before any
    is waited for: if the caller is interrupted while waiting, the rest
    still end by themselves and close what they opened."""
    for t in running:
        if not t.done:
            yield Cancel(t)
    for t in running:
        yield from t.wait()
        if t.state == "done":
            t.result()  # (False, None): it lost the race and closed its stream


def _all_failed(label: str | None, failures: list[tuple[tuple[int, Any], Exception]]) -> BaseException:
    if len(failures) == 1:
        return failures[0][1]
    codes = [getattr(exc, "errno", None) for _, exc in failures]
    code = codes[0] if all(c == codes[0] for c in codes) else next((c for c in codes if c), None)
    detail = "; ".join(f"{_format(address[1])}: {exc}" for address, exc in failures)
    message = f"connect to {label or 'a name'} failed on every address: {detail}"
    kinds = {type(exc) for _, exc in failures}
    error: OSError = OSError(code, message) if code is not None else OSError(message)
    if len(kinds) == 1:
        kind = kinds.pop()
        if issubclass(kind, OSError) and kind is not type(error):
            try:
                error = kind(code, message)  # e.g. the user-level stack's NetUnreachable
            except Exception:
                pass
    error.__cause__ = ExceptionGroup(message, [exc for _, exc in failures])
    return error


class HostTable:
    """A resolver from a dict ``{"name": ["address", ...]}`` (one address
    may be given as a plain string): names are matched without regard to
    case or a trailing dot, IP literals resolve to themselves, and any
    other name goes to ``fallback`` (another resolver) or, without one,
    fails with ``socket.gaierror(EAI_NONAME)``. Each address must be an IP
    literal (ValueError naming it otherwise)."""

    def __init__(self, hosts: Mapping[str, str | Iterable[str]], fallback: Resolver | None = None) -> None:
        self.hosts: dict[str, list[tuple[int, str]]] = {}
        for name, addresses in hosts.items():
            if isinstance(addresses, str):
                addresses = [addresses]
            entries = []
            for address in addresses:
                family = literal_family(address) if isinstance(address, str) else None
                if family is None:
                    raise ValueError(f"host table entry {name!r}: {address!r} is not an IP address")
                entries.append((family, address))
            if not entries:
                raise ValueError(f"host table entry {name!r} has no address")
            self.hosts[_key(name)] = entries
        self.fallback = fallback

    @types.coroutine
    def __call__(self, host: str, port: int) -> Waits[list[tuple[int, Any]]]:
        """**Waits** (only in the fallback): ``[(family, (address, port)), ...]``."""
        family = literal_family(host)
        if family is not None:
            return [(family, (host, port))]
        entries = self.hosts.get(_key(host))
        if entries is not None:
            return [(fam, (address, port)) for fam, address in entries]
        if self.fallback is None:
            raise socket.gaierror(socket.EAI_NONAME, f"{host!r} is not in the host table")
        call = self.fallback(host, port)
        result: list[tuple[int, Any]] = yield from (call if isinstance(call, types.GeneratorType)
                                                    else call.__await__())
        return result

    def __repr__(self) -> str:
        return f"<HostTable {len(self.hosts)} names, fallback={self.fallback!r}>"


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def literal_family(host: str) -> int | None:
    """``AF_INET6`` or ``AF_INET`` if ``host`` is an IP literal (an IPv6
    one may carry a ``%scope``), else None."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host.split("%")[0]).version == 6 else socket.AF_INET
    except ValueError:
        return None
