"""threadlib.loop: asyncio on the threadlib scheduler, with real sockets,
files, processes and signals. Each test shows that the asyncio side works
and that it runs on threadlib's workers (the scheduler's poller, clock,
timers and blocking pool), and the crossings between asyncio tasks and
threadlib threads: awaiting, results, context variables, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import types

import pytest
import trustme

import threadlib
import threadlib.loop as tloop
from tests import REPO_ROOT
from threadlib.io import sockio
from threadlib.lowlevel import BlockingPool, Scheduler, TimerWorker, VirtualClock

pytestmark = pytest.mark.timeout(60)


def run(coro_fn, *args, scheduler=None):
    """Run ``coro_fn(*args)`` on a new ThreadlibEventLoop (as asyncio.run
    with loop_factory would on 3.12)."""
    factory = tloop.new_event_loop if scheduler is None else (lambda: tloop.ThreadlibEventLoop(scheduler))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn(*args))


def test_runner_loop_is_a_threadlib_loop_on_its_scheduler():
    async def main():
        loop = asyncio.get_running_loop()
        return loop, threadlib.current_scheduler()

    loop, sched = run(main)
    assert isinstance(loop, tloop.ThreadlibEventLoop)
    assert sched is loop.scheduler  # the callbacks ran inside the loop's scheduler
    assert loop.is_closed()


def test_install_makes_asyncio_run_use_it():
    tloop.install()
    try:
        async def main():
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is tloop.ThreadlibEventLoop
    finally:
        asyncio.set_event_loop_policy(None)


def test_call_soon_is_fifo_and_call_later_follows_the_scheduler_clock():
    sched = Scheduler(clock=VirtualClock(1000.0))
    order = []

    async def main():
        loop = asyncio.get_running_loop()
        assert loop.time() == sched.clock.now() == 1000.0
        done = loop.create_future()
        loop.call_later(30, order.append, "30s")
        loop.call_later(10, order.append, "10s-a")
        loop.call_at(1010, order.append, "10s-b")  # same time: in the order scheduled
        cancelled = loop.call_later(20, order.append, "cancelled")
        loop.call_later(40, done.set_result, None)
        for i in range(3):
            loop.call_soon(order.append, i)
        cancelled.cancel()
        await done
        return loop.time()

    # A virtual clock: an hour of timers takes no wall time, and the loop's
    # time is the scheduler's.
    assert run(main, scheduler=sched) == 1040.0
    assert order == [0, 1, 2, "10s-a", "10s-b", "30s"]


def test_timers_live_in_the_scheduler_timer_worker():
    sched = Scheduler(clock=VirtualClock())
    timers = sched.worker(TimerWorker)

    async def main():
        loop = asyncio.get_running_loop()
        handle = loop.call_later(5, lambda: None)
        pending = timers.next_deadline()
        handle.cancel()
        return pending, timers.next_deadline()

    pending, after_cancel = run(main, scheduler=sched)
    assert pending == 5.0
    assert after_cancel is None


def test_sock_methods_over_a_real_socket_pair():
    async def main():
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        server, _ = await accept
        payload = os.urandom(1 << 20)
        sender = asyncio.ensure_future(loop.sock_sendall(client, payload))
        received = bytearray()
        while len(received) < len(payload):
            received += await loop.sock_recv(server, 65536)
        await sender
        buf = bytearray(5)
        await loop.sock_sendall(server, b"hello")
        n = await loop.sock_recv_into(client, buf)
        for s in (client, server, listener):
            s.close()
        return bytes(received) == payload, bytes(buf[:n])

    same, hello = run(main)
    assert same
    assert hello == b"hello"


def test_streams_server_and_client_byte_exact():
    blob = os.urandom(3 * 1024 * 1024 + 7)

    async def main():
        async def handle(reader, writer):
            size = int((await reader.readline()).decode())
            data = await reader.readexactly(size)
            writer.write(data[::-1])
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"%d\n" % len(blob) + blob)
        await writer.drain()
        back = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return back

    assert run(main) == blob[::-1]


def test_udp_datagram_endpoint():
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(data.upper(), addr)

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.set_result(data)

        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        address = server.get_extra_info("sockname")
        client, _ = await loop.create_datagram_endpoint(Client, remote_addr=address)
        client.sendto(b"datagram")
        data = await asyncio.wait_for(got, 10)
        client.close()
        server.close()
        return data

    assert run(main) == b"DATAGRAM"


def test_unix_socket_server_and_connection():
    async def main(path):
        async def handle(reader, writer):
            writer.write(b"unix:" + await reader.readexactly(4))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handle, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"ping")
        reply = await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return reply

    with tempfile.TemporaryDirectory() as d:
        assert run(main, os.path.join(d, "sock")) == b"unix:ping"


def test_ssl_transport_with_trustme_certificates():
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    blob = os.urandom(256 * 1024)

    async def main():
        async def handle(reader, writer):
            data = await reader.readexactly(len(blob))
            writer.write(data)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="localhost")
        writer.write(blob)
        await writer.drain()
        back = await reader.readexactly(len(blob))
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        server.close()
        await server.wait_closed()
        return back, version

    back, version = run(main)
    assert back == blob
    assert version.startswith("TLS")


def test_subprocess_exec_pipes_and_exit_code():
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; d = sys.stdin.read(); sys.stdout.write(d[::-1]); sys.exit(3)",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"abcdef")
        return out, proc.returncode

    assert run(main) == (b"fedcba", 3)


def test_subprocess_is_watched_without_a_helper_os_thread():
    async def main():
        before = threading.active_count()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(0.2)")
        during = threading.active_count()
        await proc.wait()
        return before, during, proc.returncode

    before, during, code = run(main)
    assert code == 0
    assert during == before  # asyncio's default watcher would start a waitpid thread


def test_add_signal_handler():
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        os.kill(os.getpid(), signal.SIGUSR1)
        result = await asyncio.wait_for(got, 10)
        assert loop.remove_signal_handler(signal.SIGUSR1)
        return result

    assert run(main) == "usr1"


def test_run_in_executor_uses_the_blocking_pool():
    seen = {}

    async def main():
        loop = asyncio.get_running_loop()
        pool = loop.scheduler.worker(BlockingPool)
        result = await loop.run_in_executor(None, lambda: threading.current_thread().name)
        seen["started"] = len(pool._os_threads)
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(None, lambda: 1 / 0)
        infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        return result, infos

    name, infos = run(main)
    assert name == "threadlib-blocking"
    assert seen["started"] >= 1
    assert infos[0][4] == ("127.0.0.1", 80)


def test_threadlib_threads_and_asyncio_tasks_share_one_scheduler():
    async def main():
        async def asyncio_echo(reader, writer):
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(asyncio_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def threadlib_client():
            # A threadlib thread on threadlib's own sockets, served by the
            # same poller as the asyncio server.
            conn = yield from sockio.connect(("127.0.0.1", port))
            with conn:
                yield from conn.sendall(b"hello")
                return (yield from conn.recv(100))

        reply = await tloop.run_in_thread(threadlib_client)
        server.close()
        await server.wait_closed()
        return reply

    assert run(main) == b"hello"


def test_asyncio_task_result_and_exception_from_a_thread():
    def double(x):
        yield from threadlib.sleep(0.001)
        return 2 * x

    def fail():
        yield from threadlib.sleep(0)
        raise KeyError("from the thread")

    async def main():
        value = await tloop.run_in_thread(double, 21)
        with pytest.raises(KeyError, match="from the thread"):
            await tloop.run_in_thread(fail)
        return value

    assert run(main) == 42


request_id = contextvars.ContextVar("request_id", default="none")


def test_context_variables_cross_both_ways():
    async def main():
        request_id.set("task-1")

        def in_thread():
            seen_by_thread = request_id.get()
            request_id.set("thread")  # the thread's own copy

            async def in_asyncio():
                return request_id.get()

            seen_by_task = yield from tloop.from_asyncio(in_asyncio())
            return seen_by_thread, seen_by_task, request_id.get()

        result = await tloop.run_in_thread(in_thread)
        return result, request_id.get()

    (thread_saw, task_saw, thread_after), task_after = run(main)
    assert thread_saw == "task-1"       # the thread started in a copy of the task's context
    assert task_saw == "thread"         # the task started in a copy of the thread's
    assert thread_after == "thread"
    assert task_after == "task-1"       # nothing written on the other side leaked back


def test_cancelling_the_task_cancels_the_thread_and_waits_for_its_cleanup():
    events = []

    def worker(started):
        try:
            started.set()
            yield from threadlib.sleep(3600)
        except threadlib.ThreadCancelled:
            events.append("thread cancelled")
            yield from threadlib.sleep(0.01)  # cleanup that waits
            events.append("thread cleaned up")
            raise

    async def main():
        started = threadlib.Event()
        task = asyncio.ensure_future(tloop.run_in_thread(worker, started))
        while not started.is_set():
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append("task saw CancelledError")

    run(main)
    assert events == ["thread cancelled", "thread cleaned up", "task saw CancelledError"]


def test_cancelling_the_thread_cancels_the_asyncio_task():
    events = []

    async def sleeper():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("task cancelled")
            raise

    def thread_body():
        yield from tloop.from_asyncio(sleeper())

    async def main():
        thread = tloop.spawn_thread(thread_body)
        await asyncio.sleep(0.01)
        threadlib.current_scheduler().interrupt(thread, threadlib.ThreadCancelled())
        while thread.state not in ("cancelled", "done", "failed"):
            await asyncio.sleep(0.001)
        return thread.state

    assert run(main) == "cancelled"
    assert events == ["task cancelled"]


def test_threadlib_run_with_a_loop_lets_threads_await_asyncio():
    async def main():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.01)  # 'no running event loop' under plain threadlib.run
        assert loop.time() - started >= 0.01
        await asyncio.sleep(0)
        task = asyncio.ensure_future(asyncio.sleep(0.001, "task result"))
        value = await task  # a thread awaits a task directly
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(b"x")
        await writer.drain()
        writer.close()
        return value, isinstance(loop, tloop.ThreadlibEventLoop)

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        assert tloop.run(main) == ("task result", True)
    finally:
        listener.close()


def test_a_timeout_scope_around_an_asyncio_await_cancels_the_future():
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0.01):
                await fut
        return fut.cancelled()

    assert tloop.run(main) is True


def test_an_asyncio_future_of_another_loop_is_refused_clearly():
    other = asyncio.new_event_loop()
    try:
        async def main():
            with pytest.raises(RuntimeError, match="another event loop"):
                await other.create_future()
            return "refused"

        assert tloop.run(main) == "refused"
    finally:
        other.close()


def test_stop_and_run_again_keeps_threadlib_threads():
    loop = tloop.new_event_loop()
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            yield from threadlib.sleep(0.001)

    try:
        async def start():
            return tloop.spawn_thread(ticker)

        thread = loop.run_until_complete(start())
        loop.run_until_complete(asyncio.sleep(0.02))
        first = len(ticks)
        loop.run_until_complete(asyncio.sleep(0.02))
        assert first > 0 and len(ticks) > first  # it ran in both runs, and kept its state
        assert thread.state == "waiting"
    finally:
        loop.close()
    assert thread.state == "cancelled"  # close() cancelled it


def test_keyboard_interrupt_in_a_callback_leaves_the_loop_usable():
    loop = tloop.new_event_loop()
    try:
        def interrupt():
            raise KeyboardInterrupt

        loop.call_soon(interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"
    finally:
        loop.close()


def test_call_soon_threadsafe_from_another_os_thread_wakes_the_loop():
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, "woken")).start()
        return await asyncio.wait_for(fut, 10)

    assert run(main) == "woken"


# -- plain threadlib.run: the scheduler provides a loop -------------------------------


def test_plain_run_gives_its_threads_a_running_threadlib_loop():
    sched = Scheduler(clock=VirtualClock(50.0))

    async def main():
        loop = asyncio.get_running_loop()
        before = threadlib.now()
        await asyncio.sleep(0.01)
        slept = threadlib.now() - before
        # An asyncio task and an Event across the two worlds.
        event = asyncio.Event()
        task = asyncio.ensure_future(asyncio.wait_for(event.wait(), 60))
        setter = asyncio.get_running_loop().call_later(5, event.set)
        await task
        return loop, slept, threadlib.now() - before, setter.cancelled()

    loop, slept, total, cancelled = threadlib.run(main(), scheduler=sched)
    assert isinstance(loop, tloop.ThreadlibEventLoop) and loop.scheduler is sched
    assert slept == pytest.approx(0.01)  # on the scheduler's (virtual) clock
    assert total == pytest.approx(5.01)
    assert not cancelled
    assert loop.is_closed()
    assert asyncio._get_running_loop() is None  # withdrawn when run returns


def test_the_provided_loop_sleeps_until_asyncio_is_used():
    def names():
        return sorted(t.name for t in threadlib.current_scheduler().threads())

    def main():
        loop = asyncio.get_running_loop()
        untouched = (names(), loop.scheduler.worker(type(loop._worker)))
        yield from tloop.from_asyncio(asyncio.sleep(0))
        return untouched, names()

    (before, worker), after = threadlib.run(main())
    assert before == ["main"] and worker is None  # no loop thread, no worker, no self-pipe
    assert after == ["asyncio-loop", "main"]

    def mistaken():
        yield  # still the error it always was, with asyncio loaded

    with pytest.raises(TypeError, match="did you write `yield` where `yield from` was meant"):
        threadlib.run(mistaken())


def test_plain_run_inside_threadlib_loop_run_keeps_that_loop():
    async def main():
        return asyncio.get_running_loop()

    def outer():
        return (yield from main().__await__())

    loop = tloop.run(outer)
    assert type(loop) is tloop.ThreadlibEventLoop  # not a second, provided one


def test_a_raising_callback_goes_to_the_loop_exception_handler():
    reported = []

    def broken():
        raise ValueError("callback broke")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: reported.append(context))
        loop.call_soon(broken)
        loop.call_later(0.001, broken)
        await asyncio.sleep(0.01)
        return "loop still runs"

    assert run(main) == "loop still runs"
    assert threadlib.run(main()) == "loop still runs"  # the provided loop too
    assert len(reported) == 4
    for context in reported:
        assert isinstance(context["exception"], ValueError)
        assert "broken" in repr(context["handle"])


def test_a_batch_runs_its_handles_in_order_each_in_its_context():
    """call_soon and the loop thread's batch (compiled unless THREADLIB_PURE,
    the specification): callbacks run in the order scheduled, each in its
    handle's context; a handle cancelled before its turn, even by the
    callback before it, is skipped; a raising callback reaches the
    exception handler with its handle and the batch goes on. The same in
    debug mode, where the report also carries where the handle was made."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="-")

    def served(debug):
        seen, reported = [], []

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_debug(debug)
            loop.set_exception_handler(lambda loop, context: reported.append(context))
            theirs = contextvars.copy_context()
            theirs.run(var.set, "theirs")

            def note(tag, *more):
                seen.append((tag, *more, var.get()))

            def first():
                note("first")
                doomed.cancel()  # already queued, after this one
                loop.call_soon(note, "scheduled by first")

            def broken():
                raise ValueError("callback broke")

            loop.call_soon(first)
            doomed = loop.call_soon(note, "cancelled by first")
            loop.call_soon(note, "theirs", 1, 2, context=theirs)
            loop.call_soon(note, "cancelled at once").cancel()
            failing = loop.call_soon(broken)
            loop.call_soon(note, "after the failure")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return failing

        failing = run(main)
        assert seen == [("first", "-"), ("theirs", 1, 2, "theirs"), ("after the failure", "-"),
                        ("scheduled by first", "-")]
        [context] = reported
        assert context["handle"] is failing and isinstance(context["exception"], ValueError)
        assert context["message"].startswith("Exception in callback ") and "broken" in context["message"]
        assert ("source_traceback" in context) == debug

    # Compiled unless pure: then the Python function is kept as the specification.
    compiled = tloop._speedups is not None
    assert isinstance(tloop.ThreadlibEventLoop.__dict__["call_soon"], types.FunctionType) != compiled
    served(debug=False)
    served(debug=True)
    loop = tloop.new_event_loop()
    with pytest.raises(TypeError):
        loop.call_soon()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(print)


