"""Record a real run, replay it later, and learn where a program's
behaviour first differs from the recording.

    threadlib.run(main, record="run.tlrec")          # a real run, recorded
    threadlib.replay.replay("run.tlrec", main)       # the same inputs, no network
    python -m threadlib.replay check run.tlrec [-- MODULE:FUNCTION [ARG...]]

Recording writes down, as the run goes, everything the program did not
compute itself: which threads the workers woke and with what (a socket
ready, a timer, a pool call's result, a signal), what the kernel's
sockets returned (bytes, peers, counts, errors), and the clock as the
program read it; outputs (bytes sent) go in as a CRC and a short prefix.
Replay runs the program again against the log, on a clock that gives the
recorded times, touching no socket, and checks each output and each
decision: the first difference raises ``Divergence`` naming the record,
the thread, and what was expected and what came. Replaying against a
*changed* program is the point: record a failure in production, fix the
code, replay to see the fix take the other path exactly where expected.

What is covered: threads (generator, ``async def``) on the standard
workers over the kernel's network (sockio, and the apps built on it).
Not yet: the AIO/io_uring workers, the user-level TCP stack, the asyncio
loop's callbacks, greenlets, and files the program opens itself (those
are read again at replay, so replay needs the same files). See
docs/simulation.md, "Record and replay".
"""

from __future__ import annotations

from .log import LogError, describe
from .player import Divergence, replay
from .recorder import Recorder, run_recorded

__all__ = ["replay", "Divergence", "LogError", "Recorder", "run_recorded", "describe"]
