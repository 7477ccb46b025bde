"""threadlib.Thread through its public properties and calls: state, name,
id, deadline, parent, result, cancel and repr, and what spawn accepts.
Runs on a VirtualClock."""

import pytest

import threadlib
from threadlib import ThreadCancelled
from threadlib.lowlevel import Scheduler, VirtualClock


def run(main):
    return threadlib.run(main, scheduler=Scheduler(clock=VirtualClock()))


def sleeper(seconds, fail=None):
    yield from threadlib.sleep(seconds)
    if fail is not None:
        raise fail
    return seconds


def test_states_from_ready_to_done_failed_and_cancelled():
    def main():
        ok = yield from threadlib.spawn(sleeper(1))
        bad = yield from threadlib.spawn(sleeper(1, KeyError("k")))
        doomed = yield from threadlib.spawn(sleeper(5))
        me = threadlib.current_thread()
        assert me.state == "ready" and not me.done and me.waiting_on is None  # running
        yield from threadlib.sleep(0)
        assert not ok.done
        assert ok.state == "waiting" and isinstance(ok.waiting_on, threadlib.lowlevel.Sleep)
        assert "waiting" in repr(ok) and "Sleep" in repr(ok)
        with pytest.raises(RuntimeError, match="has not ended"):
            ok.result()
        assert (yield from doomed.cancel()) is True
        assert (yield from doomed.cancel()) is False  # already ended
        yield from threadlib.sleep(2)
        assert ok.state == "done" and ok.done and ok.result() == 1 and ok.waiting_on is None
        assert bad.state == "failed" and bad.done
        with pytest.raises(KeyError):
            bad.result()
        assert doomed.state == "cancelled"
        return [repr(t).split()[2:] for t in (ok, bad, doomed)]

    reprs = run(main())
    assert [r[-1] for r in reprs] == ["done>", "failed>", "cancelled>"]


def test_names_ids_and_the_main_thread():
    def named():
        yield from threadlib.sleep(1)

    def main():
        me = threadlib.current_thread()
        a = yield from threadlib.spawn(named())
        b = yield from threadlib.spawn(named(), name="given")
        ids = [me.id, a.id, b.id]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert a.name == f"test_names_ids_and_the_main_thread.<locals>.named-{a.id}"
        assert b.name == "given"
        assert me.parent is None and a.parent is me
        assert f"{a.id} {a.name!r}" in repr(a)
        yield from threadlib.join_all([a, b])
        assert a.name == f"thread-{a.id}"  # an ended thread has no coroutine left to name it
        return me.name

    assert run(main()) == "main"


def test_a_threads_deadline_follows_its_scopes():
    def main():
        me = threadlib.current_thread()
        assert me.deadline is None
        with threadlib.move_on_after(5):
            assert me.deadline == 5.0
            with threadlib.move_on_after(10):
                assert me.deadline == 5.0  # the outer one is earlier
            with threadlib.CancelScope() as scope:
                scope.cancel()
                assert me.deadline == float("-inf")
        assert me.deadline is None
        yield from threadlib.sleep(0)
        return "ok"

    assert run(main()) == "ok"


def test_spawn_takes_a_generator_a_coroutine_an_awaitable_or_a_function():
    ev = threadlib.Event()

    async def coro(x):
        await threadlib.sleep(1)
        return x

    def main():
        a = yield from threadlib.spawn(sleeper(1))
        b = yield from threadlib.spawn(coro, "c")
        c = yield from threadlib.spawn(coro("d"))
        d = yield from threadlib.spawn(ev.wait())  # an awaitable, driven to its end
        e = yield from threadlib.spawn(sleeper, 2)
        # A function returning an awaitable that is no generator (sleep's
        # shared ParkOnce, Event.wait's): what it returns is driven.
        f = yield from threadlib.spawn(threadlib.sleep, 3)
        g = yield from threadlib.spawn(ev.wait)
        ev.set()
        return (yield from threadlib.join_all([a, b, c, d, e, f, g]))

    assert run(main()) == [1, "c", "d", None, 2, None, None]


def test_spawn_refuses_arguments_for_a_running_generator_and_non_callables():
    def main():
        gen = sleeper(1)
        with pytest.raises(TypeError, match="already a running generator"):
            yield from threadlib.spawn(gen, 5)
        gen.close()
        with pytest.raises(TypeError, match="needs a generator"):
            yield from threadlib.spawn(42)
        with pytest.raises(TypeError):
            yield from threadlib.spawn(threadlib.Event().wait(), "extra")
        return "ok"

    assert run(main()) == "ok"


def test_cancel_of_a_thread_cancelling_itself_is_refused():
    def main():
        me = threadlib.current_thread()
        with pytest.raises(RuntimeError, match="cannot cancel itself"):
            yield from me.cancel()
        return "ok"

    assert run(main()) == "ok"


def test_a_cancelled_thread_raises_thread_cancelled_to_its_joiner():
    def main():
        t = yield from threadlib.spawn(sleeper(10))
        yield from threadlib.sleep(1)
        yield from t.cancel()
        with pytest.raises(ThreadCancelled):
            yield from t.join()
        return t.state

    assert run(main()) == "cancelled"


def test_ids_are_given_in_the_order_asked_per_scheduler_and_outside_one_too():
    def child():
        yield from threadlib.sleep(1)

    def main():
        me = threadlib.current_thread()
        a = yield from threadlib.spawn(child())
        b = yield from threadlib.spawn(child())
        # asked in the order b, main, a: numbered 1, 2, 3 in this scheduler
        return [b.id, me.id, a.id]

    assert run(main()) == [1, 2, 3]
    assert run(main()) == [1, 2, 3]  # a fresh scheduler numbers afresh
    # asked with no scheduler running: process-wide numbers, still distinct
    idle = Scheduler(clock=VirtualClock())
    unrun = [idle.spawn(child()) for _ in range(2)]
    outside = [t.id for t in unrun]
    assert all(isinstance(i, int) for i in outside) and len(set(outside)) == 2
    idle.close()


def test_cancel_can_be_awaited_from_an_async_def_thread():
    async def victim():
        await threadlib.sleep(10)

    async def main():
        t = await threadlib.spawn(victim())
        await threadlib.sleep(1)
        return await t.cancel(), t.state

    assert run(main()) == (True, "cancelled")


def test_spawning_an_object_with_send_but_no_throw_is_refused_at_the_spawn():
    import socket

    left, right = socket.socketpair()
    try:
        def main():
            with pytest.raises(TypeError, match=r"spawn\(\) needs a generator, a coroutine, or a function"):
                yield from threadlib.spawn(left)  # a socket has send(), but is no coroutine
            return "ok"

        assert run(main()) == "ok"
    finally:
        left.close()
        right.close()
