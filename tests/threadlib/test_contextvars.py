"""Context variables: every thread sees its own contextvars.Context, copied
from its spawner's at spawn (asyncio's rule), in generator, async def and
green threads, and in the functions it runs on the blocking pool."""

import contextvars

import pytest

import threadlib
from threadlib.frontends import green
from threadlib.io import sockio
from threadlib.lowlevel import Scheduler, VirtualClock

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def test_three_threads_each_see_their_own_value_across_waits():
    seen = []
    ev = threadlib.Event()

    def handler(name, conn):
        request_id.set(name)
        yield from threadlib.sleep(0)                  # the others run and set theirs
        seen.append((name, "after yield", request_id.get()))
        yield from ev.wait()                           # parked in one shared WaitQueue
        seen.append((name, "after event", request_id.get()))
        data = yield from conn.recv(100)               # a real socket wait
        seen.append((name, "after recv " + data.decode(), request_id.get()))
        return request_id.get()

    def main():
        pairs = [sockio.socketpair() for _ in range(3)]
        threads = []
        for name, (a, _) in zip("abc", pairs):
            threads.append((yield from threadlib.spawn(handler(name, a))))
        yield from threadlib.sleep(0)
        yield from threadlib.sleep(0)
        ev.set()
        for _, b in reversed(pairs):
            yield from b.sendall(b"x")
        results = yield from threadlib.join_all(threads)
        for a, b in pairs:
            a.close()
            b.close()
        return results, request_id.get()

    results, main_value = threadlib.run(main())
    assert results == ["a", "b", "c"]
    assert main_value == "unset"  # nothing a thread set reached its spawner
    assert sorted(seen) == sorted(
        (name, when, name) for name in "abc" for when in ("after yield", "after event", "after recv x"))


def test_a_child_inherits_the_value_at_spawn_and_its_own_set_does_not_leak_back():
    log = []

    def child(started):
        log.append(("child at start", request_id.get()))
        request_id.set("child")
        started.set()
        yield from threadlib.sleep(0)
        log.append(("child later", request_id.get()))

    def parent():
        request_id.set("parent")
        started = threadlib.Event()
        # set and spawn in one step: the child still gets the parent's value
        t = yield from threadlib.spawn(child(started))
        request_id.set("parent changed after spawn")
        yield from started.wait()
        log.append(("parent after child set", request_id.get()))
        yield from t.join()
        return request_id.get()

    def main():
        t = yield from threadlib.spawn(parent())
        result = yield from t.join()
        return result, request_id.get()

    assert threadlib.run(main()) == ("parent changed after spawn", "unset")
    assert log == [
        ("child at start", "parent"),
        ("parent after child set", "parent changed after spawn"),
        ("child later", "child"),
    ]


def test_threads_start_with_the_callers_context_and_never_change_it():
    request_id.set("outer")
    seen = []

    def quiet():
        yield from threadlib.sleep(0)
        seen.append(("quiet", request_id.get()))

    def writer():
        seen.append(("writer before", request_id.get()))
        request_id.set("writer")
        yield from threadlib.sleep(0)
        seen.append(("writer after", request_id.get()))

    def last_words():
        yield from threadlib.sleep(0)
        request_id.set("ended")  # set in the step that ends the thread

    def main():
        w = yield from threadlib.spawn(writer())
        q = yield from threadlib.spawn(quiet())
        e = yield from threadlib.spawn(last_words())
        yield from threadlib.join_all([w, q, e])
        after = yield from threadlib.spawn(quiet())
        yield from after.join()
        return request_id.get()

    try:
        assert threadlib.run(main()) == "outer"
        assert request_id.get() == "outer"
    finally:
        request_id.set("unset")
    assert sorted(seen) == [("quiet", "outer"), ("quiet", "outer"), ("writer after", "writer"),
                            ("writer before", "outer")]


def test_spawning_from_outside_any_thread_copies_the_callers_current_context():
    sched = Scheduler(clock=VirtualClock())

    def show():
        yield from threadlib.sleep(1)
        return request_id.get()

    token = request_id.set("before run")
    try:
        early = sched.spawn(show())  # outside run(): a copy of this context now
        request_id.set("at run")

        def main():
            return (yield from early.join()), request_id.get()

        assert sched.run(main()) == ("before run", "at run")
    finally:
        request_id.reset(token)


def test_blocking_runs_in_a_copy_of_the_callers_context():
    def set_in_pool():
        request_id.set("pool")
        return request_id.get()

    def handler(name):
        request_id.set(name)
        got = yield from threadlib.blocking(request_id.get)
        inner = yield from threadlib.blocking(set_in_pool)
        return got, inner, request_id.get()

    def main():
        threads = []
        for name in ("a", "b", "c"):
            threads.append((yield from threadlib.spawn(handler(name))))
        plain = yield from threadlib.blocking(request_id.get)
        return plain, (yield from threadlib.join_all(threads))

    plain, results = threadlib.run(main())
    assert plain == "unset"
    assert results == [(n, "pool", n) for n in ("a", "b", "c")]


