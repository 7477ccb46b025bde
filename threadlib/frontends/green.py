"""The greenlet front end: plain functions that block, on the same scheduler.

A green thread is a greenlet running a plain function. When it calls a
blocking-style API (``sock.recv(n)`` with no ``yield``), the call runs the
very same generator the other front ends use and passes each system call it
yields up to the scheduler by switching to the scheduler's greenlet. To the
scheduler a green thread is just another coroutine: an object with
``send`` and ``throw``. Generator, ``async def`` and green threads mix
freely in one process and share every sync object and socket.

A greenlet switches ``contextvars`` contexts itself (each has its own
``gr_context``), so a green thread tells the scheduler so
(``adopt_context``): the scheduler gives it its own context, copied from
its spawner's, as the greenlet's context, and the threads it spawns copy
the one the green code is in (``context``: it may be inside a
``copy_context().run`` of its own when it spawns). For dumps it shows its
frames (``frames``): the greenlet's, then those of the threadlib call it
is blocked in.

The resume of a green thread, ``call`` and the blocking views' methods
run compiled when the extension is built (``_speedups``' ``_green.c``);
the Python here (``_PyGreenCoro``, ``call``, ``_py_blocking_method``) is
their specification and the pure-Python path. A blocking call is refused
(RuntimeError) anywhere but in a green thread's own greenlet: outside any
scheduler, and in a greenlet the application started itself.

Nothing here monkey-patches the standard library.
"""

from __future__ import annotations

import contextvars
import types
from typing import Any, Awaitable, Callable, Generator, TypeVar, overload

import greenlet

from .. import calls
from ..io import sockio
from .._kernel.threads import drive as _drive
from .._kernel import DONE, Thread
from .._kernel.introspect import thread_frames
from .._kernel.compiled import speedups as _speedups

# What a compiled Stream.recv returns: it has send and throw of its own.
_RECV_CALL = None if _speedups is None else _speedups.RecvCall

__all__ = ["thread", "run", "spawn", "call", "sleep", "join", "wrap", "listen", "connect", "current"]

_T = TypeVar("_T")


class _GreenGlet(greenlet.greenlet):  # type: ignore[misc]  # greenlet is untyped: Any to mypy
    """The greenlet of a green thread: being one is what lets a blocking
    call run (a greenlet of the application's own is refused), and while
    blocked it names the call it is blocked in (for dumps)."""

    __slots__ = ("_driving",)


class _PyGreenCoro:
    """A greenlet as the coroutine the scheduler drives: the specification
    of the compiled ``_speedups.GreenCoro``."""

    __slots__ = ("_glet",)
    _glet: Any  # the green thread's greenlet

    def send(self, value: Any) -> Any:
        """Run the greenlet until its next system call (returned) or its end
        (StopIteration with its result), as ``generator.send`` does."""
        glet = self._glet
        # The scheduler's greenlet is whoever resumes us; our return value
        # and every system call we yield go back to it.
        glet.parent = greenlet.getcurrent()
        syscall = glet.switch(value)
        if glet.dead:
            raise StopIteration(syscall)
        return syscall

    def throw(self, exc: BaseException, *_: Any) -> Any:
        """Raise ``exc`` in the greenlet where it waits, as ``generator.throw`` does."""
        glet = self._glet
        # As in send: our result goes back to whoever throws. A greenlet
        # never started ends with the exception, as a generator would.
        glet.parent = greenlet.getcurrent()
        syscall = glet.throw(exc)
        if glet.dead:
            raise StopIteration(syscall)
        return syscall


_GreenCoro: Any = _PyGreenCoro if _speedups is None else _speedups.GreenCoro


class GreenThread(_GreenCoro):  # type: ignore[misc]  # a compiled base: Any to mypy
    """Adapts a greenlet to the coroutine protocol the scheduler drives
    (``send`` and ``throw``, from its base)."""

    __slots__ = ("__qualname__",)

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        def body(_first_value: Any) -> Any:
            return func(*args, **kwargs)

        self._glet = _GreenGlet(body)  # type: ignore[misc]  # the base's slot; the base is Any to mypy
        self.__qualname__ = getattr(func, "__qualname__", "green")

    def adopt_context(self, context: contextvars.Context) -> None:
        """Run the greenlet in ``context`` (called by the scheduler at
        spawn, with the thread's own copy of its spawner's context)."""
        self._glet.gr_context = context

    @property
    def context(self) -> contextvars.Context | None:
        """The context the green code is in (what a thread it spawns
        copies): its greenlet's ``gr_context``."""
        ctx: contextvars.Context | None = self._glet.gr_context
        return ctx

    def frames(self) -> list[types.FrameType]:
        """The greenlet's frames, outermost first, continued by those of
        the threadlib call it is blocked in (for dumps). Empty while it runs
        or once it has ended."""
        frames: list[types.FrameType] = []
        frame = self._glet.gr_frame
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        frames.reverse()
        driving = getattr(self._glet, "_driving", None)
        if frames and driving is not None:
            # Blocked in call(): the generator it drives holds the rest.
            frames.extend(thread_frames(driving))
        return frames

    def close(self) -> None:
        """End an unfinished greenlet by raising GreenletExit in it."""
        if self._glet and not self._glet.dead:
            try:
                self._glet.throw(greenlet.GreenletExit)
            except greenlet.GreenletExit:
                pass


def thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> GreenThread:
    """A green thread to pass to ``threadlib.spawn`` or ``threadlib.run``."""
    return GreenThread(func, args, kwargs)


@overload
def call(awaitable: Awaitable[_T]) -> _T: ...
@overload
def call(awaitable: Generator[Any, Any, _T]) -> _T: ...
def call(awaitable: Any) -> Any:
    """Run a threadlib call (a generator or coroutine such as
    ``sock.recv(10)``) to completion from a green thread, blocking only
    this green thread. The call's timeouts and cancellation behave as in a
    generator thread: they are raised here."""
    me = greenlet.getcurrent()
    if type(me) is not _GreenGlet:
        raise RuntimeError("this blocking call needs a green thread (threadlib.frontends.green.thread/spawn)")
    kind = type(awaitable)
    if kind is not types.GeneratorType and kind is not types.CoroutineType and kind is not _RECV_CALL:
        if awaitable is DONE:
            # A call done when made (a sendall whose first send took all):
            # what driving it would return, without a generator to drive it.
            return None
        # Other awaitables (Event.wait's ParkOnce) iterate without
        # send/throw: drive them through a generator that has both.
        awaitable = _drive(awaitable)
    send = awaitable.send
    value: Any = None
    error: BaseException | None = None
    named = False  # me._driving is awaitable
    try:
        while True:
            try:
                syscall = send(value) if error is None else awaitable.throw(error)
            except StopIteration as stop:
                return stop.value
            error = None
            if not named:
                me._driving = awaitable
                named = True
            try:
                value = me.parent.switch(syscall)
            except BaseException as exc:  # delivered by the scheduler: pass it into the call
                value = None
                error = exc
    finally:
        if named:
            me._driving = None


def run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``threadlib.run`` for a plain function as the main thread."""
    return calls.run(GreenThread(func, args, kwargs))


def spawn(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Thread:
    """Start a green thread from a green thread; returns its Thread."""
    return call(calls.spawn(GreenThread(func, args, kwargs)))


def sleep(seconds: float) -> None:
    """``threadlib.sleep`` for a green thread: blocks only this green thread."""
    call(calls.sleep(seconds))


def join(thread: Thread) -> Any:
    """Block this green thread until ``thread`` ends; its result, or its exception raised."""
    return call(thread.join())


def current() -> Thread:
    """The calling green thread's Thread."""
    return call(calls.current())


# ---------------------------------------------------------------------------
# Blocking views of threadlib objects


def _wrap_result(result: Any) -> Any:
    if isinstance(result, sockio._SocketBase):
        return wrap(result)
    if type(result) is tuple:
        return tuple(_wrap_result(item) for item in result)
    return result


_proxy_classes: dict[type, type] = {}


def _py_blocking_method(name: str) -> Callable[..., Any]:
    """A blocking view's method for the target's method ``name``: the
    specification of the compiled ``_speedups.BlockingMethod``."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self._target, name)(*args, **kwargs)
        kind = type(result)
        if kind is types.GeneratorType or kind is types.CoroutineType or hasattr(result, "__await__"):
            result = call(result)
        # bytes and None (what recv and sendall give) need no wrapping: one
        # test instead of a call per blocking call.
        if result is None or type(result) is bytes:
            return result
        return _wrap_result(result)

    method.__name__ = name
    return method


_blocking_method: Callable[[str], Callable[..., Any]] = _py_blocking_method
if _speedups is not None:
    # The compiled call, views' methods and GreenThread base do what call,
    # _py_blocking_method and _PyGreenCoro do (their specifications).
    _speedups.configure_green(_GreenGlet, greenlet.getcurrent, _drive, DONE, _wrap_result)
    call = _speedups.green_call  # noqa: F811
    _blocking_method = _speedups.BlockingMethod


def _forwarded_attribute(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(self._target, name)

    return property(get)


def wrap(target: Any) -> Any:
    """A view of ``target`` (a socket, Queue, Mutex, Thread, ...) whose
    waiting methods block the green thread instead of returning a
    generator: ``wrap(queue).get()``, ``wrap(conn).recv(100)``."""
    cls = type(target)
    proxy: Any = _proxy_classes.get(cls)  # a class made below: mypy knows no more of it
    if proxy is None:
        namespace: dict[str, Any] = {"__slots__": ("_target",)}
        for name in dir(cls):
            if name.startswith("_") and name not in ("__enter__", "__exit__"):
                continue
            attr = getattr(cls, name, None)
            if callable(attr) and not isinstance(attr, type):
                namespace[name] = _blocking_method(name)
            else:
                namespace[name] = _forwarded_attribute(name)
        namespace["__repr__"] = lambda self: f"<green {self._target!r}>"
        namespace["unwrap"] = lambda self: self._target
        proxy = type(f"Green{cls.__name__}", (), namespace)
        _proxy_classes[cls] = proxy
    obj = proxy.__new__(proxy)
    obj._target = target
    return obj


def listen(address: tuple[str, int], **kwargs: Any) -> Any:
    """A blocking-style listener: ``conn, addr = listener.accept()``."""
    return wrap(call(sockio.listen(address, **kwargs)))


def connect(address: tuple[str, int], **kwargs: Any) -> Any:
    """A blocking-style stream connected to ``address`` (``sockio.connect``'s
    keyword arguments, ``timeout`` among them)."""
    return wrap(call(sockio.connect(address, **kwargs)))
