"""threadlib.loop on every newer Python this machine has (3.12 and later,
each in the ``.venv-py3.N`` that ``setup.sh`` makes; ``tests/pythons.py``
finds them): ``asyncio.run(main(), loop_factory=threadlib.loop.new_event_loop)``
runs a real TCP round trip there, and the loop's own tests and its
real-library tests pass there too. (CPython's test_asyncio against the loop
on each of them: ``test_loop_conformance.py``.)"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap

import pytest

from tests import REPO_ROOT
from tests.pythons import newer_pythons

PYTHONS = newer_pythons()

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not PYTHONS, reason="no Python 3.12 or newer on this machine (PATH and pyenv looked at)"),
]

ASYNCIO_RUN = textwrap.dedent("""
    import asyncio, sys
    import threadlib, threadlib.loop

    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello from " + sys.version.split()[0].encode() + b"\\n")
        reply = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()
        loop = asyncio.get_running_loop()
        return type(loop).__name__, threadlib.current_scheduler() is loop.scheduler, reply

    print(asyncio.run(main(), loop_factory=threadlib.loop.new_event_loop))
""")


def _run(python, args, timeout):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([str(python), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("version, python", PYTHONS, ids=[version for version, _ in PYTHONS])
def test_asyncio_run_takes_the_loop_factory(version, python):
    assert python.exists(), f"no venv for Python {version}: setup.sh makes {python.parent.parent.name}"
    done = _run(python, ["-c", ASYNCIO_RUN], timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    full_version = _run(python, ["-c", "import sys; print(sys.version.split()[0])"], timeout=30).stdout.strip()
    assert full_version.startswith(version + ".")
    assert done.stdout.strip() == repr(("ThreadlibEventLoop", True, f"HELLO FROM {full_version}\n".encode()))


@pytest.mark.parametrize("version, python", PYTHONS, ids=[version for version, _ in PYTHONS])
def test_the_loops_own_tests_pass_there(version, python):
    assert python.exists(), f"no venv for Python {version}: setup.sh makes {python.parent.parent.name}"
    done = _run(python, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "tests/threadlib/test_loop.py", "tests/threadlib/test_loop_libraries.py"], timeout=280)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed in .*", summary), summary  # nothing failed, errored or skipped
