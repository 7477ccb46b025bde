"""Synchronisation between threads: Event, Mutex, Semaphore, Condition,
Queue. All are made of WaitQueue (the Park/Unpark primitive) and nothing
else.

Waking never suspends: ``event.set()``, ``mutex.release()`` and friends
are plain calls, usable from any thread or from a worker. Ownership (a
lock, a permit, a queue item) is handed to the woken thread directly, so a
waiter cannot be overtaken by a thread that arrives later; a cancellation
aimed at a thread that was just handed something is delivered at its next
wait, so nothing handed over is lost.

Every ``acquire``/``wait``/``get``/``put`` takes an optional ``timeout``
and raises ``TimeoutError`` when it passes.
"""

from __future__ import annotations

import collections
import types
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from .calls import timeout as _timeout
from ._kernel import DONE, WaitQueue
from .syscalls import Waits

if TYPE_CHECKING:
    from .net import Call

_T = TypeVar("_T")


class Event:
    """A flag threads can wait for. ``set()`` wakes every waiter."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters = WaitQueue()

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiter (never waits)."""
        if not self._flag:
            self._flag = True
            self._waiters.wake_all()

    def clear(self) -> None:
        """Reset the flag; later ``wait`` calls wait again."""
        self._flag = False

    def wait(self, timeout: float | None = None) -> Call[None]:
        """Wait until the flag is set (``yield from ev.wait()`` or ``await``).

        Returns at once if it is set, else parks until ``set``; ``timeout``
        raises TimeoutError when it passes."""
        if self._flag:
            return DONE
        if timeout is None:
            return self._waiters.parked  # no generator: the cheapest possible wait
        return self._wait_with_timeout(timeout)

    @types.coroutine
    def _wait_with_timeout(self, timeout: float) -> Waits[None]:
        with _timeout(timeout):
            yield self._waiters.park

    def __repr__(self) -> str:
        return f"<Event {'set' if self._flag else 'clear'} waiters={len(self._waiters)}>"


