"""Static typing: threadlib passes mypy --strict under the project's
configuration, and its public API types the way threads are written:
``yield from call()`` in a generator thread and ``await call()`` in an
``async def`` thread give the same, precise result type, and both networks
satisfy the ``threadlib.net`` contract.

The samples below are type-checked, never run. Each ``reveal_type`` line
carries the type mypy must reveal (``# expect: TYPE``); each line of the
failing sample that must be rejected carries ``# error: CODE``.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests import REPO_ROOT

ROOT = REPO_ROOT

pytestmark = pytest.mark.timeout(300)

THREAD = "threadlib._kernel.threads.Thread"

SAMPLE = '''
from __future__ import annotations

import ssl
from typing import Any

import threadlib
from threadlib.calls import Waits
from threadlib.io import sockio, tcpsockio, tls
from threadlib.net import DatagramNetwork, Listener, Network, Stream


def echo(conn: sockio.Stream) -> Waits[int]:
    data = yield from conn.recv(100, timeout=5.0)
    reveal_type(data)  # expect: bytes
    sent = yield from conn.send(data)
    reveal_type(sent)  # expect: int
    yield from conn.sendall(data)
    n = yield from conn.recv_into(bytearray(16))
    reveal_type(n)  # expect: int
    return sent + n


def generator_thread() -> Waits[None]:
    listener = yield from sockio.listen(("127.0.0.1", 0))
    reveal_type(listener)  # expect: threadlib.io.sockio.Listener
    conn, peer = yield from listener.accept(timeout=1.0)
    reveal_type(conn)  # expect: threadlib.io.sockio.Stream
    t = yield from threadlib.spawn(echo(conn))
    reveal_type(t)  # expect: THREAD
    me = yield from threadlib.current()
    reveal_type(me)  # expect: THREAD
    yield from threadlib.sleep(0.01)
    ev = threadlib.Event()
    yield from ev.wait()
    yield from ev.wait(timeout=0.5)
    q: threadlib.Queue[int] = threadlib.Queue(maxsize=4)
    yield from q.put(1)
    item = yield from q.get()
    reveal_type(item)  # expect: int
    q.put_nowait(2)
    reveal_type(q.get_nowait())  # expect: int
    mutex = threadlib.Mutex()
    locked = yield from mutex.acquire(timeout=1.0)
    reveal_type(locked)  # expect: bool
    mutex.release()
    first = yield from threadlib.join_any([t])
    reveal_type(first)  # expect: THREAD
    results = yield from threadlib.join_all([t])
    reveal_type(results)  # expect: list[Any]
    was_running = yield from t.cancel()
    reveal_type(was_running)  # expect: bool
    with threadlib.timeout(1.0):
        yield from t.wait()


async def async_thread() -> None:
    listener = await sockio.listen(("127.0.0.1", 0))
    reveal_type(listener)  # expect: threadlib.io.sockio.Listener
    conn, peer = await listener.accept()
    reveal_type(conn)  # expect: threadlib.io.sockio.Stream
    data = await conn.recv(100)
    reveal_type(data)  # expect: bytes
    sent = await conn.send(data)
    reveal_type(sent)  # expect: int
    await conn.sendall(data)
    t = await threadlib.spawn(echo(conn))
    reveal_type(t)  # expect: THREAD
    await threadlib.sleep(0)
    ev = threadlib.Event()
    await ev.wait(timeout=0.5)
    q: threadlib.Queue[str] = threadlib.Queue()
    await q.put("x")
    item = await q.get()
    reveal_type(item)  # expect: str
    mutex = threadlib.Mutex()
    async with mutex:
        pass
    result = await t.join()
    reveal_type(result)  # expect: Any


def serve(net: Network) -> Waits[None]:
    listener = yield from net.listen(("127.0.0.1", 0))
    reveal_type(listener)  # expect: threadlib.net.Listener
    stream, peer = yield from listener.accept()
    reveal_type(stream)  # expect: threadlib.net.Stream
    data = yield from stream.recv()
    reveal_type(data)  # expect: bytes
    yield from stream.sendall(data)
    client = yield from net.connect(listener.address, timeout=1.0)
    reveal_type(client)  # expect: threadlib.net.Stream
    addresses = yield from net.resolve("localhost", 80)
    reveal_type(addresses)  # expect: list[tuple[int, Any]]


def on_both_networks(user: tcpsockio.UserNetwork) -> Waits[None]:
    yield from serve(sockio.kernel)
    yield from serve(user)
    opened = tcpsockio.open_network()
    reveal_type(opened)  # expect: threadlib.io.tcpsockio.network.UserNetwork
    yield from serve(opened)
    udp: DatagramNetwork = sockio.kernel


def over_tls(ctx: ssl.SSLContext, user: tcpsockio.UserNetwork) -> Waits[None]:
    listener = yield from sockio.listen(("127.0.0.1", 0), ssl=ctx)
    reveal_type(listener)  # expect: threadlib.io.tls.TlsListener
    conn, peer = yield from listener.accept()
    reveal_type(conn)  # expect: threadlib.io.tls.TlsStream
    client = yield from sockio.kernel.connect(("127.0.0.1", 443), ssl=ctx, server_hostname="localhost")
    reveal_type(client)  # expect: threadlib.io.tls.TlsStream
    plain = yield from user.connect(("10.77.0.1", 80))
    reveal_type(plain)  # expect: threadlib.io.tcpsockio.stream.Stream
    wrapped = yield from tls.wrap(plain, ctx, server_hostname="example.org")
    reveal_type(wrapped)  # expect: threadlib.io.tls.TlsStream
    yield from serve(tls.TlsNetwork(user, ctx, ctx))


def concrete_objects_keep_the_contract(
    k: sockio.Stream, u: tcpsockio.Stream, kl: sockio.Listener, ul: tcpsockio.Listener,
    t: tls.TlsStream, tl: tls.TlsListener,
) -> list[Stream | Listener]:
    return [k, u, kl, ul, t, tl]


def group_body(g: threadlib.TaskGroup, conn: sockio.Stream) -> Waits[str]:
    child = g.spawn(echo, conn)
    reveal_type(child)  # expect: THREAD
    reveal_type(child.parent)  # expect: THREAD | None
    yield from threadlib.sleep(0)
    return "done"


def scopes_and_groups(conn: sockio.Stream) -> Waits[int]:
    result = yield from threadlib.task_group(group_body, conn)
    reveal_type(result)  # expect: Any
    with threadlib.move_on_after(1.0) as scope:
        yield from threadlib.sleep(5)
    reveal_type(scope.cancelled_caught)  # expect: bool
    with threadlib.fail_after(1.0, shield=True) as limit:
        yield from threadlib.sleep(5)
    reveal_type(limit.expired)  # expect: bool
    scope.deadline = threadlib.now() + 1
    return 1


async def async_group() -> None:
    async with threadlib.TaskGroup() as g:
        reveal_type(g)  # expect: threadlib._kernel.groups.TaskGroup
        g.spawn(async_thread)
    with threadlib.CancelScope(shield=True):
        await threadlib.sleep(1)
    await threadlib.task_group(lambda g: async_thread())
'''

FAILING_SAMPLE = '''
from __future__ import annotations

from threadlib.calls import Waits
from threadlib.io import sockio, tcpsockio
from threadlib.net import DatagramNetwork


def handler(conn: sockio.Stream) -> Waits[None]:
    x: int = yield from conn.recv(10)  # error: assignment


def tcp_only(user: tcpsockio.UserNetwork) -> None:
    udp: DatagramNetwork = user  # error: assignment
'''


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    # From the repository root, so the threadlib checked is this checkout's
    # and the cache is the (git-ignored) .mypy_cache shared by every run.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )


def _report(result: subprocess.CompletedProcess[str]) -> str:
    return f"mypy exited {result.returncode}:\n{result.stdout}{result.stderr}"


def _marked(source: str, marker: str) -> dict[int, str]:
    """Line number -> what the ``# marker: ...`` comment on it says."""
    found = {}
    for number, line in enumerate(source.splitlines(), 1):
        m = re.search(rf"#\s*{marker}:\s*(.+?)\s*$", line)
        if m:
            found[number] = m.group(1).replace("THREAD", THREAD)
    return found


