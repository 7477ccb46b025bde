"""Threads, the scheduler, cancellation, timeouts, exceptions, custom
system calls and workers: through the public API."""

import gc
import logging
import os
import select
import signal
import types

import pytest

import threadlib
from threadlib import ThreadCancelled
from threadlib.lowlevel import Scheduler, SystemCall, VirtualClock, Worker


def test_run_returns_main_result_and_raises_its_exception():
    def main():
        yield from threadlib.sleep(0)
        return 42

    assert threadlib.run(main()) == 42

    def failing():
        yield from threadlib.sleep(0)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        threadlib.run(failing())


def test_spawn_join_results_in_order_and_sleep_zero_interleaves():
    order = []

    def worker(name, n):
        for i in range(n):
            order.append((name, i))
            yield from threadlib.sleep(0)
        return name * n

    def main():
        a = yield from threadlib.spawn(worker("a", 3))
        b = yield from threadlib.spawn(worker, "b", 3)
        return (yield from a.join()), (yield from b.join())

    assert threadlib.run(main()) == ("aaa", "bbb")
    # FIFO ready queue: a runs once before main spawns b, then they alternate.
    assert order == [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1), ("b", 2)]


def test_exception_reaches_join_and_ends_only_that_thread():
    def bad():
        yield from threadlib.sleep(0.001)
        raise ValueError("thread failed")

    def good():
        yield from threadlib.sleep(0.002)
        return "fine"

    def main():
        b = yield from threadlib.spawn(bad())
        g = yield from threadlib.spawn(good())
        with pytest.raises(ValueError, match="thread failed"):
            yield from b.join()
        # joining again gives the same exception
        with pytest.raises(ValueError):
            yield from b.join()
        return (yield from g.join())

    assert threadlib.run(main()) == "fine"


def test_unjoined_exception_is_logged_once(caplog):
    def bad():
        raise RuntimeError("nobody listens")
        yield

    def main():
        yield from threadlib.spawn(bad())
        yield from threadlib.sleep(0.001)

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        threadlib.run(main())
        gc.collect()
    hits = [r for r in caplog.records if "nobody joined" in r.getMessage()]
    assert len(hits) == 1
    assert "nobody listens" in str(hits[0].exc_info[1])
    assert ".bad-" in hits[0].getMessage()  # named after its function, not "thread-N"


def test_joined_exception_is_not_logged(caplog):
    def bad():
        raise RuntimeError("seen")
        yield

    def main():
        t = yield from threadlib.spawn(bad())
        yield from threadlib.sleep(0.001)  # t has ended before the join
        try:
            yield from t.join()
        except RuntimeError:
            pass

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        threadlib.run(main())
        gc.collect()
    assert not [r for r in caplog.records if "nobody joined" in r.getMessage()]


def test_a_thread_ending_in_thread_cancelled_is_never_logged_as_unjoined(caplog):
    # design.md §7: ThreadCancelled is how a thread is told to stop, so a
    # thread that ends in it, however it got there, is not a failure
    # nobody heard of. One thread that fails for real is the control: it
    # is logged, so the silence about the others means something.
    from threadlib.lowlevel import Cancel

    def gives_up():
        raise ThreadCancelled()
        yield

    def sleeps():
        yield from threadlib.sleep(3600)

    def fails():
        raise RuntimeError("the control")
        yield

    def main():
        yield from threadlib.spawn(gives_up(), name="gives-up")
        told = yield from threadlib.spawn(sleeps(), name="told")
        yield from threadlib.spawn(sleeps(), name="left-running")  # cancelled when main returns
        yield from threadlib.spawn(fails(), name="control")
        yield from threadlib.sleep(0)
        yield Cancel(told)  # told to stop, and nobody joins it
        yield from told.wait()
        assert told.state == "cancelled"

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        threadlib.run(main(), scheduler=Scheduler(clock=VirtualClock()))
        gc.collect()
    hits = [r.getMessage() for r in caplog.records if "nobody joined" in r.getMessage()]
    assert len(hits) == 1 and "control" in hits[0], hits


def test_yielding_a_non_syscall_raises_typeerror_in_that_thread_only():
    def confused():
        yield 5  # forgot `yield from`

    def steady():
        for _ in range(3):
            yield from threadlib.sleep(0)
        return "still running"

    def main():
        c = yield from threadlib.spawn(confused())
        s = yield from threadlib.spawn(steady())
        with pytest.raises(TypeError) as info:
            yield from c.join()
        assert "yielded 5 (int)" in str(info.value)
        assert "yield from" in str(info.value)
        return (yield from s.join())

    assert threadlib.run(main()) == "still running"


