"""A TUN device that reads and writes whole IP packets, without blocking.

`TunDevice` creates a layer-3 TUN interface (IFF_TUN | IFF_NO_PI), gives
the kernel side its addresses and brings it up with pyroute2, optionally
inside a network namespace (the device is created in the namespace, so the
caller's namespace is never touched).  The user-level TCP/IP stack owns
the other addresses of the subnets, so the kernel routes them to the TUN.
With `vnet_hdr=True` every frame read or written starts with a
virtio_net_hdr, which lets the kernel hand over and accept segmentation-
offloaded packets of up to 64 KiB with the checksum left to finish.

The packet path (read_*/write_*) never blocks: it returns None/False on
EAGAIN, and a packet the kernel rejects is counted and dropped.  Creating
and closing the device do brief blocking netlink calls: setup time only.
This module never parses or answers traffic; that is the stack's job.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct
import sys
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

from . import netns as _netns

__all__ = [
    "TunDevice",
    "TunStats",
    "MAX_QUEUES",
    "DEFAULT_QUEUE_LEN",
    "VirtioNetHdr",
    "internet_checksum",
    "finish_partial_checksum",
    "CHECKSUM_TRUSTED",
    "TUN_F_CSUM", "TUN_F_TSO4", "TUN_F_TSO6", "TUN_F_TSO_ECN", "TUN_F_USO4", "TUN_F_USO6",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM", "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_GSO_NONE", "VIRTIO_NET_HDR_GSO_TCPV4", "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_TCPV6", "VIRTIO_NET_HDR_GSO_UDP_L4", "VIRTIO_NET_HDR_GSO_ECN",
]

# linux/if_tun.h
_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_TUNSETVNETHDRSZ = 0x400454D8
_IFF_TUN = 0x0001
# No TUNSETQUEUE/IFF_DETACH_QUEUE here on purpose: detaching a queue
# changes the number of queues, which moves every flow steered by hash
# (no fresh flow entry) to another queue, where a stack that never saw it
# resets it.  A multi-queue device keeps its queue count for its life.
_IFF_MULTI_QUEUE = 0x0100
MAX_QUEUES = 256  # the kernel's MAX_TAP_QUEUES
# Packets the kernel holds for each queue until the stack reads them (the
# device's txqueuelen).  Linux gives a TUN device 500, and a burst beyond
# that is dropped and waits for the sender's retransmission: one request
# on each of 10,000 keep-alive connections lost 24,000 packets and took
# 3.6 s instead of 1 s.  What the kernel queues towards the stack is
# still bounded by the stack's receive windows, not by this length.
DEFAULT_QUEUE_LEN = 10_000
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

# linux/virtio_net.h
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80
# A frame read with either flag carries a transport checksum the kernel
# vouches for (NEEDS_CSUM: its own TCP left the field for "hardware" to
# finish), so the receiver must not verify it.
CHECKSUM_TRUSTED = VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID

_IFNAMSIZ = 16
_MAX_FRAME = 65535
_DEFAULT_ADDRESSES = ("10.77.0.1/24", "fd77::1/64")
# Legacy virtio headers are in the host's byte order (the kernel's
# TUNSETVNETLE/BE would change that; we never set them).
_VNET = struct.Struct("=BBHHHH")
_VNET_MERGE = struct.Struct("=BBHHHHH")


class VirtioNetHdr(NamedTuple):
    """struct virtio_net_hdr: how the packet after it is offloaded."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0  # only present in the 12-byte form

    def pack(self, size: int = 10) -> bytes:
        if size == 10:
            return _VNET.pack(*self[:6])
        if size == 12:
            return _VNET_MERGE.pack(*self)
        raise ValueError(f"virtio_net_hdr size must be 10 or 12, got {size!r}")

    @classmethod
    def unpack_from(cls, frame: bytes | memoryview, size: int = 10) -> VirtioNetHdr:
        if len(frame) < size:
            raise ValueError(f"frame of {len(frame)} bytes is shorter than its {size}-byte virtio_net_hdr")
        if size == 10:
            return cls(*_VNET.unpack_from(frame))
        if size == 12:
            return cls(*_VNET_MERGE.unpack_from(frame))
        raise ValueError(f"virtio_net_hdr size must be 10 or 12, got {size!r}")


