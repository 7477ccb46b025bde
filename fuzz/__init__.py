"""Coverage-guided fuzz targets (atheris, libFuzzer) for every parser that
takes bytes from the network or a file: the web server's request path, the
user-level TCP/IP stack's packet input, the TLS record path and the replay
log reader.

Each target is a module with ``TestOneInput(data: bytes)`` that builds the
object under test in memory, feeds it ``data`` and asserts the invariants
the module names; ``INSTRUMENT`` lists the packages whose coverage guides
the fuzzer. ``corpus/<target>/`` holds the seed inputs (``python -m
fuzz.seeds`` writes them), ``crashers/<target>/`` every input that once
broke a target (replayed by tests/fuzz as regressions). ``python -m fuzz.run
TARGET [libFuzzer flags]`` runs one target under atheris.

Nothing here opens a socket, a device or a process, or reads the wall clock
into what it asserts: a target's verdict depends only on its input.
"""

TARGETS = ("http_request", "tcp_input", "tls_records", "replay_log")
