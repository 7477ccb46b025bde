"""Linux AIO engine (iolib.aio) against real files opened with O_DIRECT."""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time

import pytest

from iolib.aio import (
    AioContext,
    DirectIOUnsupported,
    aio_unavailable_reason,
    aligned_buffer,
    open_direct,
)

from tests import REPO_ROOT

pytestmark = pytest.mark.skipif(aio_unavailable_reason() is not None,
                                reason=str(aio_unavailable_reason()))

BLOCK = 4096


def wait_for(ctx: AioContext, count: int, timeout: float = 10.0) -> list:
    """Block (tests may) on the eventfd until `count` completions arrive."""
    results: list = []
    deadline = time.monotonic() + timeout
    while len(results) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(results)} of {count} completions arrived"
        select.select([ctx.eventfd], [], [], remaining)
        results.extend(ctx.reap())
    return results


def pattern(block_index: int) -> bytes:
    return (block_index.to_bytes(4, "little") * (BLOCK // 4))


@pytest.fixture
def patterned_file(aio_direct_dir):
    """A 1000-block file whose block i holds pattern(i), written without AIO."""
    path = aio_direct_dir / "patterned"
    with open(path, "wb") as f:
        for i in range(1000):
            f.write(pattern(i))
    return path


def test_write_then_read_round_trip_at_aligned_offsets(aio_direct_dir):
    path = aio_direct_dir / "roundtrip"
    fd = open_direct(path, os.O_RDWR | os.O_CREAT)
    try:
        with AioContext(max_in_flight=8) as ctx:
            out = aligned_buffer(3 * BLOCK)
            out[:] = os.urandom(3 * BLOCK)
            ctx.submit_write(fd, out, 0, "first")
            ctx.submit_write(fd, memoryview(out)[BLOCK:2 * BLOCK], 5 * BLOCK, "second")
            assert sorted(wait_for(ctx, 2)) == [("first", 3 * BLOCK), ("second", BLOCK)]

            back = aligned_buffer(6 * BLOCK)
            ctx.submit_read(fd, back, 0, "all")
            assert wait_for(ctx, 1) == [("all", 6 * BLOCK)]
            assert back[:3 * BLOCK] == out[:]
            assert back[3 * BLOCK:5 * BLOCK] == bytes(2 * BLOCK)  # the hole reads as zeros
            assert back[5 * BLOCK:] == out[BLOCK:2 * BLOCK]
            assert ctx.idle
    finally:
        os.close(fd)
    # The data really is in the file, as seen through the ordinary read path.
    with open(path, "rb") as f:
        assert f.read()[:3 * BLOCK] == out[:]


def test_read_past_end_of_file_is_short(patterned_file):
    fd = open_direct(patterned_file)
    try:
        with AioContext() as ctx:
            buf = aligned_buffer(2 * BLOCK)
            ctx.submit_read(fd, buf, 999 * BLOCK, "tail")
            ctx.submit_read(fd, aligned_buffer(BLOCK), 2000 * BLOCK, "beyond")
            assert dict(wait_for(ctx, 2)) == {"tail": BLOCK, "beyond": 0}
            assert buf[:BLOCK] == pattern(999)
    finally:
        os.close(fd)


def test_thousand_reads_beyond_the_in_flight_cap_all_complete(patterned_file):
    fd = open_direct(patterned_file)
    arena = aligned_buffer(1000 * BLOCK)
    view = memoryview(arena)
    order = list(range(1000))
    order = order[::7] + [i for i in order if i % 7]  # not sequential
    try:
        with AioContext(max_in_flight=64) as ctx:
            for slot, block in enumerate(order):
                ctx.submit_read(fd, view[slot * BLOCK:(slot + 1) * BLOCK], block * BLOCK, (slot, block))
                assert ctx.in_flight <= 64
            assert ctx.in_flight == 64 and ctx.queued == 1000 - 64
            results = []
            deadline = time.monotonic() + 20
            while len(results) < 1000 and time.monotonic() < deadline:
                select.select([ctx.eventfd], [], [], 1)
                results.extend(ctx.reap())
                assert ctx.in_flight <= 64
            assert len(results) == 1000
            assert sorted(token for token, _ in results) == sorted(enumerate(order))
            assert all(result == BLOCK for _, result in results)
            for slot, block in enumerate(order):
                assert view[slot * BLOCK:(slot + 1) * BLOCK] == pattern(block), block
            assert ctx.idle
    finally:
        view.release()
        os.close(fd)


def test_without_autoflush_requests_wait_for_flush_and_go_in_one_batch(patterned_file):
    fd = open_direct(patterned_file)
    try:
        with AioContext(max_in_flight=16, autoflush=False) as ctx:
            buffers = [aligned_buffer(BLOCK) for _ in range(20)]
            for i, buf in enumerate(buffers):
                ctx.submit_read(fd, buf, i * BLOCK, i)
            assert ctx.in_flight == 0 and ctx.queued == 20
            assert ctx.flush() == 16
            assert ctx.in_flight == 16 and ctx.queued == 4
            results = wait_for(ctx, 20)  # reap submits the remaining four
            assert sorted(results) == [(i, BLOCK) for i in range(20)]
            assert all(buf[:] == pattern(i) for i, buf in enumerate(buffers))
    finally:
        os.close(fd)


def test_misaligned_buffer_or_offset_completes_with_einval(patterned_file):
    fd = open_direct(patterned_file)
    try:
        with AioContext() as ctx:
            backing = aligned_buffer(2 * BLOCK)
            ctx.submit_read(fd, memoryview(backing)[1:BLOCK + 1], 0, "buffer")
            ctx.submit_read(fd, aligned_buffer(BLOCK), 100, "offset")
            ctx.submit_read(fd, aligned_buffer(BLOCK), 0, "fine")
            assert dict(wait_for(ctx, 3)) == {"buffer": -errno.EINVAL, "offset": -errno.EINVAL,
                                              "fine": BLOCK}
    finally:
        os.close(fd)


def test_bad_fd_in_a_batch_is_reported_for_that_request_only(patterned_file):
    fd = open_direct(patterned_file)
    spare = 65000  # far above anything this process opens
    with pytest.raises(OSError):
        os.fstat(spare)
    try:
        with AioContext(autoflush=False) as ctx:
            ctx.submit_read(fd, aligned_buffer(BLOCK), 0, "before")
            ctx.submit_read(spare, aligned_buffer(BLOCK), 0, "bad")
            ctx.submit_read(fd, aligned_buffer(BLOCK), BLOCK, "after")
            ctx.flush()
            assert dict(wait_for(ctx, 3)) == {"before": BLOCK, "bad": -errno.EBADF, "after": BLOCK}
            assert ctx.idle
    finally:
        os.close(fd)


def test_fsync_and_fdatasync_complete(aio_direct_dir):
    fd = open_direct(aio_direct_dir / "synced", os.O_RDWR | os.O_CREAT)
    try:
        with AioContext() as ctx:
            buf = aligned_buffer(BLOCK)
            buf[:] = pattern(7)
            ctx.submit_write(fd, buf, 0, "write")
            assert wait_for(ctx, 1) == [("write", BLOCK)]
            ctx.submit_fsync(fd, "fsync")
            ctx.submit_fsync(fd, "fdatasync", datasync=True)
            # 0 here; on kernels without AIO fsync for this fs the result
            # would be one of FSYNC_UNSUPPORTED_ERRNOS negated.
            assert dict(wait_for(ctx, 2)) == {"fsync": 0, "fdatasync": 0}
    finally:
        os.close(fd)


def test_open_direct_reports_a_filesystem_that_refuses_o_direct(aio_ramfs_dir):
    with pytest.raises(DirectIOUnsupported) as info:
        open_direct(aio_ramfs_dir / "file", os.O_RDWR | os.O_CREAT)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EINVAL
    assert "O_DIRECT" in str(info.value)


def test_open_direct_passes_other_errors_through(aio_direct_dir):
    with pytest.raises(FileNotFoundError):
        open_direct(aio_direct_dir / "missing")


def test_bad_arguments_raise_clear_errors(patterned_file):
    with pytest.raises(ValueError, match="max_in_flight"):
        AioContext(max_in_flight=0)
    with pytest.raises(ValueError, match="alignment"):
        aligned_buffer(BLOCK, alignment=3000)
    fd = open_direct(patterned_file)
    try:
        ctx = AioContext()
        with pytest.raises(TypeError, match="writable buffer"):
            ctx.submit_write(fd, b"read-only bytes", 0, "x")
        with pytest.raises(ValueError, match="offset"):
            ctx.submit_read(fd, aligned_buffer(BLOCK), -BLOCK, "x")
        with pytest.raises(ValueError, match="fd"):
            ctx.submit_read(-1, aligned_buffer(BLOCK), 0, "x")
        assert ctx.idle
        ctx.close()
        with pytest.raises(ValueError, match="closed"):
            ctx.submit_read(fd, aligned_buffer(BLOCK), 0, "x")
        ctx.close()  # idempotent
    finally:
        os.close(fd)


def test_buffer_in_flight_cannot_be_closed_under_the_kernel(patterned_file):
    fd = open_direct(patterned_file)
    try:
        with AioContext() as ctx:
            buf = aligned_buffer(BLOCK)
            ctx.submit_read(fd, buf, 0, "pinned")
            with pytest.raises(BufferError):
                buf.close()
            wait_for(ctx, 1)
        buf.close()  # released after completion
    finally:
        os.close(fd)


def test_missing_libaio_gives_a_reason_instead_of_failing_import():
    code = (
        "import sys; sys.modules['libaio'] = None\n"
        "import iolib.aio as aio\n"
        "reason = aio.aio_unavailable_reason()\n"
        "assert reason and 'libaio' in reason, reason\n"
        "try:\n"
        "    aio.AioContext()\n"
        "except aio.AioUnavailable as exc:\n"
        "    print('refused:', exc)\n"
    )
    root = str(REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "refused: Linux AIO unavailable" in result.stdout
