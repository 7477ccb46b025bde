"""The fd readiness worker (``WaitRead``/``WaitWrite``, ``IOWorker``) on
real pipes and sockets: a wait ends on every event that ends it (data,
room, a hang-up, an error), a second wait for room after an unwatched
write-space event still wakes, and the scheduler counts the threads that
wait on fds exactly: it waits for them while they wait, and reports a
deadlock once none does.  Every wait is bounded."""

import os
import select
import signal
import socket
import subprocess
import sys
import threading

import pytest

import threadlib
from threadlib.io import sockio
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
        with threadlib.timeout(5):
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
        with threadlib.timeout(5):
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


def test_a_writer_wakes_for_room_not_for_data_and_again_after_unwatched_room():
    # A writer waits for room while data arrives for a reader of the same
    # socket: the data wakes the reader only, the room wakes the writer,
    # with EPOLLOUT in its events.  More room then comes while nobody
    # waits (the worker stops watching for room); the next writer that
    # finds the buffer full must still be woken by room.
    a, b = socket.socketpair()
    a.setblocking(False)

    def reader(both_waiting, ping_seen):
        both_waiting.set()
        with threadlib.timeout(10):
            yield WaitRead(a.fileno())
        ping_seen.set()
        return a.recv(100)

    def drain_all():
        b.settimeout(0.2)
        try:
            while b.recv(1 << 20):
                pass
        except TimeoutError:  # nothing more for 0.2 s: all read
            pass

    def peer(both_waiting, ping_seen, writer_woke, drained):
        both_waiting.wait(10)
        b.sendall(b"ping")  # data for a's reader, no room for its writer
        ping_seen.wait(10)
        drain_all()  # room: wakes the writer
        writer_woke.wait(10)
        drain_all()  # room again (the writer wrote more), while nobody waits for it
        drained.set()

    def main():
        for _ in range(3):
            fill(a.fileno())
            both_waiting, ping_seen, writer_woke, drained = (threading.Event() for _ in range(4))
            r = yield from threadlib.spawn(reader(both_waiting, ping_seen))
            threading.Thread(target=peer, args=(both_waiting, ping_seen, writer_woke, drained),
                             daemon=True).start()
            with threadlib.timeout(10):
                events = yield WaitWrite(a.fileno())
                assert events & select.EPOLLOUT, f"woken without room: events {events:#x}"
                os.write(a.fileno(), b"y" * 65536)  # the buffer is no longer writable
                writer_woke.set()
                assert (yield from r.join()) == b"ping"
                while not drained.is_set():
                    yield from threadlib.sleep(0.01)
        return "ok"

    try:
        assert threadlib.run(main()) == "ok"
    finally:
        a.close()
        b.close()


def test_the_end_that_comes_with_the_last_data_is_seen_while_a_writer_waits():
    # While a writer waits for room, the fd is watched for room too; the
    # peer's last data and its end then arrive as one event.  The reader
    # must learn of the end from it (its next read returns b"" instead of
    # waiting for an event that never comes), and the writer, which got no
    # room, must not be woken.
    a, b = sockio.socketpair()
    fill(a.fileno())
    woken = []

    def writer():
        events = yield WaitWrite(a.fileno())
        woken.append(events)

    def main():
        w = yield from threadlib.spawn(writer())
        r = yield from threadlib.spawn(a.recv(100))
        yield from threadlib.sleep(0)  # both wait now
        b.socket.send(b"last words")
        b.socket.shutdown(socket.SHUT_WR)
        with threadlib.timeout(5):
            first = yield from r.join()
            rest = yield from a.recv(100)
        yield from w.cancel()
        return first, rest, woken

    try:
        assert threadlib.run(main()) == (b"last words", b"", [])
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
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=20)
    assert done.stdout == "waits done\n", done.stderr
    assert done.returncode == 1 and "deadlock" in done.stderr, done.stderr


def test_an_exception_raised_by_a_signal_handler_while_the_scheduler_idles_in_its_poll_ends_run():
    # The scheduler waits in epoll_wait on a pipe nobody writes; SIGUSR1
    # interrupts the wait and its handler raises: run ends with that
    # exception (as select.epoll.poll gives it), compiled or pure.
    class Signalled(Exception):
        pass

    def on_usr1(signum, frame):
        raise Signalled("from the handler")

    r, w = os.pipe()
    os.set_blocking(r, False)
    previous = signal.signal(signal.SIGUSR1, on_usr1)
    woke = []

    def main():
        # To the main thread, the one in the poll (another would take a
        # process-directed signal as readily).
        threading.Timer(0.05, signal.pthread_kill, [threading.main_thread().ident, signal.SIGUSR1]).start()
        with threadlib.timeout(10):
            woke.append((yield WaitRead(r)))

    try:
        with pytest.raises(Signalled, match="from the handler"):
            threadlib.run(main(), handle_sigint=False)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        os.close(r)
        os.close(w)
    assert woke == []  # the pipe never became readable


def test_a_signal_whose_handler_returns_does_not_end_the_wait_in_the_poll():
    # The same interrupted epoll_wait with a handler that returns: the poll
    # comes round again and the reader still wakes for its data.
    signals = []
    r, w = os.pipe()
    os.set_blocking(r, False)
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: signals.append(signum))

    def main():
        threading.Timer(0.02, signal.pthread_kill, [threading.main_thread().ident, signal.SIGUSR1]).start()
        threading.Timer(0.3, os.write, [w, b"late"]).start()
        with threadlib.timeout(10):
            yield WaitRead(r)
        return os.read(r, 10)

    try:
        assert threadlib.run(main(), handle_sigint=False) == b"late"
    finally:
        signal.signal(signal.SIGUSR1, previous)
        os.close(r)
        os.close(w)
    assert signals == [signal.SIGUSR1]
