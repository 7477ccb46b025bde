"""Task groups (``async with TaskGroup()``, ``yield from task_group(body)``)
and the thread tree (``Thread.parent``, ``Scheduler.thread_tree``): what
the block waits for, who is cancelled when something fails, what is
raised, and that ended threads are freed. Runs on a VirtualClock."""

import gc
import logging
import weakref

import pytest

import threadlib
from threadlib import TaskGroup, ThreadCancelled
from threadlib.lowlevel import Scheduler, VirtualClock


def run(main):
    return threadlib.run(main, scheduler=Scheduler(clock=VirtualClock()))


class Token:
    """A weakly referenceable object to watch a thread's memory through."""


def napper(seconds, log, name, fail=None):
    try:
        yield from threadlib.sleep(seconds)
        if fail is not None:
            raise fail
        log.append((name, "done", threadlib.now()))
        return name
    finally:
        if fail is None:
            log.append((name, "finally", threadlib.now()))
            yield from threadlib.sleep(1)  # a finally that waits, cancelled or not
            log.append((name, "cleaned", threadlib.now()))


def test_the_block_waits_for_every_child_async_def():
    log = []

    async def main():
        async with TaskGroup() as g:
            a = g.spawn(napper, 2, log, "a")
            b = g.spawn(napper(1, log, "b"))
            assert a.parent is b.parent is threadlib.current_thread()
        assert a.done and b.done and threadlib.now() == 3.0
        return a.result(), b.result()

    assert run(main()) == ("a", "b")


def test_task_group_in_a_generator_thread_returns_what_the_body_returned():
    log = []

    def body(g, n):
        for i in range(n):
            g.spawn(napper, i + 1, log, f"t{i}")
        yield from threadlib.sleep(0)
        return "body"

    def main():
        result = yield from threadlib.task_group(body, 3)
        return result, threadlib.now(), sorted(e[0] for e in log if e[1] == "cleaned")

    assert run(main()) == ("body", 4.0, ["t0", "t1", "t2"])


def test_a_failing_child_cancels_the_others_and_the_body_and_the_failure_is_raised():
    log = []

    async def main():
        with pytest.raises(ExceptionGroup) as info:
            async with TaskGroup() as g:
                g.spawn(napper, 60, log, "sibling")
                g.spawn(napper, 2, log, "failing", ValueError("boom"))
                try:
                    await threadlib.sleep(60)
                finally:
                    log.append(("body", "cancelled", threadlib.now()))
        assert [type(e) for e in info.value.exceptions] == [ValueError]
        assert g.cancel_called
        return threadlib.now()

    assert run(main()) == 3.0  # the sibling's finally waited one second
    assert ("body", "cancelled", 2.0) in log
    assert ("sibling", "cleaned", 3.0) in log
    assert not any(e[1] == "done" for e in log)


def test_two_children_failing_together_are_both_in_the_group(caplog):
    def body(g):
        g.spawn(napper, 1, [], "x", KeyError("x"))
        g.spawn(napper, 1, [], "y", OSError("y"))
        yield from threadlib.sleep(60)

    def main():
        with pytest.raises(ExceptionGroup) as info:
            yield from threadlib.task_group(body)
        return sorted(type(e).__name__ for e in info.value.exceptions)

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        assert run(main()) == ["KeyError", "OSError"]
        gc.collect()
    assert not [r for r in caplog.records if "nobody joined" in r.getMessage()]


def test_the_body_raising_cancels_the_children_and_joins_the_group():
    log = []

    def body(g):
        g.spawn(napper, 60, log, "child")
        yield from threadlib.sleep(1)
        raise LookupError("body failed")

    def main():
        with pytest.raises(ExceptionGroup) as info:
            yield from threadlib.task_group(body)
        assert [str(e) for e in info.value.exceptions] == ["body failed"]
        return threadlib.now()

    assert run(main()) == 2.0
    assert log == [("child", "finally", 1.0), ("child", "cleaned", 2.0)]


