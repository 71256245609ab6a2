"""``iperf3 -u`` at a fixed rate through a UDP flow, next to direct UDP (issue 16).

iperf3 needs a TCP control connection too, so two client listeners share one port number:
``udp:`` for the data, ``tcp:`` for the control.  Skipped when iperf3 is not installed
(.ci/run installs it).  Loopback carries 10 Mbit/s without loss; the tunnel must too.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import start_client, start_server

pytestmark = pytest.mark.skipif(
    shutil.which("iperf3") is None, reason="iperf3 not installed (apt-get install iperf3)"
)


async def _listening(port: int, within: float = 10.0) -> None:
    """Wait until iperf3's server listens on ``port``, read from /proc/net/tcp.

    Not by connecting: iperf3 takes any connection for a client's test, and a probe that hung
    up left it resetting the next connection ("unable to receive control message: Connection
    reset by peer", 1 run in CI, 2026-12-05)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        if _listens(port):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"iperf3 is not listening on 127.0.0.1:{port}")
        await asyncio.sleep(0.05)


def _listens(port: int) -> bool:
    """A socket listens on 127.0.0.1:``port`` (state 0A, TCP_LISTEN, in /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in lines))


async def _iperf(port: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-b", "10M", "-l", "1200",
        "-t", "3", "-J", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    data: dict[str, Any] = json.loads(out)
    assert "error" not in data, data["error"]
    return data["end"]["sum"]  # type: ignore[no-any-return]


def _port_free_for_tcp_and_udp() -> int:
    """A port number both protocols can bind on 127.0.0.1, below the ephemeral range: a UDP
    port the kernel picked could be some other test's outgoing TCP connection's local port
    ("Address already in use" for the TCP listener, seen once in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10000, low), 200):
        try:
            with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free for both TCP and UDP below the ephemeral range")


async def test_iperf3_udp_through_a_flow(state_dir: Path) -> None:
    with socket.socket() as probe:  # iperf3 cannot pick a free port itself
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    iperf = await asyncio.create_subprocess_exec(
        "iperf3", "-s", "-B", "127.0.0.1", "-p", str(port), stdout=asyncio.subprocess.DEVNULL
    )  # fmt: skip
    dest = f"127.0.0.1:{port}"
    server = await start_server(state_dir, "--allow", f"tcp:{dest}", "--allow", f"udp:{dest}")
    listen = _port_free_for_tcp_and_udp()
    udp = await start_client(server.address, f"udp:{dest}", listen=f"udp:127.0.0.1:{listen}")
    tcp = await start_client(server.address, f"tcp:{dest}", listen=f"tcp:127.0.0.1:{listen}")
    try:
        await _listening(port)  # iperf3's server binds after it starts
        direct = await _iperf(port)
        tunnel = await _iperf(listen)
        print(
            f"iperf3 -u 10 Mbit/s: direct loss {direct['lost_percent']:.2f} % jitter "
            f"{direct['jitter_ms']:.3f} ms; tunnel loss {tunnel['lost_percent']:.2f} % jitter "
            f"{tunnel['jitter_ms']:.3f} ms"
        )
        assert tunnel["packets"] > 2500  # 3 s at 10 Mbit/s of 1200-byte datagrams: ~3,100
        assert tunnel["lost_percent"] <= max(1.0, 2 * direct["lost_percent"])
        line = await udp.wait_log(lambda e: e.get("msg") == "tunnel open")
        assert line["protocol"] == "udp"
    finally:
        await tcp.stop()
        await udp.stop()
        await server.stop()
        iperf.terminate()
        await iperf.wait()
