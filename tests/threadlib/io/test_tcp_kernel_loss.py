"""Real packet loss from the kernel on the TUN link of the user-level stack.

This kernel has no sch_netem, so the loss comes from nftables in the test
namespace: ``numgen random mod 100 < P drop`` on the kernel side of the
TUN device, in both directions (the input hook drops what the user stack
sent, the output hook what the kernel sends to it), at 1, 5 and 10 %, and
a ``tbf`` qdisc limits the kernel's sending rate so that packets queue.
Over that link curl downloads from apps.webserver on the user stack, a
user-stack client uploads to and downloads from a kernel peer, and wrk
runs many short requests; every body is checked byte-exact, and the times
are printed (never asserted: speed is bench/'s business). Reordering and
duplication, which nftables cannot do, stay with the in-Python lossy link
of test_tcp_interop.

The link runs without segmentation offload: every packet is one frame
and one drop loses one segment, as on a real wire. Every namespace, device
and rule is made here and removed here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from iolib.netns import NetNamespace
from threadlib.io import tcpsockio

from .test_tcp_interop import bulk_both_ways, curl, payload, serve_while, sha256_file

pytestmark = [
    pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root (TUN devices, network namespaces)"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nft missing (setup.sh installs Debian's nftables)"),
    pytest.mark.timeout(300),
]

TUN = "tlk0"
KERNEL4, USER4 = "10.75.0.1", "10.75.0.2"
SIZE = 2 << 20  # each transfer; at 10 % loss CPython's stack needs seconds for this
LOSSES = [1, 5, 10]


@pytest.fixture(scope="module")
def ns():
    namespace = NetNamespace.create(prefix="tcpl")
    try:
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture(scope="module")
def net(ns):
    network = tcpsockio.open_network(tun=TUN, peer=f"{KERNEL4}/24", address=f"{USER4}/24", peer6="fd75::1/64",
                                     address6="fd75::2", netns=ns.name, seed=21, offload=False)
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    data = payload(SIZE, 7)
    (root / "big").write_bytes(data)
    (root / "hello.txt").write_bytes(b"hello through a lossy link\n")
    import hashlib

    return root, hashlib.sha256(data).hexdigest()


def nft(ns, script: str) -> str:
    r = ns.exec(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"nft: {r.stderr}"
    return r.stdout


class KernelLoss:
    """nftables rules in the namespace dropping ``percent`` % of the packets
    crossing the TUN device, each direction counted on its own."""

    def __init__(self, ns, percent: int, tun: str = TUN) -> None:
        self.ns = ns
        nft(ns, f"""