def test_spawn_rejects_a_function_object_clearly():
    def main():
        with pytest.raises(TypeError, match="generator"):
            yield from threadlib.spawn(42)

    threadlib.run(main())


def test_thread_listing_names_ids_and_waits():
    def sleeper():
        yield from threadlib.sleep(10)

    def main():
        t = yield from threadlib.spawn(sleeper(), name="napper")
        yield from threadlib.sleep(0)
        sched = threadlib.current_scheduler()
        listed = {th.name: th for th in sched.threads()}
        assert "napper" in listed and "main" in listed
        assert listed["napper"].state == "waiting"
        assert isinstance(listed["napper"].waiting_on, threadlib.lowlevel.Sleep)
        assert "Sleep" in repr(listed["napper"])
        assert t.id != (yield from threadlib.current()).id
        yield from t.cancel()
        assert t.done and t not in sched.threads()

    threadlib.run(main())


# -- cancellation at each kind of wait -----------------------------------------


def _cancel_while(waiting_body):
    """Spawn waiting_body(), let it block, cancel it; return (cleanup_ran, state)."""
    ran = []

    def victim():
        try:
            yield from waiting_body()
        finally:
            ran.append("finally")

    def main():
        t = yield from threadlib.spawn(victim())
        for _ in range(3):
            yield from threadlib.sleep(0)
        assert t.state == "waiting", t
        assert (yield from t.cancel()) is True
        with pytest.raises(ThreadCancelled):
            yield from t.join()
        return t.state

    state = threadlib.run(main())
    return ran, state


def test_cancel_sleep():
    assert _cancel_while(lambda: threadlib.sleep(60)) == (["finally"], "cancelled")


def test_sleep_0_goes_through_a_due_timeout():
    # api.md: sleep(0) (or a negative value) "is never interrupted by a
    # timeout". The scope here is due from the start (and stays due), so
    # the first wait that suspends raises; the yields before it do not.
    order = []

    def other():
        for i in range(3):
            order.append(f"other {i}")
            yield from threadlib.sleep(0)

    def main():
        yield from threadlib.spawn(other())
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0) as scope:
                for i in range(3):
                    yield from threadlib.sleep(0)
                    order.append(f"main {i}")
                yield from threadlib.sleep(-1)
                order.append("main negative")
                yield from threadlib.sleep(1)
        assert scope.expired
        order.append("timed out")

    threadlib.run(main(), scheduler=Scheduler(clock=VirtualClock()))
    # every sleep(0) let the other thread run once (it ran first while main
    # was resumed from spawn), and none raised
    assert order == ["other 0", "other 1", "main 0", "other 2", "main 1", "main 2", "main negative",
                     "timed out"]


def test_cancel_event_wait_and_mutex_and_queue_and_semaphore():
    ev = threadlib.Event()
    assert _cancel_while(lambda: ev.wait())[0] == ["finally"]

    def locked_mutex():
        m = threadlib.Mutex()
        yield from m.acquire()
        yield from m.acquire()

    assert _cancel_while(locked_mutex)[0] == ["finally"]

    def empty_queue():
        q = threadlib.Queue()
        yield from q.get()

    assert _cancel_while(empty_queue)[0] == ["finally"]

    def no_permits():
        s = threadlib.Semaphore(0)
        yield from s.acquire()

    assert _cancel_while(no_permits)[0] == ["finally"]


def test_cancel_socket_read_and_join_and_blocking_call():
    import socket as pysocket
    import time

    from threadlib.io import sockio

    def read_forever():
        a, b = sockio.socketpair()
        try:
            yield from a.recv(10)
        finally:
            a.close()
            b.close()

    assert _cancel_while(read_forever)[0] == ["finally"]

    def join_forever():
        other = yield from threadlib.spawn(threadlib.sleep(60))
        try:
            yield from other.join()
        finally:
            yield from other.cancel()

    assert _cancel_while(join_forever)[0] == ["finally"]
    assert _cancel_while(lambda: threadlib.blocking(time.sleep, 0.2))[0] == ["finally"]


def test_cancel_of_a_ready_thread_is_delivered_at_its_next_wait_and_keeps_the_handoff():
    """A lock handed to a thread that is cancelled before it runs is not
    lost: the thread gets the lock, and the cancel at its next wait."""
    m = threadlib.Mutex()
    log = []

    def waiter():
        yield from m.acquire()
        log.append("got lock")
        try:
            yield from threadlib.sleep(0.01)
        finally:
            m.release()
            log.append("released")

    def main():
        yield from m.acquire()
        t = yield from threadlib.spawn(waiter())
        yield from threadlib.sleep(0)  # t parks on the mutex
        m.release()  # hands the lock to t, t is ready
        yield from t.cancel()
        assert not m.locked()
        yield from m.acquire(timeout=1)  # would time out if the lock had been lost

    threadlib.run(main())
    assert log == ["got lock", "released"]


