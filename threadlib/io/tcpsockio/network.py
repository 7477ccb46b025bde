"""User-level networks: ``UserNetwork`` (one Stack on a TUN device, the
``threadlib.net.Network`` contract), ``MultiQueueNetwork`` (one Stack per
queue of a multi-queue TUN, one queue per worker process) and
``open_network``, which makes the device and the stacks.

Name resolution goes to the network's resolver (by default the blocking
pool, through ``sockio.resolve``) and connecting to a name with several
addresses to ``happy_eyeballs.connect_first``; the network never reads
the device itself (its worker does).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import random
import types
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, overload

from iolib.packetio import MAX_QUEUES, TunDevice
from iolib.tcp import Stack
from iolib.tcp import errors as tcperr
from iolib.tcp.connection import SYN_RECEIVED, SYN_SENT

from ..._kernel import Scheduler, current_scheduler
from ...calls import timeout as _timeout
from ...syscalls import Waits
from ...net import Call
from .. import sockio
from ..happy_eyeballs import DEFAULT_DELAY, HostTable, Resolver, connect_first
from .errors import NetUnreachable, closed_error, translate
from .stream import Listener, Stream
from .worker import TcpWait, UserTcpWorker

if TYPE_CHECKING:
    from ssl import SSLContext

    from ..tls import TlsListener, TlsStream

log = logging.getLogger("threadlib.io.tcpsockio")

# The runtime's defaults for every connection: Linux's 200 ms minimum RTO
# (RFC 6298's 1 s makes a single loss on a LAN stall for a second), and
# Nagle off as sockio does for TCP.
DEFAULT_CONN_OPTIONS: dict[str, Any] = {"min_rto": 0.2}


_WILDCARDS = ("", "0.0.0.0", "::", None)


class UserNetwork:
    """The user-level stack on one TUN device, offering ``listen`` and
    ``connect`` like ``sockio.KernelNetwork``.

    It joins the scheduler of the thread that first uses it (its worker is
    added with ``sched.add_worker``); ``attach(sched)`` does that ahead of
    time. One scheduler at a time; after that scheduler ends, the next one
    to use the network takes it over. ``close()`` resets what is open and
    removes the TUN device.

    ``routes`` are the networks ``connect`` may reach (default: the
    prefixes of the stack's own addresses; pass "0.0.0.0/0" or "::/0" when
    the kernel side forwards further). Anything else raises
    ``NetUnreachable`` at once, as the kernel does without a route.

    Host names are resolved by ``resolver`` and ``hosts`` as for
    ``sockio.KernelNetwork`` (default: the system's resolver on the
    blocking pool).
    """

    name = "user"

    def __init__(self, device: TunDevice, stack: Stack, routes: Iterable[str] | None = None,
                 queue: int | None = None, resolver: Resolver | None = None,
                 hosts: Mapping[str, str | Iterable[str]] | None = None) -> None:
        if hosts is not None:
            resolver = HostTable(hosts, fallback=resolver or sockio.resolve)
        self.resolver: Resolver | None = resolver
        self.device = device
        self.stack = stack
        self.queue = queue  # the queue index on a multi-queue device (MultiQueueNetwork.for_queue)
        if routes is None:
            self.routes = [i.network for i in stack.interfaces]
        else:
            self.routes = [ipaddress.ip_network(r, strict=False) for r in routes]
        wait_class = type("TcpWait", (TcpWait,), {"__slots__": ()})  # one per network: several may share a scheduler
        self.worker = UserTcpWorker(device, stack, wait_class)
        self._closed = False

    @property
    def addresses(self) -> list[str]:
        """The stack's own addresses."""
        return [str(i.ip) for i in self.stack.interfaces]

    def attach(self, sched: Scheduler | None = None) -> None:
        """Join ``sched`` (default: the running one) now rather than at first use."""
        if self._closed:
            raise closed_error("user network")
        sched = sched or current_scheduler()
        if sched is None:
            raise RuntimeError("UserNetwork.attach() needs a scheduler: call it from a thread or pass one")
        if self.worker.sched is sched:
            return
        sched.add_worker(self.worker)

    def _ensure(self) -> UserTcpWorker:
        if self.worker.sched is None or self.worker.sched is not current_scheduler():
            self.attach()
        return self.worker

    @overload
    def listen(self, address: tuple[str, int], backlog: int = ..., reuse_port: bool = ..., nodelay: bool = ...,
               ssl: None = ...) -> Call[Listener]: ...
    @overload
    def listen(self, address: tuple[str, int], backlog: int = ..., reuse_port: bool = ..., nodelay: bool = ..., *,
               ssl: SSLContext) -> Call[TlsListener]: ...
    @overload
    def listen(self, address: tuple[str, int], backlog: int = ..., reuse_port: bool = ..., nodelay: bool = ...,
               ssl: SSLContext | None = ...) -> Call[Listener | TlsListener]: ...
    @types.coroutine
    def listen(self, address: tuple[str, int], backlog: int = 1024, reuse_port: bool = False,
               nodelay: bool = True, ssl: SSLContext | None = None) -> Waits[Any]:
        """A listener on ``(host, port)``: a wildcard host ("", "0.0.0.0",
        "::") means every local address of both families; port 0 picks a
        free one. Never waits. With ``ssl`` (a server-side SSLContext) it
        is a ``tls.TlsListener``: accepted streams handshake lazily.

        ``reuse_port`` has no effect on the stack itself (a stack serves
        one process and never shares its ports).  On a network made by
        ``MultiQueueNetwork.for_queue`` every worker listens on the same
        port on its own stack and the kernel spreads new connections over
        the queues by flow hash, which is what SO_REUSEPORT does for the
        kernel's stack; pass it there for clarity."""
        worker = self._ensure()
        host, port = address[0], address[1]
        local = None if host in _WILDCARDS else host
        try:
            if port == 0:
                lst = self._listen_any_port(backlog, local)
            else:
                lst = self.stack.listen(port, backlog, local)
        except tcperr.AddressInUse as exc:
            raise OSError(errno.EADDRINUSE, f"cannot listen on {_where(host, port)}: {exc}") from None
        except tcperr.BadArgument as exc:
            if local is not None and "not local" in str(exc):
                raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {_where(host, port)}: {exc}") from None
            raise
        if ssl is not None:
            from ..tls import TlsListener

            return TlsListener(Listener(worker, lst, nodelay), ssl)
        return Listener(worker, lst, nodelay)
        yield  # a generator, like every call that may wait

    def _listen_any_port(self, backlog: int, local: Any) -> Any:
        start = self.stack.rng.randrange(32768, 61000)  # the stack's seeded rng, not the global one
        for i in range(61000 - 32768):
            port = 32768 + (start - 32768 + i) % (61000 - 32768)
            try:
                return self.stack.listen(port, backlog, local)
            except tcperr.AddressInUse:
                continue
        raise tcperr.AddressInUse("no free port to listen on")

    def _route(self, addr: str) -> None:
        try:
            ip = ipaddress.ip_address(addr.split("%")[0])
        except ValueError:
            raise ValueError(f"not an IP address: {addr!r}") from None
        if not any(ip.version == net.version and ip in net for net in self.routes):
            raise NetUnreachable(errno.ENETUNREACH, f"network is unreachable: no route to {ip}")

    def resolve(self, host: str, port: int) -> Call[list[tuple[int, Any]]]:
        """``[(family, sockaddr), ...]`` for ``host``: literals as they are,
        names through this network's resolver (by default the system's, on
        the blocking pool)."""
        return sockio.resolve_with(self.resolver, host, port)

    @overload
    def connect(self, address: tuple[str, int], timeout: float | None = ..., nodelay: bool = ..., local: Any = ...,
                happy_eyeballs_delay: float | None = ..., ssl: None = ..., server_hostname: None = ...) -> Call[Stream]: ...
    @overload
    def connect(self, address: tuple[str, int], timeout: float | None = ..., nodelay: bool = ..., local: Any = ...,
                happy_eyeballs_delay: float | None = ..., *, ssl: SSLContext, server_hostname: str | None = ...) -> Call[TlsStream]: ...
    @overload
    def connect(self, address: tuple[str, int], timeout: float | None = ..., nodelay: bool = ..., local: Any = ...,
                happy_eyeballs_delay: float | None = ..., ssl: SSLContext | None = ...,
                server_hostname: str | None = ...) -> Call[Stream | TlsStream]: ...
    @types.coroutine
    def connect(self, address: tuple[str, int], timeout: float | None = None, nodelay: bool = True,
                local: Any = None, happy_eyeballs_delay: float | None = DEFAULT_DELAY,
                ssl: SSLContext | None = None, server_hostname: str | None = None) -> Waits[Any]:
        """A connection to ``(host, port)``. Raises ``ConnectionRefused``,
        ``NetUnreachable``, ``TimeoutError``, ... ``local`` is an optional
        ``(address, port)`` to send from. A name with several addresses is
        connected with Happy Eyeballs as ``sockio.KernelNetwork.connect``
        does (``happy_eyeballs_delay`` between attempts, None: one after
        the other).

        Waits for name resolution and the handshake (TcpWait); ``timeout``
        bounds all of it. A connection that fails, times out or is cancelled
        half-way is reset; one that loses the race is reset, or closed if it
        connected in the same instant as the winner. With ``ssl`` (a
        client-side SSLContext) the result is a ``tls.TlsStream`` whose
        handshake is done, verifying ``server_hostname`` (default: the host
        connected to); ``timeout`` bounds the handshake too."""
        if ssl is not None:
            from ..tls import connect_over

            return (yield from connect_over(self.connect, address, timeout, ssl, server_hostname,
                                            nodelay=nodelay, local=local,
                                            happy_eyeballs_delay=happy_eyeballs_delay))
        if self.queue is not None:
            raise OSError(errno.EOPNOTSUPP, f"connect() is refused on queue {self.queue} of multi-queue TUN device "
                          f"{self.device.name!r}: the kernel steers the replies of a connection opened here by a "
                          "flow entry that expires after ~3 s idle, after which they may reach another worker's "
                          "stack, which resets the connection; connect from a single-queue network instead")
        worker = self._ensure()
        host, port = address[0], address[1]
        with _timeout(timeout):
            addresses = yield from self.resolve(host, port)
            if len(addresses) == 1:  # no race to run: no thread, no delay
                return (yield from self._connect_one(worker, addresses[0][1][0], port, nodelay, local))
            return (yield from connect_first(
                addresses, lambda a: self._connect_one(worker, a[1][0], port, nodelay, local),
                happy_eyeballs_delay, f"{host}:{port}"))

    @types.coroutine
    def _connect_one(self, worker: UserTcpWorker, host: str, port: int, nodelay: bool, local: Any) -> Waits[Stream]:
        self._route(host)
        laddr, lport = (local[0] or None, local[1] or None) if local is not None else (None, None)
        try:
            conn = self.stack.connect(worker.now(), host, port, laddr, lport, nodelay=nodelay)
        except tcperr.BadArgument:
            raise
        except OSError as exc:
            raise translate(exc) from None
        worker.dirty = True
        stream = Stream(worker, conn)
        wait = worker.wait_class(stream, "connect")
        try:
            while conn.state in (SYN_SENT, SYN_RECEIVED) and conn.error is None:
                yield wait
            if conn.error is not None:
                raise translate(conn.error)
            if stream._closed:
                raise closed_error("stream")
        except BaseException:
            stream.abort()
            raise
        return stream

    @types.coroutine
    def drain(self, timeout: float = 10.0) -> Waits[bool]:
        """Wait (up to ``timeout``) until every connection's sent data is
        acknowledged and its FIN, if closed, too: call it before leaving
        the scheduler, which is the only thing that moves this stack.
        Returns whether everything drained (False when ``timeout`` passes:
        it does not raise). It checks every 10 ms, sleeping in between."""
        from ...calls import sleep

        deadline = self.worker.now() + timeout
        while True:
            pending = [c for c in self.stack.connections()
                       if c.state not in ("CLOSED", "TIME-WAIT", "FIN-WAIT-2", "LISTEN")
                       and (len(c.sndbuf) or c.state in ("FIN-WAIT-1", "CLOSING", "LAST-ACK"))]
            if not pending and not any(s._backlog for s in self.worker._sockets.values()
                                       if isinstance(s, Stream)):
                return True
            if self.worker.now() >= deadline:
                return False
            yield from sleep(0.01)

    def close(self) -> None:
        """Reset every connection, stop listening, remove the TUN device.
        Call it from outside the scheduler or from a thread; never waits."""
        if self._closed:
            return
        self._closed = True
        worker = self.worker
        now = worker.now()
        for handle, sock in list(worker._sockets.items()):
            if isinstance(sock, Listener):
                sock.close()
            else:
                sock.abort()
        for conn in self.stack.connections():
            try:
                self.stack.abort(now, conn)
            except OSError:
                pass
        try:
            worker._flush()
        except OSError:
            pass
        sched = worker.sched
        if sched is not None:
            worker.close()
        self.device.close()

    def __enter__(self) -> UserNetwork:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        queue = f" queue {self.queue}" if self.queue is not None else ""
        return f"<UserNetwork {self.device.name}{queue} {', '.join(self.addresses)}>"


