"""Mutex, Event, Semaphore, Condition, Queue, join_all/join_any. Tests
marked ``threadlib`` run as threads (tests/conftest.py registers the
plugin), those that only wait for time on a virtual clock."""

import pytest

import threadlib


@pytest.mark.threadlib(virtual_clock=True)
def test_mutex_is_fifo_and_excludes():
    m = threadlib.Mutex()
    inside = []
    order = []

    def worker(i):
        yield from m.acquire()
        inside.append(i)
        assert len(inside) == 1
        yield from threadlib.sleep(0.001)
        order.append(i)
        inside.remove(i)
        m.release()

    ts = []
    for i in range(10):
        ts.append((yield from threadlib.spawn(worker(i))))
    yield from threadlib.join_all(ts)
    assert order == list(range(10))


def test_mutex_release_unlocked_is_an_error():
    with pytest.raises(RuntimeError, match="not locked"):
        threadlib.Mutex().release()


def test_async_with_mutex_and_semaphore():
    m = threadlib.Mutex()
    s = threadlib.Semaphore(2)

    async def main():
        async with m:
            assert m.locked()
        async with s:
            assert s.value == 1
        return m.locked(), s.value

    assert threadlib.run(main()) == (False, 2)


@pytest.mark.threadlib(virtual_clock=True)
def test_semaphore_limits_concurrency_and_bounded_refuses_extra_release():
    s = threadlib.Semaphore(3)
    running = [0]
    peak = [0]

    def worker():
        yield from s.acquire()
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        yield from threadlib.sleep(0.001)
        running[0] -= 1
        s.release()

    ts = []
    for _ in range(20):
        ts.append((yield from threadlib.spawn(worker())))
    yield from threadlib.join_all(ts)
    assert peak[0] == 3
    b = threadlib.Semaphore(1, bounded=True)
    with pytest.raises(ValueError, match="more than"):
        b.release()


def test_event_wakes_all_waiters_and_clear():
    ev = threadlib.Event()
    woke = []

    def waiter(i):
        yield from ev.wait()
        woke.append(i)

    def main():
        for i in range(100):
            yield from threadlib.spawn(waiter(i))
        yield from threadlib.sleep(0)
        assert not woke
        ev.set()
        yield from threadlib.sleep(0)
        ev.clear()
        assert not ev.is_set()
        with pytest.raises(TimeoutError):
            yield from ev.wait(timeout=0.001)

    threadlib.run(main())
    assert woke == list(range(100))   # woken in the order they waited (FIFO)


def test_condition_producer_consumer():
    cond = threadlib.Condition()
    items = []
    got = []

    def consumer():
        for _ in range(5):
            yield from cond.acquire()
            yield from cond.wait_for(lambda: items)
            got.append(items.pop(0))
            cond.release()

    def main():
        c = yield from threadlib.spawn(consumer())
        for i in range(5):
            yield from cond.acquire()
            items.append(i)
            cond.notify()
            cond.release()
            yield from threadlib.sleep(0)
        yield from c.join()
        yield from cond.acquire()
        with pytest.raises(TimeoutError):
            yield from cond.wait(timeout=0.001)
        assert cond.mutex.locked()  # re-acquired after the timeout
        cond.release()

    threadlib.run(main())
    assert got == [0, 1, 2, 3, 4]


def test_condition_wait_without_mutex_is_an_error():
    def main():
        with pytest.raises(RuntimeError, match="holding"):
            yield from threadlib.Condition().wait()

    threadlib.run(main())


def test_bounded_queue_backpressure_order_and_close():
    q = threadlib.Queue(maxsize=2)
    produced = []

    def producer():
        for i in range(10):
            yield from q.put(i)
            produced.append(i)
        q.close()

    def main():
        p = yield from threadlib.spawn(producer())
        yield from threadlib.sleep(0)
        assert produced == [0, 1] and q.full()  # blocked on the third put
        got = []
        while True:
            try:
                got.append((yield from q.get()))
            except threadlib.QueueClosed:
                break
        yield from p.join()
        with pytest.raises(threadlib.QueueClosed):
            yield from q.put(99)
        return got

    assert threadlib.run(main()) == list(range(10))


