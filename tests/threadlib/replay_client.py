"""The client of replay_program, run as a separate OS process: it waits
for the port file, opens N connections, sends six lines on each (pausing
before the last so that the server's receive timeouts fire) and checks
every reply. Exit status 0 when every reply was right."""

import socket
import sys
import time
import zlib

port_file, conns = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while True:
    try:
        port = int(open(port_file).read())
        break
    except (OSError, ValueError):
        if time.monotonic() > deadline:
            sys.exit("no port file")
        time.sleep(0.01)
socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(conns)]
files = [s.makefile("rb") for s in socks]
for i in range(6):
    if i == 5:
        time.sleep(0.2)
    for j, s in enumerate(socks):
        line = b"conn %d msg %d" % (j, i)
        s.sendall(line + b"\n")
    for j, f in enumerate(files):
        line = b"conn %d msg %d" % (j, i)
        got = f.readline()
        want = b"reply %s crc %08x\n" % (line, zlib.crc32(line))
        if got != want:
            sys.exit(f"connection {j} message {i}: got {got!r}, want {want!r}")
for s in socks:
    s.close()
