"""A program whose output is what the green front end does at each of its
edges: blocking views' methods (bound, with keywords, results plain or
wrapped, a target's own exception), blocking calls on every kind of
awaitable, a cancel delivered into a blocked call, a timeout, a thread's
result and failure, a thread cancelled before it ever ran, and the calls
it refuses. test_green.py runs it with the compiled front end and with
THREADLIB_PURE=1 (green.py's own Python, the specification) and compares
the two traces."""

from __future__ import annotations

import sys

import greenlet

import threadlib
from threadlib.frontends import green
from threadlib.io import sockio

trace: list[str] = []


def outcome(func, *args, **kwargs) -> str:
    try:
        return repr(func(*args, **kwargs))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


async def coroutine_call(x):
    await threadlib.sleep(0.01)
    return x * 2


def blocked_reader(view):
    try:
        view.recv(10)
        trace.append("reader: not cancelled")
    finally:
        trace.append("reader: finally ran")


def returns(x):
    green.sleep(0)
    return x + 1


def fails():
    green.sleep(0)
    raise LookupError("green failure")


def never_runs():
    trace.append("never_runs ran")


def main():
    a, b = sockio.socketpair()
    va, vb = green.wrap(a), green.wrap(b)
    trace.append(f"sendall -> {va.sendall(b'hello world')!r}")
    recv = vb.recv  # a bound method, read once, called later
    trace.append(f"bound recv(5) -> {recv(5)!r}")
    trace.append(f"recv(max_bytes=3) -> {vb.recv(max_bytes=3)!r}")
    trace.append(f"recv_exactly(3) -> {vb.recv_exactly(3)!r}")
    trace.append(f"sendall(str) -> {outcome(va.sendall, 'text')}")
    trace.append(f"recv(timeout=0.05) -> {outcome(vb.recv, 10, timeout=0.05)}")
    trace.append(f"fileno is the target's -> {va.fileno() == a.fileno()}")
    trace.append(f"unwrap -> {va.unwrap() is a}")

    listener = green.listen(("127.0.0.1", 0))
    client = green.connect(("127.0.0.1", listener.address[1]))
    conn, addr = listener.accept()  # a tuple holding a Stream: wrapped
    trace.append(f"accept -> {type(conn).__name__}, {type(addr).__name__}")
    client.sendall(b"ping")
    trace.append(f"accepted recv -> {conn.recv(10)!r}")
    for s in (conn, client, listener):
        s.close()

    trace.append(f"call(coroutine) -> {green.call(coroutine_call(21))!r}")
    trace.append(f"call(generator) -> {green.call(threadlib.sleep(0))!r}")
    ev = threadlib.Event()
    ev.set()
    trace.append(f"call(Event.wait) -> {green.call(ev.wait())!r}")

    t = green.spawn(blocked_reader, va)
    green.sleep(0.01)
    trace.append(f"cancel blocked reader -> {green.call(t.cancel())!r}")
    trace.append(f"reader state -> {t.state}")

    trace.append(f"join returns -> {green.join(green.spawn(returns, 41))!r}")
    trace.append(f"join fails -> {outcome(green.join, green.spawn(fails))}")
    idle = green.spawn(never_runs)
    trace.append(f"cancel just spawned -> {green.call(idle.cancel())!r} {idle.state}")

    def in_raw_greenlet():
        return outcome(green.sleep, 0)

    trace.append(f"raw greenlet in a green thread -> {greenlet.greenlet(in_raw_greenlet).switch()}")
    a.close()
    b.close()
    return "main done"


def run() -> list[str]:
    trace.append(f"outside: sleep -> {outcome(green.sleep, 0)}")
    a, b = sockio.socketpair()
    trace.append(f"outside: sendall -> {outcome(green.wrap(a).sendall, b'x')}")
    a.close()
    b.close()
    trace.append(f"run -> {green.run(main)!r}")
    return trace


if __name__ == "__main__":
    print(green._speedups is not None and green.call is green._speedups.green_call)
    for line in run():
        print(line)
    sys.stdout.flush()
