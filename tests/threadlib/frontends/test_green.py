"""The greenlet front end: plain blocking-style functions on the same
scheduler as generator and async-def threads."""

import os

import pytest

import threadlib
from threadlib.frontends import green
from threadlib.io import sockio
from tests import run_trace_program


def test_green_echo_server_with_generator_and_async_clients():
    def green_server(listener):
        while True:
            conn, _ = listener.accept()
            green.spawn(green_handler, conn)

    def green_handler(conn):
        with conn:
            while True:
                data = conn.recv(1000)
                if not data:
                    return
                conn.sendall(data)

    def gen_client(address, msg):
        conn = yield from sockio.connect(address)
        yield from conn.sendall(msg)
        got = yield from conn.recv_exactly(len(msg), timeout=5)
        conn.close()
        return got

    async def async_client(address, msg):
        conn = await sockio.connect(address)
        await conn.sendall(msg)
        got = await conn.recv_exactly(len(msg), timeout=5)
        conn.close()
        return got

    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        server = yield from threadlib.spawn(green.thread(green_server, green.wrap(listener)))
        a = yield from threadlib.spawn(gen_client(listener.address, b"from a generator"))
        b = yield from threadlib.spawn(async_client(listener.address, b"from async def"))
        results = yield from threadlib.join_all([a, b])
        yield from server.cancel()
        listener.close()
        return results

    assert threadlib.run(main()) == [b"from a generator", b"from async def"]


def test_green_threads_share_sync_objects_and_see_exceptions_and_timeouts():
    q = threadlib.Queue()

    def green_producer():
        gq = green.wrap(q)
        for i in range(3):
            gq.put(i)
            green.sleep(0)
        q.close()

    def green_main():
        t = green.spawn(green_producer)
        gq = green.wrap(q)
        got = []
        while True:
            try:
                got.append(gq.get())
            except threadlib.QueueClosed:
                break
        green.join(t)
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0.01):
                green.sleep(5)
        return got

    assert green.run(green_main) == [0, 1, 2]


def test_green_thread_cancellation_runs_finally():
    cleaned = []

    def sleeper():
        try:
            green.sleep(60)
        finally:
            cleaned.append(True)

    def main():
        t = yield from threadlib.spawn(green.thread(sleeper))
        yield from threadlib.sleep(0)
        yield from t.cancel()
        return t.state

    assert threadlib.run(main()) == "cancelled"
    assert cleaned == [True]


def test_green_exception_reaches_join():
    def boom():
        green.sleep(0)
        raise ValueError("green failure")

    def main():
        t = yield from threadlib.spawn(green.thread(boom))
        with pytest.raises(ValueError, match="green failure"):
            yield from t.join()

    threadlib.run(main())


def test_blocking_call_outside_a_green_thread_is_refused():
    with pytest.raises(RuntimeError, match="green thread"):
        green.sleep(0)


def test_green_event_wait_blocks_until_set_and_sendall_returns_none():
    ev = threadlib.Event()
    log = []

    def waiter():
        green.wrap(ev).wait()  # must block until set()
        log.append("woke")

    def main():
        t = green.spawn(waiter)
        green.sleep(0.01)
        log.append("setting")
        ev.set()
        green.join(t)
        a, b = sockio.socketpair()
        assert green.wrap(a).sendall(b"x") is None
        assert green.wrap(b).recv(1) == b"x"
        a.close()
        b.close()

    green.run(main)
    assert log == ["setting", "woke"]


def test_blocking_views_return_plain_results_and_wrap_sockets():
    """What the blocking views give back: bytes and None as they are, a
    Stream (alone or in a tuple) as a blocking view; a sendall too big for
    the socket buffer waits for room; outside a green thread even a
    sendall that sent everything at once is refused."""
    payload = bytes(range(256)) * 8192  # 2 MiB: more than a socketpair buffers

    def main():
        listener = green.listen(("127.0.0.1", 0))
        port = listener.address[1]

        def client():
            conn = green.connect(("127.0.0.1", port))
            conn.sendall(payload)
            conn.close()

        t = green.spawn(client)
        conn, addr = listener.accept()
        assert type(conn).__name__ == "GreenStream" and conn.unwrap().peer_address == addr
        got = bytearray()
        while True:
            data = conn.recv(65536)
            assert type(data) is bytes
            if not data:
                break
            got += data
        green.join(t)
        conn.close()
        listener.close()
        return bytes(got)

    assert green.run(main) == payload
    a, b = sockio.socketpair()
    try:
        with pytest.raises(RuntimeError, match="green thread"):
            green.wrap(a).sendall(b"x")  # the send itself went: the call is still refused
        assert b.socket.recv(1) == b"x"
    finally:
        a.close()
        b.close()


TRACE = os.path.join(os.path.dirname(__file__), "green_trace.py")


def run_green_trace(pure: bool) -> list[str]:
    return run_trace_program(TRACE, pure)


def test_compiled_and_pure_green_front_ends_do_the_same_at_every_edge():
    """green.call, the views' methods and GreenThread's resume are compiled
    (_speedups' _green.c) unless THREADLIB_PURE is set; green.py's Python is
    their specification. Both give the same trace, and the trace is right."""
    compiled, pure = run_green_trace(pure=False), run_green_trace(pure=True)
    assert (compiled[0], pure[0]) == ("True", "False")  # the compiled call is the one in use
    assert compiled[1:] == pure[1:]
    refused = "RuntimeError: this blocking call needs a green thread (threadlib.frontends.green.thread/spawn)"
    assert compiled[1:] == [
        f"outside: sleep -> {refused}",
        f"outside: sendall -> {refused}",  # refused although the send itself went
        "sendall -> None",
        "bound recv(5) -> b'hello'",
        "recv(max_bytes=3) -> b' wo'",
        "recv_exactly(3) -> b'rld'",
        "sendall(str) -> TypeError: a bytes-like object is required, not 'str'",
        compiled[8],  # the timeout names the fd
        "fileno is the target's -> True",
        "unwrap -> True",
        "accept -> GreenStream, tuple",
        "accepted recv -> b'ping'",
        "call(coroutine) -> 42",
        "call(generator) -> None",
        "call(Event.wait) -> None",
        "reader: finally ran",
        "cancel blocked reader -> True",
        "reader state -> cancelled",
        "join returns -> 42",
        "join fails -> LookupError: green failure",
        "never_runs ran",
        "cancel just spawned -> False done",
        f"raw greenlet in a green thread -> {refused}",
        "run -> 'main done'",
    ]
    assert compiled[8].startswith("recv(timeout=0.05) -> TimeoutError: timed out waiting on WaitRead(fd=")