@dataclass
class TunStats:
    packets_read: int = 0
    bytes_read: int = 0
    packets_written: int = 0
    bytes_written: int = 0
    writes_dropped: int = 0  # the kernel refused the packet (malformed, device down)


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The RFC 1071 ones'-complement checksum of data, as a big-endian int
    ready for struct.pack('!H').  `initial` adds a partial sum (for
    example a pseudo-header sum) in the same big-endian form."""
    view = memoryview(data).cast("B")
    if len(view) % 2:
        view = memoryview(bytes(view) + b"\0")
    # The ones'-complement sum is byte-order independent (RFC 1071 2.B), so
    # add native 16-bit words at C speed and swap once at the end.
    total = sum(view.cast("H"))
    if sys.byteorder == "little":
        total += ((initial & 0xFF) << 8) | ((initial >> 8) & 0xFF)
    else:
        total += initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    result = ~total & 0xFFFF
    if sys.byteorder == "little":
        result = ((result & 0xFF) << 8) | (result >> 8)
    return result


def finish_partial_checksum(header: VirtioNetHdr, packet: bytes | bytearray) -> bytes:
    """Complete the checksum of a packet the kernel sent with NEEDS_CSUM:
    the field at csum_start+csum_offset holds the pseudo-header sum, and the
    checksum is folded over everything from csum_start."""
    if not header.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return bytes(packet)
    where = header.csum_start + header.csum_offset
    if where + 2 > len(packet):
        raise ValueError(f"csum_start {header.csum_start} + csum_offset {header.csum_offset} "
                         f"lies outside a {len(packet)}-byte packet")
    out = bytearray(packet)
    checksum = internet_checksum(memoryview(out)[header.csum_start:])
    struct.pack_into("!H", out, where, checksum)
    return bytes(out)


def _offload_header(packet: bytes, gso_size: int, size: int) -> bytes:
    """The virtio_net_hdr for a TCP packet whose checksum field holds the
    pseudo-header sum: NEEDS_CSUM from the TCP header on, and TSO when
    gso_size is set.  Headers are cached by the caller on (first byte,
    TCP data offset, gso_size), everything they depend on."""
    if packet[0] >> 4 == 4:
        ip_len = (packet[0] & 0xF) * 4
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        ip_len = 40   # iolib.tcp sends no IPv6 extension headers
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    return VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type if gso_size else VIRTIO_NET_HDR_GSO_NONE,
                        ip_len + tcp_len, gso_size, ip_len, 16).pack(size)


_IFA_F_TENTATIVE = 0x40


def _wait_until_not_tentative(ipr, index: int, name: str) -> None:
    """Device setup only: with DAD off a new IPv6 address still starts
    tentative and is made usable by the kernel's address workqueue once the
    link is up; on a busy machine a bind could come first and fail with
    EADDRNOTAVAIL. Waits for it, at most about five seconds (counted in
    naps, not read off a clock)."""
    import socket
    import time

    for _ in range(500):
        if not any((msg.get_attr("IFA_FLAGS") or msg["flags"]) & _IFA_F_TENTATIVE
                   for msg in ipr.get_addr(index=index, family=socket.AF_INET6)):
            return
        time.sleep(0.01)
    raise OSError(errno.EADDRNOTAVAIL, f"the IPv6 addresses of {name} stayed tentative for 5 s")


def _parse_interface(address: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(address)
    except ValueError:
        raise ValueError(f"address {address!r} is not an 'ADDRESS/PREFIXLEN' interface address") from None


class TunDevice:
    """A TUN interface, its non-blocking fd, and the kernel-side addresses.

    The device lives as long as the fd: `close()` (or leaving `with`)
    removes it.  Frames are whole IP packets, each prefixed by a
    virtio_net_hdr of `vnet_hdr_size` bytes when `vnet_hdr` is on.

    With `multi_queue=True` this object is the device's first queue and
    `open_queue()` returns another `TunDevice` for a further queue of the
    same device (same flags, same offloads).  Every queue is closed on its
    own; the kernel removes the device when the last one closes, so the
    creator may close its queue while others stay open.  `queue_of` names
    the device a queue belongs to; `is_creator` is False for queues that
    were attached rather than created.

    `queue_len` is the device's txqueuelen: how many packets the kernel
    holds for each queue until they are read (DEFAULT_QUEUE_LEN, not
    Linux's 500, so that a burst from thousands of connections waits
    instead of being dropped).
    """

    def __init__(
        self,
        name: str = "tl0",
        *,
        netns: str | None = None,
        addresses: Sequence[str] = _DEFAULT_ADDRESSES,
        mtu: int = 1500,
        vnet_hdr: bool = False,
        vnet_hdr_size: int = 10,
        offload: int = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
        multi_queue: bool = False,
        queue_len: int = DEFAULT_QUEUE_LEN,
    ) -> None:
        self._fd = -1
        self._configure(name, netns, mtu, vnet_hdr, vnet_hdr_size, offload, multi_queue)
        if isinstance(queue_len, bool) or not isinstance(queue_len, int) or not 1 <= queue_len <= 1 << 20:
            raise ValueError(f"queue_len must be an int in 1..{1 << 20}, got {queue_len!r}")
        self.queue_len = queue_len
        self.addresses = tuple(_parse_interface(a) for a in addresses)
        self.is_creator = True
        if netns is None:
            self._fd = self._setup()
        else:
            self._fd = _netns.run_in_netns(netns, self._setup)

    def _configure(self, name: str, netns: str | None, mtu: int, vnet_hdr: bool, vnet_hdr_size: int,
                   offload: int, multi_queue: bool) -> None:
        """Check and store everything but the addresses and the fd."""
        encoded = name.encode() if isinstance(name, str) else b""
        if not encoded or len(encoded) >= _IFNAMSIZ or b"/" in encoded or b" " in encoded or b"\0" in encoded:
            raise ValueError(f"TUN name must be 1-15 bytes without '/', ' ' or NUL, got {name!r}")
        if not isinstance(mtu, int) or not 68 <= mtu <= _MAX_FRAME:
            raise ValueError(f"mtu must be an int in 68..65535, got {mtu!r}")
        if vnet_hdr_size not in (10, 12):
            raise ValueError(f"vnet_hdr_size must be 10 or 12, got {vnet_hdr_size!r}")
        if bool(offload & TUN_F_USO4) != bool(offload & TUN_F_USO6):
            # The kernel refuses one without the other with a bare EINVAL.
            raise ValueError("offload must set TUN_F_USO4 and TUN_F_USO6 together (UDP segmentation)")
        if netns is not None and not _netns.netns_exists(netns):
            raise FileNotFoundError(f"network namespace {netns!r} does not exist")
        self.name = name
        self.netns = netns
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.vnet_hdr_size = vnet_hdr_size if vnet_hdr else 0
        self.offload = offload if vnet_hdr else 0
        self.multi_queue = bool(multi_queue)
        self.stats = TunStats()
        self._offload_headers: dict = {}
        # Offloaded (GSO) frames can be up to 64 KiB whatever the MTU.
        self.read_size = (_MAX_FRAME if vnet_hdr else mtu) + self.vnet_hdr_size

    def _flags(self) -> int:
        return (_IFF_TUN | _IFF_NO_PI | (_IFF_VNET_HDR if self.vnet_hdr else 0)
                | (_IFF_MULTI_QUEUE if self.multi_queue else 0))

    def _open_fd(self, verb: str) -> int:
        """Open /dev/net/tun and bind it to the device (creating it, or
        attaching a queue), with this object's header size and offloads.
        The kernel keeps header size and offloads per device, and TUNSETIFF
        on an existing device replaces its feature flags, so every queue
        must ask for exactly the same ones."""
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", self.name.encode(), self._flags()))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot {verb} TUN device {self.name!r}: {exc.strerror}") from None
            if self.vnet_hdr:
                fcntl.ioctl(fd, _TUNSETVNETHDRSZ, struct.pack("i", self.vnet_hdr_size))
                try:
                    fcntl.ioctl(fd, _TUNSETOFFLOAD, self.offload)
                except OSError as exc:
                    raise OSError(exc.errno, f"kernel refused TUN offload flags {self.offload:#x}: "
                                             f"{exc.strerror}") from None
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _setup(self) -> int:
        """Runs in the target namespace: the device joins the namespace of
        the thread that opens /dev/net/tun."""
        from pyroute2 import IPRoute

        fd = self._open_fd("create")
        try:
            if any(i.version == 6 for i in self.addresses):
                # Without this the address stays "tentative" for a second or
                # two and the kernel will not send from it.
                with open(f"/proc/sys/net/ipv6/conf/{self.name}/accept_dad", "w") as f:
                    f.write("0")
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=self.name)[0]
                ipr.link("set", index=index, mtu=self.mtu, txqlen=self.queue_len)
                for interface in self.addresses:
                    ipr.addr("add", index=index, address=str(interface.ip),
                             prefixlen=interface.network.prefixlen)
                ipr.link("set", index=index, state="up")
                if any(i.version == 6 for i in self.addresses):
                    _wait_until_not_tentative(ipr, index, self.name)
            return fd
        except BaseException:
            os.close(fd)
            raise

    # -- queues ---------------------------------------------------------

    @classmethod
    def attach_queue(
        cls,
        name: str,
        *,
        netns: str | None = None,
        mtu: int = 1500,
        vnet_hdr: bool = False,
        vnet_hdr_size: int = 10,
        offload: int = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    ) -> TunDevice:
        """A new queue of the existing multi-queue TUN device `name` (in
        `netns`).  vnet_hdr, vnet_hdr_size and offload must be the ones
        the device was created with (the kernel would silently switch the
        whole device to these).  The device's addresses are left alone;
        `addresses` is empty on the result.  FileNotFoundError if there is
        no such device: TUNSETIFF would otherwise create a new one."""
        self = cls.__new__(cls)
        self._fd = -1
        self._configure(name, netns, mtu, vnet_hdr, vnet_hdr_size, offload, True)
        self.addresses = ()
        self.is_creator = False
        if netns is None:
            self._fd = self._attach()
        else:
            self._fd = _netns.run_in_netns(netns, self._attach)
        return self

    def _attach(self) -> int:
        from pyroute2 import IPRoute

        # Check first: TUNSETIFF would create a missing device, and on an
        # existing one it silently replaces the feature flags (vnet_hdr)
        # of every queue with ours.
        where = f" in network namespace {self.netns!r}" if self.netns else ""
        with IPRoute() as ipr:
            links = ipr.get_links(ifname=self.name) if ipr.link_lookup(ifname=self.name) else []
        if not links:
            raise FileNotFoundError(f"no TUN device {self.name!r}{where} to attach a queue to")
        info = links[0].get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
        if info is None or info.get_attr("IFLA_INFO_KIND") != "tun" or data is None \
                or data.get_attr("IFLA_TUN_TYPE") != _IFF_TUN or data.get_attr("IFLA_TUN_PI") != 0:
            raise OSError(errno.EINVAL, f"{self.name!r}{where} is not a TUN device without packet information")
        if not data.get_attr("IFLA_TUN_MULTI_QUEUE"):
            raise OSError(errno.EINVAL, f"cannot attach a queue to {self.name!r}: it is not a multi-queue TUN device")
        if bool(data.get_attr("IFLA_TUN_VNET_HDR")) != self.vnet_hdr:
            raise OSError(errno.EINVAL, f"cannot attach a queue to {self.name!r}: its vnet_hdr flag is "
                                        f"{bool(data.get_attr('IFLA_TUN_VNET_HDR'))}, this queue asked for "
                                        f"{self.vnet_hdr}; every queue must use the device's flags")
        return self._open_fd("attach a queue to")

    def open_queue(self) -> TunDevice:
        """Another queue of this multi-queue device, with the same flags,
        header size and offloads.  Setup time only (a netlink lookup)."""
        if not self.multi_queue:
            raise ValueError(f"TUN device {self.name!r} was opened without multi_queue=True; "
                             "it has one queue and cannot get another")
        if self._fd < 0:
            raise ValueError(f"TUN device {self.name!r} is closed: open a queue from one that is still open")
        queue = TunDevice.attach_queue(self.name, netns=self.netns, mtu=self.mtu, vnet_hdr=self.vnet_hdr,
                                       vnet_hdr_size=self.vnet_hdr_size or 10,
                                       offload=self.offload if self.vnet_hdr else 0)
        queue.addresses = self.addresses
        return queue

    # -- packet path ----------------------------------------------------

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"TUN device {self.name!r} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def read_packet(self) -> bytes | None:
        """One frame from the kernel, or None when none is waiting."""
        try:
            frame = os.read(self._fd, self.read_size)
        except BlockingIOError:
            return None
        self.stats.packets_read += 1
        self.stats.bytes_read += len(frame)
        return frame

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Up to max_packets frames, fewer (maybe none) when the queue empties."""
        frames = []
        read = os.read
        fd = self._fd
        size = self.read_size
        try:
            for _ in range(max_packets):
                frames.append(read(fd, size))
        except BlockingIOError:
            pass
        self.stats.packets_read += len(frames)
        self.stats.bytes_read += sum(map(len, frames))
        return frames

    def write_packet(self, frame: bytes | bytearray | memoryview) -> bool:
        """Hand one frame to the kernel.  False means EAGAIN: retry later.
        A frame the kernel rejects (malformed, device down) is counted in
        stats.writes_dropped and reported as consumed (True)."""
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIO, errno.EFAULT, errno.EMSGSIZE):
                self.stats.writes_dropped += 1
                return True
            raise
        self.stats.packets_written += 1
        self.stats.bytes_written += written
        return True

    def write_batch(self, frames: Iterable[bytes | bytearray | memoryview]) -> int:
        """Write frames in order until EAGAIN; return how many were consumed."""
        count = 0
        for frame in frames:
            if not self.write_packet(frame):
                break
            count += 1
        return count

    def send_packets(self, packets: Iterable[bytes | tuple[bytes, int]]) -> int:
        """Write IP packets in order until EAGAIN; return how many were
        consumed.  An item is a whole IP packet, or, from a stack with
        offload (iolib.tcp.Stack(offload=True)), a `(tcp_packet, gso_size)`
        pair whose TCP checksum field holds the pseudo-header sum: the
        kernel finishes the checksum and, for a nonzero gso_size, cuts the
        payload into gso_size-byte segments.  With vnet_hdr the header is
        added here (writev, so a 64 KiB packet is not copied); without it
        only plain packets can be sent."""
        fd = self._fd
        count = 0
        written_bytes = 0
        dropped = 0
        vnet = self.vnet_hdr
        write, writev = os.write, os.writev
        plain = bytes(self.vnet_hdr_size)
        headers = self._offload_headers
        for item in packets:
            if type(item) is tuple:
                if not vnet:
                    raise ValueError(f"TUN device {self.name!r} has no vnet_hdr: it cannot take "
                                     "offloaded (packet, gso_size) items; open it with vnet_hdr=True")
                packet, gso_size = item
                first = packet[0]
                key = (first, packet[52 if first >> 4 == 6 else (first & 0xF) * 4 + 12], gso_size)
                header = headers.get(key)
                if header is None:
                    header = headers[key] = _offload_header(packet, gso_size, self.vnet_hdr_size)
            else:
                packet, header = item, plain
            try:
                written_bytes += writev(fd, (header, packet)) if vnet else write(fd, packet)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EIO, errno.EFAULT, errno.EMSGSIZE):
                    raise
                dropped += 1
            count += 1
        stats = self.stats
        stats.packets_written += count - dropped
        stats.bytes_written += written_bytes
        stats.writes_dropped += dropped
        return count

    # -- teardown -------------------------------------------------------

    def close(self) -> None:
        """Close the fd; the kernel deletes the (non-persistent) device
        when this was its last open queue."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        where = f" netns={self.netns!r}" if self.netns else ""
        state = "closed" if self.closed else f"fd={self._fd}"
        queue = " queue" if self.multi_queue else ""
        return f"<TunDevice {self.name!r}{queue}{where} {state}>"
