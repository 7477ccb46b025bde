"""A program whose output is the exact order of everything the run loop
does: interleavings, values sent in, returns and failures, interrupts
delivered at the next wait, unknown calls, a failing worker, context
writes, KeyboardInterrupt. test_compiled.py runs it under both run loops
(the compiled one and THREADLIB_PURE=1) and compares the traces."""

from __future__ import annotations

import contextvars
import logging
import sys

import threadlib
from threadlib import lowlevel
from threadlib.syscalls import SystemCall

trace: list[str] = []
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="-")


class Broken(SystemCall):
    """Served by a worker whose handler raises."""


class BrokenWorker(lowlevel.Worker):
    def attach(self, sched):
        return {Broken: self._serve}

    def _serve(self, thread, sc):
        raise ZeroDivisionError("the worker's own bug")


def pinger(name, n):
    for i in range(n):
        trace.append(f"{name}{i}")
        got = yield from threadlib.sleep(0)
        trace.append(f"{name}{i}<-{got!r}")
    return f"{name} done"


def fails(n):
    for _ in range(n):
        yield from threadlib.sleep(0)
    raise ValueError("fails")


def catches_and_returns():
    try:
        yield from threadlib.sleep(10)
    except threadlib.ThreadCancelled:
        trace.append("caught cancel")
        return "returned from a throw"


def spins():
    i = 0
    try:
        while True:
            i += 1
            yield from threadlib.sleep(0)
    except threadlib.ThreadCancelled:
        trace.append(f"spinner cancelled at its wait after {i} steps")
        raise


def writes_context(tag):
    trace.append(f"{tag} sees {var.get()}")
    var.set(tag)
    yield from threadlib.sleep(0)
    trace.append(f"{tag} sees {var.get()} after a step")


def misuses():
    try:
        yield 42  # not a system call
    except TypeError as exc:
        trace.append(f"unknown call: {str(exc)[:40]}")
    try:
        yield Broken()
    except threadlib.WorkerError as exc:
        trace.append(f"worker error: {type(exc.__cause__).__name__}")


def parks():
    """Waits in wait queues: the compiled loop serves a plain Park itself,
    and hands one with a scope or a pending cancel to _sys_park."""
    q = threadlib.Queue(maxsize=1)
    ev = threadlib.Event()

    def producer():
        for i in range(4):
            yield from q.put(i)
            trace.append(f"put {i}")

    def consumer():
        for _ in range(4):
            trace.append(f"got {(yield from q.get())}")

    def waiter(tag):
        yield from ev.wait()
        trace.append(f"{tag} woke")

    def times_out():
        try:
            yield from q.get(timeout=0.25)
        except TimeoutError:
            trace.append("get timed out")

    ts = [(yield from threadlib.spawn(consumer())), (yield from threadlib.spawn(producer()))]
    for tag in ("e1", "e2"):
        ts.append((yield from threadlib.spawn(waiter(tag))))
    yield from threadlib.join_all(ts[:2])
    ev.set()
    yield from threadlib.join_all(ts[2:])
    yield from (yield from threadlib.spawn(times_out())).join()
    parked = yield from threadlib.spawn(q.get())
    yield from threadlib.sleep(0)
    trace.append(f"cancel parked getter -> {(yield from parked.cancel())}")
    ready = yield from threadlib.spawn(q.get())  # cancelled before it runs: pending at its park
    trace.append(f"cancel ready getter -> {(yield from ready.cancel())} {ready.state}")
    late = yield from threadlib.spawn(q.get())
    yield from threadlib.sleep(0)
    q.put_nowait("handed")
    trace.append(f"parked getter got {(yield from late.join())!r}")


def socket_waits():
    """Waits to read: the compiled loop serves a plain WaitRead on a known
    fd itself (a reader waits; events that came while nobody waited resume
    at once) and hands the rest to IOWorker._wait_read (a first wait on an
    fd, a second reader, a timeout, a cancel)."""
    from threadlib.io import sockio

    a, b = sockio.socketpair()

    def echo(n):
        for _ in range(n):
            data = yield from b.recv(100)
            yield from b.sendall(data.upper())

    e = yield from threadlib.spawn(echo(3))
    for word in (b"one", b"two"):
        yield from a.sendall(word)
        trace.append(f"echoed {(yield from a.recv(100))!r}")

    # The last read was short, so the next one waits first; the answer
    # comes while nobody waits: the wait finds its events already there.
    yield from a.sendall(b"three")
    yield from e.join()
    yield from threadlib.sleep(0.25)  # a poll records the answer's events: nobody waits on a
    trace.append(f"echoed {(yield from a.recv(100))!r}")

    def second_reader():
        try:
            yield from a.recv(100)
        except RuntimeError as exc:
            trace.append(f"second reader refused: {'already has a reader waiting' in str(exc)}")

    first = yield from threadlib.spawn(a.recv(100))
    yield from threadlib.spawn(second_reader())
    yield from threadlib.sleep(0)
    trace.append(f"cancel waiting reader -> {(yield from first.cancel())}")
    try:
        yield from a.recv(100, timeout=0.25)
    except TimeoutError:
        trace.append("recv timed out")
    a.close()
    b.close()


def main():
    yield from parks()
    yield from socket_waits()
    a = yield from threadlib.spawn(pinger("a", 3))
    b = yield from threadlib.spawn(pinger("b", 2))
    f = yield from threadlib.spawn(fails(2))
    c = yield from threadlib.spawn(catches_and_returns())
    yield from threadlib.sleep(0)
    ok = yield from c.cancel()
    trace.append(f"cancel -> {ok} {c.result()!r}" if hasattr(c, "result") else f"cancel -> {ok}")
    for t in (a, b):
        trace.append(repr((yield from t.join())))
    try:
        yield from f.join()
    except ValueError as exc:
        trace.append(f"joined failure {exc}")
    s = yield from threadlib.spawn(spins())
    for _ in range(3):
        yield from threadlib.sleep(0)
    trace.append(f"cancel spinner -> {(yield from s.cancel())}")
    w1 = yield from threadlib.spawn(writes_context("w1"))
    w2 = yield from threadlib.spawn(writes_context("w2"))
    yield from threadlib.join_all([w1, w2])
    trace.append(f"main sees {var.get()}")
    yield from threadlib.spawn(misuses())
    yield from threadlib.sleep(0.5)  # virtual: the clock jumps
    trace.append(f"now {threadlib.now()}")
    raise KeyboardInterrupt("from main")


def run() -> list[str]:
    logging.disable(logging.CRITICAL)  # the failing worker logs; the trace is the output
    workers = lowlevel.default_workers() + [BrokenWorker()]
    sched = lowlevel.Scheduler(workers=workers, clock=lowlevel.VirtualClock())
    try:
        sched.run(main(), handle_sigint=False)
    except KeyboardInterrupt as exc:
        trace.append(f"run raised KeyboardInterrupt({exc})")
    return trace


if __name__ == "__main__":
    print(lowlevel.COMPILED)
    for line in run():
        print(line)
    sys.stdout.flush()
