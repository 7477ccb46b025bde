"""The fd readiness worker (``WaitRead``/``WaitWrite``, ``IOWorker``) on
real pipes and sockets: a wait ends on every event that ends it (data,
room, a hang-up, an error), a second wait for room after an unwatched
write-space event still wakes, and the scheduler counts the threads that
wait on fds exactly: it waits for them while they wait, and reports a
deadlock once none does.  Every wait is bounded."""

import os
import select
import socket
import subprocess
import sys
import threading

import threadlib
from threadlib.lowlevel import WaitRead, WaitWrite


def fill(fd):
    """Write to a non-blocking fd until it takes no more."""
    while True:
        try:
            os.write(fd, b"x" * 65536)
        except BlockingIOError:
            return


def test_a_reader_of_a_pipe_wakes_when_the_write_end_closes():
    # A pipe whose writer is gone reports a hang-up and no EPOLLIN: the
    # reader must wake on the hang-up alone.
    r, w = os.pipe()
    os.set_blocking(r, False)

    def main():
        threading.Timer(0.05, os.close, [w]).start()
        with threadlib.timeout(10):
            events = yield WaitRead(r)
        return bool(events & select.EPOLLHUP), os.read(r, 10)

    try:
        assert threadlib.run(main()) == (True, b"")
    finally:
        os.close(r)


def test_a_writer_of_a_full_pipe_wakes_when_the_read_end_closes():
    # A full pipe whose reader is gone reports only EPOLLERR (no room):
    # the writer must wake on the error, and its next write fails.
    r, w = os.pipe()
    os.set_blocking(w, False)
    fill(w)

    def main():
        threading.Timer(0.05, os.close, [r]).start()
        with threadlib.timeout(10):
            events = yield WaitWrite(w)
        return bool(events & select.EPOLLERR)

    try:
        assert threadlib.run(main()) is True
        try:
            os.write(w, b"x")
        except BrokenPipeError:
            pass
        else:
            raise AssertionError("a write to a pipe without a reader succeeded")
    finally:
        os.close(w)


def test_a_second_wait_for_room_wakes_after_room_came_while_nobody_waited():
    # Room comes (the peer drains) while no writer waits: the worker stops
    # watching for room then.  The next writer that finds the buffer full
    # must be woken again when room comes.
    a, b = socket.socketpair()
    a.setblocking(False)
    drained = threading.Event()

    def drain_all():
        b.settimeout(0.2)
        try:
            while True:
                if not b.recv(1 << 20):
                    return
        except TimeoutError:
            drained.set()

    def main():
        for round_ in range(3):
            fill(a.fileno())
            threading.Thread(target=drain_all, daemon=True).start()
            with threadlib.timeout(10):
                yield WaitWrite(a.fileno())
                # more room comes while nobody waits for it
                while not drained.is_set():
                    yield from threadlib.sleep(0.01)
            drained.clear()
        return "ok"

    try:
        assert threadlib.run(main()) == "ok"
    finally:
        a.close()
        b.close()


PROGRAM = r"""
import errno, socket, threading, threadlib
from threadlib.io import sockio

def main():
    a, b = sockio.socketpair()
    raw_b = b.socket
    # woken by data another OS thread sends: waited for, not a deadlock
    threading.Timer(0.05, raw_b.send, [b"x"]).start()
    assert (yield from a.recv(10)) == b"x"
    # a writer woken by room another OS thread makes
    while True:
        try:
            a.socket.send(b"y" * 65536)
        except BlockingIOError:
            break
    def drain():
        raw_b.settimeout(0.2)
        try:
            while raw_b.recv(1 << 20):
                pass
        except TimeoutError:
            pass
    threading.Timer(0.05, drain).start()
    assert (yield from a.send(b"z")) == 1
    # a reader of a stream closed under it gets EBADF
    c, d = sockio.socketpair()
    reader = yield from threadlib.spawn(c.recv(10))
    yield from threadlib.sleep(0)
    c.close()
    try:
        yield from reader.join()
    except OSError as e:
        assert e.errno == errno.EBADF, e
    else:
        raise AssertionError("the reader of a closed stream returned")
    # and again a reader woken from another OS thread
    raw_c, raw_d = socket.socketpair()
    e, f = sockio.wrap(raw_c), raw_d
    threading.Timer(0.05, f.send, [b"w"]).start()
    assert (yield from e.recv(10)) == b"w"
    print("waits done", flush=True)
    # nothing can wake main now: reported as a deadlock, not hung
    yield from threadlib.Event().wait()

threadlib.run(main())
"""


def test_the_scheduler_waits_for_fd_waiters_and_reports_a_deadlock_once_none_waits():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60)
    assert done.stdout == "waits done\n", done.stderr
    assert done.returncode == 1 and "deadlock" in done.stderr, done.stderr