# -- timeouts -------------------------------------------------------------------


@pytest.mark.threadlib(virtual_clock=True)
def test_timeout_scope_raises_at_the_wait_and_nested_keeps_earliest():
    t0 = threadlib.now()
    with pytest.raises(TimeoutError):
        with threadlib.timeout(0.02) as scope:
            yield from threadlib.sleep(5)
    assert scope.expired
    assert 0.015 <= threadlib.now() - t0 < 1.0
    with pytest.raises(TimeoutError):
        with threadlib.timeout(5) as outer:
            with threadlib.timeout(0.01) as inner:
                yield from threadlib.Event().wait()
    assert inner.expired and not outer.expired
    # a scope that does not expire leaves no trace
    with threadlib.timeout(1):
        yield from threadlib.sleep(0.001)
    yield from threadlib.sleep(0.002)


def test_timeout_arguments_on_blocking_calls():
    from threadlib.io import sockio

    def main():
        ev, q, m = threadlib.Event(), threadlib.Queue(1), threadlib.Mutex()
        yield from m.acquire()
        yield from q.put(1)
        for call in (lambda: ev.wait(timeout=0.01), lambda: m.acquire(timeout=0.01),
                     lambda: q.put(2, timeout=0.01)):
            with pytest.raises(TimeoutError):
                yield from call()
        assert (yield from q.get(timeout=0.01)) == 1
        with pytest.raises(TimeoutError):
            yield from q.get(timeout=0.01)
        a, b = sockio.socketpair()
        with pytest.raises(TimeoutError):
            yield from a.recv(10, timeout=0.01)
        yield from b.sendall(b"x")
        assert (yield from a.recv(10, timeout=1)) == b"x"  # the socket still works
        a.close(); b.close()

    threadlib.run(main())


def test_virtual_clock_makes_sleeps_instant_and_exact():
    import time

    seen = []

    def sleeper(d):
        yield from threadlib.sleep(d)
        seen.append((d, threadlib.now()))

    def main():
        for d in (30.0, 10.0, 20.0):
            yield from threadlib.spawn(sleeper(d))
        yield from threadlib.sleep(100)
        return threadlib.now()

    wall = time.monotonic()
    end = threadlib.run(main(), scheduler=Scheduler(clock=VirtualClock()))
    # Not a speed check: sleeping for real would take 100 s, so any bound
    # well under that tells the two apart on however busy a machine.
    assert time.monotonic() - wall < 50
    assert seen == [(10.0, 10.0), (20.0, 20.0), (30.0, 30.0)]
    assert end == 100.0


def test_deadlock_is_reported_not_hung():
    def main():
        yield from threadlib.Event().wait()

    with pytest.raises(RuntimeError, match="deadlock"):
        threadlib.run(main())


def test_remaining_threads_are_cancelled_when_main_ends():
    cleaned = []

    def lingering():
        try:
            yield from threadlib.sleep(60)
        finally:
            cleaned.append(True)

    def main():
        yield from threadlib.spawn(lingering())
        yield from threadlib.sleep(0)

    threadlib.run(main())
    assert cleaned == [True]


# -- mixing front ends ------------------------------------------------------------


def test_async_def_and_generator_threads_share_primitives():
    q = threadlib.Queue()

    async def producer():
        for i in range(5):
            await q.put(i)
            await threadlib.sleep(0)
        q.close()

    def consumer():
        got = []
        while True:
            try:
                got.append((yield from q.get()))
            except threadlib.QueueClosed:
                return got

    async def main():
        await threadlib.spawn(producer())
        c = await threadlib.spawn(consumer())
        return await c.join()

    assert threadlib.run(main()) == [0, 1, 2, 3, 4]


# -- extending the scheduler: a new system call and a new worker -----------------


class Ticket(SystemCall):
    """A custom system call: wait for the counter to reach `number`."""

    __slots__ = ("number",)

    def __init__(self, number):
        self.number = number


