"""Record/replay of real runs (threadlib.replay): a server recorded over
kernel sockets with its client in another OS process, replayed against
the same code (it must match to the last byte and return the same
result) and against a changed handler (it must stop at the very message
the change touched); damaged logs; the command line; the apps' --record."""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import struct
import sys
import urllib.request
import zlib

import pytest

import threadlib
from threadlib import replay
from threadlib.lowlevel import IOWorker, Scheduler, TimerWorker, Worker

from ..waiting import wait_until
from . import replay_program

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def record_conversation(tmp_path, conns: int = 2) -> tuple[str, str, object]:
    """Record replay_program.serve talking to replay_client in another
    process; return the log's path, the port file and main's result."""
    log = str(tmp_path / "run.tlrec")
    port_file = str(tmp_path / "port")
    client = subprocess.Popen([sys.executable, os.path.join(HERE, "replay_client.py"), port_file, str(conns)])
    try:
        result = threadlib.run(replay_program.serve, port_file, "same", str(conns), record=log)
    finally:
        assert client.wait(timeout=60) == 0, "the client saw a wrong reply"
    return log, port_file, result


def replay_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m threadlib.replay ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "threadlib.replay", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_recorded_run_replays_on_the_same_code(tmp_path):
    log, port_file, result = record_conversation(tmp_path)
    # Every line of both connections, in the order the server saw them.
    assert sorted(result.split(" | ")[0].split()) == sorted(f"{c}:conn_{c}_msg_{i}" for c in range(2) for i in range(6))
    timeouts = int(re.search(r"timeouts (\d+)", result).group(1))
    assert timeouts >= 1  # the client's pause made at least one receive time out
    again = replay.replay(log, replay_program.serve, port_file, "same", "2")
    assert again == result  # the same interleaving, the same count of timeouts
    info = replay.describe(log)
    assert info["records"]["end"] == 1 and info["records"]["socket"] > 24


def test_a_changed_handler_diverges_at_the_message_it_changed(tmp_path):
    log, port_file, _ = record_conversation(tmp_path)
    with pytest.raises(replay.Divergence) as caught:
        replay.replay(log, replay_program.serve, port_file, "changed", "2")
    exc = caught.value
    # The fourth reply ("msg 3") of the first connection to get one is the first output that differs.
    assert "send #4 on fd" in exc.got and "fixed reply conn" in exc.got and "msg 3" in exc.got, exc
    assert "msg 3" in exc.expected and "reply conn" in exc.expected and "fixed" not in exc.expected
    assert exc.thread.startswith("thread 'handle")
    assert exc.record > 10 and exc.offset > 0


def test_a_program_that_ends_early_diverges(tmp_path):
    log, port_file, _ = record_conversation(tmp_path)

    def impatient(port_file: str):
        listener = yield from threadlib.io.sockio.listen(("127.0.0.1", 0))
        listener.close()
        return "gave up"

    with pytest.raises(replay.Divergence) as caught:
        replay.replay(log, impatient, port_file)
    # The recording goes on to accept a connection; this program returned instead.
    assert "main returning" in caught.value.got or "socket" in caught.value.got