_NO_SELECT_PROGRAM = r'''
import select, selectors, sys

called = []


def recorded(name, real):
    # Records the call and then does it, so that a select that crept in
    # shows up in the output instead of hanging the program.
    def stub(*args, **kwargs):
        called.append(name)
        return real(*args, **kwargs)
    return stub


# Every way asyncio (or anything under it) could select, replaced before
# asyncio or threadlib is imported; select.epoll stays: it is the
# scheduler's own poller (iolib.epoll), the one poll that serves both worlds.
select.select = recorded("select.select", select.select)
select.poll = recorded("select.poll", select.poll)
for cls in (selectors.SelectSelector, selectors.PollSelector, selectors.EpollSelector):
    cls.select = recorded(cls.__name__ + ".select", cls.select)

import asyncio
import threadlib
import threadlib.loop as tloop


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main():
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = bytes(range(256)) * 4096
    writer.write(sent)
    await writer.drain()
    got = await reader.readexactly(len(sent))
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    later = loop.create_future()
    loop.call_later(0.01, later.set_result, "timer")
    await asyncio.sleep(0.01)
    in_pool = await loop.run_in_executor(None, sum, [1, 2, 3])
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print('child')",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return got == sent, await later, in_pool, out.strip(), proc.returncode


with asyncio.Runner(loop_factory=tloop.new_event_loop) as runner:   # asyncio first
    first = runner.run(main())
second = tloop.run(main)                                             # threadlib first
print(first, second, called)
'''


