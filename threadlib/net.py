"""The network contract: what a server may assume of the network it is given.

A server takes a *network* object and uses only what these Protocols name,
so it runs unchanged on the kernel's TCP/IP (``threadlib.io.sockio.kernel``,
a ``KernelNetwork``), on threadlib's user-level stack over TUN
(``threadlib.io.tcpsockio.UserNetwork``), and on every later network (a
simulated one, a TLS-wrapped one). ``tests/threadlib/test_net_contract.py`` runs one
conformance suite against each network.

Every method that may wait returns a ``Call[T]``: use it with
``yield from`` in a generator thread or ``await`` in an ``async def``
thread; both give ``T``. Waiting methods take ``timeout`` (seconds, None
for none); on expiry they raise ``TimeoutError``. ``recv``/``recv_into``
then have consumed nothing and ``send`` has sent nothing; ``sendall`` may
have sent a prefix of the data (the count is lost, as with kernel sockets).
Cancellation (``ThreadCancelled``) is delivered at the wait, with the same
guarantees.

Semantics every network keeps (what the conformance suite checks):

* ``recv`` returns at least one byte, or ``b""`` once the peer has closed
  its sending side (FIN) and everything before it was read; ``recv_into``
  returns the count, 0 at the end.
* ``send`` accepts at least one byte (waiting for room if there is none);
  ``sendall`` returns once every byte is accepted by the network.
* ``shutdown(SHUT_WR)`` sends FIN; reading still works (half-close).
* A peer's reset raises ``ConnectionResetError`` from reads and
  ``BrokenPipeError``/``ConnectionResetError`` from writes; connecting to a
  port nobody listens on raises ``ConnectionRefusedError``.
* ``close`` never waits; what was already accepted by ``sendall`` is still
  delivered. Streams and listeners are context managers that close.
* One reader and one writer at a time per stream: two threads may read and
  write the same stream concurrently. A second concurrent reader (or
  writer) is not portable: kernel sockets refuse it with RuntimeError, the
  user-level stack queues it.

Nothing here is a base class: a network satisfies the contract by shape.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Generator, Protocol, TypeVar, runtime_checkable

from ._kernel import DONE

if TYPE_CHECKING:
    from ssl import SSLContext  # only named in annotations: importing ssl costs every program

__all__ = ["Call", "Address", "Stream", "Listener", "Network", "DatagramSocket", "DatagramNetwork",
           "completed_at_call"]

T_co = TypeVar("T_co", covariant=True)

#: ``(host, port)`` (IPv6 may add flowinfo and scope id), or a path for Unix sockets.
Address = Any


class Call(Protocol[T_co]):
    """A call that may wait: ``yield from call`` or ``await call`` gives ``T``.

    Every ``types.coroutine`` generator function returns one; so does a
    ready-made result (``sockio``'s ``sendall`` on its fast path)."""

    def __iter__(self) -> Generator[Any, Any, T_co]: ...

    def __await__(self) -> Generator[Any, Any, T_co]: ...


@runtime_checkable
class Stream(Protocol):
    """A connected, reliable byte stream."""

    @property
    def local_address(self) -> Address:
        """This end's address."""

    @property
    def peer_address(self) -> Address:
        """The other end's address."""

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""

    def recv(self, max_bytes: int = 65536, timeout: float | None = None) -> Call[bytes]:
        """Up to ``max_bytes`` bytes (at least one), or ``b""`` at the end."""

    def recv_into(self, buffer: Any, nbytes: int = 0, timeout: float | None = None) -> Call[int]:
        """Read into ``buffer`` (up to ``nbytes``, 0 for its size); the count, 0 at the end."""

    def send(self, data: Any, timeout: float | None = None) -> Call[int]:
        """Send some of ``data`` (at least one byte); the count accepted."""

    def sendall(self, data: Any, timeout: float | None = None) -> Call[None]:
        """Send all of ``data``."""

    def shutdown(self, how: int = socket.SHUT_WR) -> None:
        """Half-close without waiting: ``SHUT_WR`` sends FIN, ``SHUT_RD`` stops reading."""

    def close(self) -> None:
        """Close now, never waiting; threads waiting on the stream get an error."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


@runtime_checkable
class Listener(Protocol):
    """A bound, listening TCP endpoint."""

    @property
    def address(self) -> Address:
        """The address bound (with the port chosen, if port 0 was asked for)."""

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""

    def accept(self, timeout: float | None = None) -> Call[tuple[Stream, Address]]:
        """The next connection: ``(stream, peer_address)``."""

    def close(self) -> None:
        """Stop listening; threads waiting in ``accept`` get an error."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


@runtime_checkable
class Network(Protocol):
    """Where streams come from."""

    #: A short name for logs and tables ("kernel", "user", "sim", ...).
    name: str

    def listen(self, address: Address, backlog: int = 1024, reuse_port: bool = False,
               nodelay: bool = True, *, ssl: SSLContext | None = None) -> Call[Listener]:
        """A ``Listener`` bound to ``address``; port 0 picks a free port.
        With ``ssl`` (a server-side SSLContext) it accepts TLS streams
        (``threadlib.io.tls.TlsListener``: each handshakes lazily, at its
        first read or write)."""

    def connect(self, address: Address, timeout: float | None = None, nodelay: bool = True,
                local: Any = None, *, ssl: SSLContext | None = None,
                server_hostname: str | None = None) -> Call[Stream]:
        """A ``Stream`` connected to ``address`` (names are resolved first).
        With ``ssl`` (a client-side SSLContext) it is a TLS stream whose
        handshake is done (``threadlib.io.tls.TlsStream``), verifying
        ``server_hostname`` (default: the host of ``address``); ``timeout``
        bounds the handshake too."""

    def resolve(self, host: str, port: int) -> Call[list[tuple[int, Any]]]:
        """``[(family, sockaddr), ...]`` for ``host`` as this network sees it."""


@runtime_checkable
class DatagramSocket(Protocol):
    """A UDP endpoint."""

    def recvfrom(self, max_bytes: int = 65536, timeout: float | None = None) -> Call[tuple[bytes, Address]]:
        """One datagram and its sender."""

    def sendto(self, data: Any, address: Address, timeout: float | None = None) -> Call[int]:
        """Send one datagram to ``address``."""

    def close(self) -> None:
        """Close now."""


@runtime_checkable
class DatagramNetwork(Network, Protocol):
    """A network that also carries UDP (the kernel's does; the user-level
    stack is TCP only)."""

    def udp(self, bind: Address | None = None, family: int | None = None) -> Call[DatagramSocket]:
        """A ``DatagramSocket``, bound to ``bind`` if given."""


def completed_at_call(call: Any) -> bool:
    """True when ``call`` finished as it was made (``sockio``'s ``sendall``
    when the socket took every byte at once): awaiting it would do nothing,
    so code outside a threadlib thread (an asyncio callback) may drop it.
    False for a call that still has to run in a thread."""
    return type(call) is type(DONE)

