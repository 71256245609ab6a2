"""Endpoint behaviours: IPv6, concurrent handshakes, timeouts, UNIX socket files, no server."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioquic.asyncio import connect as quic_connect
from aioquic.quic.configuration import QuicConfiguration

from tests.e2e.harness import Endpoint, connect, echo, start_client, start_server
from tests.e2e.test_wire_compat import RawPeer, token_block


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback TCP address whose accept queue is full: connect() hangs (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    addr = listener.getsockname()
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(addr)
        except BlockingIOError:
            pass
        fillers.append(s)
    yield f"tcp:127.0.0.1:{addr[1]}"
    for s in fillers:
        s.close()
    listener.close()


async def test_ipv6_both_sides(state_dir: Path) -> None:
    backend = echo()
    backend.server = await asyncio.get_running_loop().create_server(backend._factory, "::1", 0)
    port = backend.server.sockets[0].getsockname()[1]
    server = await Endpoint.start("server", "--listen-on", "[::1]:0", "--state-dir", str(state_dir))
    assert server.address.startswith("[::1]:")
    client = await Endpoint.start(
        "client",
        "--listen-on",
        "tcp:[::1]:0",
        "--server-endpoint",
        server.address,
        "--token-source",
        f"tcp6:[::1]:{port}",
    )
    try:
        reader, writer = await connect(client.address)
        writer.write(b"over v6")
        assert await reader.readexactly(7) == b"over v6"
        writer.close()
        opened = await client.wait_log(lambda e: e.get("msg") == "tunnel open")
        assert opened["client_app"].startswith("[::1]:")
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


async def test_slow_target_does_not_delay_other_tunnels(state_dir: Path, blackhole: str) -> None:
    backend = await echo().tcp()
    server = await start_server(state_dir, "--connect-timeout", "4")
    host, port = server.host_port
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    try:
        async with quic_connect(host, port, configuration=config, create_protocol=RawPeer) as peer:
            assert isinstance(peer, RawPeer)
            quic = peer._quic
            slow = quic.get_next_available_stream_id()
            quic.send_stream_data(slow, token_block(blackhole))
            peer.transmit()
            await asyncio.sleep(0.2)
            fast = quic.get_next_available_stream_id()
            quic.send_stream_data(fast, token_block(backend.address) + b"hi")
            peer.transmit()
            started = time.monotonic()
            await peer.wait_for(lambda: len(peer.data.get(fast, b"")) >= 3)
            assert time.monotonic() - started < 2, "a slow connect delayed another tunnel"
            assert bytes(peer.data[fast]) == b"\x01hi"
            assert slow not in peer.data, "the slow tunnel cannot have an answer yet"
            await peer.wait_for(lambda: slow in peer.ended, within=10)
            assert bytes(peer.data[slow]) == b"\x03"
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "timed out" in line["reason"]
    finally:
        server.kill()
        await server.proc.wait()
        backend.close()


async def test_token_timeout(state_dir: Path) -> None:
    server = await start_server(state_dir, "--token-timeout", "1")
    host, port = server.host_port
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    try:
        async with quic_connect(host, port, configuration=config, create_protocol=RawPeer) as peer:
            assert isinstance(peer, RawPeer)
            sid = peer._quic.get_next_available_stream_id()
            peer._quic.send_stream_data(sid, b"tcp:127.0.0.1:")  # and then nothing
            peer.transmit()
            await peer.wait_for(lambda: sid in peer.ended, within=5)
            assert bytes(peer.data[sid]) == b"\x02"
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "14 of 512 bytes" in line["reason"]
    finally:
        server.kill()
        await server.proc.wait()


async def test_client_without_server_stays_up_and_refuses(tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))  # a port where nobody answers QUIC
    port = udp.getsockname()[1]
    client = await start_client(f"127.0.0.1:{port}", "tcp:127.0.0.1:22", "--connect-wait", "1")
    try:
        started = time.monotonic()
        reader, writer = await connect(client.address)
        with pytest.raises(ConnectionResetError):  # an RST, never a clean EOF
            await asyncio.wait_for(reader.readexactly(1), 10)
        assert 0.9 < time.monotonic() - started < 5
        writer.close()
        line = await client.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "unreachable for 1 s" in line["reason"]
        assert client.proc.returncode is None
    finally:
        assert await client.stop() == 0
        udp.close()


async def test_stale_unix_socket_is_replaced_live_one_is_not(short_tmp: Path) -> None:
    path = short_tmp / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens
    client = await Endpoint.start(
        "client",
        "--listen-on",
        f"unix:{path}",
        "--server-endpoint",
        "127.0.0.1:9",
        "--token-source",
        "tcp:127.0.0.1:22",
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quictund",
            "client",
            "--listen-on",
            f"unix:{path}",
            "--server-endpoint",
            "127.0.0.1:9",
            "--token-source",
            "tcp:127.0.0.1:22",
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 78
        assert "another process is listening on it" in err.decode()
        assert path.exists(), "the live socket must not be stolen"
    finally:
        assert await client.stop() == 0
    assert not path.exists()


async def test_version() -> None:
    for prog in ("quictund", "quictun-client"):
        args = ["--version"] if prog == "quictund" else ["client", "--version"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quictund", *args, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert b"0.1.0" in out
