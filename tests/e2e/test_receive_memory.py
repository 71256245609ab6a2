"""End to end: a hostile QUIC client cannot pin the server's memory (issue 13, section 1).

A real server process; the attacker is a raw aioquic client on a real UDP socket
(tests/e2e/hostile_client.py): on each of 1000 streams, one byte at the edge of the stream's
window and a bad token, never FIN or RESET_STREAM.  Before the fix the server kept a
zero-filled buffer per stream (2 MiB each: 2 GiB here) and never gave it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import Backend, Endpoint, echo, start_client, start_server
from tests.e2e.hostile_client import QuicPeer, gap_attack

MiB = 1024 * 1024
STREAMS = 1000
GROWTH_KIB = 64 * 1024  # issue 13: at most 64 MiB per hostile connection


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[Endpoint]:
    ep = await start_server(state_dir)
    yield ep
    ep.kill()
    await ep.proc.wait()


@pytest.fixture
async def tcp_echo() -> AsyncIterator[Backend]:
    backend = await echo().tcp()
    yield backend
    backend.close()


async def _echo_once(address: str) -> None:
    from tests.e2e.harness import connect

    reader, writer = await connect(address)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    writer.close()


async def test_gap_attack_pins_no_memory(server: Endpoint, tcp_echo: Backend) -> None:
    client = await start_client(server.address, tcp_echo.address)
    try:
        await _echo_once(client.address)  # warm: one connection, one tunnel served
        baseline = server.rss_kib()
        peak = baseline
        peer = await QuicPeer.connect(server.host_port)

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.rss_kib())
                await asyncio.sleep(0.05)

        sampler = asyncio.get_running_loop().create_task(sample())
        try:
            attacked = await gap_attack(peer, STREAMS)
            await _echo_once(client.address)  # an honest tunnel still answers
        finally:
            sampler.cancel()
        assert attacked >= 6, "the attack never got going"
        assert peak - baseline <= GROWTH_KIB, f"{attacked} streams: {baseline} -> {peak} KiB"
        peer.close()
        for _ in range(50):  # and what it cost comes back once the attacker left
            if server.rss_kib() <= baseline * 1.1 + 4096:
                break
            await asyncio.sleep(0.1)
        assert server.rss_kib() <= baseline * 1.1 + 4096
    finally:
        await client.stop()