class MultiQueueNetwork:
    """A multi-queue TUN device and what each queue's stack needs: the
    handle a parent makes (``open_network(..., queues=N)``) before it forks
    N workers.  It does not serve by itself; worker i calls
    ``for_queue(i)`` for its own ``UserNetwork``.

    Keep it open in the parent while the workers run: its fds keep every
    queue attached, so the number of queues, and with it the kernel's
    hash steering, stays the same when a worker dies and is restarted.
    Flows steered to a queue nobody reads (a worker between death and
    restart) are lost until the new worker reads it, then reset.
    ``close()`` closes this process's queue fds; the kernel removes the
    device once no process holds any of them.
    """

    name = "user"

    def __init__(self, devices: list[TunDevice], make_stack: Callable[[int], Stack],
                 addresses: list[str], routes: Iterable[str] | None = None, resolver: Resolver | None = None,
                 hosts: Mapping[str, str | Iterable[str]] | None = None) -> None:
        self.devices = list(devices)
        self._resolver = resolver
        self._hosts = hosts
        self._make_stack = make_stack
        self._addresses = list(addresses)
        self.routes = routes
        self._taken: dict[int, int] = {}  # queue -> pid of the process that took it
        self._closed = False

    @property
    def queues(self) -> int:
        """The number of queues of the device."""
        return len(self.devices)

    @property
    def addresses(self) -> list[str]:
        """The addresses every queue's stack owns."""
        return [a.split("/")[0] for a in self._addresses]

    @property
    def device_name(self) -> str:
        """The TUN device's name."""
        return self.devices[0].name

    def for_queue(self, index: int) -> UserNetwork:
        """A ``UserNetwork`` on queue ``index`` with a new Stack of its own.
        Call it in the process that will serve that queue (after fork);
        each queue may be taken once per process, since two stacks reading
        one queue would each see half of every connection."""
        if self._closed:
            raise closed_error("multi-queue user network")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.devices):
            raise ValueError(f"queue index must be an int in 0..{len(self.devices) - 1}, got {index!r}")
        if self._taken.get(index) == os.getpid():
            raise RuntimeError(f"queue {index} of {self.device_name!r} already has a network in this process")
        device = self.devices[index]
        if device.closed:
            raise closed_error(f"queue {index} of TUN device {self.device_name!r}")
        self._taken[index] = os.getpid()
        return UserNetwork(device, self._make_stack(index), self.routes, queue=index, resolver=self._resolver,
                           hosts=self._hosts)

    def listen(self, *args: Any, **kwargs: Any) -> Any:
        """Refused (RuntimeError), like ``connect``: a multi-queue network
        does not serve; listen and connect on ``for_queue(i)``."""
        raise RuntimeError(f"a MultiQueueNetwork ({self.queues} queues on {self.device_name!r}) does not serve: "
                           "call for_queue(i) in worker i and listen on that network")

    connect = listen

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def close(self) -> None:
        """Close every queue fd this process holds (networks from
        ``for_queue`` included); the device goes with the last holder."""
        if self._closed:
            return
        self._closed = True
        for device in self.devices:
            device.close()

    def __enter__(self) -> MultiQueueNetwork:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MultiQueueNetwork {self.device_name} queues={self.queues} {', '.join(self.addresses)}>"