def test_async_def_threads_have_their_own_context_too():
    async def handler(name, ev):
        request_id.set(name)
        await ev.wait()
        child = await threadlib.spawn(inherit())
        return request_id.get(), await child.join(), await threadlib.blocking(request_id.get)

    async def inherit():
        await threadlib.sleep(0)
        return "child saw " + request_id.get()

    async def main():
        ev = threadlib.Event()
        threads = [await threadlib.spawn(handler(name, ev)) for name in ("a", "b")]
        await threadlib.sleep(0)
        ev.set()
        return await threadlib.join_all(threads)

    assert threadlib.run(main()) == [("a", "child saw a", "a"), ("b", "child saw b", "b")]


def test_green_threads_see_their_threads_context():
    def handler(name, ev):
        start = request_id.get()
        request_id.set(name)
        green.wrap(ev).wait()
        child = green.spawn(lambda: request_id.get())
        pool = green.call(threadlib.blocking(request_id.get))
        return start, request_id.get(), green.join(child), pool

    def main():
        request_id.set("main")
        ev = threadlib.Event()
        threads = []
        for name in ("a", "b", "c"):
            threads.append((yield from threadlib.spawn(green.thread(handler, name, ev))))
        yield from threadlib.sleep(0)
        ev.set()
        results = yield from threadlib.join_all(threads)
        return results, request_id.get()

    results, main_value = threadlib.run(main())
    assert results == [("main", n, n, n) for n in ("a", "b", "c")]
    assert main_value == "main"


def test_green_main_thread_starts_with_the_callers_context():
    token = request_id.set("caller")
    try:
        assert green.run(lambda: (green.sleep(0), request_id.get())[1]) == "caller"
    finally:
        request_id.reset(token)


def test_copy_context_run_inside_a_thread_works_as_in_asyncio():
    other: contextvars.ContextVar[int] = contextvars.ContextVar("other", default=0)

    def bump():
        other.set(other.get() + 1)
        return request_id.get(), other.get()

    def handler():
        request_id.set("thread")
        ctx = contextvars.copy_context()
        first = ctx.run(bump)
        yield from threadlib.sleep(0)
        second = ctx.run(bump)               # the copy keeps its own state across waits
        return first, second, other.get(), ctx[other]

    def quiet():
        yield from threadlib.sleep(0)
        return contextvars.copy_context().run(lambda: (request_id.get(), other.get()))

    def main():
        a = yield from threadlib.spawn(handler())
        b = yield from threadlib.spawn(quiet())
        return (yield from threadlib.join_all([a, b]))

    assert threadlib.run(main()) == [(("thread", 1), ("thread", 2), 0, 2), ("unset", 0)]


def test_an_instrument_installed_mid_run_keeps_every_threads_context():
    class Steps:
        count = 0

        def before_step(self, thread):
            self.count += 1

    steps = Steps()

    def worker(name):
        request_id.set(name)
        for _ in range(3):
            yield from threadlib.sleep(0)
            if request_id.get() != name:
                raise AssertionError(f"{name} sees {request_id.get()}")
        return name

    def main():
        a = yield from threadlib.spawn(worker("a"))
        threadlib.current_scheduler().add_instrument(steps)
        b = yield from threadlib.spawn(worker("b"))
        return (yield from threadlib.join_all([a, b]))

    assert threadlib.run(main()) == ["a", "b"]
    assert steps.count >= 8  # a's and b's steps after the install were seen


def test_cancellation_and_timeouts_reach_a_thread_inside_its_own_context():
    def handler(ev):
        request_id.set("handler")
        try:
            with threadlib.timeout(0.5):
                yield from ev.wait()
        except TimeoutError:
            timed_out = request_id.get()
        try:
            yield from ev.wait()
        finally:
            finally_saw.append((timed_out, request_id.get()))

    finally_saw = []

    def main():
        ev = threadlib.Event()
        t = yield from threadlib.spawn(handler(ev))
        yield from threadlib.sleep(1)
        assert (yield from t.cancel()) is True
        return request_id.get()

    assert Scheduler(clock=VirtualClock()).run(main()) == "unset"
    assert finally_saw == [("handler", "handler")]


@pytest.mark.parametrize("flavour", ["generator", "async"])
def test_many_threads_that_never_set_a_variable_all_read_the_callers_values(flavour):
    token = request_id.set("shared")
    try:
        def gen_reader():
            yield from threadlib.sleep(0)
            return request_id.get()

        async def async_reader():
            await threadlib.sleep(0)
            return request_id.get()

        reader = gen_reader if flavour == "generator" else async_reader

        def main():
            threads = []
            for _ in range(50):
                threads.append((yield from threadlib.spawn(reader())))
            return (yield from threadlib.join_all(threads))

        assert threadlib.run(main()) == ["shared"] * 50
    finally:
        request_id.reset(token)
