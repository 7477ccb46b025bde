"""threadlib.io.fileio and the AIO worker, against real files: a directory on a
filesystem that accepts O_DIRECT for the AIO path, a freshly mounted ramfs
(which refuses O_DIRECT) for the blocking-pool fallback."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import threadlib
from iolib.aio import aio_unavailable_reason
from threadlib.io import fileio
from threadlib.io.aioworker import AioWorker, aio_read, ensure_aio_worker
from tests import REPO_ROOT
from tests.waiting import until

pytestmark = [
    pytest.mark.skipif(aio_unavailable_reason() is not None, reason=str(aio_unavailable_reason())),
    pytest.mark.timeout(60),
]

BLOCK = 4096
SIZE = 300_001  # not a multiple of the block size: the last block is partial


def _direct_dir() -> Path | None:
    repo = REPO_ROOT
    for parent in ("/var/tmp", str(repo)):
        if not os.access(parent, os.W_OK):
            continue
        directory = tempfile.mkdtemp(prefix="fileio-test-", dir=parent)
        try:
            fd = os.open(os.path.join(directory, "probe"), os.O_RDWR | os.O_CREAT | os.O_DIRECT)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            continue
        os.close(fd)
        return Path(directory)
    return None


@pytest.fixture(scope="module")
def ddir():
    directory = _direct_dir()
    if directory is None:
        pytest.skip("no writable filesystem here accepts O_DIRECT")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def data_file(ddir):
    path = ddir / "data"
    content = os.urandom(SIZE)
    path.write_bytes(content)
    return path, content


def run(gen):
    return threadlib.run(gen)


# -- reads ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reads=st.lists(st.tuples(st.integers(0, SIZE + 2 * BLOCK), st.integers(0, 3 * BLOCK + 7)),
                      min_size=1, max_size=8))
def test_pread_equals_os_pread_at_any_offset_and_length(data_file, reads):
    path, content = data_file

    def main():
        f = yield from fileio.open(path)
        assert f.direct
        got = []
        for offset, n in reads:
            data = yield from f.pread(n, offset)
            into = bytearray(n)
            count = yield from f.pread_into(into, offset)
            with (yield from f.pread_view(n, offset)) as view:
                viewed = bytes(view)
            got.append((data, bytes(into[:count]), viewed))
        yield from f.close()
        return got

    got = run(main())
    fd = os.open(path, os.O_RDONLY)
    try:
        for (offset, n), (data, into, viewed) in zip(reads, got):
            expected = os.pread(fd, n, offset)
            assert data == expected and into == expected and viewed == expected, (offset, n)
    finally:
        os.close(fd)


def test_pread_into_and_pread_view_and_large_reads(data_file):
    path, content = data_file

    def main():
        f = yield from fileio.open(path)
        out = bytearray(10_000)
        n1 = yield from f.pread_into(out, 4095)
        with (yield from f.pread_view(777, SIZE - 100)) as view:
            tail = bytes(view)
        big = yield from f.pread(SIZE + 5000, 1)          # more than MAX_CHUNK? no: past EOF
        whole = yield from fileio.read_file(path)
        yield from f.close()
        return n1, bytes(out), tail, big, whole

    n1, out, tail, big, whole = run(main())
    assert n1 == 10_000 and out == content[4095:14095]
    assert tail == content[-100:]
    assert big == content[1:]
    assert whole == content


def test_reads_larger_than_one_request_are_split(ddir):
    path = ddir / "big"
    content = os.urandom(fileio.MAX_CHUNK * 2 + 12345)
    path.write_bytes(content)

    def main():
        f = yield from fileio.open(path)
        a = yield from f.pread(len(content), 0)
        b = yield from f.pread(fileio.MAX_CHUNK + 3, 4097)
        yield from f.close()
        return a, b

    a, b = run(main())
    assert a == content
    assert b == content[4097:4097 + fileio.MAX_CHUNK + 3]


def test_two_hundred_threads_read_concurrently(data_file):
    path, content = data_file
    import random
    rng = random.Random(7)
    jobs = [(rng.randrange(SIZE), rng.randrange(1, 9000)) for _ in range(200)]

    def reader(f, offset, n):
        return (yield from f.pread(n, offset))

    def main():
        f = yield from fileio.open(path)
        threads = []
        for off, n in jobs:
            threads.append((yield from threadlib.spawn(reader, f, off, n)))
        results = yield from threadlib.join_all(threads)
        worker = threadlib.current_scheduler().worker(AioWorker)
        yield from f.close()
        return results, worker.completed, worker.in_flight

    results, completed, in_flight = run(main())
    for (offset, n), data in zip(jobs, results):
        assert data == content[offset:offset + n]
    assert completed >= 200 and in_flight == 0


def test_fileno_serves_sendfile_at_any_offset(data_file):
    import socket
    path, content = data_file

    def main():
        f = yield from fileio.open(path)
        a, b = socket.socketpair()
        with a, b:
            sent = os.sendfile(a.fileno(), f.fileno(), 100, 5000)
            received = b.recv(10_000)
        buffered_fd, direct_fd = f.fileno(), f.direct_fd
        yield from f.close()
        return sent, received, buffered_fd, direct_fd

    sent, received, buffered_fd, direct_fd = run(main())
    assert sent == 5000 and received == content[100:5100]
    assert buffered_fd != direct_fd
    for fd in (buffered_fd, direct_fd):  # close() released both
        with pytest.raises(OSError):
            os.fstat(fd)


def test_async_def_threads_await_the_same_calls(data_file):
    path, content = data_file

    async def main():
        f = await fileio.open(path)
        data = await f.pread(100, 5000)
        await f.close()
        return data

    assert run(main()) == content[5000:5100]


# -- writes -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.integers(0, 3 * BLOCK + 100),
       writes=st.lists(st.tuples(st.integers(0, 5 * BLOCK), st.integers(0, 2 * BLOCK + 3)),
                       min_size=1, max_size=6))
def test_pwrite_at_any_offset_agrees_with_os_pread(ddir, initial, writes):
    path = ddir / "writes"
    start = os.urandom(initial)
    path.write_bytes(start)
    model = bytearray(start)
    payloads = [os.urandom(n) for _, n in writes]

    def main():
        f = yield from fileio.open(path, "r+")
        assert f.direct
        for (offset, _), payload in zip(writes, payloads):
            assert (yield from f.pwrite(payload, offset)) == len(payload)
        size = f.size
        yield from f.close()
        return size

    size = run(main())
    for (offset, _), payload in zip(writes, payloads):
        if payload and offset > len(model):
            model.extend(bytes(offset - len(model)))
        model[offset:offset + len(payload)] = payload
    assert size == len(model)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == len(model)
        assert os.pread(fd, len(model) + 10, 0) == bytes(model)
    finally:
        os.close(fd)


def test_concurrent_unaligned_writes_to_shared_blocks_all_land(ddir):
    path = ddir / "shared"
    path.write_bytes(b"")
    pieces = [(i * 700, bytes([65 + i % 26]) * 700) for i in range(40)]  # 28 000 bytes, 7 blocks

    def writer(f, offset, data):
        yield from f.pwrite(data, offset)

    def main():
        f = yield from fileio.open(path, "r+")
        threads = []
        for off, data in reversed(pieces):
            threads.append((yield from threadlib.spawn(writer, f, off, data)))
        yield from threadlib.join_all(threads)
        yield from f.fsync()
        yield from f.close()

    run(main())
    assert path.read_bytes() == b"".join(data for _, data in pieces)


def test_write_file_truncate_fsync_stat(ddir):
    path = ddir / "misc"

    def main():
        assert (yield from fileio.write_file(path, b"x" * 5000)) == 5000
        f = yield from fileio.open(path, "r+")
        yield from f.truncate(4100)
        st = yield from f.stat()
        yield from f.fsync(datasync=True)
        yield from f.fsync()
        yield from f.pwrite(b"end", 4100)
        sst = yield from fileio.stat(path)
        yield from f.close()
        return st.st_size, sst.st_size

    assert run(main()) == (4100, 4103)
    assert path.read_bytes() == b"x" * 4100 + b"end"


# -- pluggable worker ------------------------------------------------------------------------


def test_explicit_scheduler_with_an_aio_worker(data_file):
    path, content = data_file
    worker = AioWorker(max_in_flight=4)
    sched = threadlib.lowlevel.Scheduler(workers=threadlib.lowlevel.default_workers() + [worker])

    def reader(f, i):
        return (yield from f.pread(10, i * BLOCK))

    def main():
        f = yield from fileio.open(path)
        threads = []
        for i in range(20):
            threads.append((yield from threadlib.spawn(reader, f, i)))
        out = yield from threadlib.join_all(threads)
        yield from f.close()
        return out

    out = sched.run(main())
    assert out == [content[i * BLOCK:i * BLOCK + 10] for i in range(20)]
    assert sched.worker(AioWorker) is worker and worker.completed == 20


def test_aio_errors_come_back_as_oserror(data_file):
    path, _ = data_file
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)

    def main():
        ensure_aio_worker()
        buf = fileio._pool.take(2 * BLOCK)
        with pytest.raises(OSError) as misaligned:
            yield from aio_read(fd, buf[1:BLOCK + 1], 0)
        with pytest.raises(ValueError):
            yield from aio_read(fd, buf, -1)
        return misaligned.value.errno

    try:
        assert run(main()) == errno.EINVAL
    finally:
        os.close(fd)


# -- cancel and timeout ----------------------------------------------------------------------


def test_timeout_and_cancel_while_waiting_on_aio_leave_the_engine_consistent(data_file):
    path, content = data_file

    def stuck_reader(f, started):
        started.set()
        return (yield from f.pread(BLOCK * 64, 0))

    def main():
        f = yield from fileio.open(path)
        worker = threadlib.current_scheduler().worker(AioWorker)
        # A zero timeout fires at the first wait: the read is in the kernel
        # (or queued) when its thread is withdrawn.
        timed_out = 0
        for i in range(50):
            try:
                with threadlib.timeout(0):
                    yield from f.pread(3 * BLOCK, i * 97)
            except TimeoutError:
                timed_out += 1
        started = threadlib.Event()
        victims = []
        for _ in range(20):
            victims.append((yield from threadlib.spawn(stuck_reader, f, started)))
        yield from started.wait()
        for t in victims:
            yield from t.cancel()
        states = [t.state for t in victims]
        # Later reads on the same file and engine still return the right bytes.
        after = []
        for off in (0, 4095, SIZE - 10):
            after.append((yield from f.pread(1000, off)))
        yield from until(lambda: not worker.in_flight, what="the cancelled reads completed")
        yield from f.close()
        return timed_out, states, after, worker.orphaned

    timed_out, states, after, orphaned = run(main())
    assert timed_out == 50
    assert states.count("cancelled") >= 1
    assert after == [content[0:1000], content[4095:5095], content[SIZE - 10:]]
    assert orphaned >= 50


def test_timed_out_write_still_settles_the_file_size(ddir):
    path = ddir / "settle"
    path.write_bytes(b"a" * 100)

    def main():
        f = yield from fileio.open(path, "r+")
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0):
                yield from f.pwrite(b"b" * 50, 5000)
        # The interrupted write holds its blocks until it completes, so this
        # one waits for it, and then the size is exact again.
        yield from f.pwrite(b"c", 10)
        size = f.size
        yield from f.close()
        return size

    assert run(main()) == 5050
    data = path.read_bytes()
    assert data[:10] == b"a" * 10 and data[10:11] == b"c" and data[11:100] == b"a" * 89
    assert data[100:5000] == bytes(4900) and data[5000:] == b"b" * 50


def test_close_waits_for_reads_of_cancelled_threads(data_file):
    path, content = data_file

    def main():
        f = yield from fileio.open(path)
        worker = threadlib.current_scheduler().worker(AioWorker)
        with pytest.raises(TimeoutError):
            with threadlib.timeout(0):
                yield from f.pread(BLOCK * 256, 0)
        fd = f.direct_fd
        before = worker.pending_on(fd)
        yield from f.close()
        after = worker.pending_on(fd)
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        return before, after, closed.value.errno

    before, after, err = run(main())
    assert before == 1 and after == 0 and err == errno.EBADF


# -- errors ---------------------------------------------------------------------------------


def test_errors_name_what_was_wrong(ddir, data_file):
    path, _ = data_file

    def main():
        with pytest.raises(FileNotFoundError) as missing:
            yield from fileio.open(ddir / "no-such-file")
        assert "no-such-file" in str(missing.value)
        with pytest.raises(IsADirectoryError):
            yield from fileio.open(ddir)
        with pytest.raises(ValueError, match="mode"):
            yield from fileio.open(path, "a")
        f = yield from fileio.open(path)
        with pytest.raises(ValueError, match="offset"):
            yield from f.pread(10, -1)
        with pytest.raises(ValueError, match="length"):
            yield from f.pread(-1, 0)
        with pytest.raises(PermissionError, match="read-only"):
            yield from f.pwrite(b"x", 0)
        with pytest.raises(TypeError, match="bytes-like"):
            g = yield from fileio.open(ddir / "typed", "w")
            try:
                yield from g.pwrite("text", 0)
            finally:
                yield from g.close()
        yield from f.close()
        yield from f.close()  # twice is fine
        with pytest.raises(ValueError, match="closed file"):
            yield from f.pread(10, 0)
        with pytest.raises(ValueError, match="closed file"):
            f.fileno()
        return True

    assert run(main())


# -- fallbacks ------------------------------------------------------------------------------


@pytest.fixture
def ramfs_dir(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a ramfs needs root")
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        # mount(8) is not the code under test: a refusal is a fact about the machine.
        pytest.skip(f"this machine refuses to mount a ramfs: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_filesystem_refusing_o_direct_falls_back_to_the_pool_with_one_warning(ramfs_dir, caplog):
    fileio._warned.clear()
    content = os.urandom(20_000)
    (ramfs_dir / "a").write_bytes(content)

    def main():
        f = yield from fileio.open(ramfs_dir / "a", "r+")
        g = yield from fileio.open(ramfs_dir / "b", "w")
        assert not f.direct and not g.direct
        data = yield from f.pread(5000, 333)
        yield from f.pwrite(b"hello", 19_998)
        yield from g.pwrite(b"new", 10)
        yield from g.fsync()
        whole = yield from fileio.read_file(ramfs_dir / "a")
        yield from f.close()
        yield from g.close()
        return data, whole

    with caplog.at_level(logging.WARNING, logger="threadlib.io.fileio"):
        data, whole = run(main())
    assert data == content[333:5333]
    assert whole == content[:19_998] + b"hello"
    assert (ramfs_dir / "b").read_bytes() == bytes(10) + b"new"
    warnings = [r for r in caplog.records if "O_DIRECT" in r.getMessage()]
    assert len(warnings) == 1
    assert "blocking thread pool" in warnings[0].getMessage()
    with pytest.raises(OSError):
        run(_open_direct_true(ramfs_dir / "a"))


@types.coroutine
def _open_direct_true(path):
    return (yield from fileio.open(path, direct=True))


def test_without_libaio_fileio_warns_once_and_uses_the_pool(data_file):
    path, content = data_file
    script = f"""