def test_a_childs_and_the_bodys_failures_are_raised_together_children_first():
    def body(g):
        g.spawn(napper, 1, [], "child", ValueError("child"))
        try:
            yield from threadlib.sleep(60)
        finally:
            raise RuntimeError("body")

    def main():
        with pytest.raises(ExceptionGroup) as info:
            yield from threadlib.task_group(body)
        return [str(e) for e in info.value.exceptions]

    assert run(main()) == ["child", "body"]


def test_keyboard_interrupt_and_system_exit_go_through_bare():
    def body(g):
        g.spawn(napper, 60, [], "bystander")
        yield from threadlib.sleep(1)
        raise SystemExit(3)

    def main():
        with pytest.raises(SystemExit) as info:
            yield from threadlib.task_group(body)
        return info.value.code, threadlib.now()

    assert run(main()) == (3, 2.0)


def test_cancel_ends_the_group_quietly():
    log = []

    async def main():
        async with TaskGroup() as g:
            g.spawn(napper, 60, log, "a")
            g.spawn(napper, 60, log, "b")
            await threadlib.sleep(1)
            g.cancel()
            await threadlib.sleep(60)  # raises ThreadCancelled, caught by the group
            raise AssertionError("not reached")
        return threadlib.now()

    assert run(main()) == 2.0


def test_cancelling_the_owner_cancels_the_children_and_waits_for_them():
    log = []

    def owner():
        try:
            yield from threadlib.task_group(lambda g: _spawn_and_wait(g, log))
        finally:
            log.append(("owner", "finally", threadlib.now()))

    def main():
        t = yield from threadlib.spawn(owner())
        yield from threadlib.sleep(1)
        yield from t.cancel()
        with pytest.raises(ThreadCancelled):
            yield from t.join()
        return threadlib.now()

    assert run(main()) == 2.0
    assert log == [("c", "finally", 1.0), ("c", "cleaned", 2.0), ("owner", "finally", 2.0)]


def _spawn_and_wait(g, log):
    g.spawn(napper, 60, log, "c")
    yield from threadlib.sleep(60)


def test_an_outer_timeout_while_the_owner_waits_for_the_children_cancels_them():
    log = []

    async def main():
        with pytest.raises(TimeoutError):
            with threadlib.timeout(2) as scope:
                async with TaskGroup() as g:
                    g.spawn(napper, 60, log, "c")
                # the body ended at once; the owner waits at the end, and times out there
        assert scope.expired
        return threadlib.now()

    assert run(main()) == 3.0  # the owner waited, shielded, for the child's cleanup
    assert log == [("c", "finally", 2.0), ("c", "cleaned", 3.0)]


def test_an_outer_move_on_reaching_the_body_is_not_a_failure():
    async def main():
        with threadlib.move_on_after(1) as scope:
            async with TaskGroup() as g:
                g.spawn(napper, 60, [], "c")
                await threadlib.sleep(60)
        assert scope.cancelled_caught
        return threadlib.now()

    assert run(main()) == 2.0


def test_children_spawned_from_a_child_or_into_a_cancelled_group():
    log = []

    def spawner(g):
        g.spawn(napper, 1, log, "grandchild")  # a sibling, as far as the group goes
        yield from threadlib.sleep(0)

    async def main():
        me = threadlib.current_thread()
        async with TaskGroup() as g:
            s = g.spawn(spawner, g)
            await threadlib.sleep(0)
            await threadlib.sleep(0)
            (grandchild,) = [c for c in g.children if c is not s]
            assert grandchild.parent is me
        async with TaskGroup() as g:
            g.cancel()
            late = g.spawn(napper, 60, log, "late")
        assert late.state == "cancelled"
        with pytest.raises(RuntimeError, match="ended"):
            g.spawn(napper, 1, log, "too late")
        return threadlib.now()

    # the grandchild's napper: 1 s and 1 s of cleanup; late: 1 s of cleanup
    assert run(main()) == 3.0


