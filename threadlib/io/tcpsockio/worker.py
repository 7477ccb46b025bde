"""The user-level TCP worker: runs an ``iolib.tcp`` Stack on a TUN device
inside a scheduler, and serves the one system call threads wait in,
``TcpWait``.

It keeps the TUN fd in the scheduler's poller and the stack's next deadline
as its timer. Per poll event it reads every waiting packet, feeds them all
to the stack, writes every packet the stack produced in one go, and
dispatches the stack's events once. Packets produced by threads (a send, a
window update, a close) are flushed in the scheduler's next poll, batched
the same way. It is the only code that reads or writes the device; it
never blocks (a full device queue keeps packets for the next write event).
"""

from __future__ import annotations

import collections
import select
from typing import Any, Callable

from iolib.packetio import CHECKSUM_TRUSTED, TunDevice
from iolib.tcp import Stack
from iolib.tcp.connection import EV_ACCEPT, EV_CLOSED, EV_CONNECTED, EV_READABLE, EV_WRITABLE

from ..._kernel import Scheduler, Thread, Worker
from ..._kernel.worker import Handler
from ...syscalls import SystemCall

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_NEG_INF = float("-inf")


class TcpWait(SystemCall):
    """Wait until ``socket`` (a Stream or Listener of a UserNetwork) may be
    ready for ``what``: "read", "write", "connect" or "accept". The thread
    then retries its operation; resuming early is harmless."""

    __slots__ = ("socket", "what")

    def __init__(self, socket: Any, what: str) -> None:
        self.socket = socket
        self.what = what


# ---------------------------------------------------------------------------
# The worker