# One queue (the default) gives a UserNetwork, which serves; more give a
# MultiQueueNetwork, which only hands out per-queue UserNetworks.
@overload
def open_network(
    tun: str = ..., peer: str | None = ..., address: str | None = ..., peer6: str | None = ...,
    address6: str | None = ..., netns: str | None = ..., *, mtu: int = ..., routes: Iterable[str] | None = ...,
    seed: int | None = ..., offload: bool = ..., queues: Literal[1] = ..., resolver: Resolver | None = ...,
    hosts: Mapping[str, str | Iterable[str]] | None = ..., **conn_options: Any,
) -> UserNetwork: ...
@overload
def open_network(
    tun: str = ..., peer: str | None = ..., address: str | None = ..., peer6: str | None = ...,
    address6: str | None = ..., netns: str | None = ..., *, mtu: int = ..., routes: Iterable[str] | None = ...,
    seed: int | None = ..., offload: bool = ..., queues: int, resolver: Resolver | None = ...,
    hosts: Mapping[str, str | Iterable[str]] | None = ..., **conn_options: Any,
) -> UserNetwork | MultiQueueNetwork: ...
def open_network(
    tun: str = "tl0",
    peer: str | None = "10.77.0.1/24",
    address: str | None = "10.77.0.2/24",
    peer6: str | None = "fd77::1/64",
    address6: str | None = "fd77::2",
    netns: str | None = None,
    *,
    mtu: int = 1500,
    routes: Iterable[str] | None = None,
    seed: int | None = None,
    offload: bool = True,
    queues: int = 1,
    resolver: Resolver | None = None,
    hosts: Mapping[str, str | Iterable[str]] | None = None,
    **conn_options: Any,
) -> UserNetwork | MultiQueueNetwork:
    """Create TUN device ``tun`` (in namespace ``netns`` if given) whose
    kernel side has ``peer``/``peer6``, and a user-level stack owning
    ``address``/``address6`` (without a prefix length they take the
    peer's). Returns a ``UserNetwork``; its ``close()`` removes the device.

    ``conn_options`` are iolib.tcp ConnOptions for every connection
    (sndbuf, rcvbuf, min_rto, ...); ``min_rto`` defaults to 0.2 s.
    Creating the device makes brief blocking netlink calls: do it at
    start-up, before or between scheduler runs, not on a hot path.

    ``offload`` (on by default) opens the device with a virtio_net_hdr
    and checksum + TCP segmentation offload: the kernel hands over and
    takes TCP packets of up to 64 KiB, and neither side computes TCP
    checksums for the other (the stack takes the kernel's word for its
    packets and leaves its own checksums to the kernel).

    ``queues`` above 1 (up to 256) makes a multi-queue device with that
    many queues and returns a ``MultiQueueNetwork`` instead: make it
    before forking the workers and give worker i ``for_queue(i)``.  With
    ``seed``, queue i's stack is seeded from (seed, i).

    ``resolver`` and ``hosts`` resolve host names for ``connect`` and
    ``resolve`` (see ``UserNetwork``; each queue's network gets them).
    """
    if not isinstance(queues, int) or isinstance(queues, bool) or not 1 <= queues <= MAX_QUEUES:
        raise ValueError(f"queues must be an int in 1..{MAX_QUEUES}, got {queues!r}")
    pairs = [(peer, address), (peer6, address6)]
    kernel_side: list[str] = []
    user_side: list[str] = []
    for kernel_addr, user_addr in pairs:
        if user_addr is None and kernel_addr is None:
            continue
        if kernel_addr is None:
            raise ValueError(f"user address {user_addr!r} needs a kernel-side peer address of the same family")
        peer_if = ipaddress.ip_interface(kernel_addr)
        if user_addr is None:
            kernel_side.append(kernel_addr)
            continue
        user_if = ipaddress.ip_interface(user_addr if "/" in user_addr
                                         else f"{user_addr}/{peer_if.network.prefixlen}")
        if user_if.version != peer_if.version:
            raise ValueError(f"{user_addr!r} and {kernel_addr!r} are of different IP versions")
        if user_if.ip == peer_if.ip:
            raise ValueError(f"the user stack and the kernel side cannot share the address {user_if.ip}")
        kernel_side.append(kernel_addr)
        user_side.append(str(user_if))
    if not user_side:
        raise ValueError("open_network() needs at least one user-stack address (address or address6)")
    options: dict[str, Any] = dict(DEFAULT_CONN_OPTIONS)
    options.update(conn_options)
    if queues == 1:
        stack = Stack(user_side, rng=random.Random(seed if seed is not None else os.urandom(16)), mtu=mtu,
                      offload=offload, **options)
        device = _new_device(tun, netns=netns, addresses=kernel_side, mtu=mtu, vnet_hdr=offload)
        return UserNetwork(device, stack, routes, resolver=resolver, hosts=hosts)

    def make_stack(index: int) -> Stack:
        # Fresh entropy per call, so workers forked from one parent never
        # share ISNs or ephemeral ports.
        rng = random.Random(f"{seed}/{index}" if seed is not None else os.urandom(16))
        return Stack(user_side, rng=rng, mtu=mtu, offload=offload, **options)

    make_stack(0)  # bad options fail here, before the device exists
    if routes is not None:
        routes = [str(ipaddress.ip_network(r, strict=False)) for r in routes]
    devices = [TunDevice(tun, netns=netns, addresses=kernel_side, mtu=mtu, vnet_hdr=offload, multi_queue=True)]
    try:
        for _ in range(queues - 1):
            devices.append(devices[0].open_queue())
    except BaseException:
        for device in devices:
            device.close()
        raise
    return MultiQueueNetwork(devices, make_stack, user_side, routes, resolver=resolver, hosts=hosts)