def test_a_plain_with_is_refused_with_directions():
    def main():
        with pytest.raises(TypeError, match="task_group"):
            with TaskGroup():
                pass
        with pytest.raises(RuntimeError, match="enter it first"):
            TaskGroup().spawn(napper, 1, [], "x")
        yield from threadlib.sleep(0)

    run(main())


def test_a_green_thread_runs_a_plain_body_through_green_call():
    from threadlib.frontends import green

    log = []

    def body(g):
        g.spawn(green.thread(lambda: green.sleep(2)))
        green.sleep(1)
        return "plain body"

    def main():
        return green.call(threadlib.task_group(body)), threadlib.now()

    assert run(green.thread(main)) == ("plain body", 2.0)


# -- the thread tree ------------------------------------------------------------------


def test_parent_and_thread_tree():
    def leaf():
        yield from threadlib.sleep(10)

    def middle():
        yield from threadlib.spawn(leaf(), name="leaf")
        yield from threadlib.sleep(10)

    def main():
        me = yield from threadlib.current()
        m = yield from threadlib.spawn(middle(), name="middle")
        yield from threadlib.sleep(1)
        sched = threadlib.current_scheduler()
        tree = sched.thread_tree()
        assert tree[None] == [me] and me.parent is None
        assert tree[me] == [m]
        (leaf_thread,) = tree[m]
        assert leaf_thread.name == "leaf" and leaf_thread.parent is m
        # every live thread appears once under its parent
        seen = []
        stack = list(tree[None])
        while stack:
            t = stack.pop()
            seen.append(t)
            stack.extend(tree.get(t, []))
        assert sorted(t.name for t in seen) == sorted(t.name for t in sched.threads())
        yield from m.cancel()
        # the leaf outlives its parent: it has none any more, and is a root
        assert leaf_thread.parent is None and leaf_thread in sched.thread_tree()[None]
        yield from leaf_thread.cancel()

    run(main())


def test_a_finished_child_is_freed_while_its_parent_lives():
    def child():
        yield from threadlib.sleep(1)
        return Token()

    def main():
        t = yield from threadlib.spawn(child())
        yield from t.wait()
        result = weakref.ref(t.result())  # held by the ended Thread alone
        del t
        yield from threadlib.sleep(0)  # (a thread's last resume value is kept until the next)
        gc.collect()
        assert result() is None  # so the Thread is gone
        yield from threadlib.sleep(1)
        return "parent still running"

    assert run(main()) == "parent still running"


def test_a_long_lived_group_keeps_no_finished_child():
    def child():
        yield from threadlib.sleep(1)
        return Token()

    async def main():
        refs = []
        async with TaskGroup() as g:
            for _ in range(5):
                t = g.spawn(child)
                await t.wait()
                refs.append(weakref.ref(t.result()))
            del t
            await threadlib.sleep(0)
            gc.collect()
            assert [r() for r in refs] == [None] * 5 and g.children == []
        return "ok"

    assert run(main()) == "ok"


def test_a_live_child_does_not_keep_its_ended_parent_alive(caplog):
    def child(ev):
        yield from ev.wait()

    def parent(ev, keep):
        yield from threadlib.spawn(child(ev))
        keep.append(weakref.ref(token := Token()))
        raise ValueError(f"parent failed holding {token!r}")

    def main():
        ev, keep = threadlib.Event(), []
        yield from threadlib.spawn(parent(ev, keep))
        yield from threadlib.sleep(1)
        gc.collect()
        # the failed parent, its frame and its unjoined exception are gone
        # (and logged) while its child still waits
        assert keep[0]() is None
        assert any("nobody joined" in r.getMessage() for r in caplog.records)
        ev.set()

    with caplog.at_level(logging.ERROR, logger="threadlib"):
        run(main())


