"""The compiled run loop (threadlib/_kernel/_speedups.c) and the pure one
(scheduler.Scheduler._run_ready) behave the same. The whole suite runs
under both (the README's test command runs it twice); these tests compare
the two directly, in child processes, since the choice is made at import."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from tests import run_trace_program

TRACE = os.path.join(os.path.dirname(__file__), "loop_trace.py")


def run_trace(pure: bool) -> list[str]:
    return run_trace_program(TRACE, pure)


def test_the_compiled_loop_is_built_and_used_unless_pure_is_asked():
    # setup.sh installs the compiler the build needs, so here it is built.
    assert run_trace(pure=False)[0] == "True"
    assert run_trace(pure=True)[0] == "False"


def test_both_loops_do_the_same_things_in_the_same_order():
    compiled, pure = run_trace(pure=False)[1:], run_trace(pure=True)[1:]
    assert compiled == pure
    # And what they agree on is right, not merely the same.
    assert compiled[:14] == ["put 0", "put 1", "got 0", "got 1", "put 2", "put 3", "got 2", "got 3",
                             "e1 woke", "e2 woke", "get timed out", "cancel parked getter -> True",
                             "cancel ready getter -> True cancelled", "parked getter got 'handed'"]
    assert compiled[14:20] == ["echoed b'ONE'", "echoed b'TWO'", "echoed b'THREE'", "second reader refused: True",
                               "cancel waiting reader -> True", "recv timed out"]
    assert compiled[20:24] == ["a0", "a0<-None", "a1", "b0"]
    assert "cancel -> True 'returned from a throw'" in compiled
    assert "joined failure fails" in compiled
    assert any(line.startswith("spinner cancelled at its wait after") for line in compiled)
    assert compiled.index("w1 sees -") < compiled.index("w1 sees w1 after a step")
    assert "w2 sees -" in compiled and "main sees -" in compiled
    assert any(line.startswith("unknown call: thread misuses") for line in compiled)
    assert "worker error: ZeroDivisionError" in compiled
    assert compiled[-2:] == ["now 1.25", "run raised KeyboardInterrupt(from main)"]  # 0.75 s of waits first


def _socket_call_outcomes(recv, recv_into, send) -> list:
    """What each socket call gives, or the exception's type and errno."""
    def outcome(call, *args):
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001 (the outcome is the point)
            return (type(exc).__name__, getattr(exc, "errno", None))

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    buf = bytearray(8)
    got = [
        outcome(send, a, b"hello world"),
        outcome(recv, b, 5),
        outcome(recv_into, b, buf, 3),
        bytes(buf),
        outcome(recv_into, b, buf, 0),
        bytes(buf),
        outcome(recv, b, 10),  # nothing there: EAGAIN
        outcome(recv, b, -1),
        outcome(recv_into, b, bytearray(2), 5),
        outcome(send, a, memoryview(b"xyz")[1:]),
        outcome(recv, b, 10),
    ]
    a.close()
    got.append(outcome(recv, b, 10))  # the peer closed: EOF
    got.append(outcome(send, b, b"x"))  # and is gone: EPIPE
    b.close()
    got.append(outcome(recv, b, 10))  # closed: EBADF
    got.append(outcome(send, b, b"x"))
    got.append(outcome(recv, "not a socket", 1))
    return got


def test_the_compiled_socket_calls_behave_as_socket_methods():
    from threadlib._kernel import _speedups

    ours = _socket_call_outcomes(_speedups.sock_recv, _speedups.sock_recv_into, _speedups.sock_send)
    stdlib = _socket_call_outcomes(socket.socket.recv, socket.socket.recv_into, socket.socket.send)
    assert ours[:-1] == stdlib[:-1]
    assert ours[0] == 11 and ours[1] == b"hello" and ours[3][:3] == b" wo"
    assert ours[6] == ("BlockingIOError", errno.EAGAIN)
    assert ours[-5] == b"" and ours[-4] == ("BrokenPipeError", errno.EPIPE)
    assert ours[-3] == ours[-2] == ("OSError", errno.EBADF)
    assert ours[-1][0] == stdlib[-1][0] == "TypeError"


def test_sockio_refuses_a_socket_whose_io_methods_are_overridden():
    import ssl

    from threadlib.io import sockio

    raw = socket.socket()
    try:
        wrapped = ssl.create_default_context().wrap_socket(raw, do_handshake_on_connect=False,
                                                           server_hostname="localhost")
        with wrapped, pytest.raises(TypeError, match="threadlib.io.tls"):
            sockio.wrap(wrapped)
    finally:
        raw.close()
