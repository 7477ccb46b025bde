"""Socket IO over threadlib's user-level TCP/IP stack (iolib.tcp) on a TUN
device, with the same API as ``sockio`` plus Mnet.TCP's extras.

``open_network(...)`` creates a TUN device (the kernel side gets the peer
addresses, the user stack owns the others) and returns a ``UserNetwork``:
``listen``/``connect`` like ``sockio.KernelNetwork``, giving ``Stream`` and
``Listener`` objects with recv/recv_into/recv_exactly/send/sendall/sendfile/
shutdown/close, and the extras ``read``, ``get``, ``really_read``,
``write``, ``write_without_interruption``, ``peers``.

A ``UserTcpWorker`` serves the one new system call, ``TcpWait``: it keeps
the TUN fd in the scheduler's epoll and the stack's next deadline as its
timer. Per epoll event it reads every waiting packet, feeds them all to the
stack, writes every packet the stack produced in one go, and dispatches the
stack's events once. Packets produced by threads (a send, a window update,
a close) are flushed in the scheduler's next poll, batched the same way.

``open_network(..., queues=N)`` creates a multi-queue TUN device instead
and returns a ``MultiQueueNetwork``: made in a parent before it forks N
workers, it gives worker i ``for_queue(i)``, a ``UserNetwork`` with its
own Stack (own random seed: own ISNs and ephemeral ports) on queue i.
Every stack owns the same addresses; the kernel picks the queue, and so
the worker, for each flow it sends (drivers/net/tun.c,
tun_automq_select_queue): the queue a packet of the flow was last
written on, if that was less than ~3 s ago (TUN_FLOW_EXPIRE; at most 4096
flows are remembered), else the flow's symmetric hash modulo the number of
queues.  A connection the kernel side opens is therefore stable: its SYN
is hashed to a queue, that queue's stack answers, and both rules keep
choosing that queue for as long as the number of queues stays the same
(the parent keeps every queue open for the device's life, so a worker
that dies and restarts does not reshuffle the others).  A connection a
worker opens is not: once its flow entry expires (3 s without a packet
written for it, or never made beyond 4096 flows) the replies go where its
hash points, usually another worker's stack, which knows nothing of it and
resets it.  Dropping such segments instead of resetting would only turn
that into a silent stall, and would leave stale flows unreset, so
``connect`` on a queue network is refused with EOPNOTSUPP; open outgoing
connections from a single-queue network or the kernel's stack.  Packets
hashed without ports (ICMP errors, non-first IP fragments) may likewise
reach another queue than their flow.

By default the TUN device is opened with checksum and segmentation
offload (a virtio_net_hdr on every frame): the kernel and the stack trade
TCP packets of up to 64 KiB and neither computes checksums for the other,
which moves 8-10x the bytes per CPU second of plain 1500-byte frames.

This module never blocks the process on the packet path and never reads the
network anywhere but in the worker; a thread waits only in ``TcpWait``,
which the worker withdraws on cancel or timeout. ``close`` and
``write_without_interruption`` never wait at all: what does not fit in the
stack's send buffer is kept and handed to the stack as ACKs make room, so
nothing written is lost.
"""

from .errors import ClosedByPeer, ConnectionRefused, NetUnreachable
from .network import (
    DEFAULT_CONN_OPTIONS,
    MultiQueueNetwork,
    UserNetwork,
    env_network_options,
    network,
    open_network,
)
from .stream import Listener, Stream
from .worker import TcpWait, UserTcpWorker

__all__ = [
    "open_network",
    "env_network_options",
    "network",
    "UserNetwork",
    "MultiQueueNetwork",
    "UserTcpWorker",
    "Stream",
    "Listener",
    "TcpWait",
    "NetUnreachable",
    "ClosedByPeer",
    "ConnectionRefused",
    "DEFAULT_CONN_OPTIONS",
]