class CounterWorker(Worker):
    """A custom worker: an eventfd that another OS thread increments."""

    def __init__(self):
        self.efd = os.eventfd(0, os.EFD_NONBLOCK)
        self.count = 0
        self.waiting = []

    def attach(self, sched):
        self.sched = sched
        sched.watch_fd(self.efd, 1, self.on_ready)
        return {Ticket: self.take_ticket}

    def take_ticket(self, thread, sc):
        if self.count >= sc.number:
            self.sched.resume(thread, self.count)
        else:
            self.sched.suspend(thread, sc)
            self.waiting.append((thread, sc))

    def on_ready(self, events):
        self.count += os.eventfd_read(self.efd)
        still = []
        for thread, sc in self.waiting:
            if self.count >= sc.number:
                self.sched.resume(thread, self.count)
            else:
                still.append((thread, sc))
        self.waiting = still

    def withdraw(self, thread, sc):
        self.waiting = [(t, s) for t, s in self.waiting if t is not thread]

    def busy(self):
        return bool(self.waiting)

    def close(self):
        self.sched.unwatch_fd(self.efd)
        os.close(self.efd)


def test_custom_system_call_and_worker_without_editing_the_scheduler():
    import threading

    worker = CounterWorker()
    sched = Scheduler(workers=threadlib.lowlevel.default_workers() + [worker])

    def bump():
        for _ in range(3):
            os.eventfd_write(worker.efd, 1)

    @types.coroutine
    def wait_ticket(n):
        return (yield Ticket(n))

    def main():
        threading.Timer(0.01, bump).start()
        got = yield from wait_ticket(3)
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0.01):
                yield from wait_ticket(100)
        return got

    assert sched.run(main()) == 3
    assert worker.waiting == []  # the timed-out wait was withdrawn


def test_a_worker_that_does_not_say_whether_it_is_busy_is_waited_for_not_called_a_deadlock():
    import threading

    class SilentAboutBusy(CounterWorker):
        busy = Worker.busy  # the base class's default

    worker = SilentAboutBusy()
    # no other worker that could be busy: only the timers, with no timer set
    sched = Scheduler(workers=[threadlib.lowlevel.TimerWorker(), worker])

    @types.coroutine
    def wait_ticket(n):
        return (yield Ticket(n))

    def main():
        threading.Timer(0.01, os.eventfd_write, (worker.efd, 2)).start()
        return (yield from wait_ticket(2))

    assert sched.run(main()) == 2


def test_duplicate_handler_registration_is_refused():
    class Clash(Worker):
        def attach(self, sched):
            return {threadlib.lowlevel.Sleep: lambda t, sc: None}

    with pytest.raises(ValueError, match="Sleep"):
        Scheduler(workers=[threadlib.lowlevel.TimerWorker(), Clash()])


def test_signal_worker_lets_a_thread_wait_for_sigterm():
    from threadlib.process import signals

    def main():
        me = os.getpid()

        def send_later():
            yield from threadlib.sleep(0.01)
            os.kill(me, signal.SIGTERM)

        yield from threadlib.spawn(send_later())
        return (yield from signals.wait_signal(signal.SIGTERM, signal.SIGUSR1))

    before = signal.getsignal(signal.SIGTERM)
    assert signals.scheduler().run(main()) == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_custom_scheduler_without_the_blocking_pool_refuses_blocking_calls():
    sched = Scheduler(workers=[threadlib.lowlevel.TimerWorker(), threadlib.lowlevel.IOWorker()])

    def main():
        with pytest.raises(TypeError, match="Blocking"):
            yield from threadlib.blocking(len, "abc")
        return "ok"

    assert sched.run(main()) == "ok"


def test_a_yield_instance_other_than_the_singleton_also_yields():
    order = []
    go = threadlib.Event()

    def polite(name):
        yield from go.wait()  # both become ready at once, a first
        for i in range(2):
            order.append((name, i))
            yield threadlib.lowlevel.Yield()  # a fresh instance, not syscalls.YIELD

    def main():
        a = yield from threadlib.spawn(polite("a"))
        b = yield from threadlib.spawn(polite("b"))
        go.set()
        yield from threadlib.join_all([a, b])

    threadlib.run(main())
    # Each yield lets the other thread run: the two interleave.
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]


# --- the worker contract ------------------------------------------------------

class Probe(threadlib.lowlevel.SystemCall):
    __slots__ = ("arg",)

    def __init__(self, arg):
        self.arg = arg


class ProbeWorker(Worker):
    """Serves Probe: refuses negative args the contract's way, and has a bug
    (a KeyError) for the arg 13."""

    def attach(self, sched):
        self.sched = sched
        return {Probe: self.handle}

    def handle(self, thread, sc):
        if sc.arg < 0:
            self.sched.throw(thread, ValueError(f"negative probe {sc.arg}"))
            return
        if sc.arg == 13:
            {}["missing"]
        self.sched.resume(thread, sc.arg * 2)

    def __repr__(self):
        return "<ProbeWorker>"


