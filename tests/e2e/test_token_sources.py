"""Issue 13 section 5: a hostile token source fails its own app connection, never the daemon.

One ``quictund run`` holds two client listeners on one event loop: ``honest`` (a Fixed token
to an echo backend) and ``victim`` (a hostile Http or File source).  While the victim's source
attacks, an honest tunnel keeps echoing; the test records the worst echo round trip, the
client's peak RSS (VmHWM) and its log.

* Http: a local HTTP server answers a gzip bomb (60 MiB of zeros in 60 KB, under the 64 KiB
  wire cap) or a double-gzip bomb (512 MiB in a few KB, ``Content-Encoding: gzip, gzip``).
* File: a 16 MiB file of bad lines is read, then re-read after an edit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ENGINE_TOML, Endpoint, connect, echo, start_server

MIB = 1024 * 1024


def gzip_of_zeros(size: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    block = bytes(MIB)
    out = [z.compress(block) for _ in range(size // MIB)]
    return b"".join(out) + z.flush()


class Daemon:
    """``quictund run --config`` with JSON logs collected from stderr."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[dict[str, Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            try:
                self.log.append(json.loads(line))
            except ValueError:
                self.log.append({"msg": line.decode(errors="replace")})

    async def wait_log(self, needle: str, within: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for entry in self.log:
                    if needle in json.dumps(entry):
                        return entry
                await asyncio.sleep(0.05)

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 20)
        await self._task


class Pinger:
    """An honest tunnel echoing 64 bytes every 10 ms; keeps the worst round trip.

    The bound asserted on it (1 s) is loose on purpose: the shared test machine alone shows
    50 ms stalls, the failures it catches are 8.7 s (Http) and 26 s (File)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.worst = 0.0
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Pinger:
        reader, self._writer = await connect(self.address)
        self._task = asyncio.get_running_loop().create_task(self._run(reader, self._writer))
        return self

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            start = time.monotonic()
            writer.write(os.urandom(64))
            await reader.readexactly(64)
            self.worst = max(self.worst, time.monotonic() - start)
            self.count += 1
            await asyncio.sleep(0.01)

    def reset(self) -> None:
        self.worst, self.count = 0.0, 0

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # the honest tunnel broke: say how
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass


async def start_daemon(tmp: Path, server: str, ca: Path, backend: str, victim: str) -> Daemon:
    common = (
        f'{ENGINE_TOML}server-endpoint = "{server}"\nserver-name = "localhost"\nca-file = "{ca}"\n'
    )
    conf = tmp / "c.toml"
    conf.write_text(
        '[log]\nformat = "json"\n'
        f'[[client]]\nname = "honest"\nlisten-on = "unix:{tmp}/h.sock"\n{common}'
        f'token-source = "{backend}"\n'
        f'[[client]]\nname = "victim"\nlisten-on = "unix:{tmp}/v.sock"\n{common}{victim}'
    )
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quictund", "run", "--config", str(conf),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    daemon = Daemon(proc)
    await daemon.wait_log("ready")
    return daemon


async def victim_refused(tmp: Path) -> bytes:
    """Open one app connection on the victim listener; what it got before it was closed."""
    reader, writer = await connect(f"unix:{tmp}/v.sock")
    writer.write(b"hello")
    try:
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


@pytest.fixture
async def setup(short_tmp: Path, state_dir: Path) -> AsyncIterator[tuple[Endpoint, str]]:
    backend = await echo().tcp()
    server = await start_server(state_dir)
    try:
        yield server, backend.address
    finally:
        await server.stop()
        backend.close()


class BombServer:
    """A local HTTP server answering every request with one compressed body."""

    def __init__(self, body: bytes, encoding: str) -> None:
        self.head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {encoding}"
            f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.body = body
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(self.head + self.body)
        try:
            await writer.drain()
            await reader.read()
        except ConnectionError:
            pass
        writer.close()


@pytest.mark.parametrize(
    ("uncompressed", "layers"), [(60 * MIB, 1), (512 * MIB, 2)], ids=["gzip", "double-gzip"]
)
async def test_http_compression_bomb_fails_one_connection(
    setup: tuple[Endpoint, str], short_tmp: Path, ca: Path, uncompressed: int, layers: int
) -> None:
    server, backend = setup
    body = gzip_of_zeros(uncompressed)
    for _ in range(layers - 1):
        body = _gzip(body)
    assert len(body) < 64 * 1024  # fits the cap on the wire: only decoding could blow it up
    bomb = BombServer(body, ", ".join(["gzip"] * layers))
    http = await asyncio.start_server(bomb.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{http.sockets[0].getsockname()[1]}/token"
    victim = f'token-source-plugin = "Http"\ntoken-source = "{url}"\n'
    daemon = await start_daemon(short_tmp, server.address, ca, backend, victim)
    try:
        async with Pinger(f"unix:{short_tmp}/h.sock") as pinger:
            await asyncio.sleep(0.3)
            before = daemon.peak_rss_mib()
            pinger.reset()
            assert await victim_refused(short_tmp) == b""
            line = await daemon.wait_log("no token")
            await asyncio.sleep(0.3)
            worst, pings = pinger.worst, pinger.count
        grown = daemon.peak_rss_mib() - before
    finally:
        await daemon.stop()
        http.close()
    assert bomb.requests and b"accept-encoding: identity" in bomb.requests[0].lower()
    print(f"{layers}x gzip: peak RSS +{grown:.1f} MiB, worst echo {worst * 1000:.0f} ms")
    assert grown < 16, f"peak RSS grew by {grown:.0f} MiB"
    assert pings >= 10 and worst < 1.0, (pings, worst)  # before the fix: 8.7 s
    assert "Content-Encoding gzip" in json.dumps(line) and "asked for identity" in json.dumps(line)


def _gzip(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def bad_lines(size: int, salt: str) -> bytes:
    unit = f"not-an-ip {salt} x\n".encode()
    return (unit * (size // len(unit) + 1))[: size - 1]


async def test_file_of_16_mib_bad_lines_never_stalls_the_loop(
    setup: tuple[Endpoint, str], short_tmp: Path, ca: Path
) -> None:
    server, backend = setup
    path = short_tmp / "tokens"
    path.write_bytes(bad_lines(16 * MIB, "a"))
    victim = f'token-source-plugin = "File"\ntoken-source = "{path}"\n'
    daemon = await start_daemon(short_tmp, server.address, ca, backend, victim)
    try:
        async with Pinger(f"unix:{short_tmp}/h.sock") as pinger:
            await asyncio.sleep(0.3)
            pinger.reset()
            assert await victim_refused(short_tmp) == b""  # first read: no entry for it
            path.write_bytes(bad_lines(16 * MIB, "b"))  # an edit: read again
            assert await victim_refused(short_tmp) == b""
            worst, pings = pinger.worst, pinger.count
    finally:
        await daemon.stop()
    about_file = [e for e in daemon.log if str(path) in json.dumps(e)]
    print(f"16 MiB bad lines x2: {len(about_file)} log lines, worst echo {worst * 1000:.0f} ms")
    loads = [e for e in about_file if "loaded" in e["msg"]]
    assert len(loads) == 2, about_file[-3:]
    assert len(about_file) <= 2 * (5 + 1 + 1) + 2  # per read: 5 lines, 1 summary, "loaded"
    assert any("more bad lines" in e["msg"] for e in about_file)
    assert pings >= 20 and worst < 1.0, (pings, worst)  # before the fix: 26 s
