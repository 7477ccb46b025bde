"""The io_uring worker against real sockets, pipes and files: a scheduler
built from ``threadlib.uring_workers()`` idles in the ring, serves
WaitRead/WaitWrite through multishot polls and the Aio* file calls through
ring reads and writes; where io_uring cannot be used the epoll workers are
used instead with one log line saying why (checked in a child process whose
seccomp filter refuses io_uring_setup)."""

from __future__ import annotations

import errno
import hashlib
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

import threadlib
from threadlib.io import fileio, sockio
from threadlib.io.aioworker import AioClose, AioRead, AioWorker, AioWrite, UringAioWorker
from threadlib.lowlevel import IOWorker, Scheduler, UringPoller, UringWorker, default_workers
from threadlib.lowlevel import io_backend, uring_unavailable_reason, uring_workers
from tests import REPO_ROOT
from tests.waiting import until

REASON = uring_unavailable_reason()
needs_uring = pytest.mark.skipif(REASON is not None, reason=f"io_uring unavailable here: {REASON}")
pytestmark = pytest.mark.timeout(60)


def uring_scheduler() -> Scheduler:
    sched = Scheduler(workers=uring_workers())
    assert isinstance(sched.worker(IOWorker), UringWorker)
    assert isinstance(sched._poller, UringPoller)
    return sched


@needs_uring
def test_tcp_echo_many_connections_byte_exact_on_the_ring():
    payloads = {i: hashlib.sha256(str(i).encode()).digest() * (1 + i % 50) for i in range(200)}
    got = {}

    def serve(conn):
        with conn:
            while True:
                data = yield from conn.recv(65536)
                if not data:
                    return
                yield from conn.sendall(data)

    def client(address, i):
        conn = yield from sockio.connect(address)
        with conn:
            yield from conn.sendall(payloads[i])
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = yield from conn.recv(65536)
                if not data:
                    break
                chunks.append(data)
            got[i] = b"".join(chunks)

    def main():
        listener = yield from sockio.listen(("127.0.0.1", 0))
        address = listener.address

        def accept_loop():
            while True:
                conn, _ = yield from listener.accept()
                yield from threadlib.spawn(serve(conn))

        acceptor = yield from threadlib.spawn(accept_loop())
        clients = []
        for i in payloads:
            clients.append((yield from threadlib.spawn(client(address, i))))
        yield from threadlib.join_all(clients)
        yield from acceptor.cancel()
        listener.close()

    sched = uring_scheduler()
    sched.run(main())
    assert got == payloads
    assert sched._poller.completions > 0


@needs_uring
def test_a_socket_closed_after_waiting_is_really_closed_for_the_peer():
    # A poll request holds its file: unregister must drop it before close
    # returns to the caller, or the peer would never see the end of stream.
    a, b = socket.socketpair()
    b.settimeout(30)

    def main():
        conn = sockio.wrap(a)

        def reader():
            return (yield from conn.recv(10))

        t = yield from threadlib.spawn(reader())
        yield from until(lambda: t.waiting_on is not None, what="the reader waiting")
        b.sendall(b"x")
        assert (yield from threadlib.join_all([t])) == [b"x"]
        conn.close()
        assert b.recv(10) == b""   # EOF, not a hang (the socket's timeout bounds it)

    uring_scheduler().run(main())
    b.close()


@needs_uring
def test_a_full_socket_writer_waits_and_resumes_when_the_peer_drains():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    blob = os.urandom(2_000_000)
    received = bytearray()

    def main():
        writer_conn = sockio.wrap(a)
        reader_conn = sockio.wrap(b)

        def writer():
            yield from writer_conn.sendall(blob)
            writer_conn.close()

        def reader():
            while True:
                data = yield from reader_conn.recv(65536)
                if not data:
                    return
                received.extend(data)

        yield from threadlib.join_all([(yield from threadlib.spawn(writer())),
                                       (yield from threadlib.spawn(reader()))])
        reader_conn.close()

    uring_scheduler().run(main())
    assert bytes(received) == blob


@needs_uring
def test_level_triggered_watch_reports_again_until_drained_and_stops_when_unregistered():
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    reports = []

    def main():
        sched = threadlib.current_scheduler()
        sched.watch_fd(r, select.EPOLLIN, reports.append)
        os.write(w, b"abc")
        # Unread data keeps a level-triggered fd ready: reported pass after pass.
        yield from until(lambda: len(reports) >= 3, what="three reports of the unread pipe")
        assert all(ev & select.EPOLLIN for ev in reports)
        os.read(r, 10)
        sched.unwatch_fd(r)
        seen = len(reports)
        os.write(w, b"more")
        for _ in range(20):
            yield from threadlib.sleep(0)
        assert len(reports) == seen

    uring_scheduler().run(main())
    os.close(r)
    os.close(w)