@types.coroutine
def probe(arg):
    return (yield Probe(arg))


def test_a_worker_bug_is_logged_as_the_workers_and_raised_as_worker_error(caplog):
    sched = Scheduler(workers=threadlib.lowlevel.default_workers() + [ProbeWorker()])

    def main():
        assert (yield from probe(4)) == 8
        with pytest.raises(ValueError, match="negative probe -1"):
            yield from probe(-1)
        with pytest.raises(threadlib.WorkerError) as info:
            yield from probe(13)
        assert isinstance(info.value.__cause__, KeyError)
        return (yield from probe(5))  # the worker and the scheduler go on

    with caplog.at_level("ERROR", logger="threadlib"):
        assert sched.run(main()) == 10
    internal = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(internal) == 1, caplog.text
    assert "<ProbeWorker>" in internal[0].getMessage() and "Probe(arg=13)" in internal[0].getMessage()
    assert "negative" not in caplog.text  # a refusal is the caller's news, not an internal error


def test_workers_are_found_by_class_and_by_system_call():
    probe_worker = ProbeWorker()
    sched = Scheduler(workers=threadlib.lowlevel.default_workers() + [probe_worker])
    io = sched.worker(threadlib.lowlevel.IOWorker)
    assert isinstance(io, threadlib.lowlevel.IOWorker)
    assert sched.worker_for(threadlib.lowlevel.WaitRead) is io
    assert sched.worker_for(threadlib.lowlevel.WaitWrite) is io
    assert sched.worker_for(Probe) is probe_worker
    assert sched.worker(ProbeWorker) is probe_worker
    assert sched.worker_for(threadlib.lowlevel.Park) is None  # the scheduler's own
    assert not hasattr(sched, "io") and not hasattr(sched, "timers") and not hasattr(sched, "pool")


def _epoll_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                count += 1
        except OSError:
            pass
    return count


@pytest.mark.parametrize("clock", ["virtual", "monotonic"])
def test_a_scheduler_whose_workers_watch_no_fds_opens_no_epoll(clock):
    """Timers alone need no poller: a virtual clock jumps, a real one idles."""
    before = _epoll_fds()
    sched = Scheduler(workers=[threadlib.lowlevel.TimerWorker()],
                      clock=VirtualClock() if clock == "virtual" else None)
    seen = []

    def sleeper(name, seconds):
        yield from threadlib.sleep(seconds)
        seen.append((name, _epoll_fds() - before))

    def main():
        a = yield from threadlib.spawn(sleeper("late", 0.04))
        b = yield from threadlib.spawn(sleeper("early", 0.02))
        ev = threadlib.Event()
        with pytest.raises(TimeoutError):
            yield from ev.wait(timeout=0.01)
        yield from threadlib.join_all([a, b])
        return threadlib.now()

    finished_at = sched.run(main())
    assert seen == [("early", 0), ("late", 0)]
    assert finished_at >= 0.04


def test_a_thread_waiting_on_nothing_any_worker_can_end_is_a_deadlock_without_a_poller():
    sched = Scheduler(workers=[threadlib.lowlevel.TimerWorker()], clock=VirtualClock())

    def main():
        yield from threadlib.Event().wait()

    with pytest.raises(RuntimeError, match="deadlock"):
        sched.run(main())


class LevelPoller:
    """A Poller on select.poll, level-triggered: a stand-in for any other
    poller (io_uring, a simulated fabric) a worker may bring."""

    def __init__(self):
        import select
        self._poll = select.poll()
        self._callbacks = {}
        self.polls = 0

    def register(self, fd, events, callback):
        self._poll.register(fd, events & 0xFFFF)
        self._callbacks[fd] = callback

    def modify(self, fd, events):
        self._poll.modify(fd, events & 0xFFFF)

    def unregister(self, fd):
        if self._callbacks.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def poll(self, timeout):
        self.polls += 1
        events = self._poll.poll(None if timeout < 0 else timeout * 1000)
        for fd, ev in events:
            cb = self._callbacks.get(fd)
            if cb is not None:
                cb(ev)
        return len(events)

    def close(self):
        self._callbacks.clear()


