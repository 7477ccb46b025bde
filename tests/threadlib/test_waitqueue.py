"""threadlib.lowlevel.WaitQueue, the primitive under every sync object: it
counts only live waiters, wakes them in FIFO order past the withdrawn
ones, says how many it woke, and lets withdrawn waiters go (threads that
timed out are freed; a thread woken inside a timeout scope is freed when
it ends, not when that timeout would have fired). Runs on a VirtualClock."""

import gc
import weakref

import pytest

import threadlib
from threadlib.lowlevel import Scheduler, VirtualClock, WaitQueue


class Token:
    """A result whose life shows the life of the Thread holding it."""


def run(main):
    return threadlib.run(main, scheduler=Scheduler(clock=VirtualClock()))


def parker(q, log, name, patience=None):
    """Park once in q (giving up after patience seconds); log what came."""
    if patience is None:
        log.append((name, (yield q.park)))
        return Token()
    with threadlib.move_on_after(patience):
        log.append((name, (yield q.park)))
    return Token()


def test_len_and_bool_count_live_waiters_and_wakes_skip_the_withdrawn():
    q = WaitQueue()
    log = []

    def main():
        assert len(q) == 0 and not q and not q.has_waiters()
        assert q.wake_one("nobody") is None
        assert q.wake_all("nobody") == 0
        threads = {}
        for name, patience in [("a", 1), ("b", 1), ("c", None), ("d", 1), ("e", None), ("f", None)]:
            threads[name] = yield from threadlib.spawn(parker(q, log, name, patience))
        yield from threadlib.sleep(0)
        assert len(q) == 6 and q and q.has_waiters()
        yield from threadlib.sleep(2)  # a, b and d time out: withdrawn, still in the deque
        assert len(q) == 3 and q
        assert q.wake_one("first") is threads["c"]  # past a and b
        assert len(q) == 2
        assert q.throw_one(KeyError("thrown")) is threads["e"]  # past d
        assert len(q) == 1
        assert q.wake_all("rest") == 1
        assert len(q) == 0 and not q
        assert q.wake_one("nobody") is None and q.wake_all("nobody") == 0
        for t in threads.values():
            yield from t.wait()
        with pytest.raises(KeyError, match="thrown"):
            threads["e"].result()
        return log

    assert run(main()) == [("c", "first"), ("f", "rest")]


def test_wake_all_counts_only_live_waiters_and_leaves_the_queue_empty():
    q = WaitQueue()
    log = []

    def main():
        for i in range(5):
            yield from threadlib.spawn(parker(q, log, i, patience=1 if i % 2 else None))
        yield from threadlib.sleep(2)  # 1 and 3 withdrawn
        assert len(q) == 3
        assert q.wake_all("go") == 3
        assert len(q) == 0 and not q
        yield from threadlib.spawn(parker(q, log, "late"))
        yield from threadlib.sleep(0)
        assert len(q) == 1  # counting starts afresh after wake_all
        assert q.wake_one("late one") is not None
        assert len(q) == 0
        yield from threadlib.sleep(0)
        return log

    assert run(main()) == [(0, "go"), (2, "go"), (4, "go"), ("late", "late one")]


def test_many_withdrawn_waiters_are_let_go_and_the_live_ones_keep_their_order():
    q = WaitQueue()
    log = []
    n = 300

    def rejoiner():
        # Parks, times out, parks again: in the deque twice, live once.
        with threadlib.move_on_after(0.5):
            yield q.park
        log.append(("d", (yield q.park)))

    def main():
        for name in "abc":
            yield from threadlib.spawn(parker(q, log, name))
        yield from threadlib.spawn(rejoiner())
        quitters = []
        for i in range(n):
            t = yield from threadlib.spawn(parker(q, log, i, patience=1))
            quitters.append(t)
        yield from threadlib.sleep(2)  # the n quitters time out and end
        tokens = [weakref.ref(t.result()) for t in quitters]
        del quitters, t
        yield from threadlib.sleep(0)
        gc.collect()
        still_held = sum(ref() is not None for ref in tokens)
        # the queue compacts once withdrawn entries outnumber the live
        # ones: what it still holds is a small remainder, not all n
        assert still_held < n // 2, f"{still_held} of {n} timed-out waiters still held"
        assert len(q) == 4
        woken = [q.wake_one(i) for i in range(6)]
        assert woken[4:] == [None, None] and len(set(woken[:4])) == 4
        assert len(q) == 0 and not q
        yield from threadlib.sleep(0)
        return log

    assert run(main()) == [("a", 0), ("b", 1), ("c", 2), ("d", 3)]


def test_a_waiter_woken_inside_a_long_timeout_is_freed_when_it_ends():
    q = WaitQueue()

    def waiter():
        with threadlib.move_on_after(3600):
            yield q.park
        return Token()

    def main():
        t = yield from threadlib.spawn(waiter())
        yield from threadlib.sleep(0)
        q.wake_one()
        yield from t.wait()
        token = weakref.ref(t.result())
        del t
        yield from threadlib.sleep(0)
        gc.collect()
        # nothing (no timer still armed for the hour) keeps the ended thread
        assert token() is None
        return threadlib.now()

    assert run(main()) == 0.0


@pytest.mark.parametrize("how", ["wake_one", "wake_all", "throw_one"])
def test_a_woken_waiter_inside_a_timeout_is_not_timed_out_later(how):
    q = WaitQueue()

    def waiter():
        with threadlib.fail_after(5):
            try:
                got = yield q.park
            except KeyError:
                got = "thrown"
            yield from threadlib.sleep(3)  # still inside the scope, well before 5
        return got

    def main():
        t = yield from threadlib.spawn(waiter())
        yield from threadlib.sleep(1)
        if how == "throw_one":
            q.throw_one(KeyError())
        else:
            getattr(q, how)("value")
        return (yield from t.join()), threadlib.now()

    assert run(main()) == ("thrown" if how == "throw_one" else "value", 4.0)
