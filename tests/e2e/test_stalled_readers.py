"""End to end: tunnels whose app stops reading never freeze the others (issue 13, section 2).

Real client and server processes, one QUIC connection.  N app connections ask the backend for
a firehose and never read; then an honest tunnel on the same connection must still answer
echoes promptly and finish a bulk transfer.  Before the fix 7 stalled readers (each pinning up
to its 2 MiB stream window) used up the 16 MiB connection window and everything froze.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    TEST_ENGINE,
    Backend,
    Endpoint,
    connect,
    start_client,
    start_server,
    transfer_both_ways,
)

KiB = 1024
MiB = 1024 * KiB
FLOOD = b"FLOOD"
STALL = b"STALL"


class _FloodOrEcho(asyncio.Protocol):
    """``FLOOD``: write ``limit`` bytes as fast as the reader takes them; ``STALL``: never read
    again; else an echo."""

    limit = 0
    written = 0  # across all connections, to see when the stalled ones are full
    open = 0  # connections not yet closed, to wait for them at the end of a test
    all_closed: asyncio.Event | None = None  # set when ``open`` comes to 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _FloodOrEcho.open += 1
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.mode: str | None = None
        self.left = 0
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if self.mode is None and data.startswith(STALL):
            self.mode = "stall"
            self.t.pause_reading()  # a destination that stops reading
            return
        if self.mode is None:
            self.mode = "flood" if data.startswith(FLOOD) else "echo"
            if self.mode == "flood":
                self.left = self.limit
                self._pump()
                return
        if self.mode == "echo":
            self.t.write(data)

    def eof_received(self) -> bool:
        if self.mode == "echo":
            self.t.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        _FloodOrEcho.open -= 1
        if not _FloodOrEcho.open and _FloodOrEcho.all_closed is not None:
            _FloodOrEcho.all_closed.set()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        chunk = b"f" * (64 * KiB)
        while self.left > 0 and not self.paused:
            n = min(len(chunk), self.left)
            self.t.write(chunk[:n])
            self.left -= n
            _FloodOrEcho.written += n


async def _close(client: Endpoint, backend: Backend, socks: list[socket.socket]) -> None:
    """End a test: its apps' sockets, the client, and the backend, once every firehose it
    aborted has closed its socket (or they are reported unclosed when the loop goes)."""
    for sock in socks:
        sock.close()
    await client.stop()
    _FloodOrEcho.all_closed = closed = asyncio.Event()
    backend.close()
    if _FloodOrEcho.open:
        await asyncio.wait_for(closed.wait(), 10)


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[Endpoint]:
    ep = await start_server(state_dir)
    yield ep
    ep.kill()
    await ep.proc.wait()


def _stalled_reader(address: str) -> socket.socket:
    host, _, port = address.split(":", 1)[1].rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)  # fills fast, then stays
    sock.connect((host, int(port)))
    sock.sendall(FLOOD)
    sock.setblocking(False)
    return sock  # never read


def _written_by(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


async def _until_stalled(endpoints: list[Endpoint], seconds: float, within: float) -> None:
    """Wait until the firehoses are done and the endpoints wrote nothing more for ``seconds``:
    every stalled reader's socket is full, the rest is parked in quictund."""
    deadline = time.monotonic() + within
    last: object = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = (_FloodOrEcho.written, *(_written_by(ep.proc.pid) for ep in endpoints))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the stalled readers' data still flows")


async def _echo_rtts(address: str, count: int) -> list[float]:
    reader, writer = await connect(address)
    rtts = []
    try:
        for i in range(count):
            msg = f"ping {i:04d}".encode() * 100
            start = time.monotonic()
            writer.write(msg)
            assert await asyncio.wait_for(reader.readexactly(len(msg)), 5) == msg
            rtts.append(time.monotonic() - start)
    finally:
        writer.close()
    return rtts


# Each firehose offers more than the stalled reader's socket and its tunnel can hold, except
# for 500 (256 KiB each: this machine moves a few MB/s through 500 tunnels, so more would take
# minutes to park; the kernel holds most of it and the test is the honest tunnel beside them).
CASES = [(7, 8 * MiB), (50, 2 * MiB), (500, 256 * KiB)]