class Mutex:
    """A non-reentrant lock with FIFO hand-off. ``release`` never waits."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters = WaitQueue()

    def locked(self) -> bool:
        """Whether some thread holds the lock."""
        return self._locked

    @types.coroutine
    def acquire(self, timeout: float | None = None) -> Waits[bool]:
        """Take the lock, parking in FIFO order while another thread holds
        it; returns True. On ``timeout`` (TimeoutError) or cancellation the
        lock was not taken; once handed over it is kept, and a cancel that
        comes later is delivered at the next wait."""
        if not self._locked:
            self._locked = True
            return True
        # release() hands the lock over: when the wait returns we own it.
        if timeout is None:
            yield self._waiters.park
        else:
            with _timeout(timeout):
                yield self._waiters.park
        return True

    def release(self) -> None:
        """Hand the lock to the longest waiter, or unlock (never waits)."""
        if not self._locked:
            raise RuntimeError("release() of a Mutex that is not locked")
        if self._waiters.wake_one() is None:
            self._locked = False

    # `async with mutex:` for async-def threads
    async def __aenter__(self) -> "Mutex":
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Mutex {'locked' if self._locked else 'unlocked'} waiters={len(self._waiters)}>"


class Semaphore:
    """``value`` permits; ``acquire`` takes one, ``release`` gives one back."""

    __slots__ = ("_value", "_waiters", "_bound")

    def __init__(self, value: int = 1, bounded: bool = False) -> None:
        if value < 0:
            raise ValueError(f"Semaphore value must be >= 0, got {value}")
        self._value = value
        self._waiters = WaitQueue()
        self._bound = value if bounded else None

    @property
    def value(self) -> int:
        """The permits available now."""
        return self._value

    @types.coroutine
    def acquire(self, timeout: float | None = None) -> Waits[bool]:
        """Take a permit, parking in FIFO order while there is none; returns
        True. On ``timeout`` (TimeoutError) or cancellation no permit was
        taken; one handed over is kept, as with ``Mutex.acquire``."""
        if self._value > 0:
            self._value -= 1
            return True
        if timeout is None:
            yield self._waiters.park
        else:
            with _timeout(timeout):
                yield self._waiters.park
        return True

    def release(self) -> None:
        """Give a permit back: to the longest waiter, or to the pool
        (ValueError past the bound of a bounded semaphore). Never waits."""
        if self._waiters.wake_one() is None:
            if self._bound is not None and self._value >= self._bound:
                raise ValueError(f"BoundedSemaphore released more than its {self._bound} permits")
            self._value += 1

    async def __aenter__(self) -> "Semaphore":
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()


class Condition:
    """A condition variable over a Mutex (a new one if none is given)."""

    __slots__ = ("mutex", "_waiters")

    def __init__(self, mutex: Mutex | None = None) -> None:
        self.mutex = mutex or Mutex()
        self._waiters = WaitQueue()

    @types.coroutine
    def acquire(self, timeout: float | None = None) -> Waits[bool]:
        """Take the condition's mutex (``Mutex.acquire``)."""
        return (yield from self.mutex.acquire(timeout))

    def release(self) -> None:
        """Release the condition's mutex."""
        self.mutex.release()

    @types.coroutine
    def wait(self, timeout: float | None = None) -> Waits[None]:
        """Release the mutex, wait for a notify, take the mutex back (also
        when the wait ends in a timeout or a cancellation)."""
        if not self.mutex.locked():
            raise RuntimeError("Condition.wait() without holding its mutex")
        self.mutex.release()
        try:
            if timeout is None:
                yield self._waiters.park
            else:
                with _timeout(timeout):
                    yield self._waiters.park
        finally:
            yield from self.mutex.acquire()

    @types.coroutine
    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Waits[Any]:
        """Wait until ``predicate()`` is true; return its value. Holding the
        mutex, as for ``wait``; ``timeout`` bounds the whole wait."""
        with _timeout(timeout):
            result = predicate()
            while not result:
                yield from self.wait()
                result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters, longest first (they retake the mutex)."""
        for _ in range(n):
            if self._waiters.wake_one() is None:
                break

    def notify_all(self) -> None:
        """Wake every waiter."""
        self._waiters.wake_all()


class QueueClosed(Exception):
    """The queue was closed: ``put`` always, ``get`` once it is empty."""


class QueueFull(Exception):
    """``put_nowait`` on a queue that has ``maxsize`` items."""


class QueueEmpty(Exception):
    """``get_nowait`` on a queue that has no item."""


class Queue(Generic[_T]):
    """A FIFO between threads; ``maxsize`` <= 0 means unbounded.

    ``close()`` ends the stream: puts raise QueueClosed at once, gets drain
    what is left and then raise QueueClosed, so consumers see the end.
    """

    __slots__ = ("maxsize", "_items", "_getters", "_putters", "_closed")

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[_T] = collections.deque()
        self._getters = WaitQueue()  # waiting only while _items is empty
        self._putters = WaitQueue()  # waiting only while _items is full
        self._closed = False

    def qsize(self) -> int:
        """The number of items in the queue."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return not self._items

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, if unbounded)."""
        return 0 < self.maxsize <= len(self._items)

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def put_nowait(self, item: _T) -> None:
        """Put without waiting; raise QueueFull if the queue is full
        (QueueClosed if it is closed)."""
        # _offer inlined: the way to feed a queue from plain code and workers.
        if self._closed:
            raise QueueClosed("put() on a closed Queue")
        getters = self._getters
        if getters._waiters and getters.wake_one(item) is not None:
            return  # handed straight to a waiting getter
        items = self._items
        if 0 < self.maxsize <= len(items):
            raise QueueFull(f"put_nowait() on a full Queue (maxsize {self.maxsize})")
        items.append(item)

    def _offer(self, item: _T) -> bool:
        # put()'s slow path: put_nowait, but False when full instead of
        # raising, since a producer of a full queue retries after every
        # wake-up and an exception per retry would cost more than the wait.
        if self._closed:
            raise QueueClosed("put() on a closed Queue")
        getters = self._getters
        if getters._waiters and getters.wake_one(item) is not None:
            return True  # handed straight to a waiting getter
        items = self._items
        if 0 < self.maxsize <= len(items):
            return False
        items.append(item)
        return True

    @types.coroutine
    def put(self, item: _T, timeout: float | None = None) -> Waits[None]:
        """Add ``item``, parking while the queue is full; QueueClosed if it is
        closed (also while waiting). On ``timeout`` (TimeoutError) or
        cancellation the item was not added."""
        # _offer inlined: this is the hot path of every producer.
        if self._closed:
            raise QueueClosed("put() on a closed Queue")
        getters = self._getters
        if getters._waiters and getters.wake_one(item) is not None:
            return
        items = self._items
        if self.maxsize <= 0 or len(items) < self.maxsize:
            items.append(item)
            return
        # Full: wait for a get that makes room (or for close), and retry.
        # Without a timeout no scope is entered: with maxsize=1 every other
        # put comes here.
        offer = self._offer
        park = self._putters.park
        if timeout is None:
            while True:
                yield park
                if offer(item):
                    return
        with _timeout(timeout):
            while True:
                yield park
                if offer(item):
                    return

    @types.coroutine
    def get(self, timeout: float | None = None) -> Waits[_T]:
        """The oldest item, parking (FIFO among getters) while there is none;
        QueueClosed once the queue is closed and drained. On ``timeout``
        (TimeoutError) no item was taken; an item handed to a waiting getter
        is never lost: a cancel arriving after the hand-off is delivered at
        its next wait."""
        items = self._items
        if items:
            item = items.popleft()
            putters = self._putters
            if putters._waiters:
                putters.wake_one()
            return item
        if self._closed:
            raise QueueClosed("get() on a closed, empty Queue")
        # A put hands its item straight to a waiting getter: the wait returns it.
        handed: _T
        if timeout is None:
            handed = yield self._getters.park
            return handed
        with _timeout(timeout):
            handed = yield self._getters.park
            return handed

    def get_nowait(self) -> _T:
        """An item without waiting; raise QueueEmpty if there is none
        (QueueClosed if the queue is closed and empty)."""
        if self._items:
            item = self._items.popleft()
            if self._putters._waiters:
                self._putters.wake_one()
            return item
        if self._closed:
            raise QueueClosed("get() on a closed, empty Queue")
        raise QueueEmpty("get_nowait() on an empty Queue")

    def close(self) -> None:
        """End the stream (never waits): waiting getters and putters, and
        every later put, raise QueueClosed; getters still receive what is
        queued first."""
        if self._closed:
            return
        self._closed = True
        while self._getters.throw_one(QueueClosed("Queue closed while waiting to get")) is not None:
            pass
        while self._putters.wake_one() is not None:
            pass  # they retry and see the queue closed

    def __repr__(self) -> str:
        return f"<Queue size={len(self._items)} maxsize={self.maxsize}{' closed' if self._closed else ''}>"
