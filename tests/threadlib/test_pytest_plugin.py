"""threadlib's pytest plugin, run by pytest itself (pytester): generator
and async def tests marked @pytest.mark.threadlib run as threads, with
fixtures, parametrize and class or module marks; a virtual clock makes
long timeouts instant; failures, deadlocks and bad marks are reported.
(The wheel's pytest11 entry point is checked with the wheel's other
metadata in test_exports.)"""

from __future__ import annotations

import pytest

from tests import REPO_ROOT

pytest_plugins = ["pytester"]

# What tests/conftest.py does: register the plugin under its entry point's
# name unless the installed entry point already did.
CONFTEST = """
def pytest_configure(config):
    if not config.pluginmanager.has_plugin("threadlib") and not config.pluginmanager.is_blocked("threadlib"):
        from threadlib.testing import pytest_plugin
        config.pluginmanager.register(pytest_plugin, "threadlib")
"""


@pytest.fixture
def tester(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.syspathinsert(REPO_ROOT)  # this tree's threadlib, whatever the venv has installed
    return pytester


def test_generator_and_async_tests_run_as_threads_with_fixtures_parametrize_and_marks(tester):
    tester.makepyfile("""
        import pytest
        import threadlib

        @pytest.fixture
        def greeting():
            return "hello"

        @pytest.mark.threadlib
        @pytest.mark.parametrize("n", [1, 3])
        def test_generator(greeting, n):
            me = yield from threadlib.current()
            assert me.name == "main" and greeting == "hello"
            workers = []
            for i in range(n):
                workers.append((yield from threadlib.spawn(lambda i=i: (yield from threadlib.sleep(0)) or i)))
            assert (yield from threadlib.join_all(workers)) == list(range(n))

        @pytest.mark.threadlib
        async def test_async(greeting, tmp_path):
            await threadlib.sleep(0)
            assert threadlib.current_scheduler() is not None and tmp_path.exists()

        def test_plain_functions_are_left_alone():
            assert threadlib.current_scheduler() is None
    """)
    tester.makepyfile(test_marks="""
        import pytest
        import threadlib

        pytestmark = pytest.mark.threadlib

        def test_module_level():
            yield from threadlib.sleep(0)

        class TestGroup:
            def test_method(self):
                yield from threadlib.sleep(0)
                assert isinstance(self, TestGroup)

            async def test_async_method(self):
                await threadlib.sleep(0)

            def test_plain(self):
                assert threadlib.current_scheduler() is None
    """)
    tester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=8)


def test_virtual_clock_makes_an_hour_of_timeouts_instant_and_a_scheduler_factory_is_used(tester):
    tester.makepyfile("""
        import pytest
        import threadlib

        @pytest.mark.threadlib(virtual_clock=True)
        def test_by_mark():
            ev = threadlib.Event()
            with pytest.raises(TimeoutError):
                yield from ev.wait(timeout=60)
            assert threadlib.now() == 60.0
            yield from threadlib.sleep(3600)
            assert threadlib.now() == 3660.0  # an hour of virtual time, not of the test's

        @pytest.mark.threadlib
        def test_by_fixture(virtual_clock):
            assert threadlib.current_scheduler().clock is virtual_clock
            yield from threadlib.sleep(90)
            assert virtual_clock.now() == 90.0

        @pytest.mark.threadlib
        def test_real_clock_by_default():
            assert not threadlib.current_scheduler().clock.virtual
            yield from threadlib.sleep(0)
    """)
    tester.makepyfile(test_factory="""
        import pytest
        import threadlib
        from threadlib.process.signals import SignalWorker, scheduler

        @pytest.mark.threadlib(scheduler=scheduler)
        def test_with_signals():
            yield from threadlib.sleep(0)
            assert threadlib.current_scheduler().worker(SignalWorker) is not None

        @pytest.mark.threadlib(scheduler=scheduler, virtual_clock=True)
        def test_with_signals_on_a_virtual_clock():
            yield from threadlib.sleep(5)
            assert threadlib.current_scheduler().clock.virtual and threadlib.now() == 5.0
    """)
    tester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=5)


def test_failures_deadlocks_and_bad_marks_are_reported(tester):
    tester.makepyfile("""
        import pytest
        import threadlib

        @pytest.mark.threadlib
        def test_fails():
            yield from threadlib.sleep(0)
            assert 1 == 2, "the thread's own assertion"

        @pytest.mark.threadlib
        def test_fails_in_another_thread():
            t = yield from threadlib.spawn(lambda: (yield from threadlib.sleep(0)) or 1 / 0)
            yield from t.join()

        @pytest.mark.threadlib(virtual_clock=True)
        def test_deadlocks():
            yield from threadlib.Event().wait()

        @pytest.mark.threadlib(virtual_clok=True)
        def test_misspelt_option():
            yield from threadlib.sleep(0)

        @pytest.mark.threadlib(True)
        def test_positional_option():
            yield from threadlib.sleep(0)
    """)
    tester.makepyfile(test_unmarked="""
        import threadlib

        def test_unmarked_generator():
            yield from threadlib.sleep(0)
    """)
    result = tester.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(failed=5, errors=1)
    result.stdout.fnmatch_lines([
        "*the thread's own assertion*",
        "*ZeroDivisionError*",
        "*deadlock: every thread waits forever*",
        "*unknown @pytest.mark.threadlib option(s) virtual_clok; known: virtual_clock, scheduler*",
        "*takes keyword arguments only*",
    ])
    result.stdout.fnmatch_lines(["*'yield' keyword is allowed in fixtures, but not in tests (test_unmarked_generator)*"])


def test_the_plugin_can_be_turned_off(tester):
    tester.makepyfile("""
        import pytest

        def test_nothing():
            pass
    """)
    result = tester.runpytest("-p", "no:cacheprovider", "-p", "no:threadlib", "--markers")
    assert "@pytest.mark.threadlib" not in result.stdout.str()
    result = tester.runpytest("-p", "no:cacheprovider", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.threadlib(virtual_clock=False, scheduler=None):*"])
