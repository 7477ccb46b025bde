"""Cancel scopes: move_on/fail_after and _at, cancel() from inside and from
another thread, deadlines moved while a wait is under way, shields and
their nesting rules, and timeout() as one of them. Deterministic: every
run is on a VirtualClock, so "at 5.0" means exactly that."""

import pytest

import threadlib
from threadlib import CancelScope, ThreadCancelled
from threadlib.lowlevel import Scheduler, VirtualClock


def run(main):
    return threadlib.run(main, scheduler=Scheduler(clock=VirtualClock()))


def test_move_on_after_leaves_the_block_quietly_at_its_deadline():
    def main():
        with threadlib.move_on_after(5) as scope:
            assert scope.deadline == 5.0
            yield from threadlib.sleep(60)
            raise AssertionError("not reached")
        assert scope.cancelled_caught and not scope.cancel_called
        with threadlib.move_on_after(5) as calm:
            yield from threadlib.sleep(1)
        assert not calm.cancelled_caught
        return threadlib.now()

    assert run(main()) == 6.0


def test_fail_after_and_fail_at_raise_timeout_error_at_the_wait():
    def main():
        with pytest.raises(TimeoutError, match="Sleep"):
            with threadlib.fail_after(2) as scope:
                yield from threadlib.sleep(60)
        assert scope.expired and not scope.cancelled_caught
        with pytest.raises(TimeoutError):
            with threadlib.fail_at(threadlib.now() + 3):
                yield from threadlib.Event().wait()
        with threadlib.move_on_at(threadlib.now() + 1) as scope:
            yield from threadlib.Queue().get()
        assert scope.cancelled_caught
        return threadlib.now()

    assert run(main()) == 6.0


def test_timeout_is_a_fail_after_scope_and_keeps_its_behaviour():
    def main():
        assert isinstance(threadlib.timeout(1), CancelScope)
        with pytest.raises(TimeoutError):
            with threadlib.timeout(5) as outer:
                with threadlib.timeout(1) as inner:
                    yield from threadlib.sleep(60)
        assert inner.expired and not outer.expired
        # every later wait inside an expired scope raises again
        raised = 0
        with pytest.raises(TimeoutError):
            with threadlib.timeout(1):
                for _ in range(3):
                    try:
                        yield from threadlib.sleep(60)
                    except TimeoutError:
                        raised += 1
                yield from threadlib.sleep(60)
        assert raised == 3
        with threadlib.timeout(None) as inert:
            yield from threadlib.sleep(1)
        assert inert.deadline is None and not inert.expired
        with pytest.raises(RuntimeError, match="inert"):
            inert.cancel()
        # fail_after(None) is a real scope: cancel() times it out at once
        with pytest.raises(TimeoutError):
            with threadlib.fail_after(None) as later:
                later.cancel()
                yield from threadlib.sleep(60)
        assert later.expired
        return threadlib.now()

    assert run(main()) == 3.0


def test_cancel_from_another_thread_ends_the_wait_in_progress():
    log = []

    def worker(scopes):
        with CancelScope() as scope:
            scopes.append(scope)
            yield from threadlib.sleep(60)
        log.append(("left", threadlib.now(), scope.cancelled_caught))

    def main():
        scopes = []
        t = yield from threadlib.spawn(worker(scopes))
        yield from threadlib.sleep(2)
        scopes[0].cancel()
        scopes[0].cancel()  # twice: no harm
        yield from t.join()
        return log

    assert run(main()) == [("left", 2.0, True)]


def test_cancel_from_inside_applies_at_the_next_wait_and_a_cancelled_scope_starts_cancelled():
    def main():
        with CancelScope() as scope:
            scope.cancel()
            yield from threadlib.sleep(0)  # sleep(0) never suspends, so it is not interrupted
            yield from threadlib.sleep(60)
            raise AssertionError("not reached")
        assert scope.cancelled_caught
        early = CancelScope()
        early.cancel()
        with early:
            yield from threadlib.Event().wait()
        assert early.cancelled_caught
        return threadlib.now()

    assert run(main()) == 0.0


def test_the_waits_raise_thread_cancelled_naming_the_scope_until_the_block_is_left():
    seen = []

    def main():
        with CancelScope() as scope:
            scope.cancel()
            for _ in range(2):
                try:
                    yield from threadlib.sleep(1)
                except ThreadCancelled as exc:
                    seen.append(exc.scope is scope)
        # outside the block nothing is cancelled any more
        yield from threadlib.sleep(1)
        return threadlib.now()

    assert run(main()) == 1.0
    assert seen == [True, True]


