"""Reproduce the handshake stall behind a rare failure of
test_tcp_kernel_loss (docs/testing.md, "Flakiness"): not a test, a
diagnostic to run by hand, as root, from the repository root.

    python -m tests.threadlib.io.kernel_loss_stall [--rounds 60] [--downloads 4] [--limit 40] [--out DIR]

Each round makes a namespace with a TUN link to threadlib's user-level
stack, drops 10 % of the packets each way with nftables (as the test
does), and runs ``--downloads`` 2 MiB downloads from a kernel source
(test_tcp_interop's kernel peer) to the stack, each bounded by
``--limit`` seconds. A download that gets nothing within the bound is a
stall: the stack's connection state, the kernel's sockets (``ss -tanoe``),
its TCP counters (``nstat -az``), the nftables drop counts and, if tcpdump
is installed, a capture of the TUN device are written to ``--out``, and
the run stops. Load the machine (one CPU burner per core) to see it: with
both cores busy about one download in 70 stalled (session 8). Everything
it makes lives in the namespace it removes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import threadlib
from iolib.netns import NetNamespace
from threadlib.io import tcpsockio

from .test_tcp_interop import kernel_peer
from .test_tcp_kernel_loss import KernelLoss

TUN = "tlr0"
KERNEL4, USER4 = "10.76.0.1", "10.76.0.2"
SIZE = 2 << 20
LOSS = 10


def _connection_state(stream) -> dict:
    conn = stream._conn
    state = {}
    for klass in type(conn).__mro__:
        for name in getattr(klass, "__slots__", ()):
            value = getattr(conn, name, None)
            if isinstance(value, (int, float, str, bool, type(None))):
                state[name] = value
    return state


def _report(ns: NetNamespace, net, stream, got: int, waited: float, out: str) -> str:
    path = os.path.join(out, "stall.txt")
    with open(path, "w") as f:
        f.write(f"stalled after {waited:.1f} s with {got} of {SIZE} bytes: {stream}\n\n")
        f.write(f"user stack connection: {_connection_state(stream)}\nuser stack stats: {net.stack.stats}\n\n")
        for argv in (["ss", "-tanoe"], ["nstat", "-az"], ["nft", "list", "table", "inet", "tl_loss"]):
            f.write(f"$ {' '.join(argv)}\n{ns.exec(argv, capture_output=True, text=True).stdout}\n")
    return path


def _round(index: int, downloads: int, limit: float, out: str) -> bool:
    """One namespace, ``downloads`` downloads; True if one stalled."""
    ns = NetNamespace.create(prefix="tcpls")
    capture = None
    try:
        net = tcpsockio.open_network(tun=TUN, peer=f"{KERNEL4}/24", address=f"{USER4}/24", peer6="fd76::1/64",
                                     address6="fd76::2", netns=ns.name, seed=21, offload=False)
        try:
            KernelLoss(ns, LOSS, tun=TUN)  # removed with the namespace
            if shutil.which("tcpdump"):
                capture = ns.popen(["tcpdump", "-i", TUN, "-w", os.path.join(out, "tun.pcap"), "-U", "-s", "120",
                                    "-n"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)  # tcpdump attached before the first SYN

            def main():
                for n in range(downloads):
                    source, port = kernel_peer(ns, "source", KERNEL4, SIZE)
                    try:
                        started = time.monotonic()
                        stream = yield from net.connect((KERNEL4, port), timeout=10)
                        got = 0
                        try:
                            with threadlib.timeout(limit):
                                while chunk := (yield from stream.get()):
                                    got += len(chunk)
                        except TimeoutError:
                            path = _report(ns, net, stream, got, time.monotonic() - started, out)
                            print(f"round {index}, download {n}: stalled; see {path}", flush=True)
                            return True
                        stream.close()
                    finally:
                        source.kill()
                        source.wait()
                return False

            return threadlib.run(main())
        finally:
            if capture is not None:
                capture.terminate()
                capture.wait()
            net.close()
    finally:
        ns.delete()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--downloads", type=int, default=4)
    p.add_argument("--limit", type=float, default=40.0, help="seconds a download may take before it counts as stalled")
    p.add_argument("--out", default="kernel-loss-stall", help="directory for the report and the capture")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("kernel_loss_stall: needs root (TUN devices, network namespaces)", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    for index in range(a.rounds):
        if _round(index, a.downloads, a.limit, a.out):
            return 1
    print(f"no stall in {a.rounds} rounds of {a.downloads} downloads")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