def test_damaged_and_truncated_logs_name_the_offset(tmp_path):
    log, port_file, _ = record_conversation(tmp_path)
    data = open(log, "rb").read()
    cut = tmp_path / "cut.tlrec"
    cut.write_bytes(data[: len(data) // 2])
    # Cut inside a record or, as the length varies, between two: either way a LogError at an offset.
    with pytest.raises(replay.LogError, match=r"offset \d+: the log ends (inside|without an end record)"):
        replay.replay(str(cut), replay_program.serve, port_file, "same", "2")
    bad = tmp_path / "bad.tlrec"
    bad.write_bytes(b"GARBAGE" + data[7:])
    with pytest.raises(replay.LogError, match="offset 0: not a threadlib replay log"):
        replay.replay(str(bad), replay_program.serve, port_file)
    extra = tmp_path / "extra.tlrec"
    extra.write_bytes(data + b"\x03")
    with pytest.raises(replay.LogError, match="records follow the end record"):
        replay.replay(str(extra), replay_program.serve, port_file, "same", "2")
    with pytest.raises(replay.LogError, match="cannot open"):
        replay.replay(str(tmp_path / "missing.tlrec"), replay_program.serve, port_file)


def test_the_command_line_checks_a_recording(tmp_path):
    log, port_file, _ = record_conversation(tmp_path)

    def check(*program: str) -> subprocess.CompletedProcess:
        return replay_cli("check", log, "--", *program)

    same = check("tests.threadlib.replay_program:serve", port_file, "same", "2")
    assert same.returncode == 0 and same.stdout.startswith("ok: the program did what the recording did"), same
    changed = check("tests.threadlib.replay_program:serve", port_file, "changed", "2")
    assert changed.returncode == 1 and "diverged:" in changed.stderr and "send #4" in changed.stderr, changed
    missing = check("tests.threadlib.no_such_module:serve")
    assert missing.returncode == 2 and "cannot import" in missing.stderr
    # A log made by threadlib.run names no entry point: check says how to give one.
    bare = replay_cli("check", log)
    assert bare.returncode == 2 and "give one after --" in bare.stderr
    info = replay_cli("info", log)
    assert info.returncode == 0 and re.search(r"socket\s+\d+", info.stdout)


def test_a_log_recorded_on_one_hot_path_replays_on_the_other(tmp_path):
    # The compiled recorder (socket calls, handler and poll wrappers) and the
    # pure-Python one write the same log: what one recorded, the other replays.
    from threadlib.lowlevel import COMPILED

    log, port_file, _ = record_conversation(tmp_path)
    env = dict(os.environ)
    if COMPILED:
        env["THREADLIB_PURE"] = "1"
    else:
        env.pop("THREADLIB_PURE", None)
    other = subprocess.run([sys.executable, "-m", "threadlib.replay", "check", log, "--",
                            "tests.threadlib.replay_program:serve", port_file, "same", "2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert other.returncode == 0 and other.stdout.startswith("ok: the program did what the recording did"), other


def test_recording_refuses_workers_it_cannot_replay(tmp_path):
    class Gadget(Worker):
        def attach(self, sched):
            return {}

    sched = Scheduler(workers=[TimerWorker(), IOWorker(), Gadget()])

    def main():
        yield from threadlib.sleep(0)

    with pytest.raises(ValueError, match="cannot record a run with Gadget"):
        threadlib.run(main, scheduler=sched, record=str(tmp_path / "x.tlrec"))


def test_a_recording_keeps_memory_bounded_by_streaming(tmp_path):
    # 20,000 clock reads and sleeps: the log grows on disk as the run goes.
    log = str(tmp_path / "long.tlrec")
    sizes = []

    def main():
        for i in range(20000):
            threadlib.now()
            yield from threadlib.sleep(0)
            if i % 5000 == 0:
                sizes.append(os.path.getsize(log))
        return "ok"

    threadlib.run(main, record=log)
    assert sizes[-1] > sizes[0]  # flushed while running, not only at the end
    assert replay.replay(log, main) == "ok"


def _app(args: list[str], tmp_path, banner: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    while True:  # log lines may come first
        line = proc.stdout.readline()
        lines.append(line)
        match = re.search(banner, line)
        if match or not line:
            break
    assert match, lines
    return proc, int(match.group(1))


def _echoed(port: int, payloads: list[bytes]) -> None:
    """Send each payload to the echo service on ``port`` and check it comes back whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for payload in payloads:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += s.recv(65536)
            assert got == payload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_web_server_records_and_its_recording_replays(tmp_path):
    log = str(tmp_path / "web.tlrec")
    port = _free_port()
    proc, port = _app(["apps.webserver", "--port", str(port), "--record", log, "--quiet"], tmp_path,
                      r"http://127\.0\.0\.1:(\d+)/")
    try:
        bodies = [urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).read()
                  for path in ("/", "/index.html", "/")]
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/missing", timeout=30)
        assert bodies[0] == bodies[1] == bodies[2] and b"<html" in bodies[0].lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    check = replay_cli("check", log)
    assert check.returncode == 0 and "ok:" in check.stdout, check
    # The same recording against a site whose index differs: the first response diverges.
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "apps", "sample_site"), site)
    (site / "index.html").write_bytes(b"<html>another page</html>\n")
    meta_args = replay.describe(log)["meta"]["args"]
    changed = replay_cli("check", log, "--", "apps.webserver.__main__:replayed", *meta_args, "--root", str(site))
    assert changed.returncode == 1 and "diverged:" in changed.stderr, changed


def test_the_echo_server_records_and_replays(tmp_path):
    log = str(tmp_path / "echo.tlrec")
    proc, port = _app(["apps.echo", "--port", str(_free_port()), "--record", log], tmp_path,
                      r"listening on 127\.0\.0\.1:(\d+)")
    try:
        _echoed(port, [bytes(range(256)) * (size // 256) + bytes(size % 256) for size in (1, 100, 70000)])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    check = replay_cli("check", log)
    assert check.returncode == 0, check


def test_record_is_refused_where_it_cannot_apply():
    for args, message in ((["apps.webserver", "--record", "x", "--workers", "2"], "--record covers"),
                          (["apps.echo", "--record", "x", "--workers", "2"], "--record records one worker")):
        done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, done
        assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a TUN device in a network namespace)")
def test_a_user_stack_run_replays_from_its_device_packets(tmp_path):
    from iolib.netns import temporary_netns

    log = str(tmp_path / "user.tlrec")
    with temporary_netns("rply") as ns:
        def client():
            import time
            import zlib

            deadline = time.monotonic() + 30
            while True:  # until the user stack listens
                s = ns.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(30)
                try:
                    s.connect(("10.77.0.2", 7007))
                    break
                except OSError:
                    s.close()
                    assert time.monotonic() < deadline, "the user stack never listened"
                    time.sleep(0.05)
            with s, s.makefile("rb") as f:
                for i in range(6):
                    line = b"user msg %d" % i
                    s.sendall(line + b"\n")
                    assert f.readline() == b"reply %s crc %08x\n" % (line, zlib.crc32(line))

        import threading

        errors = []
        peer = threading.Thread(target=lambda: errors.append(None) if client() is None else None)
        peer.start()
        result = threadlib.run(replay_program.serve_user_stack, ns.name, record=log)
        peer.join(60)
        assert errors == [None], "the kernel client saw a wrong reply"
    # Replayed with no namespace, no TUN device: the packets come from the log.
    info = replay.describe(log)["records"]
    assert info["device read"] > 0 and info["device write"] > 0 and info["user-stack start"] == 1
    assert replay.replay(log, replay_program.serve_user_stack, "gone") == result
    with pytest.raises(replay.Divergence) as caught:
        replay.replay(log, replay_program.serve_user_stack, "gone", "changed")
    assert "write of" in caught.value.got and "user network #1" in caught.value.got


def test_the_proxy_records_its_copy_path_and_replays(tmp_path):
    log = str(tmp_path / "proxy.tlrec")
    target, target_port = _app(["apps.echo", "--port", str(_free_port())], tmp_path, r"listening on 127\.0\.0\.1:(\d+)")
    try:
        proxy, port = _app(["apps.proxy", "--listen", f"127.0.0.1:{_free_port()}", "--target",
                            f"127.0.0.1:{target_port}", "--record", log], tmp_path, r"listening on 127\.0\.0\.1:(\d+)")
        try:
            _echoed(port, [bytes(i % 251 for i in range(size)) for size in (5, 3000, 100000)])
        finally:
            proxy.send_signal(signal.SIGTERM)
            assert proxy.wait(timeout=60) == 0
    finally:
        target.send_signal(signal.SIGTERM)
        target.wait(timeout=60)
    check = replay_cli("check", log)
    assert check.returncode == 0 and "ok:" in check.stdout, check
    assert replay.describe(log)["records"]["socket"] > 10


def test_the_compiled_recording_calls_write_the_records_the_python_ones_do():
    # Both recorders must write byte-identical logs: a log made with the
    # compiled hot path replays under THREADLIB_PURE=1 and the reverse.
    from threadlib._kernel import _speedups
    from threadlib.replay import log as L, sockets as S

    from .test_compiled import _socket_call_outcomes

    class Writer:  # the part of a LogWriter the socket layer appends to
        buf = bytearray()

        def flush(self):
            pass

    class Recording:
        writer = Writer()

    S._Recording.recorder = Recording()
    try:
        python = _socket_call_outcomes(S._record_recv, S._record_recv_into, S._record_send)
    finally:
        S._Recording.recorder = None
    compiled_log = bytearray()
    compiled = _socket_call_outcomes(*(functools.partial(call, compiled_log) for call in
                                       (_speedups.rec_recv, _speedups.rec_recv_into, _speedups.rec_send)))
    assert compiled[:-1] == python[:-1] and compiled[-1][0] == python[-1][0] == "TypeError"
    assert bytes(compiled_log) == bytes(Writer.buf)
    # And what they wrote reads back as the calls' results.
    reader = L.LogReader(io.BytesIO(L.MAGIC + struct.pack("<HI", L.VERSION, 2) + b"{}" + bytes(compiled_log)))
    ops = []
    while not reader.at_end():
        assert reader.begin() == L.SOCK
        op, fd, failed = reader.uint(), reader.uint(), reader.uint()
        ops.append((S.OP_NAMES[op], reader.outcome()[1].errno if failed else S._read_result(reader, op)))
    assert ops[0] == ("send", (11, zlib.crc32(b"hello world"), b"hello world"))
    assert ops[1] == ("recv", b"hello") and ("recv", errno.EAGAIN) in ops and ("send", errno.EPIPE) in ops
    assert ops[-2:] == [("recv", errno.EBADF), ("send", errno.EBADF)]


def test_the_log_buffer_keeps_every_byte_across_flushes_however_it_is_appended_to(tmp_path):
    # The compiled recorders append in place and a flush keeps the buffer's
    # allocation (log_clear): bytes appended by them, by log.append and by
    # the bytearray's own methods, flushed at any moment, reach the file in
    # order; and nothing is written outside the bytearray (an empty one is
    # still empty).
    import random

    from threadlib._kernel.compiled import speedups
    from threadlib.replay import log as L

    rng = random.Random(7)
    writer = L.LogWriter(tmp_path / "buf.tlrec", {})
    expected = bytearray(writer.buf)
    a, b = socket.socketpair()
    try:
        for i in range(3000):
            piece = bytes([i % 251]) * rng.randrange(1, 700)
            how = rng.randrange(4)
            if how == 0:
                L.append(writer.buf, piece)
                expected += piece
            elif how == 1:
                writer.buf += piece
                expected += piece
            elif how == 2:
                writer.buf.append(piece[0])
                expected.append(piece[0])
            elif speedups is not None:
                a.send(piece[:200])
                before = len(writer.buf)
                data = speedups.rec_recv(writer.buf, b, 4096)
                expected += writer.buf[before:]  # the record it wrote: SOCK | RECV | fd | 0 | bytes
                assert writer.buf[before:before + 2] == bytes([L.SOCK, 2]) and writer.buf.endswith(data)
            if rng.randrange(40) == 0 or len(writer.buf) >= L.FLUSH_AT:
                writer.flush()
        writer.close()
    finally:
        a.close()
        b.close()
    assert (tmp_path / "buf.tlrec").read_bytes() == bytes(expected)
    assert bytearray() == b"" and bytes(bytearray(0)) == b""
