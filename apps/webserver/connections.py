"""The open connections of one server, as its idle sweeper and its drain
see them: each connection thread's ``ConnectionState`` says whether it is
idle (waiting for the first byte of a request) and since when.

One sweeper per server closes connections idle past their limit, so a
connection's idle wait needs no timer of its own: a per-wait timeout
would cost every request a timer's push and pop, and the sweeper costs a
scan of the open connections a period. It never touches a connection that
is busy with a request, and never reads a clock but the scheduler's.
"""

from __future__ import annotations

import types
from typing import Any

import threadlib
from threadlib import Thread


class ConnectionState:
    """What the sweeper and the drain need to know about one connection."""

    __slots__ = ("thread", "idle", "idle_since", "served")

    def __init__(self) -> None:
        self.thread: Thread | None = None
        self.idle = False  # waiting for the first byte of a request
        self.idle_since = 0.0  # the scheduler's clock when it began waiting
        self.served = False  # a connection that never sent a request gets only header_timeout

    @property
    def waiting_idle(self) -> bool:
        """Idle and blocked in its wait: one that was just handed a request
        (ready, not waiting yet) is not."""
        t = self.thread
        return self.idle and t is not None and t.waiting_on is not None


@types.coroutine
def sweep_idle(open_connections: dict[ConnectionState, None], keepalive_timeout: float,
               header_timeout: float) -> Any:
    """Cancel the threads of connections idle for ``keepalive_timeout``
    after a request, or for ``header_timeout`` (at most the keep-alive
    one) before their first; runs until cancelled. The limit is kept to
    within a quarter of the shorter timeout (and at most a second)."""
    first = min(header_timeout, keepalive_timeout)
    period = min(1.0, max(0.01, first / 4))
    while True:
        yield from threadlib.sleep(period)
        now = threadlib.now()
        for state in list(open_connections):
            limit = keepalive_timeout if state.served else first
            if now - state.idle_since >= limit and state.waiting_idle:
                yield from state.thread.cancel()  # type: ignore[union-attr]