def test_queue_nowait_calls_raise_when_they_cannot_go_on():
    """put_nowait and get_nowait agree, as in asyncio: QueueFull and
    QueueEmpty, never a return value the caller might not look at."""
    assert issubclass(threadlib.QueueFull, Exception) and issubclass(threadlib.QueueEmpty, Exception)
    assert not issubclass(threadlib.QueueEmpty, IndexError)
    q = threadlib.Queue(maxsize=2)
    assert q.put_nowait("a") is None
    q.put_nowait("b")
    with pytest.raises(threadlib.QueueFull):
        q.put_nowait("c")
    assert q.qsize() == 2  # the refused item was not added
    assert q.get_nowait() == "a"
    assert q.get_nowait() == "b"
    with pytest.raises(threadlib.QueueEmpty):
        q.get_nowait()
    q.close()
    with pytest.raises(threadlib.QueueClosed):
        q.put_nowait("d")
    with pytest.raises(threadlib.QueueClosed):
        q.get_nowait()  # closed and empty: the end, not "try again"


def test_queue_nowait_calls_hand_over_to_waiters():
    q = threadlib.Queue(maxsize=1)
    log = []

    def getter():
        log.append((yield from q.get()))

    def putter():
        yield from q.put("second")
        log.append("put second")

    def main():
        g = yield from threadlib.spawn(getter())
        yield from threadlib.sleep(0)
        q.put_nowait("first")  # to the waiting getter, not into the queue
        assert q.empty()
        yield from g.join()
        q.put_nowait("queued")
        p = yield from threadlib.spawn(putter())
        yield from threadlib.sleep(0)  # the putter waits: the queue is full
        with pytest.raises(threadlib.QueueFull):
            q.put_nowait("refused")
        assert q.get_nowait() == "queued"  # makes room: the putter goes on
        yield from p.join()
        assert q.get_nowait() == "second"
        with pytest.raises(threadlib.QueueEmpty):
            q.get_nowait()
        return log

    assert threadlib.run(main()) == ["first", "put second"]


def test_queue_close_wakes_waiting_getters():
    q = threadlib.Queue()

    def getter():
        try:
            yield from q.get()
        except threadlib.QueueClosed:
            return "saw the end"

    def main():
        ts = []
        for _ in range(3):
            ts.append((yield from threadlib.spawn(getter())))
        yield from threadlib.sleep(0)
        q.close()
        return (yield from threadlib.join_all(ts))

    assert threadlib.run(main()) == ["saw the end"] * 3


def test_queue_item_handed_to_a_cancelled_getter_is_not_lost():
    q = threadlib.Queue()

    got = []

    def getter():
        item = yield from q.get()
        got.append(item)
        yield from threadlib.sleep(60)  # cancel lands here

    def main():
        t = yield from threadlib.spawn(getter())
        yield from threadlib.sleep(0)
        q.put_nowait("precious")  # handed to t; t is ready
        yield from t.cancel()
        return t.state, q.qsize()

    # The getter got the item (not lost, not put back twice), then the cancel.
    assert threadlib.run(main()) == ("cancelled", 0)
    assert got == ["precious"]


@pytest.mark.threadlib(virtual_clock=True)
def test_join_all_and_join_any():
    def work(d, v):
        yield from threadlib.sleep(d)
        return v

    a = yield from threadlib.spawn(work(0.03, "slow"))
    b = yield from threadlib.spawn(work(0.001, "fast"))
    first = yield from threadlib.join_any([a, b])
    assert first is b
    assert (yield from threadlib.join_all([a, b])) == ["slow", "fast"]


