"""UDP flows end to end (issue 16): real daemons, a real dnsmasq queried by a real dig.

dnsmasq runs on a random 127.0.0.x with a free port and answers from its own hosts file, so
nothing depends on this machine's resolver.  Skipped (with the package to install) when dig
or dnsmasq is missing; .ci/run installs both.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioquic.asyncio import serve
from aioquic.quic.configuration import QuicConfiguration

from quictund.policy import tls
from tests.e2e.harness import Endpoint, start_client, start_server

NAME, ANSWER = "printer.internal", "10.77.0.9"


def _need(*tools: str) -> None:
    for tool, package in (("dig", "bind9-dnsutils"), ("dnsmasq", "dnsmasq")):
        if tool in tools and shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} not installed (apt-get install {package})")


def _free_udp(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def dnsmasq(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    _need("dnsmasq")
    host = f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{ANSWER} {NAME}\n")
    port = _free_udp(host)
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    proc = await asyncio.create_subprocess_exec(
        exe, "--keep-in-foreground", "--conf-file=/dev/null", f"--listen-address={host}",
        "--bind-interfaces", f"--port={port}", "--no-resolv", "--no-hosts",
        f"--addn-hosts={hosts}", "--pid-file=", "--user=root", "--log-facility=-",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert await _dig(host, port) == ANSWER, "dnsmasq does not answer directly"
        yield host, port
    finally:
        proc.terminate()
        await proc.wait()


async def _dig(host: str, port: int, tries: int = 10) -> str:
    """``dig +short`` through ``host:port``, retried while the far end starts."""
    _need("dig")
    for _ in range(tries):
        proc = await asyncio.create_subprocess_exec(
            "dig", f"@{host}", "-p", str(port), "+short", "+tries=1", "+time=1", NAME,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        answer = out.decode().strip()
        if proc.returncode == 0 and answer:
            return answer
        await asyncio.sleep(0.2)
    return ""


def _addr(ep: Endpoint) -> tuple[str, int]:
    host, port = ep.address.removeprefix("udp:").rsplit(":", 1)
    return host, int(port)


async def test_dig_through_a_udp_flow(state_dir: Path, dnsmasq: tuple[str, int]) -> None:
    host, port = dnsmasq
    server = await start_server(state_dir, "--allow", f"udp:{host}:{port}")
    client = await start_client(server.address, f"udp:{host}:{port}", listen="udp:127.0.0.1:0")
    try:
        assert await _dig(*_addr(client)) == ANSWER
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel open")
        assert line["protocol"] == "udp" and line["server_app"] == f"udp:{host}:{port}"
        # A second app address is a second flow on the same connection, answered too.
        assert await _dig(*_addr(client)) == ANSWER
    finally:
        await client.stop()
        await server.stop()


async def test_a_tcp_rule_does_not_allow_udp(state_dir: Path, dnsmasq: tuple[str, int]) -> None:
    host, port = dnsmasq
    server = await start_server(state_dir, "--allow", f"tcp:{host}:{port}")
    client = await start_client(server.address, f"udp:{host}:{port}", listen="udp:127.0.0.1:0")
    try:
        assert await _dig(*_addr(client), tries=1) == ""
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "not allowed by policy" in line["reason"]
    finally:
        await client.stop()
        await server.stop()


async def test_loopback_needs_a_rule_naming_it(state_dir: Path, dnsmasq: tuple[str, int]) -> None:
    host, port = dnsmasq
    server = await start_server(state_dir, "--allow", f"udp:0.0.0.0/0:{port}")
    client = await start_client(server.address, f"udp:{host}:{port}", listen="udp:127.0.0.1:0")
    try:
        assert await _dig(*_addr(client), tries=1) == ""
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "not allowed by policy" in line["reason"]
    finally:
        await client.stop()
        await server.stop()


async def test_a_quic_tun_server_fails_udp_with_one_line(tmp_path: Path) -> None:
    """A server that speaks only ALPN quic-tun, without DATAGRAM frames, as quic-tun's."""
    cert, key = tls.ensure_self_signed(tmp_path, ["localhost"])
    config = QuicConfiguration(is_client=False, alpn_protocols=["quic-tun"])
    config.load_cert_chain(str(cert), str(key))
    raw = await serve("127.0.0.1", 0, configuration=config)
    port = raw._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    client = await start_client(f"127.0.0.1:{port}", "udp:10.9.8.7:53", listen="udp:127.0.0.1:0")
    try:
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(5):
            app.sendto(b"query %d" % i, _addr(client))
            await asyncio.sleep(0.05)
        line = await client.wait_log(lambda e: "cannot carry UDP flows" in e.get("msg", ""))
        assert "ALPN quic-tun" in line["msg"] and line["level"] == "error"
        await asyncio.sleep(0.5)
        assert len(client.messages("cannot carry UDP flows")) == 1
        assert not client.messages("tunnel failed")  # one line, not one per datagram
        app.close()
    finally:
        await client.stop()
        raw.close()