import logging, sys
sys.modules["libaio"] = None   # as if python-libaio were not installed
logging.basicConfig(level=logging.WARNING, format="%(name)s:%(message)s")
import threadlib
from threadlib.io import fileio
def main():
    f = yield from fileio.open({str(path)!r})
    g = yield from fileio.open({str(path)!r})
    data = yield from f.pread(10, 100)
    yield from f.close(); yield from g.close()
    return f.direct, data
print(threadlib.run(main()))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr((False, content[100:110]))
    lines = [l for l in proc.stderr.splitlines() if l.startswith("threadlib.io.fileio:")]
    assert len(lines) == 1 and "libaio" in lines[0] and "blocking thread pool" in lines[0]


@pytest.mark.parametrize("size", [1, 1024, 4095, 4096, 4097])
def test_pread_of_a_small_file_from_offset_zero_returns_exactly_the_file(ddir, size):
    """A one-block read that ends at end of file returns the file, not the
    whole aligned block."""
    path = ddir / f"small-{size}"
    content = os.urandom(size)
    path.write_bytes(content)

    def main():
        f = yield from fileio.open(str(path))
        try:
            whole = yield from f.pread(size, 0)
            more = yield from f.pread(size + 100, 0)
            return whole, more
        finally:
            yield from f.close()

    whole, more = run(main())
    assert whole == content
    assert more == content