def test_the_deadline_can_be_moved_while_a_wait_is_under_way():
    log = []

    def sleeper(scopes):
        with threadlib.move_on_after(5) as scope:
            scopes.append(scope)
            yield from threadlib.sleep(60)
        log.append(threadlib.now())

    def main():
        scopes = []
        t = yield from threadlib.spawn(sleeper(scopes))
        yield from threadlib.sleep(1)
        scopes[0].deadline = 20  # later: the sleeper is not woken at 5
        yield from threadlib.sleep(5)
        assert not t.done
        scopes[0].deadline = 8  # earlier again, still in the future
        yield from t.join()
        u = yield from threadlib.spawn(sleeper(scopes))
        yield from threadlib.sleep(1)
        scopes[1].deadline = None  # no deadline any more
        yield from threadlib.sleep(30)
        assert not u.done
        scopes[1].deadline = threadlib.now()  # now: due at once
        yield from u.join()
        return log

    assert run(main()) == [8.0, 39.0]


def test_nested_scopes_the_innermost_due_catches_and_the_earliest_deadline_wins():
    def main():
        with threadlib.move_on_after(10) as outer:
            with threadlib.move_on_after(2) as inner:
                yield from threadlib.sleep(60)
            assert inner.cancelled_caught and threadlib.now() == 2.0
            with threadlib.move_on_after(50) as late:
                yield from threadlib.sleep(60)  # the outer deadline still applies in here
        assert outer.cancelled_caught and not late.cancelled_caught
        assert threadlib.now() == 10.0
        return "ok"

    assert run(main()) == "ok"


def test_a_shield_hides_the_scopes_outside_it_until_it_exits():
    def main():
        with threadlib.move_on_after(1) as outer:
            with CancelScope(shield=True) as shield:
                yield from threadlib.sleep(5)  # past the outer deadline: not interrupted
                assert threadlib.now() == 5.0
                with threadlib.move_on_after(1) as inside:  # scopes inside a shield still work
                    yield from threadlib.sleep(60)
                assert inside.cancelled_caught and threadlib.now() == 6.0
            assert not shield.cancelled_caught
            yield from threadlib.sleep(60)  # outside the shield, the outer deadline is back
            raise AssertionError("not reached")
        assert outer.cancelled_caught
        return threadlib.now()

    assert run(main()) == 6.0


def test_a_shield_has_its_own_deadline_and_cancel():
    def main():
        with threadlib.move_on_after(1, shield=True) as shield:
            yield from threadlib.sleep(60)
        assert shield.cancelled_caught and threadlib.now() == 1.0
        with pytest.raises(TimeoutError):
            with threadlib.fail_after(2, shield=True):
                yield from threadlib.sleep(60)
        return threadlib.now()

    assert run(main()) == 3.0


def test_a_shield_holds_a_thread_cancel_until_it_exits():
    log = []

    def cleaner():
        try:
            yield from threadlib.sleep(60)
        finally:
            with CancelScope(shield=True):
                yield from threadlib.sleep(3)  # cleanup that must wait, cancelled or not
                log.append(("cleaned", threadlib.now()))
            log.append("after the shield")
            yield from threadlib.sleep(0.5)  # not interrupted: the cancel was delivered already

    def main():
        t = yield from threadlib.spawn(cleaner())
        yield from threadlib.sleep(1)
        yield from t.cancel()  # delivered at the sleep(60)
        assert t.state == "cancelled"
        return threadlib.now()

    assert run(main()) == 4.5
    assert log == [("cleaned", 4.0), "after the shield"]


def test_a_thread_cancel_arriving_inside_a_shield_is_delivered_at_the_first_wait_after_it():
    log = []

    def worker():
        with CancelScope(shield=True):
            yield from threadlib.sleep(5)
            log.append(("shield done", threadlib.now()))
        try:
            yield from threadlib.sleep(60)
        except ThreadCancelled as exc:
            log.append(("cancelled", threadlib.now(), exc.scope))
            raise

    def main():
        t = yield from threadlib.spawn(worker())
        yield from threadlib.sleep(1)
        ended = yield from t.cancel()  # waits until the worker has ended
        return ended, threadlib.now(), t.state

    assert run(main()) == (True, 5.0, "cancelled")
    assert log == [("shield done", 5.0), ("cancelled", 5.0, None)]