class OneShotIO(Worker):
    """WaitRead/WaitWrite served without the standard IOWorker: each wait
    registers the fd, the first event unregisters it. sockio must not notice."""

    def __init__(self):
        self.waits = 0

    def attach(self, sched):
        self.sched = sched
        sched.use_poller(LevelPoller())
        self.waiters = {}
        return {threadlib.lowlevel.WaitRead: self.wait, threadlib.lowlevel.WaitWrite: self.wait}

    def wait(self, thread, sc):
        import select
        self.waits += 1
        key = (sc.fd, type(sc))
        if key in self.waiters:
            self.sched.throw(thread, RuntimeError(f"fd {sc.fd} already has a waiter"))
            return
        self.sched.suspend(thread, sc)
        self.waiters[key] = thread
        events = select.POLLIN if type(sc) is threadlib.lowlevel.WaitRead else select.POLLOUT
        if not any(k[0] == sc.fd for k in self.waiters if k != key):
            self.sched.watch_fd(sc.fd, events, lambda ev, fd=sc.fd: self.fire(fd, ev))
        else:
            self.sched.modify_fd(sc.fd, select.POLLIN | select.POLLOUT)

    def fire(self, fd, ev):
        self.sched.unwatch_fd(fd)
        for key in [k for k in self.waiters if k[0] == fd]:
            self.sched.resume(self.waiters.pop(key), ev)

    def withdraw(self, thread, sc):
        if self.waiters.get((sc.fd, type(sc))) is thread:
            del self.waiters[(sc.fd, type(sc))]
            if not any(k[0] == sc.fd for k in self.waiters):
                self.sched.unwatch_fd(sc.fd)

    def forget_fd(self, fd):
        for key in [k for k in self.waiters if k[0] == fd]:
            self.sched.throw(self.waiters.pop(key), OSError(9, f"fd {fd} closed"))
        self.sched.unwatch_fd(fd)

    def busy(self):
        return bool(self.waiters)


def test_the_fd_worker_and_the_poller_can_be_swapped_without_sockio_knowing():
    from threadlib.io import sockio

    io = OneShotIO()
    sched = Scheduler(workers=[threadlib.lowlevel.TimerWorker(), io, threadlib.lowlevel.BlockingPool()])
    before = _epoll_fds()

    def echo_one(listener):
        conn, _ = yield from listener.accept()
        with conn:
            while data := (yield from conn.recv(65536)):
                yield from conn.sendall(data)

    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        server = yield from threadlib.spawn(echo_one(listener))
        client = yield from sockio.connect(listener.address, timeout=5)
        payload = bytes(range(256)) * 4096  # 1 MiB: both sides wait for room and data
        writer = yield from threadlib.spawn(client.sendall(payload, timeout=10))
        got = bytearray()
        while len(got) < len(payload):
            got += yield from client.recv(65536, timeout=10)
        yield from writer.join()
        client.close()
        yield from server.join()
        listener.close()
        return bytes(got) == payload, _epoll_fds() - before

    assert sched.run(main()) == (True, 0)
    assert io.waits > 0 and sched.worker_for(threadlib.lowlevel.WaitRead) is io


def test_a_blocking_call_outliving_its_scheduler_writes_into_no_reused_fd():
    """A call the caller gave up on keeps running in its OS thread after the
    scheduler has ended; its completion must not write the pool's wake-up
    into the socket that now has the pool's old eventfd number."""
    import socket as pysocket
    import threading
    import time

    def eventfds():
        found = set()
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventfd]":
                    found.add(int(name))
            except OSError:
                pass
        return found

    before = eventfds()
    threads_before = set(threading.enumerate())
    pool_fds = []

    def main():
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0.01):
                waiter = threadlib.blocking(time.sleep, 0.3)
                yield from waiter
        pool_fds.extend(eventfds() - before)

    threadlib.run(main())
    assert len(pool_fds) == 1
    (old,) = pool_fds
    pairs = []
    while not any(s.fileno() == old for pair in pairs for s in pair) and len(pairs) < 200:
        pairs.append(pysocket.socketpair())
    reused = next(pair for pair in pairs if old in (pair[0].fileno(), pair[1].fileno()))
    other = reused[1] if reused[0].fileno() == old else reused[0]
    # Wait for the abandoned call to end: its OS thread exits right after
    # the point where it would have written the wake-up.
    (pool_thread,) = [t for t in threading.enumerate()
                      if t.name == "threadlib-blocking" and t not in threads_before]
    pool_thread.join(timeout=30)
    assert not pool_thread.is_alive(), "the abandoned blocking call never ended"
    other.setblocking(False)
    with pytest.raises(BlockingIOError):
        other.recv(64)  # nothing was written into the reused fd
    for a, b in pairs:
        a.close()
        b.close()


