"""QUIC datagrams from an attacker never hurt the server or its legitimate clients.

A real server process and a real client with a live tunnel; a UDP socket sends the server
arbitrary datagrams, mutated client Initials, and arbitrary frames or mutated ClientHellos
sealed under valid Initial keys (tests/quic_packets.py), so they get past AEAD into aioquic's
frame and TLS parsers.  After every batch the legitimate client's tunnel still echoes, the
server is alive and it logged no error; afterwards a new client still completes a handshake.
bench/fuzz/fuzz_quic_datagram.py runs the same entry point coverage-guided for longer.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import Backend, Endpoint, connect, echo, start_client, start_server
from tests.hypothesis_profiles import budget
from tests.quic_packets import (
    client_hello,
    client_initial_datagram,
    crypto_frame,
    open_initial,
    seal_initial,
)

_dcids = st.binary(min_size=8, max_size=20)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        out[at % len(out)] = value
    return bytes(out)


_edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8)


@st.composite
def _hello_initial(draw: st.DrawFn) -> bytes:
    hello = _mutate(client_hello(), draw(_edits))
    hello = hello[: draw(st.integers(0, len(hello)))]
    scid = open_initial(client_initial_datagram()).scid  # named in its transport parameters
    return seal_initial(crypto_frame(hello), dcid=draw(_dcids), scid=scid)


_datagrams = st.one_of(
    st.binary(max_size=1500),
    _edits.map(lambda e: _mutate(client_initial_datagram(), e)),
    st.builds(lambda p, d: seal_initial(p, dcid=d), st.binary(max_size=1100), _dcids),
    _hello_initial(),
    # an unknown version: the server answers with Version Negotiation, nothing else
    st.builds(lambda d: seal_initial(b"", dcid=d, version=0x1A2A3A4A), _dcids),
)


@pytest.fixture
async def tunnel(state_dir: Path) -> AsyncIterator[tuple[Endpoint, Endpoint, Backend]]:
    backend = await echo().tcp()
    server = await start_server(state_dir)
    client = await start_client(server.address, backend.address)
    try:
        await round_trip(client)
        yield server, client, backend
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


async def round_trip(client: Endpoint) -> None:
    reader, writer = await connect(client.address)
    try:
        writer.write(b"still serving")
        async with asyncio.timeout(10):
            assert await reader.readexactly(13) == b"still serving"
    finally:
        writer.close()


def send_all(server: Endpoint, datagrams: list[bytes], source: str = "127.0.0.2") -> None:
    """Send from another loopback address than the legitimate clients (127.0.0.1), as an
    attacker elsewhere would: per-source limits must not lock the legitimate client out."""
    host, port = server.host_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for data in datagrams:
            sock.sendto(data, (host, port))


def errors(server: Endpoint) -> list[dict[str, object]]:
    return [e for e in server.logs if e.get("level") in ("error", "critical", "raw")]


@settings(
    max_examples=budget(30),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(_datagrams, min_size=1, max_size=6), source=st.integers(2, 254))
async def test_any_datagrams_leave_the_server_serving(
    tunnel: tuple[Endpoint, Endpoint, Backend], batch: list[bytes], source: int
) -> None:
    server, client, _ = tunnel
    send_all(server, batch, f"127.0.0.{source}")
    await round_trip(client)
    assert server.proc.returncode is None
    assert errors(server) == []


async def test_new_clients_connect_after_a_flood_of_bad_initials(
    tunnel: tuple[Endpoint, Endpoint, Backend],
) -> None:
    server, client, backend = tunnel
    rng = random.Random(5)
    hello, initial = client_hello(), client_initial_datagram()
    scid = open_initial(initial).scid
    batch = []
    for i in range(400):
        dcid = rng.randbytes(8)
        edits = [(rng.randrange(1 << 16), rng.randrange(256)) for _ in range(rng.randint(1, 6))]
        kind = i % 4
        if kind == 0:
            batch.append(rng.randbytes(rng.randrange(1500)))
        elif kind == 1:
            batch.append(_mutate(initial, edits))
        elif kind == 2:
            batch.append(seal_initial(rng.randbytes(rng.randrange(1100)), dcid=dcid))
        else:
            batch.append(seal_initial(crypto_frame(_mutate(hello, edits)), dcid=dcid, scid=scid))
    send_all(server, batch)
    await round_trip(client)
    newcomer = await start_client(server.address, backend.address)
    try:
        await round_trip(newcomer)
    finally:
        await newcomer.stop()
    assert errors(server) == []