def test_many_timeouts_on_one_queue_do_not_grow_it():
    q = threadlib.Queue()

    def impatient():
        for _ in range(200):
            try:
                yield from q.get(timeout=0)
            except TimeoutError:
                pass

    def main():
        ts = []
        for _ in range(20):
            ts.append((yield from threadlib.spawn(impatient())))
        yield from threadlib.join_all(ts)
        q.put_nowait(1)
        assert (yield from q.get()) == 1
        return len(q._getters._waiters)

    assert threadlib.run(main()) <= 128  # stale waiters are compacted away


# --- what the mutation run of threadlib/sync.py found unchecked ---------------


@pytest.mark.threadlib(virtual_clock=True)
def test_acquire_returns_true_whether_it_waited_or_not():
    m = threadlib.Mutex()
    s = threadlib.Semaphore(1)
    assert (yield from m.acquire()) is True
    assert (yield from s.acquire()) is True

    def release_later():
        yield from threadlib.sleep(1)
        s.release()
        yield from threadlib.sleep(1)
        m.release()
        yield from threadlib.sleep(1)
        s.release()

    yield from threadlib.spawn(release_later())
    assert (yield from s.acquire()) is True  # after a wait: handed over
    assert threadlib.now() == 1.0
    assert (yield from m.acquire()) is True
    assert threadlib.now() == 2.0
    assert (yield from s.acquire(timeout=5)) is True
    assert threadlib.now() == 3.0
    assert m.locked() and s.value == 0


@pytest.mark.threadlib(virtual_clock=True)
def test_acquire_with_a_timeout_gives_up_at_that_time_and_takes_nothing():
    s = threadlib.Semaphore(0)
    with pytest.raises(TimeoutError):
        yield from s.acquire(timeout=2)
    assert threadlib.now() == 2.0 and s.value == 0
    m = threadlib.Mutex()
    yield from m.acquire()
    with pytest.raises(TimeoutError):
        yield from m.acquire(timeout=3)
    assert threadlib.now() == 5.0
    m.release()
    assert not m.locked()


def test_semaphore_defaults_and_bad_values():
    s = threadlib.Semaphore()
    assert s.value == 1
    s.release()  # not bounded: a release past the start value is allowed
    assert s.value == 2
    with pytest.raises(ValueError, match="-1"):
        threadlib.Semaphore(-1)
    assert threadlib.Semaphore(0).value == 0


@pytest.mark.threadlib(virtual_clock=True)
def test_a_bounded_semaphore_takes_back_what_was_taken_and_refuses_one_more():
    b = threadlib.Semaphore(2, bounded=True)
    yield from b.acquire()
    b.release()  # back to 2: allowed
    assert b.value == 2
    with pytest.raises(ValueError, match="2 permits"):
        b.release()
    big = threadlib.Semaphore(1000, bounded=True)  # past the ints CPython caches
    yield from big.acquire()
    big.release()
    with pytest.raises(ValueError, match="1000 permits"):
        big.release()
    assert big.value == 1000


@pytest.mark.threadlib(virtual_clock=True)
def test_condition_notify_wakes_one_by_default_and_n_when_asked():
    cond = threadlib.Condition()
    woken = []

    def waiter(i):
        yield from cond.acquire()
        yield from cond.wait()
        woken.append(i)
        cond.release()

    for i in range(4):
        yield from threadlib.spawn(waiter(i))
    yield from threadlib.sleep(1)
    yield from cond.acquire()
    cond.notify()
    cond.release()
    yield from threadlib.sleep(1)
    assert woken == [0]
    yield from cond.acquire()
    cond.notify(2)
    cond.release()
    yield from threadlib.sleep(1)
    assert woken == [0, 1, 2]
    yield from cond.acquire()
    cond.notify(10)  # more than are waiting: wakes the one left
    cond.release()
    yield from threadlib.sleep(1)
    assert woken == [0, 1, 2, 3]