class UserTcpWorker(Worker):
    """Runs a Stack on a TUN device inside a scheduler.

    Any packet device will do (``read_batch``, ``send_packets``,
    ``fileno``); one without an fd (``fileno()`` is -1, as the simulated
    hosts' of ``threadlib.sim``) is not polled: it is given
    ``input_waiting`` through its ``on_input(callback)`` and calls it when
    packets arrive.

    ``max_batch`` bounds the packets read per epoll event, so a flood on
    the link cannot starve the threads; what is left is read at the next
    poll (the worker's deadline is then "now").
    """

    def __init__(self, device: TunDevice, stack: Stack, wait_class: type[TcpWait], max_batch: int = 1024) -> None:
        self.device = device
        self.stack = stack
        self.wait_class = wait_class
        self.max_batch = max_batch
        self.sched: Scheduler | None = None
        self._clock_now: Callable[[], float] = lambda: 0.0
        self._fd = -1
        self._sockets: dict[Any, Any] = {}  # stack handle -> Stream / Listener
        self._out: collections.deque[Any] = collections.deque()  # packets the device refused for now (EAGAIN)
        self._want_out = False
        self.dirty = False  # threads made the stack produce packets or events
        self._more_input = False
        self._waiting = 0
        self.stats: collections.Counter[str] = collections.Counter()

    # -- Worker protocol ---------------------------------------------------
    def attach(self, sched: Scheduler) -> dict[type, Handler]:
        """Join ``sched``: watch the TUN fd and serve this network's TcpWait
        class. A network serves one scheduler at a time."""
        if self.sched is not None and self.sched is not sched:
            raise RuntimeError("this user network is attached to another scheduler; close that one first")
        self.sched = sched
        self._clock_now = sched.clock.now
        self._fd = self.device.fileno()
        if self._fd >= 0:
            sched.watch_fd(self._fd, _EPOLLIN, self._on_device)
        else:
            # A device without an fd (a simulated link: threadlib.sim) says
            # itself when packets wait; they are read at the next poll.
            on_input: Callable[[Callable[[], None]], None] = getattr(self.device, "on_input")  # not a TunDevice's
            on_input(self.input_waiting)
        self.dirty = True  # anything queued while detached goes out at the first poll
        return {self.wait_class: self._wait}

    def now(self) -> float:
        """The attached scheduler's clock (0.0 before the first attach)."""
        return self._clock_now()

    def input_waiting(self) -> None:
        """Packets wait on a device without an fd: read them at the next
        poll (the worker's deadline becomes "now")."""
        self._more_input = True

    def withdraw(self, thread: Thread, syscall: Any) -> None:
        """Take the thread off its socket's waiters."""
        waiters = syscall.socket._waiters(syscall.what)
        try:
            waiters.remove(thread)
        except ValueError:
            return
        self._waiting -= 1

    def next_deadline(self) -> float | None:
        """At once while packets or events wait to be handled, else the
        stack's next timer (a retransmission, a delayed ACK, ...)."""
        if self.dirty or self._more_input:
            return _NEG_INF
        return self.stack.next_deadline()

    def expire(self, now: float) -> None:
        """Read what the last batch left on the device, run the stack's
        timers, send what it produced and wake the threads it concerns."""
        if self._more_input:
            self._more_input = False
            self._read_device(now)
        self.dirty = False
        self.stack.timer(now)
        self._flush()
        self._dispatch()

    def busy(self) -> bool:
        """Whether a thread waits here, or the stack has work or timers left."""
        return self._waiting > 0 or self.dirty or self.stack.next_deadline() is not None

    def close(self) -> None:
        """The scheduler is ending: leave its epoll. The stack, its
        connections and the device stay, for a later scheduler."""
        sched = self.sched
        if sched is None:
            return
        # Whatever the last threads wrote (a response, a FIN) leaves now;
        # retransmissions, if any are needed, wait for the next scheduler.
        # UserNetwork.drain() waits for the peers' acknowledgements instead.
        try:
            self.stack.timer(self._clock_now())
            self._flush()
        except OSError:
            pass
        self.sched = None
        if self._fd >= 0:
            try:
                sched.unwatch_fd(self._fd)
            except (OSError, ValueError):
                pass
        self._fd = -1
        for sock in list(self._sockets.values()):
            sock._forget_waiters()
        self._waiting = 0

    # -- waiting -------------------------------------------------------------
    def _wait(self, thread: Thread, sc: TcpWait) -> None:
        sock = sc.socket
        sched = self.sched
        assert sched is not None  # the scheduler serves this call only while attached
        if sock._ready(sc.what):
            sched.resume(thread)
            return
        sched.suspend(thread, sc)
        sock._waiters(sc.what).append(thread)
        self._waiting += 1

    def _wake(self, waiters: list[Thread]) -> None:
        if waiters:
            sched = self.sched
            assert sched is not None  # events are dispatched only while attached
            resume = sched.resume
            for t in waiters:
                resume(t)
            self._waiting -= len(waiters)
            waiters.clear()

    def _throw(self, waiters: list[Thread], exc: BaseException) -> None:
        if waiters:
            sched = self.sched
            assert sched is not None  # threads wait here only while attached
            for t in waiters:
                sched.throw(t, exc)
            self._waiting -= len(waiters)
            waiters.clear()

    # -- the packet path -------------------------------------------------------
    def _on_device(self, events: int) -> None:
        now = self._clock_now()
        if events & _EPOLLOUT:
            self._flush()
        if events & ~_EPOLLOUT:
            self._read_device(now)
        self.dirty = False
        self.stack.timer(now)
        self._flush()
        self._dispatch()

    def _read_device(self, now: float) -> None:
        receive = self.stack.receive
        read_batch = self.device.read_batch
        header = getattr(self.device, "vnet_hdr_size", 0)
        left = self.max_batch
        while left > 0:
            frames = read_batch(min(left, 256))
            if header:
                for frame in frames:
                    receive(now, frame[header:], frame[0] & CHECKSUM_TRUSTED != 0)
            else:
                for frame in frames:
                    receive(now, frame)
            left -= len(frames)
            if len(frames) < 256:
                self.stats["device_reads"] += 1
                return
        # Stopped by the bound, not by an empty queue: read more next poll.
        self._more_input = True

    def _flush(self) -> None:
        packets = self.stack.take_packets()
        out = self._out
        if out:
            out.extend(packets)
            packets = list(out)
            out.clear()
        if not packets:
            return
        written = self.device.send_packets(packets)
        self.stats["packets_out"] += written
        if written < len(packets):
            out.extend(packets[written:])
            if not self._want_out and self.sched is not None:
                self._want_out = True
                self.sched.modify_fd(self._fd, _EPOLLIN | _EPOLLOUT)
        elif self._want_out and self.sched is not None:
            self._want_out = False
            self.sched.modify_fd(self._fd, _EPOLLIN)

    def _dispatch(self) -> None:
        events = self.stack.take_events()
        if not events:
            return
        sockets = self._sockets
        for handle, kind in events:
            sock = sockets.get(handle)
            if sock is None:
                continue  # a connection not accepted yet, or one already closed
            if kind == EV_READABLE:
                self._wake(sock._readers)
            elif kind == EV_WRITABLE:
                sock._writable = True
                if sock._backlog:
                    sock._push_backlog(self._clock_now())
                if not sock._backlog:
                    self._wake(sock._writers)
            elif kind == EV_ACCEPT:
                self._wake(sock._readers)
            elif kind == EV_CONNECTED:
                self._wake(sock._connecters)
            else:
                # refused, reset, eof, error, urgent, closed: everyone retries
                # and meets the news (an error, b"", ...).
                if sock._backlog and handle.error is not None:
                    sock._backlog.clear()
                sock._writable = True
                self._wake(sock._readers)
                self._wake(sock._writers)
                self._wake(sock._connecters)
                if kind == EV_CLOSED:
                    sockets.pop(handle, None)