def test_threadlib_passes_mypy_strict():
    result = _mypy("-p", "threadlib")
    assert result.returncode == 0, _report(result)
    assert "Success" in result.stdout, _report(result)


def test_the_public_api_types_generator_and_async_threads_alike(tmp_path):
    sample = tmp_path / "sample_threads.py"
    sample.write_text(SAMPLE)
    result = _mypy(str(sample))
    assert result.returncode == 0, _report(result)
    revealed = {
        # mypy 1.x spells builtins in full (builtins.str), 2.x does not.
        int(m.group(1)): m.group(2).replace("builtins.", "")
        for m in re.finditer(r"^.*sample_threads\.py:(\d+): note: Revealed type is \"(.+)\"$",
                             result.stdout, re.MULTILINE)
    }
    expected = _marked(SAMPLE, "expect")
    assert len(expected) > 20
    for line, want in expected.items():
        assert revealed.get(line) == want, f"line {line}: expected {want!r}\n{_report(result)}"


def test_a_wrongly_typed_use_is_rejected(tmp_path):
    sample = tmp_path / "sample_errors.py"
    sample.write_text(FAILING_SAMPLE)
    result = _mypy(str(sample))
    assert result.returncode == 1, _report(result)
    errors = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"^.*sample_errors\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.MULTILINE)
    }
    assert errors == _marked(FAILING_SAMPLE, "error"), _report(result)
