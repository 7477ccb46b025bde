"""Testing support. ``threadlib.testing.pytest_plugin`` is a pytest plugin
(installed as the ``pytest11`` entry point ``threadlib``) that runs
generator and ``async def`` test functions marked
``@pytest.mark.threadlib`` as the main thread of a fresh scheduler,
optionally on a ``VirtualClock``. This package imports nothing itself, and
nothing in the runtime imports it."""
