"""A program for tests/threadlib/test_interrupts.py to interrupt with real
signals: a task group of workers whose finally blocks wait, a detached
pair of threads closing a TCP connection with a shutdown handshake in
their finally blocks, and a main thread whose finally waits too. Every
step prints a line; "ready" once every thread waits.

    python interrupt_program.py MODE CLEANUP_SECONDS

MODE: "sigint" (threadlib.run), "sigterm" (handle_sigterm=True), "timers"
(a scheduler with only a timer worker: no poller to wake).
"""

import signal
import sys

# As in a terminal: a shell that started the test run in the background
# may have left SIGINT ignored, and Python then keeps it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

import threadlib  # noqa: E402
from threadlib.io import sockio  # noqa: E402
from threadlib.lowlevel import Scheduler, TimerWorker  # noqa: E402

MODE = sys.argv[1]
CLEANUP = float(sys.argv[2])


def say(*words):
    print(*words, flush=True)


def worker(i, started):
    try:
        started.release()
        yield from threadlib.sleep(3600)
    finally:
        say(f"worker {i} cleanup start")
        yield from threadlib.sleep(CLEANUP)
        say(f"worker {i} cleanup done")


def closing_end(name, conn, started):
    """Waits on the connection; when cancelled, shuts down its side and
    waits for the peer's FIN before closing: a close handshake."""
    try:
        started.release()
        yield from conn.recv(1)
    finally:
        conn.shutdown()
        while (yield from conn.recv(100)):
            pass
        conn.close()
        say(f"{name} handshake done")


def body(g, started, expected):
    for i in range(2):
        g.spawn(worker, i, started)
    for _ in range(expected):
        yield from started.acquire()
    yield from threadlib.sleep(0)
    say("ready")
    yield from threadlib.sleep(3600)


def main():
    started = threadlib.Semaphore(0)
    expected = 2
    if MODE != "timers":
        listener = yield from sockio.listen(("127.0.0.1", 0))
        client = yield from sockio.connect(listener.address)
        server, _ = yield from listener.accept()
        listener.close()
        yield from threadlib.spawn(closing_end("server", server, started))  # detached, not in the group
        yield from threadlib.spawn(closing_end("client", client, started))
        expected += 2
    try:
        yield from threadlib.task_group(body, started, expected)
    finally:
        say("main cleanup start")
        yield from threadlib.sleep(CLEANUP)
        say("main cleanup done")


if MODE == "sigterm":
    threadlib.run(main(), handle_sigterm=True)
elif MODE == "timers":
    Scheduler(workers=[TimerWorker()]).run(main())
else:
    threadlib.run(main())