@pytest.mark.parametrize(("stalled", "flood_each"), CASES)
@pytest.mark.timeout(240)  # 500 tunnels park slowly on a loaded 2-core machine
@pytest.mark.xfail(
    TEST_ENGINE == "qh3",
    # Whether a qh3 connection freezes depends on how much parks before its gate closes
    # (8 stalled destinations freeze it, 50 with 2 MiB each may pass): not strict.
    reason="qh3 2.1 has no per-stream credit hook (docs/design.md, 'The qh3 engine')",
    strict=False,
)
async def test_stalled_readers_leave_the_honest_tunnel_flowing(
    server: Endpoint, stalled: int, flood_each: int
) -> None:
    _FloodOrEcho.limit, _FloodOrEcho.written = flood_each, 0
    backend = await Backend(_FloodOrEcho).tcp()
    client = await start_client(server.address, backend.address)
    socks: list[socket.socket] = []
    try:
        await _echo_rtts(client.address, 3)  # the connection is up
        baseline = client.rss_kib()
        socks += [await asyncio.to_thread(_stalled_reader, client.address) for _ in range(stalled)]
        await _until_stalled([client], 2.0, within=100)
        parked = _FloodOrEcho.written
        assert parked >= stalled * min(flood_each, 256 * KiB), "the readers never got data"

        rtts = await _echo_rtts(client.address, 20)
        start = time.monotonic()
        sent, got, n = await asyncio.wait_for(transfer_both_ways(client.address, 16 * MiB), 60)
        took = time.monotonic() - start
        assert (n, got) == (16 * MiB, sent)
        assert max(rtts) < 2.0, f"echo with {stalled} stalled readers: {max(rtts):.3f} s"
        grown = client.rss_kib() - baseline
        # The receive budget (32 MiB) plus, per stalled tunnel, what lives outside it: its
        # socket's 256 KiB user-space write buffer and per-tunnel bookkeeping.
        assert grown <= 32 * 1024 + stalled * 320 + 32 * 1024, f"client grew {grown} KiB"
        print(
            f"{stalled} stalled: parked {parked // KiB} KiB, echo max {max(rtts) * 1000:.1f} ms,"
            f" 16 MiB both ways in {took:.1f} s, client RSS +{grown} KiB"
        )
    finally:
        await _close(client, backend, socks)


# What each app offers its stalled destination: more than the destination's small socket and
# the tunnel can take, so it parks in the server (8 such tunnels pin the old 16 MiB window).
DEST_CASES = [(8, 8 * MiB), (50, 2 * MiB), (500, 256 * KiB)]


@pytest.mark.parametrize(("stalled", "offer_each"), DEST_CASES)
@pytest.mark.timeout(240)  # 500 tunnels park slowly on a loaded 2-core machine
@pytest.mark.xfail(
    TEST_ENGINE == "qh3",
    # Whether a qh3 connection freezes depends on how much parks before its gate closes
    # (8 stalled destinations freeze it, 50 with 2 MiB each may pass): not strict.
    reason="qh3 2.1 has no per-stream credit hook (docs/design.md, 'The qh3 engine')",
    strict=False,
)
async def test_stalled_destinations_leave_the_honest_tunnel_flowing(
    server: Endpoint, stalled: int, offer_each: int
) -> None:
    """The other direction: destinations that stop reading park data on the *server*."""
    backend = await Backend(_FloodOrEcho).tcp()
    assert backend.server is not None
    for sock in backend.server.sockets:  # accepted sockets inherit it: they fill fast
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
    client = await start_client(server.address, backend.address)
    writers: list[asyncio.StreamWriter] = []
    try:
        await _echo_rtts(client.address, 3)
        baseline = server.rss_kib()
        payload = STALL + b"u" * offer_each
        for _ in range(stalled):
            _, writer = await connect(client.address)
            writer.write(payload)  # more than the destination's socket and tunnel can take
            writers.append(writer)
        await _until_stalled([client, server], 2.0, within=100)

        rtts = await _echo_rtts(client.address, 20)
        start = time.monotonic()
        sent, got, n = await asyncio.wait_for(transfer_both_ways(client.address, 16 * MiB), 60)
        took = time.monotonic() - start
        assert (n, got) == (16 * MiB, sent)
        assert max(rtts) < 2.0, f"echo with {stalled} stalled destinations: {max(rtts):.3f} s"
        grown = server.rss_kib() - baseline
        assert grown <= 32 * 1024 + stalled * 320 + 32 * 1024, f"server grew {grown} KiB"
        print(
            f"{stalled} stalled destinations: echo max {max(rtts) * 1000:.1f} ms,"
            f" 16 MiB both ways in {took:.1f} s, server RSS +{grown} KiB"
        )
    finally:
        for writer in writers:
            writer.transport.abort()
        await _close(client, backend, [])


