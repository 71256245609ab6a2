"""The per-connection send budget through a real server daemon (issue 13, point 1, send side).

A hostile client (tests/hostile.py, a real aioquic peer in its own process) opens 300 tunnels
to a destination that sends as fast as it can, and never grants credit: what the server reads
from those destinations can go nowhere.  Without a per-connection cap each tunnel parks its own
1 MiB send backlog in the engine (300 tunnels: ~375 MiB); with ``connection-send-budget`` the
server stops reading all of that connection's destinations once the connection holds its budget.
An honest tunnel on another connection of the same server keeps echoing throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    ENGINE_TOML,
    TEST_ENGINE,
    Backend,
    Endpoint,
    connect,
    echo,
    rss_kib,
    start_client,
    start_server,
)
from tests.e2e.test_daemon import Run

MiB = 1024 * 1024
TUNNELS = 300
BUDGET = 16 * MiB  # the default connection-send-budget
# What else 300 tunnels cost the server: their Python objects, engine streams, asyncio
# transports and the read buffer of each (measured ~25 MiB on aioquic), plus allocator slack.
# Without the budget the same run grows by ~375 MiB (300 x 1.25 MiB).
BOUND = BUDGET + 40 * MiB


class _Flood(asyncio.Protocol):
    """A destination that writes as fast as the tunnel reads it, and counts what it wrote."""

    chunk = b"f" * (256 * 1024)
    written = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.paused = False
        self._pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        while not self.paused and not self.t.is_closing():
            self.t.write(self.chunk)
            _Flood.written += len(self.chunk)


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[Endpoint]:
    ep = await start_server(state_dir)
    yield ep
    ep.kill()
    await ep.proc.wait()


async def _settled(within: float) -> None:
    """Wait until the destinations have written nothing more for a second (the server stopped
    reading them), or ``within`` seconds."""
    deadline = time.monotonic() + within
    last, since = _Flood.written, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        if _Flood.written != last:
            last, since = _Flood.written, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return


async def _echo_ms(address: str, rounds: int) -> list[float]:
    reader, writer = await connect(address)
    took = []
    try:
        for i in range(rounds):
            payload = f"ping {i:04d}".encode()
            t0 = time.monotonic()
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
            took.append((time.monotonic() - t0) * 1000)
    finally:
        writer.close()
    return took


async def test_flooding_tunnels_hold_at_most_the_connection_budget(server: Endpoint) -> None:
    flood = Backend(_Flood)
    await flood.tcp()
    honest_backend = await echo().tcp()
    honest = await start_client(server.address, honest_backend.address)
    hostile: asyncio.subprocess.Process | None = None
    try:
        await _echo_ms(honest.address, 5)
        base = server.rss_kib()
        hostile = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.hostile", server.address,
            "--flood", str(TUNNELS), "--token", flood.address,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert hostile.stdout is not None
        line = (await asyncio.wait_for(hostile.stdout.readline(), 60)).decode()
        assert line.startswith("opened"), line
        assert int(line.split()[1]) == TUNNELS, line
        await _settled(within=30)
        after = server.rss_kib()
        growth = (after - base) * 1024
        assert growth < BOUND, (
            f"server RSS {base // 1024} -> {after // 1024} MiB with {TUNNELS} flooding tunnels"
        )
        took = await _echo_ms(honest.address, 20)  # the honest tunnel still answers
        assert max(took) < 2000, took
    finally:
        if hostile is not None and hostile.returncode is None:
            hostile.kill()
            await hostile.wait()
        await honest.stop()
        flood.close()
        honest_backend.close()


class _Stalled(asyncio.Protocol):
    """A destination that accepts and never reads."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        transport.pause_reading()  # type: ignore[attr-defined]