@needs_uring
def test_edge_triggered_watch_reports_each_arrival_once_and_modify_reports_current_state():
    a, b = socket.socketpair()
    a.setblocking(False)
    reports = []

    def main():
        sched = threadlib.current_scheduler()
        sched.watch_fd(a.fileno(), select.EPOLLIN | select.EPOLLET, reports.append)
        b.send(b"1")
        yield from until(lambda: reports, what="the first edge")
        for _ in range(20):
            yield from threadlib.sleep(0)
        assert len(reports) == 1   # nothing new arrived: no new edge
        b.send(b"2")
        yield from until(lambda: len(reports) == 2, what="the second edge")
        # Adding EPOLLOUT reports the state now (writable) without new data.
        sched.modify_fd(a.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
        yield from until(lambda: len(reports) == 3, what="the writable report after modify")
        assert reports[2] & select.EPOLLOUT
        sched.unwatch_fd(a.fileno())

    uring_scheduler().run(main())
    a.close()
    b.close()


@needs_uring
def test_modify_of_an_unwatched_fd_is_a_clear_error():
    def main():
        sched = threadlib.current_scheduler()
        with pytest.raises(FileNotFoundError, match="not registered"):
            sched.modify_fd(12345, select.EPOLLIN)
        with pytest.raises(ValueError, match="non-negative"):
            sched.watch_fd(-1, select.EPOLLIN, print)
        yield from threadlib.sleep(0)

    uring_scheduler().run(main())


@needs_uring
def test_sleep_and_timeouts_idle_in_the_ring():
    def main():
        with threadlib.move_on_after(0.02) as scope:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                from threadlib.lowlevel import WaitRead
                yield WaitRead(r)   # nothing ever written: the timeout ends it
            finally:
                threadlib.current_scheduler().forget_fd(r)
                os.close(r)
                os.close(w)
        assert scope.cancelled_caught
        yield from threadlib.sleep(0.01)
        return "done"

    assert uring_scheduler().run(main()) == "done"


# -- files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def direct_dir():
    for parent in ("/var/tmp", str(REPO_ROOT)):
        if not os.access(parent, os.W_OK):
            continue
        directory = tempfile.mkdtemp(prefix="uring-test-", dir=parent)
        try:
            os.close(os.open(os.path.join(directory, "probe"), os.O_RDWR | os.O_CREAT | os.O_DIRECT))
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            continue
        yield Path(directory)
        shutil.rmtree(directory, ignore_errors=True)
        return
    pytest.skip("no writable filesystem here accepts O_DIRECT")


@needs_uring
def test_fileio_reads_and_writes_o_direct_through_the_ring(direct_dir):
    path = direct_dir / "data.bin"
    blob = os.urandom(300_001)

    def main():
        f = yield from fileio.open(path, "w+", direct=True)
        worker = threadlib.current_scheduler().worker(AioWorker)
        assert type(worker) is UringAioWorker
        assert f.direct
        assert (yield from f.pwrite(blob, 0)) == len(blob)
        back = yield from f.pread(len(blob) + 100, 0)
        middle = yield from f.pread(5000, 4097)
        yield from f.fsync()
        yield from f.close()
        assert worker.completed > 0 and worker.in_flight == 0
        return back, middle

    back, middle = uring_scheduler().run(main())
    assert back == blob
    assert middle == blob[4097:4097 + 5000]
    assert path.read_bytes() == blob


def _registered_buffers(ring_fd: int) -> list[tuple[int, int]]:
    """The kernel's account of a ring's registered buffers (/proc fdinfo):
    (address, length) of each slot in use."""
    with open(f"/proc/self/fdinfo/{ring_fd}") as f:
        lines = f.read().splitlines()
    out = []
    if "UserBufs" in "".join(lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("UserBufs"))
        for line in lines[start + 1:]:
            slot, _, value = line.strip().partition(": ")
            if not slot.isdigit():
                break
            if value != "<none>":
                address, _, length = value.partition("/")
                out.append((int(address, 16), int(length)))
    return out


@needs_uring
def test_fileio_buffers_are_registered_with_the_ring_and_moves_stay_exact(direct_dir):
    """The aligned pool's arenas are registered with the ring (pages pinned
    once; reads and writes inside them go in as READ_FIXED/WRITE_FIXED):
    the kernel lists each as a registered buffer, and data read and
    written through them is exact, direct and buffered alike."""
    from threadlib.io import aioworker

    path = direct_dir / "fixed.bin"
    blob = os.urandom(1_000_003)

    def main():
        ring = threadlib.current_scheduler().worker(UringWorker).poller._ring
        f = yield from fileio.open(path, "w+", direct=True)
        assert (yield from f.pwrite(blob, 0)) == len(blob)
        reads = []
        for n, off in ((4096, 0), (100_000, 12_345), (70_000, 999_000)):
            reads.append((yield from f.pread(n, off)))
        yield from f.close()
        g = yield from fileio.open(path)
        whole = yield from g.pread(len(blob) + 10, 0)
        yield from g.close()
        offered = min(len(aioworker.OFFERED_BUFFERS), aioworker.MAX_OFFERED_BUFFERS)
        return reads, whole, ring.registered_buffers, offered, _registered_buffers(ring.fileno())

    reads, whole, registered, offered, listed = uring_scheduler().run(main())
    assert reads == [blob[:4096], blob[12_345:112_345], blob[999_000:]]
    assert whole == blob
    assert registered == offered > 0  # every arena offered so far, up to the table's size
    assert len(listed) == registered
    assert all(length >= 256 * 1024 for _, length in listed)  # whole arenas


@needs_uring
def test_register_buffer_takes_writable_buffers_until_its_table_is_full():
    import mmap

    from threadlib._kernel import _uring

    ring = _uring.Ring(8)
    try:
        with pytest.raises(BufferError, match="not writable"):
            ring.register_buffer(b"read-only bytes")
        arenas = [mmap.mmap(-1, 4096) for _ in range(65)]
        took = [ring.register_buffer(a) for a in arenas]
        assert took == [True] * 64 + [False]  # 64 slots
        assert ring.registered_buffers == 64
        assert len(_registered_buffers(ring.fileno())) == 64
        buf = memoryview(arenas[3])[100:200]  # inside a registered buffer: a fixed read
        r, w = os.pipe()
        os.write(w, b"z" * 100)
        ring.read(r, buf, -1, 7)
        done = []
        for _ in range(10):
            done += ring.poll(1.0)
            if done:
                break
        assert done == [(7, 100, 0)] and bytes(buf) == b"z" * 100
        os.close(r)
        os.close(w)
    finally:
        ring.close()


@needs_uring
def test_aio_calls_on_the_ring_refuse_bad_input_and_report_kernel_errors(direct_dir):
    path = direct_dir / "small.bin"
    path.write_bytes(b"hello ring" * 100)

    def main():
        sched = threadlib.current_scheduler()
        from threadlib.io.aioworker import ensure_aio_worker
        assert type(ensure_aio_worker(sched)) is UringAioWorker
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)   # buffered: the ring reads it too
        buf = bytearray(1000)
        assert (yield AioRead(fd, buf, 0)) == 1000
        assert bytes(buf) == b"hello ring" * 100
        with pytest.raises(TypeError, match="writable"):
            yield AioRead(fd, b"read-only", 0)
        with pytest.raises(ValueError, match="offset"):
            yield AioRead(fd, bytearray(10), -5)
        with pytest.raises(OSError) as bad_fd:
            yield AioWrite(fd, b"x", 0)       # the fd is read-only: the kernel says EBADF
        assert bad_fd.value.errno == errno.EBADF
        yield AioClose(fd)
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        assert closed.value.errno == errno.EBADF

    uring_scheduler().run(main())


