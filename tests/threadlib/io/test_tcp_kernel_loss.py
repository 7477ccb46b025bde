"""Real packet loss from the kernel on the way to and from the user-level stack.

This kernel has no sch_netem, so the loss comes from nftables: the
user-level stack's TUN device sits in a router namespace, the kernel
peers (curl, wrk, the sink and source) in a host namespace behind a veth
pair, and the router forwards between the two and drops P % of the
packets in its forward hook, each direction counted on its own, at 1, 5
and 10 %. A ``tbf`` qdisc on the TUN device limits the rate towards the
user stack so that packets queue. Over that path curl downloads from
apps.webserver on the user stack, a user-stack client uploads to and
downloads from a kernel peer, and wrk runs many short requests; every
body is checked byte-exact, and the times are printed (never asserted:
speed is bench/'s business). Reordering and duplication, which nftables
cannot do, stay with the in-Python lossy link of test_tcp_interop.

Why a router: a packet dropped in the sending host's own output path is
no wire loss. The sending socket is told (-EPERM), keeps the data as
unsent and sends it later, so the receiver never sees a hole; and a
SYN-ACK retransmission refused that way makes the kernel forget the
half-open connection at once, so a client whose third ACK was lost waits
forever (docs/testing.md, "Flakiness"). A router's drop is silent, as on
a wire. The host's veth sends one segment per packet (gso_max_segs 1),
and the TUN device runs without offload, so one drop loses one segment.
Every namespace, device and rule is made here and removed here.
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
ROUTER4, USER4 = "10.75.0.1", "10.75.0.2"   # the TUN link: the router's side and the user-level stack
GATEWAY4, HOST4 = "10.75.1.1", "10.75.1.2"  # the veth link: the router's side and the kernel host
SIZE = 2 << 20  # each transfer; at 10 % loss CPython's stack needs seconds for this
LOSSES = [1, 5, 10]


@pytest.fixture(scope="module")
def ns():
    """The router: the user stack's TUN device and the lossy forwarding."""
    namespace = NetNamespace.create(prefix="tcpl")
    try:
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture(scope="module")
def host(ns):
    """The kernel peers' namespace, reached from the user stack through the router ``ns``."""
    namespace = NetNamespace.create(prefix="tcplh")
    try:
        route_through(ns, namespace, GATEWAY4, HOST4)
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture(scope="module")
def net(ns, host):
    network = tcpsockio.open_network(tun=TUN, peer=f"{ROUTER4}/24", address=f"{USER4}/24", peer6="fd75::1/64",
                                     address6="fd75::2", netns=ns.name, seed=21, offload=False,
                                     routes=[f"{ROUTER4}/24", f"{HOST4}/24"])
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


def route_through(router, host, gateway: str, address: str, veth: str = "tlkv") -> None:
    """Join ``host`` to ``router`` with a veth pair (``gateway``/24 on the
    router's end, ``address``/24 on the host's, the router its default
    route) and make ``router`` forward. The host's end sends one segment
    per packet, so that a drop on the way loses exactly one."""
    steps = [
        (router, ["ip", "link", "add", f"{veth}0", "type", "veth", "peer", "name", f"{veth}1", "netns", host.name]),
        (router, ["ip", "addr", "add", f"{gateway}/24", "dev", f"{veth}0"]),
        (router, ["ip", "link", "set", f"{veth}0", "up"]),
        (router, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]),
        (host, ["ip", "addr", "add", f"{address}/24", "dev", f"{veth}1"]),
        (host, ["ip", "link", "set", f"{veth}1", "gso_max_segs", "1", "up"]),
        (host, ["ip", "route", "add", "default", "via", gateway]),
    ]
    for where, argv in steps:
        r = where.exec(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr}"


class KernelLoss:
    """nftables rules in the router ``ns`` dropping ``percent`` % of the
    packets it forwards to and from the TUN device, each direction counted
    on its own. Forwarded, not sent: the sending kernel never learns of
    the drop (see the module's docstring)."""

    def __init__(self, ns, percent: int, tun: str = TUN) -> None:
        self.ns = ns
        nft(ns, f"""
table inet tl_loss {{
    chain forward {{
        type filter hook forward priority -300; policy accept;
        iifname "{tun}" numgen random mod 100 < {percent} counter drop comment "to the kernel"
        oifname "{tun}" numgen random mod 100 < {percent} counter drop comment "to the user stack"
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
def test_kernel_drops_both_ways_curl_download_and_bulk_transfers_are_byte_exact(host, net, site, tmp_path,
                                                                                 loss_at, percent):
    root, digest = site
    loss = loss_at(percent)
    retransmits_before = net.stack.stats.retransmits + net.stack.stats.fast_retransmits
    out_of_order_before = net.stack.stats.out_of_order
    out = tmp_path / "out"

    def download():
        return curl(host, f"http://{USER4}:8090/big", str(out))

    r = serve_while(net, root, 8090, download)
    assert r.returncode == 0, r.stderr
    status, size, seconds = r.stdout.split()
    assert (status, int(size)) == ("200", SIZE)
    assert sha256_file(out) == digest
    up, down = bulk_both_ways(host, net, HOST4, SIZE, limit=150)
    to_kernel, to_user = loss.dropped()
    stats = net.stack.stats
    print(f"{percent}% loss each way: curl download {SIZE >> 20} MiB {float(seconds):.2f} s; user-stack client "
          f"upload {up:.2f} s, download {down:.2f} s; nftables dropped {to_kernel} packets to the kernel, "
          f"{to_user} to the user stack; {stats}")
    # The loss did happen, both ways, and the stack repaired it: it resent
    # what it lost, and the kernel's lost segments reached it as holes.
    assert to_kernel > 0 and to_user > 0
    assert stats.retransmits + stats.fast_retransmits > retransmits_before
    assert stats.out_of_order > out_of_order_before


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing")
@pytest.mark.parametrize("percent", LOSSES)
def test_wrk_through_kernel_loss_gets_only_whole_200_responses(host, net, site, loss_at, percent):
    root, _ = site
    loss = loss_at(percent)

    def load():
        return host.exec(["wrk", "-t1", "-c20", "-d2s", "--timeout", "10s", f"http://{USER4}:8091/hello.txt"],
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
def test_rate_limited_queueing_link_with_5_percent_loss_is_byte_exact(ns, host, net, site, tmp_path, loss_at):
    """tbf limits what the router forwards into the TUN device to 20 Mbit/s
    with up to 100 ms of queue: the kernel's data towards the user stack
    waits in the shaper's queue (its overlimits count the packets held
    back), on top of the random loss."""
    root, digest = site
    loss = loss_at(5)
    tbf(ns, "20mbit")
    try:
        started = time.monotonic()
        up, down = bulk_both_ways(host, net, HOST4, SIZE, limit=150)
        out = tmp_path / "out"
        r = serve_while(net, root, 8092, lambda: curl(host, f"http://{USER4}:8092/big", str(out)))
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
