"""A planted bug for the seed runner's tests: a tiny account server with a
lost-update race, exposed only when a fault stretches one request's
window over another's.

The server reads an ``ADD n`` request in two parts: it reads the balance
when the first line arrives and writes ``balance + n`` when the second
part (the amount's confirmation) does. Two clients on two hosts send one
request each, 100 ms apart: on a clean network each window is a couple of
milliseconds and they never overlap; a lost or reordered segment holds a
window open for a retransmission timeout, the other request reads the
same balance, and one update is lost. ``sim.always`` checks the sum. It
must never be fixed: the runner's tests need it to fail on some seeds."""

from threadlib import sim

import threadlib


def account_server(net, state):
    with (yield from net.listen(("", 7000))) as listener:
        while True:
            conn, _peer = yield from listener.accept()
            yield from threadlib.spawn(_serve(conn, state))


def _serve(conn, state):
    with conn:
        buffer = b""
        while b"\n" not in buffer:
            data = yield from conn.recv(100)
            if not data:
                return
            buffer += data
        seen = state["balance"]  # the race: read here ...
        while buffer.count(b"\n") < 2:
            data = yield from conn.recv(100)
            if not data:
                return
            buffer += data
        amount = int(buffer.split(b"\n")[1])
        state["balance"] = seen + amount  # ... written here, after another wait
        yield from conn.sendall(b"OK\n")


def client(net, amount, delay):
    yield from threadlib.sleep(delay)
    with (yield from net.connect(("bank", 7000), timeout=30)) as conn:
        yield from conn.sendall(b"ADD\n")
        yield from threadlib.sleep(0.01)
        yield from conn.sendall(b"%d\n" % amount)
        reply = b""
        while not reply.endswith(b"\n"):
            data = yield from conn.recv(10)
            if not data:
                break
            reply += data
    return reply


def scenario(world):
    bank = world.host("bank", "10.0.0.1")
    alice = world.host("alice", "10.0.0.2")
    bob = world.host("bob", "10.0.0.3")
    for h in (alice, bob):
        world.link(bank, h, latency=0.002, jitter=0.001, loss=0.04, reorder=0.04)
    state = {"balance": 0}
    bank.spawn(account_server, bank.network, state)
    first = alice.spawn(client, alice.network, 5, 0.0)
    second = bob.spawn(client, bob.network, 7, 0.1)
    replies = [world.run(first), world.run(second)]
    sim.sometimes(world.faults.fired, "a fault fired")
    sim.always(replies == [b"OK\n", b"OK\n"], f"both deposits are acknowledged: {replies}")
    sim.always(state["balance"] == 12, f"no deposit is lost: balance {state['balance']}, expected 12")