# -- choosing and falling back ---------------------------------------------------

def test_threadlib_io_chooses_the_default_workers(monkeypatch):
    monkeypatch.setenv("THREADLIB_IO", "epoll")
    assert io_backend() == "epoll"
    assert type(next(w for w in default_workers() if isinstance(w, IOWorker))) is IOWorker
    monkeypatch.setenv("THREADLIB_IO", "kqueue")
    with pytest.raises(ValueError, match="THREADLIB_IO must be 'epoll' or 'uring', got 'kqueue'"):
        default_workers()
    monkeypatch.setenv("THREADLIB_IO", "uring")
    workers = default_workers()
    io = next(w for w in workers if isinstance(w, IOWorker))
    assert isinstance(io, UringWorker) == (REASON is None)
    Scheduler(workers=workers).close()


# Installs a seccomp filter in a child process: ``refuse(checks, errno)``
# makes the x86-64 system calls the BPF ``checks`` single out fail with
# that errno (each check jumps to the last two instructions: refuse, allow).
_SECCOMP_PRELUDE = textwrap.dedent("""
    import ctypes, struct
    def ins(code, jt, jf, k):
        return struct.pack("HBBI", code, jt, jf, k)
    def refuse(checks, err):
        prog = b"".join([
            ins(0x20, 0, 0, 4),                    # A = arch
            ins(0x15, 1, 0, 0xC000003E),           # x86-64?
            ins(0x06, 0, 0, 0x7FFF0000),           # other arch: allow
            *checks,
            ins(0x06, 0, 0, 0x00050000 | err),     # refused with err
            ins(0x06, 0, 0, 0x7FFF0000),           # allow
        ])
        buf = ctypes.create_string_buffer(prog)
        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(38, 1, 0, 0, 0) == 0                      # PR_SET_NO_NEW_PRIVS
        assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0    # PR_SET_SECCOMP, FILTER
""")