def _reader_that_stalls(path: str, read_first: int) -> socket.socket:
    """An app that reads ``read_first`` bytes of its firehose (its tunnel's window grows, as
    for any app that reads), then never reads again.  A UNIX socket: its kernel buffers are
    fixed (a loopback TCP socket's grow to 4 MiB, so the kernel, not quictund, would hold what
    a stalled reader leaves)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        sock.settimeout(30)
        sock.connect(path)
        sock.sendall(FLOOD)
        got = 0
        while got < read_first:
            chunk = sock.recv(min(64 * KiB, read_first - got))
            assert chunk, "the firehose ended early"
            got += len(chunk)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _was_reset(sock: socket.socket) -> bool:
    """Whether the app saw its connection end (the daemon closes a reclaimed tunnel's UNIX
    socket: UNIX sockets have no RST) rather than data still waiting."""
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False
    return True


@pytest.mark.parametrize(("stalled", "flood_each", "read_first"), [(500, 3 * MiB // 2, 256 * KiB)])
@pytest.mark.timeout(300)  # 500 tunnels open one after another on a loaded 2-core machine
@pytest.mark.skipif(
    TEST_ENGINE == "qh3",
    # Measured: every new reader waits behind the gate until a stalled one is reclaimed, so
    # the 500 readers crawl past the test's 300 s.  The engine-pair test
    # (tests/test_receive_memory.py) measures qh3's reclaim instead.
    reason="qh3 2.1 has no per-stream credit hook (docs/design.md, 'The qh3 engine')",
)
async def test_readers_that_stall_one_after_another_leave_the_honest_tunnel_flowing(
    server: Endpoint, tmp_path: Path, stalled: int, flood_each: int, read_first: int
) -> None:
    """Apps that each read a little and then stall, one after another: each grew its window
    while reading, and credit cannot be taken back, so together they came to hold the
    client's whole receive budget and the honest tunnel froze (its transfer timed out).  Now
    the client resets the tunnels stalled longest when the others need their memory: their
    apps see the end, the client logs why, and the honest tunnel flows."""
    _FloodOrEcho.limit, _FloodOrEcho.written = flood_each, 0
    backend = await Backend(_FloodOrEcho).tcp()
    path = str(tmp_path / "app.sock")
    client = await start_client(server.address, backend.address, listen=f"unix:{path}")
    socks: list[socket.socket] = []
    try:
        unloaded = await _echo_rtts(client.address, 20)
        baseline = client.rss_kib()
        socks += [
            await asyncio.to_thread(_reader_that_stalls, path, read_first) for _ in range(stalled)
        ]
        await _until_stalled([client], 2.0, within=120)

        rtts = await _echo_rtts(client.address, 20)
        start = time.monotonic()
        sent, got, n = await asyncio.wait_for(transfer_both_ways(client.address, 16 * MiB), 60)
        took = time.monotonic() - start
        assert (n, got) == (16 * MiB, sent)
        assert max(rtts) < 2.0, f"echo next to {stalled} stalled readers: {max(rtts):.3f} s"
        reclaimed = client.messages("reset: its app read nothing for")
        assert reclaimed, "no stalled tunnel was reclaimed"
        assert all(e["level"] == "warning" for e in reclaimed)
        # each side's tunnel line says who reclaimed: here, and the peer (the server)
        await client.wait_log(
            lambda e: (
                e.get("msg") == "tunnel closed"
                and str(e.get("reason", "")).startswith("reclaimed here:")
            )
        )
        await server.wait_log(
            lambda e: e.get("msg") == "tunnel closed" and "(reclaimed)" in str(e.get("reason", ""))
        )
        ended = sum(await asyncio.to_thread(lambda: [_was_reset(s) for s in socks]))
        assert ended >= len(reclaimed), f"{ended} apps saw the end, {len(reclaimed)} reclaimed"
        grown = client.rss_kib() - baseline
        assert grown <= 32 * 1024 + stalled * 320 + 32 * 1024, f"client grew {grown} KiB"
        print(
            f"{stalled} stalled one after another: {len(reclaimed)} reclaimed, {ended} apps"
            f" saw the end; echo unloaded max {max(unloaded) * 1000:.1f} ms, loaded max"
            f" {max(rtts) * 1000:.1f} ms; 16 MiB both ways in {took:.1f} s;"
            f" client RSS +{grown} KiB"
        )
    finally:
        await _close(client, backend, socks)