@pytest.mark.threadlib(virtual_clock=True)
def test_a_canceller_interrupted_while_waiting_gets_its_own_interrupt():
    """cancel() waits for the target's finally blocks; a timeout aimed at the
    canceller meanwhile is raised, not swallowed as the target's outcome."""
    def slow_to_die():
        try:
            yield from threadlib.sleep(60)
        finally:
            yield from threadlib.sleep(0.2)

    t = yield from threadlib.spawn(slow_to_die())
    yield from threadlib.sleep(0)
    with pytest.raises(TimeoutError):
        with threadlib.timeout(0.02):
            yield from t.cancel()
    assert not t.done  # still in its finally block
    yield from t.wait()
    assert t.state == "cancelled"


@pytest.mark.threadlib(virtual_clock=True)
def test_join_all_keeps_a_cancelled_child_as_its_outcome_and_waits_for_the_rest():
    order = []

    def child(name, seconds):
        yield from threadlib.sleep(seconds)
        order.append(name)
        return name

    doomed = yield from threadlib.spawn(child("doomed", 60))
    slow = yield from threadlib.spawn(child("slow", 0.05))
    yield from threadlib.sleep(0)
    yield from doomed.cancel()
    with pytest.raises(ThreadCancelled):
        yield from threadlib.join_all([doomed, slow])
    # join_all waited for "slow" before raising the child's ThreadCancelled.
    assert (order, slow.done) == (["slow"], True)


def test_ctrl_c_in_a_thread_still_runs_the_others_finally_blocks_and_closes_workers(caplog):
    from threadlib.process import signals

    cleaned = []
    before = signal.getsignal(signal.SIGTERM)

    def bystander():
        try:
            yield from signals.wait_signal(signal.SIGTERM)
        finally:
            yield from threadlib.sleep(0.01)  # a finally that waits
            cleaned.append("bystander")

    def main():
        yield from threadlib.spawn(bystander())
        yield from threadlib.sleep(0.01)
        raise KeyboardInterrupt

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        with pytest.raises(KeyboardInterrupt):
            signals.scheduler().run(main())
        gc.collect()
    assert cleaned == ["bystander"]
    assert signal.getsignal(signal.SIGTERM) is before  # the SignalWorker was closed
    assert not [r for r in caplog.records if "nobody joined" in r.getMessage()]


def test_an_fd_unwatched_can_be_watched_again_and_unwatching_without_a_poller_is_quiet():
    # A scheduler that never watched an fd has no poller: unwatch_fd is a
    # no-op there.  An fd unwatched is out of the poller: watching it
    # again is allowed and its events reach the new callback.
    Scheduler(workers=[]).unwatch_fd(0)
    r, w = os.pipe()
    seen = []
    sched = Scheduler()

    def main():
        sched.watch_fd(r, select.EPOLLIN, lambda events: seen.append("first"))
        sched.unwatch_fd(r)
        sched.watch_fd(r, select.EPOLLIN, lambda events: seen.append("second"))
        os.write(w, b"x")
        with threadlib.timeout(10):
            while not seen:
                yield from threadlib.sleep(0.001)
        sched.unwatch_fd(r)
        return seen[0]

    try:
        assert sched.run(main()) == "second"
    finally:
        os.close(r)
        os.close(w)


def test_spawning_an_object_without_send_and_throw_is_refused():
    class SendOnly:
        def send(self, value):
            return None

    with pytest.raises(TypeError, match="a thread needs a generator or coroutine object"):
        Scheduler().spawn(SendOnly())


def test_run_calls_a_generator_function_given_without_arguments():
    def main():
        yield from threadlib.sleep(0)
        return "called"

    assert Scheduler().run(main) == "called"
    assert threadlib.run(main) == "called"


def test_run_drives_a_function_that_returns_an_awaitable_which_is_no_generator():
    # sleep returns a ParkOnce (a tuple), not a generator: run(sleep, s)
    # runs it to its end on the scheduler's clock.
    clock = VirtualClock()
    assert Scheduler(clock=clock).run(threadlib.sleep, 5) is None
    assert clock.now() == 5


def test_a_thread_may_await_asyncio_code_inside_run():
    import asyncio

    async def main():
        await asyncio.sleep(0.001)
        return asyncio.get_running_loop() is not None

    assert threadlib.run(main()) is True


