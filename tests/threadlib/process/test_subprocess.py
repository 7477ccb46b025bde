"""threadlib.process.subprocess with real child processes: run's results,
errors and timeouts, Process pipes and waits, cancellation that kills and
reaps (no zombie), and a child's output spliced into a real socket."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys

import pytest

import threadlib
from threadlib.io import sockio, splice
from threadlib.process.subprocess import PIPE, STDOUT, PipeReader, run, spawn_process

from ..fds import make_epoll, open_fds

PY = sys.executable
pytestmark = pytest.mark.timeout(60)


def assert_reaped(pid: int) -> None:
    """No such child any more: not running, not a zombie."""
    assert not os.path.exists(f"/proc/{pid}"), open(f"/proc/{pid}/status").read()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def python(code: str) -> list[str]:
    return [PY, "-c", code]


# ---------------------------------------------------------------------------
# run


def test_run_feeds_input_and_collects_output_and_status():
    def main():
        yield from make_epoll()
        before = open_fds()
        done = yield from run(python("import sys; d = sys.stdin.buffer.read(); "
                                     "sys.stdout.buffer.write(d.upper()); sys.stderr.write('err'); sys.exit(3)"),
                              input=b"hello " * 50_000, capture_output=True)
        assert open_fds() == before
        return done

    done = threadlib.run(main())
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 3
    assert done.stdout == b"HELLO " * 50_000  # more than a pipe holds, both ways
    assert done.stderr == b"err"


def test_run_without_capture_returns_none_and_stderr_can_join_stdout():
    def main():
        plain = yield from run(["true"])
        merged = yield from run(["sh", "-c", "echo out; echo err >&2"], stdout=PIPE, stderr=STDOUT)
        return plain, merged

    plain, merged = threadlib.run(main())
    assert (plain.returncode, plain.stdout, plain.stderr) == (0, None, None)
    assert merged.stdout == b"out\nerr\n" and merged.stderr is None


def test_run_check_raises_called_process_error_with_the_output():
    def main():
        yield from run(["sh", "-c", "echo partial; exit 7"], check=True, capture_output=True)

    with pytest.raises(subprocess.CalledProcessError) as info:
        threadlib.run(main())
    assert info.value.returncode == 7 and info.value.stdout == b"partial\n"


def test_run_reports_a_signal_as_a_negative_status():
    def main():
        return (yield from run(["sh", "-c", "kill -TERM $$"]))

    assert threadlib.run(main()).returncode == -signal.SIGTERM


def test_run_timeout_kills_reaps_and_raises_timeout_expired_with_the_output():
    r, w = os.pipe()  # the child's pid comes out here, on its stderr

    def main():
        with pytest.raises(subprocess.TimeoutExpired) as info:
            yield from run(["sh", "-c", "echo $$ >&2; echo started; exec sleep 60"], timeout=3,
                           stdout=PIPE, stderr=w)
        return info.value

    try:
        expired = threadlib.run(main())
        pid = int(os.read(r, 100))
    finally:
        os.close(r)
        os.close(w)
    assert expired.timeout == 3 and expired.output == b"started\n"
    assert_reaped(pid)


def test_run_refuses_bad_arguments_and_missing_programs_clearly():
    def main():
        yield from make_epoll()
        before = open_fds()
        with pytest.raises(FileNotFoundError, match="no-such-program"):
            yield from run(["/nonexistent/no-such-program"], capture_output=True)
        assert open_fds() == before
        with pytest.raises(ValueError, match="stdin and input"):
            yield from run(["true"], input=b"x", stdin=subprocess.DEVNULL)
        with pytest.raises(ValueError, match="capture_output"):
            yield from run(["true"], capture_output=True, stdout=PIPE)

    threadlib.run(main())


# ---------------------------------------------------------------------------
# Process


def test_process_pipes_are_streams_and_wait_returns_the_status():
    def main():
        proc = yield from spawn_process(
            python("import sys\nprint('ready', flush=True)\n"
                   "for line in sys.stdin: print(line.strip()[::-1], flush=True)\nsys.exit(5)"),
            stdin=PIPE, stdout=PIPE)
        with proc:
            assert (yield from proc.stdout.readline(timeout=30)) == b"ready\n"
            for word in (b"abc", b"hello"):
                yield from proc.stdin.sendall(word + b"\n")
                assert (yield from proc.stdout.readline(timeout=30)) == word[::-1] + b"\n"
            proc.stdin.shutdown()  # EOF: the child leaves its loop
            assert (yield from proc.stdout.read_all()) == b""
            assert (yield from proc.wait(timeout=30)) == 5
            assert proc.returncode == 5 and proc.poll() == 5
            proc.kill()  # reaped: nothing happens
        return proc.pid

    assert_reaped(threadlib.run(main()))


def test_many_threads_may_wait_for_one_child_and_a_timed_out_wait_leaves_it_running():
    def main():
        proc = yield from spawn_process(python("import sys; sys.stdin.read()"), stdin=PIPE)
        with proc:
            with pytest.raises(TimeoutError):
                yield from proc.wait(timeout=0.05)
            assert proc.returncode is None and proc.poll() is None  # still running
            waiters = []
            for _ in range(3):
                waiters.append((yield from threadlib.spawn(proc.wait())))
            proc.stdin.close()
            assert (yield from threadlib.join_all(waiters)) == [0, 0, 0]

    threadlib.run(main())


def test_cancelling_a_waiting_thread_kills_and_reaps_the_child():
    def main():
        proc = yield from spawn_process(["sh", "-c", "echo up; exec sleep 60"], stdout=PIPE)
        assert (yield from proc.stdout.readline(timeout=30)) == b"up\n"
        waiter = yield from threadlib.spawn(proc.wait())
        yield from threadlib.sleep(0)  # the waiter is now waiting
        assert (yield from waiter.cancel()) is True
        assert proc.returncode == -signal.SIGKILL
        assert_reaped(proc.pid)
        proc.close()

    threadlib.run(main())


def test_a_kill_grace_sends_sigterm_first():
    child = ("import signal, sys, time\n"
             "def bye(*_): print('term', flush=True); sys.exit(3)\n"
             "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)")

    def main():
        proc = yield from spawn_process(python(child), stdout=PIPE, kill_grace=30)
        with proc:
            assert (yield from proc.stdout.readline(timeout=30)) == b"ready\n"
            waiter = yield from threadlib.spawn(proc.wait())
            yield from threadlib.sleep(0)
            yield from waiter.cancel()
            assert proc.returncode == 3  # it handled SIGTERM, well within its grace
            assert (yield from proc.stdout.read_all()) == b"term\n"
            assert_reaped(proc.pid)

    threadlib.run(main())


def test_a_child_ignoring_sigterm_gets_sigkill_after_the_grace():
    def main():
        proc = yield from spawn_process(["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"],
                                        stdout=PIPE, kill_grace=0.2, start_new_session=True)
        with proc:
            assert (yield from proc.stdout.readline(timeout=30)) == b"up\n"
            with pytest.raises(TimeoutError):
                with threadlib.timeout(0.1):  # the caller's deadline passes: cleanup still waits
                    yield from proc.wait()
            # A timeout leaves the child running; a cancellation does not.
            waiter = yield from threadlib.spawn(proc.wait())
            yield from threadlib.sleep(0)
            yield from waiter.cancel()
            assert proc.returncode == -signal.SIGKILL
            assert_reaped(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # the shell's sleep, orphaned by SIGKILL

    threadlib.run(main())


def test_cancelling_run_kills_and_reaps_even_past_the_callers_deadline():
    r, w = os.pipe()
    os.set_blocking(r, False)

    def runner():
        with threadlib.timeout(30):
            yield from run(["sh", "-c", "echo $$; exec sleep 60"], stdout=w)

    def main():
        yield from make_epoll()
        before = open_fds()
        t = yield from threadlib.spawn(runner())
        with PipeReader(r) as pids:
            pid = int((yield from pids.readline(timeout=30)))
            assert (yield from t.cancel()) is True
        assert_reaped(pid)
        os.close(w)
        assert open_fds() == before - {r, w}

    threadlib.run(main())


def test_process_close_kills_a_running_child_and_the_scheduler_reaps_it():
    def main():
        proc = yield from spawn_process(["sleep", "60"])
        proc.close()  # never waits: SIGKILL now, reaped when it dies
        assert proc.returncode in (None, -signal.SIGKILL)
        return proc

    proc = threadlib.run(main())
    assert proc.returncode == -signal.SIGKILL  # at the latest when the scheduler ended
    assert_reaped(proc.pid)


@pytest.mark.parametrize("fallback", [False, True], ids=["splice", "copy"])
def test_a_childs_output_spliced_into_a_socket_arrives_byte_exact(fallback):
    """After a banner line (read with readline, which reads ahead), the
    rest of the child's output is forwarded into a TCP connection: with
    splice(2) straight from the pipe, or through the copy loop."""
    size = 8 << 20
    code = ("import os, sys\nos.write(1, b'banner\\nahead')\nsys.stdin.readline()\n"
            "block = bytes(range(256)) * 4096\n"
            f"for _ in range({size} // len(block)): sys.stdout.buffer.write(block)")

    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        client = yield from sockio.connect(listener.address, timeout=10)
        server, _ = yield from listener.accept(timeout=10)
        listener.close()

        def receive():
            digest, got = hashlib.sha256(), 0
            while data := (yield from server.recv(1 << 16)):
                digest.update(data)
                got += len(data)
            return got, digest.hexdigest()

        receiver = yield from threadlib.spawn(receive())
        proc = yield from spawn_process(python(code), stdin=PIPE, stdout=PIPE)
        with proc, client, server:
            assert (yield from proc.stdout.readline(timeout=30)) == b"banner\n"
            assert proc.stdout.buffered == len(b"ahead")  # one write, read whole: read ahead
            yield from proc.stdin.sendall(b"go\n")
            assert splice.zero_copy(proc.stdout, client, fallback=fallback) is not fallback
            stats = splice.Transfer()
            moved = yield from splice.splice(proc.stdout, client, half_close=True, fallback=fallback, stats=stats)
            assert stats.zero_copy is not fallback and stats.eof
            assert (yield from proc.wait()) == 0
            got, digest = yield from receiver.join()
        return moved, got, digest

    moved, got, digest = threadlib.run(main())
    expected = hashlib.sha256(b"ahead" + bytes(range(256)) * 4096 * (size // (256 * 4096))).hexdigest()
    assert moved == got == size + len(b"ahead") and digest == expected
