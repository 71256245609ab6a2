"""A QUIC handshake flooder for tests and benchmarks, loopback only.

Each attempt is a real client Initial (a TLS ClientHello, padded to 1,200 bytes, made by
aioquic with a fresh connection id) sent from one of many loopback source addresses
(127.77.X.Y) and then abandoned: the server sees thousands of clients that start handshakes
and never finish them, the cheapest attack on a QUIC server.  ``garbage`` attempts are
1,200-byte long-header packets with random connection ids and undecryptable payloads.

Run as a process so its CPU is not the test's event loop::

    python -m tests.e2e.flooder 127.0.0.1:7500 --count 3000 --rate 1000 --sources 200
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection


def initials(server: tuple[str, int], count: int) -> list[bytes]:
    """``count`` distinct client Initials (the first datagram of a handshake)."""
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    config.server_name = "localhost"
    out = []
    for _ in range(count):
        conn = QuicConnection(configuration=config)
        now = time.time()
        conn.connect(server, now=now)
        out.append(conn.datagrams_to_send(now=now)[0][0])
    return out


def garbage(count: int) -> list[bytes]:
    """Initial-shaped datagrams (long header, version 1, 8-byte ids) that never decrypt."""
    out = []
    for _ in range(count):
        header = b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00"
        rest = 1200 - len(header) - 2
        out.append(header + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest))
    return out


def sources(count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.77.{i // 250}.{i % 250 + 1}", 0))
        s.setblocking(False)
        socks.append(s)
    return socks


def flood(
    server: tuple[str, int], packets: list[bytes], rate: float, socks: list[socket.socket]
) -> float:
    """Send ``packets`` at ``rate`` per second, round-robin over ``socks``; return seconds."""
    start = time.monotonic()
    for i, packet in enumerate(packets):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            socks[i % len(socks)].sendto(packet, server)
        except BlockingIOError:
            pass
        # Drain what the server answered (Retry, Handshake), like a client that never replies.
        try:
            socks[(i + 1) % len(socks)].recv(65536)
        except BlockingIOError:
            pass
    return time.monotonic() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("server", help="HOST:PORT on loopback")
    p.add_argument("--count", type=int, default=3000, help="real Initials")
    p.add_argument("--garbage", type=int, default=0, help="undecryptable Initials")
    p.add_argument("--rate", type=float, default=1000.0, help="datagrams per second")
    p.add_argument("--sources", type=int, default=200, help="source addresses 127.77.x.y")
    args = p.parse_args()
    host, _, port = args.server.rpartition(":")
    if not host.startswith("127."):
        sys.exit("flooder: loopback servers only")
    server = (host, int(port))
    packets = initials(server, args.count) + garbage(args.garbage)
    socks = sources(args.sources)
    print(f"ready {len(packets)}", flush=True)
    sys.stdin.readline()  # go
    took = flood(server, packets, args.rate, socks)
    print(f"sent {len(packets)} in {took:.2f} s", flush=True)


if __name__ == "__main__":
    main()