def test_a_cancel_pending_on_a_ready_thread_is_held_by_a_shield_entered_next():
    log = []

    def worker(ev):
        yield from ev.wait()
        with CancelScope(shield=True):  # the cancel, aimed while it was ready, waits for this
            yield from threadlib.sleep(2)
            log.append("inside")
        yield from threadlib.sleep(60)

    def main():
        ev = threadlib.Event()
        t = yield from threadlib.spawn(worker(ev))
        yield from threadlib.sleep(0)
        ev.set()  # t is now ready
        yield from t.cancel()
        return threadlib.now(), t.state

    assert run(main()) == (2.0, "cancelled")
    assert log == ["inside"]


def test_shield_can_be_turned_off_and_the_held_cancel_then_arrives():
    def worker(scopes):
        with CancelScope(shield=True) as scope:
            scopes.append(scope)
            yield from threadlib.sleep(60)

    def main():
        scopes = []
        t = yield from threadlib.spawn(worker(scopes))
        yield from threadlib.sleep(1)
        canceller = yield from threadlib.spawn(t.cancel())
        yield from threadlib.sleep(1)
        assert not t.done and scopes[0].shield
        scopes[0].shield = False
        yield from canceller.join()
        return threadlib.now(), t.state

    assert run(main()) == (2.0, "cancelled")


def test_misuse_is_refused_clearly():
    def main():
        scope = CancelScope()
        with scope:
            pass
        with pytest.raises(RuntimeError, match="entered once"):
            with scope:
                pass
        with pytest.raises(RuntimeError, match="without being entered"):
            CancelScope().__exit__(None, None, None)
        with pytest.raises(TypeError, match="number of seconds"):
            threadlib.move_on_after("5")
        with pytest.raises(TypeError, match="number of seconds"):
            CancelScope(deadline=float("nan"))
        with pytest.raises(TypeError, match="seconds as a number"):
            with threadlib.timeout("5"):
                pass
        yield from threadlib.sleep(0)

    run(main())
    with pytest.raises(RuntimeError, match="no threadlib scheduler"):
        with threadlib.move_on_after(1):
            pass


def test_a_scope_exited_by_another_thread_is_refused():
    def other(scope):
        scope.__exit__(None, None, None)
        yield from threadlib.sleep(0)

    def main():
        with CancelScope() as scope:
            t = yield from threadlib.spawn(other(scope))
            with pytest.raises(RuntimeError, match="other than the one"):
                yield from t.join()
        return "ok"

    assert run(main()) == "ok"


def test_scopes_work_in_async_def_and_green_threads():
    from threadlib.frontends import green

    async def coro():
        with threadlib.move_on_after(1) as scope:
            await threadlib.sleep(60)
        return scope.cancelled_caught

    def plain():
        with threadlib.move_on_after(1) as scope:
            green.sleep(60)
        with pytest.raises(TimeoutError):
            with threadlib.fail_after(1):
                green.sleep(60)
        return scope.cancelled_caught

    def main():
        a = yield from threadlib.spawn(coro())
        b = yield from threadlib.spawn(green.thread(plain))
        return (yield from threadlib.join_all([a, b])), threadlib.now()

    assert run(main()) == ([True, True], 2.0)


def test_a_thread_outside_any_scope_has_no_deadline():
    def main():
        me = yield from threadlib.current()
        assert me.deadline is None
        with threadlib.move_on_after(3):
            with threadlib.move_on_after(7):
                assert me.deadline == 3.0
            with CancelScope(shield=True):
                assert me.deadline is None
        assert me.deadline is None
        yield from threadlib.sleep(0)

    run(main())


def test_timeout_none_never_fires_and_hides_no_outer_deadline():
    # api.md: timeout(None) "does nothing"; design.md §5: it is inert. On the
    # virtual clock an hour-long sleep inside it ends normally, and inside
    # an outer timeout it is the outer scope, not the inert one, that fires.
    def main():
        me = yield from threadlib.current()
        with threadlib.timeout(None) as inert:
            assert me.deadline is None and inert.deadline is None
            yield from threadlib.sleep(3600)
            ev = threadlib.Event()

            def setter():
                yield from threadlib.sleep(7200)
                ev.set()

            yield from threadlib.spawn(setter())
            yield from ev.wait()  # a park, which a scope would end with its timer
        assert not inert.expired and threadlib.now() == 3600 + 7200
        start = threadlib.now()
        with pytest.raises(TimeoutError) as caught:
            with threadlib.timeout(5) as outer:
                with threadlib.timeout(None) as inner:
                    assert me.deadline == start + 5
                    yield from threadlib.sleep(60)
        assert caught.value.scope is outer and outer.expired and not inner.expired
        assert threadlib.now() == start + 5

    run(main())