@pytest.mark.threadlib(virtual_clock=True)
async def test_every_waiting_call_of_sync_can_be_awaited():
    ev = threadlib.Event()
    cond = threadlib.Condition()
    q = threadlib.Queue(1)
    s = threadlib.Semaphore(1)
    state = []

    async def setter():
        await threadlib.sleep(1)
        ev.set()
        await cond.acquire()
        state.append("ready")
        cond.notify_all()
        cond.release()
        await q.put("item")

    await threadlib.spawn(setter())
    await ev.wait(timeout=5)
    assert ev.is_set()
    await ev.wait()  # set: at once
    assert (await cond.acquire()) is True
    await cond.wait_for(lambda: state)
    cond.release()
    assert await q.get() == "item"
    await q.put("again", timeout=1)
    assert q.get_nowait() == "again"
    assert (await s.acquire(timeout=1)) is True
    await cond.acquire()
    with pytest.raises(TimeoutError):
        await cond.wait(timeout=1)
    assert cond.mutex.locked()  # taken back after the timeout
    cond.release()


def test_event_set_stays_set_and_reprs_tell_the_state():
    ev = threadlib.Event()
    assert "clear" in repr(ev) and not ev.is_set()
    ev.set()
    assert ev.is_set() and "set" in repr(ev) and "clear" not in repr(ev)
    ev.set()  # twice: still set
    assert ev.is_set()
    m = threadlib.Mutex()
    assert "unlocked" in repr(m)
    q = threadlib.Queue()
    assert "closed" not in repr(q) and q.closed is False
    q.close()
    assert "closed" in repr(q) and q.closed is True


@pytest.mark.threadlib(virtual_clock=True)
def test_a_mutex_repr_says_locked_while_held():
    m = threadlib.Mutex()
    yield from m.acquire()
    assert "unlocked" not in repr(m) and "locked" in repr(m)


def test_queue_sizes_zero_and_negative_mean_unbounded():
    for q in (threadlib.Queue(), threadlib.Queue(0), threadlib.Queue(-1)):
        for i in range(1000):
            q.put_nowait(i)
        assert not q.full() and q.qsize() == 1000


@pytest.mark.threadlib(virtual_clock=True)
def test_full_counts_up_to_maxsize_and_a_full_queue_refuses_more():
    for maxsize in (1, 3, 300):  # 300: past the ints CPython caches
        q = threadlib.Queue(maxsize)
        assert not q.full()
        for i in range(maxsize - 1):
            q.put_nowait(i)
        assert not q.full()
        q.put_nowait("last")
        assert q.full() and q.qsize() == maxsize
        with pytest.raises(threadlib.QueueFull):
            q.put_nowait("one too many")
        with pytest.raises(TimeoutError):
            yield from q.put("one too many", timeout=1)
        assert q.qsize() == maxsize
        q.get_nowait()
        assert not q.full()
        yield from q.put("fits again", timeout=1)
        assert q.full()


def test_a_put_waiting_on_a_full_queue_without_timeout_sees_close_and_cancel():
    """The wait of a put with no timeout (the path that enters no scope):
    close() raises QueueClosed in it, a cancel ends it, and neither adds
    the item."""
    q = threadlib.Queue(maxsize=1)
    q.put_nowait("first")
    outcome = []

    def putter(item):
        try:
            yield from q.put(item)
        except threadlib.QueueClosed:
            outcome.append((item, "closed"))
            return
        outcome.append((item, "put"))

    def main():
        cancelled = yield from threadlib.spawn(putter("cancelled"))
        closed = yield from threadlib.spawn(putter("closed"))
        yield from threadlib.sleep(0)
        yield from cancelled.cancel()
        assert cancelled.state == "cancelled"
        q.close()
        yield from closed.join()
        assert q.get_nowait() == "first"
        with pytest.raises(threadlib.QueueClosed):
            q.get_nowait()  # neither waiting item was added
        return outcome

    assert threadlib.run(main()) == [("closed", "closed")]
