"""A client reconnects within 1 s of its server being ready, and ICMP never silences it.

Issue 14 §1: uvloop dropped the client's socket watcher at the first ICMP error, so a client
that had met a closed port never read its socket again (10 s handshake timeouts after every
server restart; every tunnel reset ~15 s after one forged ICMP message).  Real processes,
real sockets, a real ICMP message from a raw socket (the tests run as root, as the suite does).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Endpoint, connect, echo, start_client, start_server

RETRY_RE = re.compile(r"retry (\d+) in ([\d.]+) s")
READY_WITHIN_S = 1.0  # the target: an app connection works 1 s after the server is up


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


async def echo_once(address: str, msg: bytes = b"are you there?", within: float = 12) -> None:
    reader, writer = await connect(address)
    try:
        writer.write(msg)
        assert await asyncio.wait_for(reader.readexactly(len(msg)), within) == msg
    finally:
        writer.close()


async def time_to_working(server_state: Path, port: int, client: Endpoint) -> float:
    """Start a server on ``port``; seconds from its "listening" line to an app's echo."""
    server = await start_server(server_state, listen=f"127.0.0.1:{port}")
    ready = time.monotonic()
    try:
        await echo_once(client.address)
        return time.monotonic() - ready
    finally:
        server.kill()
        await server.proc.wait()


def stamps(ep: Endpoint, needle: str) -> list[tuple[float, str]]:
    out = []
    for e in ep.messages(needle):
        t = dt.datetime.fromisoformat(e["time"]).timestamp()
        out.append((t, e["msg"]))
    return out


@pytest.mark.timeout(60)
async def test_server_restart_costs_under_a_second(state_dir: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    server = await start_server(state_dir, listen=f"127.0.0.1:{port}")
    client = await start_client(f"127.0.0.1:{port}", backend.address)
    try:
        await echo_once(client.address)
        for _ in range(3):  # stop (as systemctl restart does), start again
            seen = len(client.logs)
            assert await server.stop() == 0
            await client.wait_log(lambda e: "lost" in e.get("msg", ""), start=seen)
            server = await start_server(state_dir, listen=f"127.0.0.1:{port}")
            ready = time.monotonic()
            await echo_once(client.address)
            took = time.monotonic() - ready
            assert took < READY_WITHIN_S, f"app waited {took:.2f} s after the server was ready"
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


@pytest.mark.timeout(60)
async def test_client_started_before_its_server(state_dir: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    client = await start_client(f"127.0.0.1:{port}", backend.address)
    try:
        await asyncio.sleep(0.3)
        took = await time_to_working(state_dir, port, client)
        assert took < READY_WITHIN_S, f"app waited {took:.2f} s after the server was ready"
    finally:
        await client.stop()
        backend.close()


@pytest.mark.timeout(90)
async def test_server_down_30_s_retries_as_announced(state_dir: Path) -> None:
    """Refused attempts follow the announced backoff; the server's return is noticed at once."""
    backend = await echo().tcp()
    port = free_udp_port()
    # debug: after the third, only every tenth attempt is logged at warning
    client = await start_client(f"127.0.0.1:{port}", backend.address, "--log-level", "debug")
    try:
        await asyncio.sleep(30)
        took = await time_to_working(state_dir, port, client)
        assert took < READY_WITHIN_S, f"app waited {took:.2f} s after the server was ready"
    finally:
        await client.stop()
        backend.close()
    tries = stamps(client, "cannot connect")
    assert tries and all("connection refused" in msg for _, msg in tries), tries[:2]
    # Each retry begins when the previous line said it would (a refused attempt takes a
    # loopback round trip), so consecutive lines are "delay" apart.  No app connected while
    # the server was down, so nothing cut a delay short.
    for (t0, msg), (t1, _) in zip(tries, tries[1:], strict=False):
        m = RETRY_RE.search(msg)
        assert m, msg
        announced = float(m[2])
        assert announced - 0.1 <= t1 - t0 <= announced + 0.5, (msg, t1 - t0)
    # ... and a down server is not hammered: backoff to 10 s means ~10 attempts in 30 s.
    assert 5 <= len(tries) <= 14, len(tries)


# ---- a forged ICMP port-unreachable while tunnels are open ---------------------------------


def client_udp_port(pid: int, server_port: int) -> int:
    """The local port of ``pid``'s UDP socket connected to ``server_port`` on loopback."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}") if fd.isdigit() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        local, remote, inode = f[1], f[2], f[9]
        if inode in inodes and int(remote.split(":")[1], 16) == server_port:
            return int(local.split(":")[1], 16)
    raise AssertionError("no connected UDP socket found")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def send_port_unreachable(src_port: int, dst_port: int) -> None:
    """An ICMP port-unreachable as if 127.0.0.1:``dst_port`` refused a datagram from
    127.0.0.1:``src_port``: what a firewall blip or any attacker knowing the 4-tuple sends."""
    lo = socket.inet_aton("127.0.0.1")
    inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, socket.IPPROTO_UDP, 0, lo, lo)
    inner_ip = inner_ip[:10] + struct.pack("!H", _checksum(inner_ip)) + inner_ip[12:]
    inner_udp = struct.pack("!HHHH", src_port, dst_port, 8, 0)
    body = struct.pack("!BBHI", 3, 3, 0, 0) + inner_ip + inner_udp
    icmp = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as raw:
        raw.sendto(icmp, ("127.0.0.1", 0))


@pytest.mark.timeout(60)
async def test_forged_icmp_does_not_reset_open_tunnels(state_dir: Path) -> None:
    backend = await echo().tcp()
    server = await start_server(state_dir)
    host, sport = server.host_port
    client = await start_client(server.address, backend.address)
    try:
        reader, writer = await connect(client.address)
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 10) == b"before"
        cport = client_udp_port(client.proc.pid, sport)
        for _ in range(3):
            send_port_unreachable(cport, sport)
            writer.write(b"ping")  # the next recvmsg meets the parked error
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        # Silenced, the client would declare the server dead after dead-after (15 s) of
        # silence and reset the tunnel; it keeps hearing the server, so the tunnel lives.
        await asyncio.sleep(17)
        writer.write(b"after")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"after"
        assert not client.messages("lost"), client.messages("lost")
        writer.close()
        await echo_once(client.address)  # and new tunnels open
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


def test_harness_sends_a_valid_icmp_message() -> None:
    """The forged message is one the kernel accepts: a plain connected socket sees it."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(peer.getsockname())
    s.settimeout(2)
    try:
        send_port_unreachable(s.getsockname()[1], peer.getsockname()[1])
        with pytest.raises(ConnectionRefusedError):
            s.recv(10)
    finally:
        s.close()
        peer.close()

