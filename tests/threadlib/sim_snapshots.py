"""Setup functions and programs for the snapshot and disk tests
(``test_simsnap.py``): importable by name, as snapshots need.

A setup builds a world (hosts, links, threads) from its configuration;
the tests drive it. ``LOG_RECORD`` is read by the disk server at each
write, so a test can change "the code" between a snapshot and its
restore."""

import hashlib

import threadlib
from threadlib.io import fileio

# ---------------------------------------------------------------------------
# Traffic between two hosts: echo clients on a lossy link


def echo_server(net, port=7000):
    """Echo every connection, one thread each."""
    lst = yield from net.listen(("", port))

    def handle(conn):
        with conn:
            while data := (yield from conn.recv(65536)):
                yield from conn.sendall(data)

    while True:
        conn, _peer = yield from lst.accept()
        yield from threadlib.spawn(handle, conn)


def chatter(net, host, rounds, size, pause, port=7000):
    """Send ``rounds`` messages of ``size`` bytes (content from the round
    number), each echoed back, ``pause`` seconds apart; the digest of all
    that came back."""
    digest = hashlib.sha256()
    with (yield from net.connect((host, port))) as conn:
        for i in range(rounds):
            message = hashlib.sha256(str(i).encode()).digest() * (size // 32)
            yield from conn.sendall(message)
            got = b""
            while len(got) < len(message):
                data = yield from conn.recv(65536)
                if not data:
                    raise ConnectionResetError("the echo server closed early")
                got += data
            digest.update(got)
            yield from threadlib.sleep(pause)
    return digest.hexdigest()


def two_hosts(world, loss=0.03, clients=3, rounds=40):
    """Hosts a (echo server) and b (``clients`` chatting clients) on a
    link with ``loss`` and reordering: traffic for about ``rounds`` x 0.05
    simulated seconds, with draws from the seed."""
    a = world.host("a", "10.0.0.1", ipv6="fd00::1")
    b = world.host("b", "10.0.0.2", ipv6="fd00::2")
    world.link(a, b, latency=0.003, jitter=0.002, loss=loss, reorder=0.1, duplicate=0.02)
    a.spawn(echo_server, a.network, name="echo")
    for i in range(clients):
        b.spawn(chatter, b.network, "a", rounds, world.rng.choice([512, 2048, 8192]), 0.05, name=f"client-{i}")


def setup_that_runs(world):
    """A setup that also runs the world for a while (allowed)."""
    two_hosts(world, clients=1, rounds=20)
    world.run(until=0.3)


# ---------------------------------------------------------------------------
# A server that appends records to a file on its host's disk


LOG_RECORD = b"record %06d\n"


def log_server(net, path, port=7100):
    """Append each line a client sends to ``path``, fsync every line
    that ends in ``!`` and answer "synced"; answer "kept" otherwise
    (kept in the page cache only); "count" answers how many lines the
    file holds; an error answers "error <errno>"."""
    exists = yield from _exists(path)
    f = yield from fileio.open(path, "r+" if exists else "w")
    lst = yield from net.listen(("", port))
    try:
        while True:
            conn, _peer = yield from lst.accept()
            yield from threadlib.spawn(_log_conn, conn, f)
    finally:
        lst.close()


def _exists(path):
    try:
        yield from fileio.stat(path)
    except FileNotFoundError:
        return False
    return True


def _log_conn(conn, f):
    with conn:
        buffered = b""
        while True:
            data = yield from conn.recv(4096)
            if not data:
                return
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                try:
                    if line == b"count":
                        size = f.size
                        text = yield from f.pread(size, 0)
                        answer = b"%d %s" % (text.count(b"\n"), hashlib.sha256(text).hexdigest().encode())
                    else:
                        number = int(line.rstrip(b"!"))
                        yield from f.pwrite(LOG_RECORD % number, f.size)
                        if line.endswith(b"!"):
                            yield from f.fsync()
                            answer = b"synced"
                        else:
                            answer = b"kept"
                except OSError as exc:
                    answer = b"error %d" % exc.errno
                yield from conn.sendall(answer + b"\n")


def ask(net, host, lines, port=7100):
    """Send each line, collect the answers (one per line)."""
    answers = []
    with (yield from net.connect((host, port))) as conn:
        buffered = b""
        for line in lines:
            yield from conn.sendall(line + b"\n")
            while b"\n" not in buffered:
                data = yield from conn.recv(4096)
                if not data:
                    raise ConnectionResetError("the log server closed early")
                buffered += data
            answer, buffered = buffered.split(b"\n", 1)
            answers.append(answer.decode())
    return answers


def start_log_server(host):
    """A host's start function: the log server on /var/log/records."""
    return log_server(host.network, "/var/log/records")


def disk_hosts(world, latency=0.0005, eio=0.0):
    """A log server host (its disk with ``latency`` and ``eio``) and a
    client host."""
    server = world.host("db", "10.0.0.1", start=start_log_server,
                        disk={"latency": latency, "jitter": latency, "fsync_latency": 0.004, "eio": eio})
    client = world.host("app", "10.0.0.2")
    world.link(server, client, latency=0.001, loss=0.01)
