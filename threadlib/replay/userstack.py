"""The user-level TCP/IP stack under record/replay.

The stack (``iolib.tcp``) is sans-IO and deterministic: given the same
packets at the same times and the same random seed it makes the same
segments and the same events. So its worker is treated as part of the
program, and what is recorded is what reaches it from outside:

* the packets read from the TUN device, batch by batch (``DEVIN``), and
  the device's answer to each write (``DEVOUT``: how many packets it took,
  with a CRC of them and the start of the first, to check the output);
* every clock read of the worker and its streams (``UCLOCK``);
* when the worker ran: on a device event (with the epoll events) or at
  its deadline (with the time), as ``USER`` records inside the poll;
* the stack's random state and its RFC 6528 ISN secret when the worker
  joins the scheduler (``USERSTATE``), so ISNs and ephemeral ports come
  out the same.

Replaying, ``open_network`` makes a ``ReplayDevice`` (no TUN device is
created, nothing is sent) and the real worker runs: its device gives the
recorded packets, its writes are checked against the recorded ones, and
it wakes its threads itself, exactly as it did. Only a one-queue network
that joins the scheduler inside the run (at its first use) is covered.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any, Callable

from . import log as _log

if TYPE_CHECKING:
    from .player import Player
    from .recorder import Recorder

DEVICE_EVENT, DEADLINE = 0, 1


def is_user_worker(worker: Any) -> bool:
    """Whether ``worker`` runs the user-level stack (imported only when asked:
    programs on the kernel network never load tcpsockio)."""
    import sys

    module = sys.modules.get("threadlib.io.tcpsockio.worker")
    return module is not None and isinstance(worker, module.UserTcpWorker)


def _crc(packets: list[Any]) -> int:
    # An item is a packet, or (with offload) a (packet, gso_size) pair.
    crc = 0
    for p in packets:
        if type(p) is tuple:
            crc = zlib.crc32(p[0], crc)
            crc = zlib.crc32(p[1].to_bytes(4, "little"), crc)
        else:
            crc = zlib.crc32(p, crc)
    return crc


def first_bytes(packets: list[Any]) -> bytes:
    """The start of the first packet, for a report."""
    if not packets:
        return b""
    first = packets[0]
    return bytes((first[0] if type(first) is tuple else first)[:32])


class RecordingDevice:
    """Wraps the worker's TUN device: reads and write results go to the log."""

    def __init__(self, device: Any, index: int, writer: _log.LogWriter) -> None:
        self._device = device
        self._index = index
        self._writer = writer
        self.name = device.name
        self.vnet_hdr_size = getattr(device, "vnet_hdr_size", 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)

    def fileno(self) -> int:
        """The TUN device's fd."""
        fd: int = self._device.fileno()
        return fd

    def read_batch(self, n: int) -> list[bytes]:
        """Up to ``n`` packets from the device, written to the log."""
        frames: list[bytes] = self._device.read_batch(n)
        buf = self._writer.buf
        buf.append(_log.DEVIN)
        _log.put_uint(buf, self._index)
        _log.put_uint(buf, len(frames))
        for frame in frames:
            _log.put_bytes(buf, frame)
        if len(buf) >= _log.FLUSH_AT:
            self._writer.flush()
        return frames

    def send_packets(self, packets: list[Any]) -> int:
        """Write ``packets``; the count taken and their CRC go to the log."""
        written: int = self._device.send_packets(packets)
        buf = self._writer.buf
        buf.append(_log.DEVOUT)
        _log.put_uint(buf, self._index)
        _log.put_uint(buf, len(packets))
        _log.put_uint(buf, written)
        buf += _log._U32.pack(_crc(packets[:written]))
        _log.put_bytes(buf, first_bytes(packets) if written else b"")
        if len(buf) >= _log.FLUSH_AT:
            self._writer.flush()
        return written


def record_worker(recorder: Recorder, sched: Any, worker: Any, index: int, ready: Any,
                  poll_state: list[Any]) -> None:
    """Put ``worker`` (just attached to ``sched``) under recording."""
    writer = recorder.writer
    device = worker.device
    buf = writer.buf
    buf.append(_log.USERSTATE)
    _log.put_uint(buf, index)
    _log.put_value(buf, worker.stack.rng.getstate())
    _log.put_value(buf, worker.stack._isn_key)  # drawn from the rng when the stack was made
    _log.put_uint(buf, getattr(device, "vnet_hdr_size", 0))
    _log.put_str(buf, str(device.name))
    recording = RecordingDevice(device, index, writer)
    worker.device = recording
    # The scheduler's clock under the recording one: these reads are UCLOCK records only.
    real_now = sched.clock.inner.now

    def now() -> float:
        t: float = real_now()
        b = writer.buf
        b.append(_log.UCLOCK)
        b += _log._F64.pack(t)
        return t

    worker._clock_now = now

    def user_event(op: int, value: Any, real: Callable[[Any], None]) -> None:
        b = writer.buf
        if poll_state[1]:
            start = poll_state[0]
            if len(ready) > start:  # the wakes so far in this poll go first
                from .recorder import put_wakes

                b.append(_log.POLL)
                b.append(2)
                b += _log._F64.pack(real_now())
                put_wakes(b, ready, start)
        b.append(_log.USER)
        _log.put_uint(b, index)
        b.append(op)
        if op == DEVICE_EVENT:
            _log.put_uint(b, value)
        else:
            b += _log._F64.pack(value)
        real(value)
        if poll_state[1]:
            poll_state[0] = len(ready)  # the worker's own wakes: replay makes them itself

    real_on_device = worker._on_device
    real_expire = worker.expire
    fd = recording.fileno()
    if fd >= 0:
        sched.unwatch_fd(fd)
        sched.watch_fd(fd, 1, lambda events: user_event(DEVICE_EVENT, events, real_on_device))  # EPOLLIN
    worker.expire = lambda now: user_event(DEADLINE, now, real_expire)


class ReplayDevice:
    """The TUN device of a replayed user network: packets come from the
    log, writes are checked against it, nothing is created or sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.name = str(args[0]) if args else "replay"
        self.vnet_hdr_size = 0
        self.closed = False
        self.player: Player | None = None
        self.index = -1

    def fileno(self) -> int:
        """An fd number that no poller is asked about (watching is a no-op in a replay)."""
        return 1 << 20

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True

    def read_batch(self, n: int) -> list[bytes]:
        """The recorded batch."""
        assert self.player is not None  # set when its worker joined the replay
        frames: list[bytes] = self.player.device_read(self.index, n)
        return frames

    def send_packets(self, packets: list[Any]) -> int:
        """The recorded count, once ``packets`` are checked against the recorded ones."""
        assert self.player is not None
        written: int = self.player.device_write(self.index, packets)
        return written