table inet tl_loss {{
    chain to_kernel {{
        type filter hook input priority -300; policy accept;
        iifname "{tun}" numgen random mod 100 < {percent} counter drop
    }}
    chain to_user {{
        type filter hook output priority -300; policy accept;
        oifname "{tun}" numgen random mod 100 < {percent} counter drop
    }}
}}
""")

    def dropped(self) -> tuple[int, int]:
        """Packets dropped so far: (user stack -> kernel, kernel -> user stack)."""
        text = self.ns.exec(["nft", "list", "table", "inet", "tl_loss"], capture_output=True, text=True,
                            timeout=30).stdout
        counts = [int(n) for n in re.findall(r"counter packets (\d+)", text)]
        assert len(counts) == 2, text
        return counts[0], counts[1]

    def remove(self) -> None:
        self.ns.exec(["nft", "delete", "table", "inet", "tl_loss"], capture_output=True, timeout=30)


@pytest.fixture
def loss_at(ns):
    made = []

    def make(percent: int) -> KernelLoss:
        made.append(KernelLoss(ns, percent))
        return made[-1]

    yield make
    for rules in made:
        rules.remove()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
@pytest.mark.parametrize("percent", LOSSES)
def test_kernel_drops_both_ways_curl_download_and_bulk_transfers_are_byte_exact(ns, net, site, tmp_path,
                                                                                 loss_at, percent):
    root, digest = site
    loss = loss_at(percent)
    retransmits_before = net.stack.stats.retransmits + net.stack.stats.fast_retransmits
    out = tmp_path / "out"

    def download():
        return curl(ns, f"http://{USER4}:8090/big", str(out))

    r = serve_while(net, root, 8090, download)
    assert r.returncode == 0, r.stderr
    status, size, seconds = r.stdout.split()
    assert (status, int(size)) == ("200", SIZE)
    assert sha256_file(out) == digest
    up, down = bulk_both_ways(ns, net, KERNEL4, SIZE, limit=150)
    to_kernel, to_user = loss.dropped()
    stats = net.stack.stats
    print(f"{percent}% loss each way: curl download {SIZE >> 20} MiB {float(seconds):.2f} s; user-stack client "
          f"upload {up:.2f} s, download {down:.2f} s; nftables dropped {to_kernel} packets to the kernel, "
          f"{to_user} to the user stack; {stats}")
    # The loss did happen, both ways, and the stack repaired it.
    assert to_kernel > 0 and to_user > 0
    assert stats.retransmits + stats.fast_retransmits > retransmits_before


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing")
@pytest.mark.parametrize("percent", LOSSES)
def test_wrk_through_kernel_loss_gets_only_whole_200_responses(ns, net, site, loss_at, percent):
    root, _ = site
    loss = loss_at(percent)

    def load():
        return ns.exec(["wrk", "-t1", "-c20", "-d2s", "--timeout", "10s", f"http://{USER4}:8091/hello.txt"],
                       capture_output=True, text=True, timeout=60)

    r = serve_while(net, root, 8091, load)
    assert r.returncode == 0, r.stderr
    to_kernel, to_user = loss.dropped()
    print(f"wrk at {percent}% loss each way (dropped {to_kernel} to the kernel, {to_user} to the user stack):\n"
          f"{r.stdout}")
    requests = int(re.search(r"(\d+) requests in", r.stdout).group(1))
    assert requests > 0
    # wrk counts a response that did not parse or a connection that broke;
    # loss may only slow requests down (no timeouts: 10 s covers many RTOs).
    assert "Socket errors" not in r.stdout, r.stdout
    assert "Non-2xx" not in r.stdout, r.stdout
    assert to_kernel + to_user > 0


def tbf(ns, rate: str) -> None:
    r = ns.exec(["tc", "qdisc", "replace", "dev", TUN, "root", "tbf", "rate", rate, "burst", "16kb",
                 "latency", "100ms"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("tc") is None, reason="curl or tc missing")
def test_rate_limited_queueing_link_with_5_percent_loss_is_byte_exact(ns, net, site, tmp_path, loss_at):
    """tbf limits what the kernel sends into the TUN device to 20 Mbit/s
    with up to 100 ms of queue: the kernel's data towards the user stack
    waits in the shaper's queue (its overlimits count the packets held
    back), on top of the random loss."""
    root, digest = site
    loss = loss_at(5)
    tbf(ns, "20mbit")
    try:
        started = time.monotonic()
        up, down = bulk_both_ways(ns, net, KERNEL4, SIZE, limit=150)
        out = tmp_path / "out"
        r = serve_while(net, root, 8092, lambda: curl(ns, f"http://{USER4}:8092/big", str(out)))
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == digest
        stats = ns.exec(["tc", "-s", "qdisc", "show", "dev", TUN], capture_output=True, text=True).stdout
    finally:
        ns.exec(["tc", "qdisc", "del", "dev", TUN, "root"], capture_output=True)
    to_kernel, to_user = loss.dropped()
    print(f"tbf 20mbit + 5% loss: upload {up:.2f} s, download {down:.2f} s, curl {r.stdout.split()[2]} s, "
          f"all {time.monotonic() - started:.2f} s; nftables dropped {to_kernel}/{to_user}\n{stats}")
    sent = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", stats)
    assert sent is not None, stats
    # The kernel's data towards the user stack went through the shaper.
    assert int(sent.group(1)) >= SIZE and int(sent.group(4)) > 0, stats