def test_the_loop_never_calls_select():
    # design.md §17: "select is never called". A program whose every
    # select entry point is recorded runs streams, a server,
    # timers, the executor and a child process, both ways round.
    done = subprocess.run([sys.executable, "-c", _NO_SELECT_PROGRAM], capture_output=True, text=True,
                          timeout=50, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = (True, "timer", 6, b"child", 0)
    assert done.stdout.strip() == f"{expected} {expected} []", done.stdout + done.stderr[-2000:]


def test_asyncio_signal_handlers_and_a_signal_worker_on_one_scheduler_are_refused():
    # design.md §17: a process has one signal wake-up fd, so asyncio's signal
    # handlers and threadlib's SignalWorker cannot share a scheduler; the
    # second to ask is refused, whichever it is, and each works once the
    # other has let go.
    from threadlib.process import signals

    async def main():
        loop = asyncio.get_running_loop()
        worker = threadlib.current_scheduler().worker(signals.SignalWorker)
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
        with pytest.raises(RuntimeError, match="asyncio loop has signal handlers"):
            with threadlib.timeout(10):  # a bound on the wait if it were let through
                await signals.wait_signal(signal.SIGUSR2)
        with pytest.raises(RuntimeError, match="asyncio loop has signal handlers"):
            worker.on_signal(signal.SIGUSR2, lambda signum: None)
        assert not worker.catching
        os.kill(os.getpid(), signal.SIGUSR1)  # the loop's handler still gets its signal
        # wait_for needs a task from 3.12 on (it is built on asyncio.timeout)
        assert await tloop.from_asyncio(asyncio.wait_for(got, 10)) == "usr1"
        assert loop.remove_signal_handler(signal.SIGUSR1)
        # the other way round: the worker now holds the wake-up fd
        waiter = await threadlib.spawn(signals.wait_signal(signal.SIGUSR2))
        await threadlib.sleep(0)
        assert worker.catching
        with pytest.raises(RuntimeError, match="SignalWorker .* owns"):
            loop.add_signal_handler(signal.SIGUSR1, got.set_result, "again")
        os.kill(os.getpid(), signal.SIGUSR2)
        return await waiter.join()

    assert tloop.run(main, scheduler=signals.scheduler()) == signal.SIGUSR2