_SECCOMP_CHILD = _SECCOMP_PRELUDE + textwrap.dedent("""
    import logging, sys
    # io_uring_setup (x86-64 syscall 425) fails with EPERM, as a kernel
    # with io_uring disabled does.
    refuse([ins(0x20, 0, 0, 0),                    # A = syscall number
            ins(0x15, 0, 1, 425)], 1)              # io_uring_setup: refused (EPERM)
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    import threadlib
    from threadlib.io import sockio
    from threadlib.lowlevel import IOWorker
    def main():
        a, b = sockio.socketpair()
        def reply():
            yield from threadlib.sleep(0.01)
            yield from a.sendall(b"ping")
        yield from threadlib.spawn(reply())
        data = yield from b.recv(10)   # waits: the scheduler polls
        sched = threadlib.current_scheduler()
        print("GOT", data.decode(), type(sched.worker(IOWorker)).__name__, type(sched._poller).__name__)
    threadlib.run(main())
    threadlib.run(main())   # a second scheduler: no second log line
""")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter is written for x86-64")
def test_without_io_uring_the_scheduler_falls_back_to_epoll_and_says_why_once():
    env = dict(os.environ, THREADLIB_IO="uring", PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", _SECCOMP_CHILD], env=env, capture_output=True, text=True,
                         timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["GOT ping IOWorker EpollPoller"] * 2
    logs = [line for line in out.stderr.splitlines() if line.startswith("LOG")]
    assert logs == ["LOG threadlib: io_uring unavailable (io_uring_setup failed: Operation not permitted); "
                    "using epoll"], out.stderr


@needs_uring
def test_a_ring_entered_from_another_os_thread_says_which_thread_it_belongs_to():
    """The ring is single-issuer where the kernel has it (its completion
    work is deferred to the thread that enters it): a scheduler made in one
    OS thread and run in another is refused with an error that says so,
    not a bare EEXIST."""
    sched = Scheduler(workers=uring_workers())
    if not sched.worker(UringWorker).poller._ring.setup_flags & (1 << 12):  # IORING_SETUP_SINGLE_ISSUER
        sched.close()
        pytest.skip("this kernel's io_uring has no single-issuer rings: any thread may enter")
    errors: list[BaseException] = []

    def nap():
        yield from threadlib.sleep(0.01)

    def elsewhere() -> None:
        try:
            sched.run(nap())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], OSError), errors
    assert "belongs to the OS thread that made it" in str(errors[0])
    assert "run the scheduler in the thread that made its io_uring worker" in str(errors[0])


_NO_FIXED_BUFFERS_CHILD = _SECCOMP_PRELUDE + textwrap.dedent("""
    import logging, os, sys
    # io_uring_register (x86-64 syscall 427) with IORING_REGISTER_BUFFERS2
    # (15) fails with ENOMEM, as past the memlock limit.
    refuse([ins(0x20, 0, 0, 0),                    # A = syscall number
            ins(0x15, 0, 3, 427),                  # io_uring_register? else allow
            ins(0x20, 0, 0, 24),                   # A = its opcode (args[1])
            ins(0x15, 0, 1, 15)], 12)              # REGISTER_BUFFERS2: refused (ENOMEM)
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    import threadlib
    from threadlib.io import fileio
    from threadlib.lowlevel import Scheduler, UringWorker, uring_workers
    path = sys.argv[1]
    def main():
        f = yield from fileio.open(path)
        data = yield from f.pread(5000, 100)
        yield from f.close()
        ring = threadlib.current_scheduler().worker(UringWorker).poller._ring
        print("READ", data == open(path, "rb").read()[100:5100], ring.registered_buffers)
    for _ in range(2):  # a second scheduler: no second log line
        Scheduler(workers=uring_workers()).run(main())
""")


@needs_uring
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter is written for x86-64")
def test_a_ring_refused_registered_buffers_reads_plainly_and_says_so_once(tmp_path):
    path = tmp_path / "plain.bin"
    path.write_bytes(os.urandom(10_000))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, "-c", _NO_FIXED_BUFFERS_CHILD, str(path)], env=env, capture_output=True,
                         text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["READ True 0"] * 2
    logs = [line for line in out.stderr.splitlines() if line.startswith("LOG")]
    assert logs == ["LOG threadlib: io_uring refuses registered buffers (an old kernel or the memlock limit); "
                    "file IO uses plain reads and writes"], out.stderr