def test_children_that_can_never_end_are_reported_as_a_deadlock_not_waited_for():
    def stuck(ev):
        try:
            yield from ev.wait()
        finally:
            yield from ev.wait()  # nobody will ever set it

    def body(g):
        g.spawn(stuck, threadlib.Event())
        raise KeyError("body")  # the child is cancelled, and its cleanup hangs

    def main():
        yield from threadlib.task_group(body)

    with pytest.raises(RuntimeError, match="deadlock"):
        run(main())


# --- what the mutation run of threadlib/_kernel/groups.py found unchecked -----


def test_the_failure_group_names_the_owner_thread():
    def body(g):
        g.spawn(napper, 1, [], "x", fail=KeyError("boom"))
        yield from threadlib.sleep(5)

    def owner():
        yield from threadlib.task_group(body)

    def main():
        t = yield from threadlib.spawn(owner(), name="the-owner")
        with pytest.raises(BaseExceptionGroup, match="task group of thread the-owner: 1 failed"):
            yield from t.join()

    run(main())


def test_spawn_before_entering_or_after_the_end_says_which():
    g = TaskGroup()
    with pytest.raises(RuntimeError, match="enter it first"):
        g.spawn(napper, 1, [], "early")

    async def main():
        async with g:
            pass
        with pytest.raises(RuntimeError, match="it has ended"):
            g.spawn(napper, 1, [], "late")
        with pytest.raises(RuntimeError, match="a task group is entered once"):
            async with g:
                pass

    run(main())


def test_cancel_called_is_false_until_cancel():
    async def main():
        async with TaskGroup() as g:
            assert g.cancel_called is False
            g.cancel()
            assert g.cancel_called is True

    run(main())


def test_a_child_spawned_by_a_thread_outside_the_group_has_the_owner_as_parent():
    shared = {}

    def owner():
        # this thread spawns nothing itself before the group
        def body(g):
            shared["group"] = g
            yield from threadlib.sleep(2)

        yield from threadlib.task_group(body)

    def outsider():
        yield from threadlib.sleep(1)
        child = shared["group"].spawn(napper, 0.5, [], "child")
        return child.parent

    def main():
        o = yield from threadlib.spawn(owner())
        x = yield from threadlib.spawn(outsider())
        parent = yield from x.join()
        assert parent is o
        yield from o.join()

    run(main())


def test_await_task_group_in_an_async_def_thread():
    async def body(g):
        g.spawn(napper, 1, [], "child")
        await threadlib.sleep(0)
        return "body's result"

    async def main():
        return await threadlib.task_group(body), threadlib.now()

    assert run(main()) == ("body's result", 2.0)


def test_a_plain_body_returning_an_object_with_send_returns_it_as_is():
    import socket

    left, right = socket.socketpair()
    try:
        def body(g):  # a plain function: it has run when it returns
            g.spawn(napper, 1, [], "child")
            return left  # has send() (and no throw): not a coroutine

        def main():
            return (yield from threadlib.task_group(body))

        assert run(main()) is left
    finally:
        left.close()
        right.close()


def test_a_childs_system_exit_reaches_the_owner_bare_as_the_run_ends():
    # A SystemExit ends the run; while the scheduler winds the threads
    # down, the group raises the child's SystemExit in its owner, not the
    # cancellation that woke the owner.
    seen = []

    def quitter():
        yield from threadlib.sleep(1)
        raise SystemExit(5)

    def body(g):
        g.spawn(quitter)
        yield from threadlib.sleep(10)

    def owner():
        try:
            yield from threadlib.task_group(body)
        except BaseException as exc:
            seen.append((type(exc), getattr(exc, "code", None)))
            raise

    def main():
        t = yield from threadlib.spawn(owner())
        yield from t.wait()

    with pytest.raises(SystemExit) as info:
        run(main())
    assert info.value.code == 5
    assert seen == [(SystemExit, 5)]
