"""Writes the seed corpus of every target: ``python -m fuzz.seeds``
(re)creates ``fuzz/corpus/<target>/seed-*`` from the inputs built here,
one small, valid, meaningful input per path worth starting from.

Seeds are built, not captured, so they stay right when a target's input
format changes; files the fuzzer added to a corpus by hand are left alone.
This module must never write outside ``fuzz/corpus``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from pathlib import Path

from iolib.tcp.ip import build_ip, ipv4_header
from iolib.tcp.segment import (ACK, FIN, PSH, RST, SYN, URG, build_segment, opt_mss, opt_sack, opt_sack_ok,
                               opt_timestamp, opt_wscale)

CORPUS = Path(__file__).parent / "corpus"

# -- http_request ----------------------------------------------------------------

_H = b"Host: x\r\n"


def http_seeds() -> list[bytes]:
    """Chunk-size byte + what a client sends."""
    requests = [
        b"GET / HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET /a.txt HTTP/1.1\r\n" + _H + b"\r\nGET /big.bin HTTP/1.1\r\n" + _H + b"\r\nHEAD /sub/ HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET /big.bin HTTP/1.1\r\n" + _H + b"Range: bytes=10-99\r\n\r\n",
        b"GET /big.bin HTTP/1.1\r\n" + _H + b"Range: bytes=-5\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\n" + _H + b"Range: bytes=50-\r\n\r\n",
        b"GET /empty.txt HTTP/1.1\r\n" + _H + b"Range: bytes=0-0\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\n" + _H + b"If-None-Match: W/\"x\", *\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\n" + _H + b"If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT\r\n\r\n",
        b"GET /a.txt HTTP/1.1\r\n" + _H + b"If-Range: \"abc\"\r\nRange: bytes=1-2\r\n\r\n",
        b"GET /sub HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET /sub/x%20y.css?v=1#f HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET /%C3%BC.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /../etc/passwd HTTP/1.1\r\n" + _H + b"\r\nGET /%2e%2e/x HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET /out/passwd HTTP/1.1\r\n" + _H + b"\r\nGET /noindex/ HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET http://x/alias.txt HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET /a%00b HTTP/1.1\r\n" + _H + b"\r\n",
        b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + _H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /a.txt HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + _H + _H + b"\r\n",
        b"GET / HTTP/2.0\r\n" + _H + b"\r\n",
        b"BREW / HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET / HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\nGET / HTTP/1.1\r\n" + _H + b"\r\n",
        b"GET / HTTP/1.1\r\n" + _H + b"X: " + b"y" * 300 + b"\r\n\r\n",
    ]
    bodies = [
        b"POST /f HTTP/1.1\r\n" + _H + b"Content-Length: 11\r\n\r\nline one\nx"
        + b"PUT /g HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n4\r\nab\nc\r\n3;e=1\r\ndef\r\n0\r\nT: 1\r\n\r\n"
        + b"GET / HTTP/1.1\r\n" + _H + b"\r\n",
        b"POST / HTTP/1.1\r\n" + _H + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
        b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 5000\r\n\r\n" + b"z" * 100,
        b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n1001\r\n" + b"z" * 100,
        b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhiHEAD / HTTP/1.1\r\n" + _H + b"\r\n",
    ]
    wsgi = 0x80
    return ([bytes((0,)) + r for r in requests + bodies] + [bytes((3,)) + requests[1], bytes((1,)) + requests[2]]
            + [bytes((wsgi,)) + r for r in requests + bodies] + [bytes((wsgi | 1,)) + bodies[0],
                                                                   bytes((wsgi | 5,)) + bodies[1]])


# -- tcp_input -------------------------------------------------------------------

def tcp_seeds() -> list[bytes]:
    """Records for fuzz.tcp_input: handshakes both ways, data, SACK,
    timestamps, urgent data, RSTs, ICMP, fragments, IPv6."""
    from . import tcp_input as T

    here4 = ipaddress.ip_address(T.LOCAL_V4).packed
    peer4 = ipaddress.ip_address(T.PEER_V4).packed
    here6 = ipaddress.ip_address(T.LOCAL_V6).packed
    peer6 = ipaddress.ip_address(T.PEER_V6).packed
    active_port = T._Run(0).stack.connections()[0].lport

    def tcp(flags: int, seq: int, ack: int, payload: bytes = b"", options: bytes = b"", *, sport: int = 40000,
            dport: int = 80, wnd: int = 65535, v6: bool = False, urg: int = 0) -> bytes:
        src, dst = (peer6, here6) if v6 else (peer4, here4)
        pseudo = int.from_bytes(src + dst, "big") + 6
        return build_ip(src, dst, 6, build_segment(sport, dport, seq, ack, flags, wnd, options, payload, pseudo, urg))

    def rec(packet: bytes, op: int = T.OP_RELATIVE) -> bytes:
        return T.packet_record(packet, op)

    syn_opts = opt_mss(1400) + opt_wscale(7) + opt_sack_ok() + opt_timestamp(100, 0)
    passive = rec(tcp(SYN, 1000, 0, options=syn_opts)) + rec(tcp(ACK, 1, 1, options=opt_timestamp(101, 0)))
    passive6 = rec(tcp(SYN, 5, 0, options=opt_mss(1200), v6=True)) + rec(tcp(ACK, 1, 1, v6=True))
    talk = (rec(tcp(ACK | PSH, 1, 1, b"hello world", opt_timestamp(102, 0)))
            + T.call_record(T.OP_RECV) + T.call_record(T.OP_SEND, 100)
            + rec(tcp(ACK, 12, 1001, options=opt_timestamp(103, 0)))
            + rec(tcp(ACK, 12, 1001, options=opt_timestamp(104, 0) + opt_sack([(2001, 3001)])))
            + T.call_record(T.OP_TIME, 20)
            + rec(tcp(ACK | FIN, 12, 3701, options=opt_timestamp(105, 0)))
            + T.call_record(T.OP_CLOSE) + rec(tcp(ACK, 13, 3702, options=opt_timestamp(106, 0)))
            + T.call_record(T.OP_TIME, 255))
    active = (rec(tcp(SYN | ACK, 0, 1, options=opt_mss(1000) + opt_sack_ok(), sport=5000, dport=active_port))
              + T.call_record(T.OP_SEND, 200)
              + rec(tcp(ACK, 1, 1001, sport=5000, dport=active_port, options=opt_sack([(2001, 3001), (4001, 5001)])))
              + rec(tcp(ACK, 1, 1001, sport=5000, dport=active_port, options=opt_sack([(2001, 4001)])))
              + rec(tcp(ACK, 1, 1001, sport=5000, dport=active_port, options=opt_sack([(2001, 5001)])))
              + T.call_record(T.OP_TIME, 30) + rec(tcp(ACK, 1, 7401, sport=5000, dport=active_port)))
    out_of_order = (passive + rec(tcp(ACK, 20, 1, b"later", opt_timestamp(110, 0)))
                    + rec(tcp(ACK | URG, 1, 1, b"x" * 19, opt_timestamp(111, 0), urg=3))
                    + rec(tcp(ACK, 1, 1, options=opt_timestamp(1, 0))) + T.call_record(T.OP_RECV))
    resets = (passive + rec(tcp(RST, 5, 0)) + rec(tcp(RST | ACK, 1, 1)) + rec(tcp(SYN, 1, 0))
              + rec(tcp(ACK, 0, 0, sport=1, dport=9)) + rec(tcp(RST, 0, 0, sport=1, dport=9)))
    backlog = b"".join(rec(tcp(SYN, 7, 0, sport=50000 + i, dport=81)) for i in range(3))
    echo4 = build_ip(peer4, here4, 1, bytes((8, 0, 0, 0, 0, 1, 0, 1)) + b"ping")
    echo6 = build_ip(peer6, here6, 58, bytes((128, 0, 0, 0, 0, 1, 0, 1)) + b"ping6")
    quoted = tcp(SYN, 0, 0, sport=active_port, dport=5000)
    quoted = ipv4_header(here4, peer4, 6, 20) + quoted[20:40]  # our SYN, as the router saw it
    frag_needed = build_ip(peer4, here4, 1, bytes((3, 4, 0, 0, 0, 0, 2, 64)) + quoted)
    unreachable = build_ip(peer4, here4, 1, bytes((3, 1, 0, 0, 0, 0, 0, 0)) + quoted)
    syn_payload = tcp(SYN, 9000, 0, b"z" * 40, opt_mss(1400), sport=41000)[20:]
    frags = []
    for offset, more in ((0, 1), (24, 0)):
        piece = syn_payload[offset:offset + 24] if more else syn_payload[offset:]
        head = bytearray(ipv4_header(peer4, here4, 6, len(piece)))
        struct.pack_into("!HH", head, 4, 77, (more << 13) | (offset // 8))
        frags.append(rec(bytes(head) + piece, T.OP_FIXED))
    v6_payload = tcp(SYN, 9000, 0, b"q" * 40, sport=41001, v6=True)[40:]
    v6_frags = []
    for offset, more in ((0, 1), (32, 0)):
        piece = v6_payload[offset:offset + 32] if more else v6_payload[offset:]
        fragment_header = struct.pack("!BBHI", 6, 0, offset | more, 99)
        header = bytearray(build_ip(peer6, here6, 44, fragment_header + piece))
        v6_frags.append(rec(bytes(header), T.OP_RAW))
    return [
        b"\x00" + passive + talk,
        b"\x01" + passive + talk,
        b"\x02" + passive6 + rec(tcp(ACK | PSH, 1, 1, b"six" * 100, v6=True)) + T.call_record(T.OP_RECV),
        b"\x00" + active,
        b"\x00" + out_of_order,
        b"\x00" + resets,
        b"\x00" + backlog + T.call_record(T.OP_RECV) + T.call_record(T.OP_TIME, 200),
        b"\x00" + rec(echo4, T.OP_FIXED) + rec(echo6, T.OP_FIXED),
        b"\x00" + rec(frag_needed) + rec(unreachable),
        b"\x00" + b"".join(frags) + T.call_record(T.OP_TIME, 255),
        b"\x00" + frags[0] + T.call_record(T.OP_TIME, 255) + T.call_record(T.OP_TIME, 255),
        b"\x00" + b"".join(v6_frags),
        b"\x00" + T.call_record(T.OP_CONNECT | 8) + T.call_record(T.OP_TIME, 100) + T.call_record(T.OP_CLOSE | 24),
        b"\x01" + rec(tcp(SYN, 1000, 0, options=syn_opts), T.OP_RAW | 8),
    ]


# -- tls_records --------------------------------------------------------------------

def tls_seeds() -> list[bytes]:
    """Configuration byte + records for fuzz.tls_records."""
    from . import tls_records as T

    hello = T.data_record(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    seeds = []
    for config in (T.HANDSHAKE, T.HANDSHAKE | T.RAGGED_EOF, T.HANDSHAKE | T.TLS12):
        seeds.append(bytes((config,)) + hello + T.data_record(b"x" * 200) + bytes((T.OP_CLOSE_NOTIFY,)))
        seeds.append(bytes((config,)) + hello + T.flip_record(3, 0x40) + T.data_record(b"y"))
        seeds.append(bytes((config,)) + hello + T.raw_record(b"\x17\x03\x03\x00\x05hello"))
    seeds.append(bytes((T.HANDSHAKE,)) + hello + T.raw_record(b"\x15\x03\x03\x00\x02\x01\x00"))
    seeds.append(bytes((T.HANDSHAKE,)) + T.raw_record(b"\x16\x03\x03\x00\x04\x18\x00\x00\x00"))
    seeds.append(b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    seeds.append(b"\x00\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00")
    seeds.append(b"\x02\x16\x03\x01\xff\xff")
    return seeds


def replay_seeds() -> list[bytes]:
    """None built: replay_log's corpus is real recordings (``recorded-*``,
    ``python -m fuzz.replay_log``), which differ in every run."""
    return []


SEEDS = {"http_request": http_seeds, "tcp_input": tcp_seeds, "tls_records": tls_seeds, "replay_log": replay_seeds}


def seed_name(data: bytes) -> str:
    """The file name of a seed: its content's hash."""
    return f"seed-{hashlib.sha1(data).hexdigest()[:16]}"


def write_all() -> None:
    """Rewrite every target's seed files."""
    for target, build in SEEDS.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for data in build():
            (directory / seed_name(data)).write_bytes(data)


if __name__ == "__main__":
    write_all()