_default: UserNetwork | None = None

# Where open_network gets its one-queue device: a TUN device, or what
# threadlib.replay puts here while replaying (a device that answers from
# the log and touches nothing).
_new_device: Callable[..., Any] = TunDevice


def env_network_options() -> dict[str, Any]:
    """``open_network`` keyword arguments from the environment: TL_TUN
    (tl0), TL_PEER (10.77.0.1/24), TL_ADDRESS (10.77.0.2/24), TL_PEER6
    (fd77::1/64), TL_ADDRESS6 (fd77::2), TL_NETNS (none: the device
    appears in the caller's namespace); an empty value means none."""
    env = os.environ.get
    return dict(
        tun=env("TL_TUN", "tl0"),
        peer=env("TL_PEER", "10.77.0.1/24") or None,
        address=env("TL_ADDRESS", "10.77.0.2/24") or None,
        peer6=env("TL_PEER6", "fd77::1/64") or None,
        address6=env("TL_ADDRESS6", "fd77::2") or None,
        netns=env("TL_NETNS") or None,
    )


def network() -> UserNetwork:
    """The process's default user network, made on first call from the
    environment (see ``env_network_options``)."""
    global _default
    if _default is None or _default._closed:
        _default = open_network(**env_network_options())
    return _default


def _where(host: str, port: int) -> str:
    """``host:port`` for error messages, ``[v6]:port`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
