"""CPython's own asyncio tests (``test.test_asyncio``) against an event loop:
the stock one or ``threadlib.loop``'s. Run as a program by
``test_loop_conformance.py``, one process per loop:

    python -m tests.threadlib.asyncio_conformance {stock|threadlib} OUT.json [MODULE ...]

Each test class below is subclassed the way alternative loops (uvloop) test
themselves: ``create_event_loop`` returns the loop under test, and the
asyncio policy makes that loop for the tests that call
``asyncio.new_event_loop()``. The stock run uses the very same subclasses
with the stock loop, so the two runs have the same test ids. Writes
``{test id: "pass" | "fail" | "error" | "skip"}`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import unittest
import warnings

# The modules and, in each, the classes that run on a Linux event loop
# (the Windows and the other selectors' variants left out).
SUITES: dict[str, list[str]] = {
    "test_events": ["EPollEventLoopTests"],
    "test_streams": ["StreamTests"],
    "test_server": ["SelectorStartServerTests", "UnixServerCleanupTests"],
    "test_sock_lowlevel": ["EPollEventLoopTests"],
    "test_subprocess": ["SubprocessThreadedWatcherTests"],
    "test_tasks": ["CTask_CFuture_Tests", "CTask_CFuture_SubclassTests", "PyTask_PyFuture_Tests",
                   "GenericTaskTests", "FutureGatherTests", "CoroutineGatherTests", "RunCoroutineThreadsafeTests", "SleepTests", "CompatibilityTests",
                   "CCurrentLoopTests", "PyCurrentLoopTests", "CIntrospectionTests", "PyIntrospectionTests"],
    "test_futures": ["CFutureTests", "CSubFutureTests", "PyFutureTests", "CFutureDoneCallbackTests",
                     "CSubFutureDoneCallbackTests", "PyFutureDoneCallbackTests", "CFutureInheritanceTests",
                     "PyFutureInheritanceTests"],
    "test_sendfile": ["EPollEventLoopTests"],
    "test_ssl": ["TestSSL"],
    "test_sslproto": ["SslProtoHandshakeTests", "SelectorStartTLSTests"],
    "test_buffered_proto": ["BufferedProtocolSelectorTests"],
    "test_locks": ["LockTests", "EventTests", "ConditionTests", "SemaphoreTests", "BarrierTests"],
    "test_queues": ["QueueBasicTests", "QueueGetTests", "QueuePutTests", "LifoQueueTests", "PriorityQueueTests",
                    "QueueJoinTests", "LifoQueueJoinTests", "PriorityQueueJoinTests"],
    "test_taskgroups": ["TestTaskGroup"],
    "test_timeouts": ["TimeoutTests"],
    "test_waitfor": ["AsyncioWaitForTest"],
    "test_threads": ["ToThreadTests"],
    "test_pep492": ["LockTests", "StreamReaderTests", "CoroutineTests"],
}


def _policy(kind: str) -> asyncio.AbstractEventLoopPolicy:
    if kind == "stock":
        return asyncio.DefaultEventLoopPolicy()
    import threadlib.loop

    return threadlib.loop.EventLoopPolicy()


def _loop_factory(kind: str) -> type:
    if kind == "stock":
        return asyncio.SelectorEventLoop
    import threadlib.loop

    return threadlib.loop.ThreadlibEventLoop


def build(kind: str, modules: list[str]) -> unittest.TestSuite:
    """The suite of every listed class of ``modules``, subclassed for ``kind``."""
    import importlib

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    factory = _loop_factory(kind)
    for module_name in modules:
        module = importlib.import_module(f"test.test_asyncio.{module_name}")
        for class_name in SUITES[module_name]:
            base = getattr(module, class_name, None)
            if base is None:
                continue
            suite.addTests(loader.loadTestsFromTestCase(_subclass(kind, module_name, base, factory)))
    return suite


def _subclass(kind: str, module_name: str, base: type, factory: type) -> type:
    namespace: dict[str, object] = {"__module__": f"{__name__}.{module_name}", "__qualname__": base.__name__}
    original_setup = base.setUp

    def setUp(self: unittest.TestCase) -> None:  # noqa: N802 (unittest's name)
        asyncio.set_event_loop_policy(_policy(kind))
        original_setup(self)

    def tearDown(self: unittest.TestCase, original: object = base.tearDown) -> None:  # noqa: N802
        try:
            original(self)  # type: ignore[operator]
        finally:
            # Back to the loop under test for the next test: an
            # IsolatedAsyncioTestCase makes its loop before its setUp.
            asyncio.set_event_loop_policy(_policy(kind))

    namespace["setUp"] = setUp
    namespace["tearDown"] = tearDown
    if hasattr(base, "create_event_loop"):
        namespace["create_event_loop"] = lambda self: factory()
    return type(base.__name__, (base,), namespace)


class _Recorder(unittest.TextTestResult):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.outcomes: dict[str, str] = {}

    def _note(self, test: unittest.TestCase, outcome: str) -> None:
        test_id = test.id()
        if self.outcomes.get(test_id, "pass") == "pass":  # a failing subtest fails its test
            self.outcomes[test_id] = outcome

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self._note(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: object) -> None:  # noqa: N802
        super().addFailure(test, err)  # type: ignore[arg-type]
        self._note(test, "fail")

    def addError(self, test: unittest.TestCase, err: object) -> None:  # noqa: N802
        super().addError(test, err)  # type: ignore[arg-type]
        self._note(test, "error")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._note(test, "skip")

    def addExpectedFailure(self, test: unittest.TestCase, err: object) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)  # type: ignore[arg-type]
        self._note(test, "skip")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._note(test, "fail")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: object) -> None:  # noqa: N802
        super().addSubTest(test, subtest, err)  # type: ignore[arg-type]
        if err is not None:
            self._note(test, "fail")


def main(argv: list[str]) -> int:
    kind, out = argv[0], argv[1]
    modules = argv[2:] or list(SUITES)
    warnings.simplefilter("ignore")
    created = _count_loops(kind)
    asyncio.set_event_loop_policy(_policy(kind))
    suite = build(kind, modules)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=int(__import__("os").environ.get("VERBOSE", "0")),
                                     resultclass=_Recorder)
    result = runner.run(suite)
    outcomes = dict(result.outcomes)  # type: ignore[attr-defined]
    # Evidence that the loop under test really ran (a threadlib run that
    # made no ThreadlibEventLoop would prove nothing).
    outcomes["loops created"] = created[0]
    with open(out, "w") as f:
        json.dump(outcomes, f, indent=0, sort_keys=True)
    return 0


def _count_loops(kind: str) -> list[int]:
    created = [0]
    loop_class = _loop_factory(kind)
    original_init = loop_class.__init__

    def counting_init(self: object, *args: object, **kwargs: object) -> None:
        created[0] += 1
        original_init(self, *args, **kwargs)

    loop_class.__init__ = counting_init  # type: ignore[misc]
    return created


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