@pytest.mark.parametrize("others", [1, 6])
def test_the_deadlock_error_names_at_most_five_waiting_threads(others):
    names = []

    def main():
        for i in range(others):
            yield from threadlib.spawn(threadlib.Event().wait(), name=f"stuck{i}")
        yield from threadlib.sleep(0)
        yield from threadlib.Event().wait()

    with pytest.raises(RuntimeError, match="deadlock") as caught:
        threadlib.run(main())
    message = str(caught.value)
    names = [f"stuck{i}" for i in range(others) if f"stuck{i}" in message]
    if others + 1 > 5:
        assert message.endswith(" ...") and len(names) == 4
    else:
        assert not message.endswith("...") and len(names) == others


DEADLOCK_AFTER_SCOPES = r"""
import threadlib

def main():
    # a deadline moved while the thread ran (no wait in progress): no timer
    with threadlib.timeout(3600) as scope:
        scope.deadline = scope.deadline + 60
    def quick():
        yield from threadlib.sleep(0)
        return "quick"
    # a long timeout whose wait (a join) ended early: its timer goes with it
    with threadlib.timeout(3600):
        t = yield from threadlib.spawn(quick())
        assert (yield from t.join()) == "quick"
    print("scopes done", flush=True)
    yield from threadlib.Event().wait()

threadlib.run(main())
"""


def test_a_deadlock_is_reported_at_once_after_long_timeouts_ended_early():
    # No timer of a finished wait or of a deadline moved between waits may
    # stay armed: the scheduler would wait for it (an hour) instead of
    # reporting the deadlock.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DEADLOCK_AFTER_SCOPES], capture_output=True,
                          text=True, timeout=15)
    assert done.stdout == "scopes done\n", done.stderr
    assert done.returncode == 1 and "deadlock" in done.stderr, done.stderr


def test_a_cancel_of_a_ready_thread_is_raised_at_its_next_wait_and_others_yield_undisturbed():
    # A thread woken (ready, not waiting) when it is cancelled gets the
    # value of the wait it was woken from; the cancel is raised at its
    # next wait.  Another thread's yields meanwhile are not disturbed.
    from threadlib.lowlevel import Yield

    log = []

    def sleeper(ev):
        yield from ev.wait()
        log.append("returned from its wait")
        yield from threadlib.Event().wait()
        log.append("never: the cancel is raised at this wait")

    def yielder():
        for _ in range(3):
            yield Yield()  # a Yield of its own, while t's cancel is pending
        log.append("yielder done")

    def main():
        ev = threadlib.Event()
        t = yield from threadlib.spawn(sleeper(ev))
        yield from threadlib.sleep(0)
        y = yield from threadlib.spawn(yielder())
        ev.set()  # t is ready now, not waiting: its cancel waits for its resumption
        assert (yield from t.cancel()) is True
        yield from y.join()
        return log

    assert sorted(threadlib.run(main())) == ["returned from its wait", "yielder done"]


def test_unpark_wakes_a_parked_thread_with_its_value_and_leaves_others_alone():
    from threadlib.lowlevel import Park, Unpark, WaitQueue

    def parked(q):
        return (yield Park(q))

    def main():
        q = WaitQueue()
        p = yield from threadlib.spawn(parked(q))
        s = yield from threadlib.spawn(threadlib.sleep(0.01))
        yield from threadlib.sleep(0)
        yield Unpark(s, "ignored")  # not parked: nothing happens to it
        yield Unpark(p, 42)
        return (yield from p.join()), (yield from s.join()), len(q)

    assert threadlib.run(main()) == (42, None, 0)


def test_an_instrument_that_raises_is_removed_and_the_run_goes_on(caplog):
    class Broken:
        def thread_spawned(self, thread):
            raise ValueError("broken instrument")

    sched = Scheduler()
    broken = Broken()

    def child():
        yield from threadlib.sleep(0)
        return 1

    def main():
        sched.add_instrument(broken)
        yield from threadlib.sleep(0)
        a = yield from threadlib.spawn(child())
        b = yield from threadlib.spawn(child())
        return (yield from threadlib.join_all([a, b]))

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        assert sched.run(main()) == [1, 1]
    failures = [r for r in caplog.records if "failed in thread_spawned and was removed" in r.getMessage()]
    assert len(failures) == 1


def test_the_deadlock_error_goes_to_the_main_thread_even_when_another_waits_first():
    # "worker" was spawned before run() (so it is listed before main): the
    # deadlock error is still raised in main, and worker is only cancelled
    # when run() ends.
    sched = Scheduler()

    def waiter():
        yield from threadlib.Event().wait()

    worker = sched.spawn(waiter(), name="worker")

    def main():
        yield from threadlib.Event().wait()

    with pytest.raises(RuntimeError, match="deadlock"):
        sched.run(main())
    with pytest.raises(ThreadCancelled):
        worker.result()