@pytest.mark.xfail(
    TEST_ENGINE == "qh3",
    strict=False,
    reason="a qh3 client grows 46-108 MiB here (budget 16 MiB; a 4 MiB budget gave more, "
    "not less): memory qh3 holds outside the unsent count it reports; cause not found yet",
)
async def test_apps_that_flood_a_stalled_destination_hold_the_client_budget(
    server: Endpoint, short_tmp: Path, ca: Path
) -> None:
    """The other direction: 300 apps write without end into one client daemon, toward a
    destination that never reads (so the server grants no credit past its windows)."""
    stalled = await Backend(_Stalled).tcp()
    sock = short_tmp / "c.sock"
    conf = short_tmp / "client.toml"
    conf.write_text(
        f'[[client]]\nname = "c"\n{ENGINE_TOML}listen-on = "unix:{sock}"\n'
        f'server-endpoint = "{server.address}"\nserver-name = "localhost"\nca-file = "{ca}"\n'
        f'token-source = "{stalled.address}"\n'
    )
    client = await Run.start("--config", str(conf))
    apps: list[asyncio.Transport] = []
    try:
        await client.wait_log("ready:")
        base = rss_kib(client.proc.pid)
        loop = asyncio.get_running_loop()
        for _ in range(TUNNELS):
            transport, _ = await loop.create_unix_connection(_Flood, str(sock))
            apps.append(transport)
        await _settled(within=30)
        opened = sum("tunnel open" in line for line in client.log)
        # Not all of them: the server's receive window fills with what its destination does not
        # read, so later tokens wait (issue 13, point 2, another change); each unopened app
        # costs one early read (64 KiB) at most.
        assert opened >= TUNNELS // 4, (opened, client.log[-3:])
        after = rss_kib(client.proc.pid)
        assert (after - base) * 1024 < BOUND, (
            f"client RSS {base // 1024} -> {after // 1024} MiB with {TUNNELS} flooding apps"
        )
    finally:
        for app in apps:
            app.abort()
        assert await client.stop() == 0
        stalled.close()


async def test_a_peer_that_leaves_while_its_tunnels_connect_leaves_none_behind(
    server: Endpoint,
) -> None:
    """A client that closes its connection while the server is still connecting its tunnels:
    every tunnel the server opened is closed again.  On qh3 the ack of a tunnel whose connect
    finished just then found the connection gone; the tunnel was attached and tracked anyway
    and kept the closed session, its engine and the source's quota slot (found by a heap
    census after the hostile bench: one or two connections' worth of memory never returned)."""
    flood = Backend(_Flood)
    await flood.tcp()
    try:
        for _ in range(2):
            attackers = [
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.hostile", server.address,
                    "--source", f"127.13.0.{i + 1}", "--flood", "1000", "--gap", "1000",
                    "--token", flood.address, "--open-within", "1",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                for i in range(3)
            ]
            for hostile in attackers:
                assert hostile.stdout is not None
                line = (await asyncio.wait_for(hostile.stdout.readline(), 60)).decode()
                assert line.startswith("opened"), line
            for hostile in attackers:
                assert hostile.stdin is not None
                hostile.stdin.close()  # CONNECTION_CLOSE while the rest still connect
            for hostile in attackers:
                await asyncio.wait_for(hostile.wait(), 20)

        def count(msg: str) -> int:
            return sum(1 for e in server.logs if e.get("msg") == msg)

        def connections_closed() -> int:
            return sum(
                1
                for e in server.logs
                if str(e.get("msg")).startswith("[server] QUIC connection from 127.13.")
            )

        # Every hostile connection ends first.  A CONNECTION_CLOSE the server never got (seen
        # with two such tests at once on a loaded machine) leaves that connection to the
        # liveness rule ("peer unresponsive", quic/liveness.py), which can take longer than the
        # 20 s this test used to allow in all; its tunnels must then close with it.
        await server.wait_log(lambda _: connections_closed() == 6, within=60)
        with contextlib.suppress(TimeoutError):  # then up to 10 s for the tunnels' closes
            await server.wait_log(lambda _: count("tunnel open") == count("tunnel closed"))
        assert count("tunnel open") > 0
        assert count("tunnel closed") == count("tunnel open"), "tunnels left open"
    finally:
        flood.close()
