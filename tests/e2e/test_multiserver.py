"""A client with several server endpoints (issue 17 §2): real daemons, real kills, loopback.

The client runs from TOML (``quictund run``) with ``keep-alive = 0.2`` and ``dead-after = 1``:
health comes from the QUIC connection itself, so the failover time is dead-after plus one
handshake.  Servers are killed with SIGKILL (no CONNECTION_CLOSE reaches the client).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from quictund._tasks import spawn
from tests.e2e.harness import ENGINE_TOML, Backend, Endpoint, connect, echo, start_server
from tests.e2e.test_daemon import Run

FAILOVER_WITHIN_S = 2.0  # the target: new tunnels work through the other within 2 s
DEAD_AFTER_S = 1.0


def client_toml(
    api: Path, endpoints: list[str], backend: Backend, *extra: str, dead_after: float = DEAD_AFTER_S
) -> str:
    listed = ", ".join(f'"{e}"' for e in endpoints)
    return (
        f'[api]\nsocket = "{api}"\n'
        f'[[client]]\nname = "c"\n{ENGINE_TOML}listen-on = "tcp:127.0.0.1:0"\n'
        f"server-endpoint = [{listed}]\nverify-remote-endpoint = false\n"
        f'token-source = "{backend.address}"\nkeep-alive = 0.2\ndead-after = {dead_after}\n'
        f"connect-wait = 5\n" + "".join(line + "\n" for line in extra)
    )


async def start_client(tmp: Path, toml: str, prefix: tuple[str, ...] = ()) -> tuple[Run, str]:
    conf = tmp / "c.toml"
    conf.write_text(toml)
    if prefix:
        run = await _run_under(prefix, conf)
    else:
        run = await Run.start("--config", str(conf))
    line = await run.wait_log("client endpoint listening on")
    address = line.split("listening on ", 1)[1].split(",", 1)[0].strip().strip('"')
    return run, address


async def _run_under(prefix: tuple[str, ...], conf: Path) -> Run:
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "quictund",
        "run",
        "--config",
        str(conf),
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Run(proc)


async def status_text(api: Path, *flags: str) -> str:
    """``quictund status`` as a user runs it."""
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "quictund", "status", "--api", str(api), *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


async def status(api: Path) -> list[dict[str, Any]]:
    listeners: list[dict[str, Any]] = json.loads(await status_text(api, "--json"))["listeners"]
    return listeners


async def endpoints(api: Path) -> dict[str, dict[str, Any]]:
    (client,) = [item for item in await status(api) if item["role"] == "client"]
    return {ep["address"]: ep for ep in client["serverEndpoints"]}


async def wait_endpoints(api: Path, want: dict[str, str], within: float = 10) -> None:
    """Until each listed endpoint address is in the wanted state."""
    async with asyncio.timeout(within):
        while True:
            eps = await endpoints(api)
            if all(eps.get(a, {}).get("state") == s for a, s in want.items()):
                return
            await asyncio.sleep(0.1)


class Tunnel:
    """An app connection through the client, kept open and echoing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: str, within: float = 5) -> Tunnel:
        tunnel = cls(*await connect(address))
        await tunnel.echo(within=within)
        return tunnel

    async def echo(self, msg: bytes = b"ping" * 256, within: float = 5) -> None:
        self.writer.write(msg)
        got = await asyncio.wait_for(self.reader.readexactly(len(msg)), within)
        assert got == msg

    async def end(self, within: float = 10) -> str:
        """How the tunnel ended while the app kept sending: "reset" or "eof"."""
        async with asyncio.timeout(within):
            try:
                while True:
                    self.writer.write(b"x" * 4096)
                    if not await self.reader.read(1 << 16):
                        return "eof"
            except (ConnectionResetError, BrokenPipeError):  # a write after the RST: EPIPE
                return "reset"

    async def fate(self) -> str:
        """ "alive" if it still echoes, "reset" if the app got a reset, "eof" if a clean end."""
        try:
            await self.echo()
        except ConnectionResetError:
            return "reset"
        except asyncio.IncompleteReadError:
            return "eof"
        return "alive"

    def close(self) -> None:
        self.writer.close()


async def first_working(address: str, started: float, within: float = 10) -> float:
    """Seconds from ``started`` until a new tunnel echoes (retrying refused ones)."""
    async with asyncio.timeout(within):
        while True:
            try:
                tunnel = await Tunnel.open(address)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                await asyncio.sleep(0.02)
                continue
            took = time.monotonic() - started
            tunnel.close()
            return took


async def reap(*servers: Endpoint) -> None:
    for server in servers:
        server.kill()
        await server.proc.wait()


def server_tunnels(server: Endpoint) -> int:
    return len(server.messages("tunnel open"))


@pytest.mark.timeout(90)
async def test_failover_kill_active_server(
    short_tmp: Path, state_dir: Path, tmp_path: Path
) -> None:
    backend = await echo().tcp()
    first = await start_server(state_dir)
    second = await start_server(tmp_path)
    api = short_tmp / "api.sock"
    run, address = await start_client(
        short_tmp, client_toml(api, [first.address, second.address], backend)
    )
    try:
        busy = await Tunnel.open(address)
        assert server_tunnels(first) == 1 and server_tunnels(second) == 0  # the first answers
        eps = await endpoints(api)
        assert eps[first.address]["state"] == "connected" and eps[first.address]["active"]
        assert eps[first.address]["tunnels"] == 1
        assert eps[second.address]["state"] == "standby"

        ending = spawn(busy.end(), name="busy-tunnel")  # traffic flowing when the server dies
        await asyncio.sleep(0.2)
        first.kill()
        killed = time.monotonic()
        took = await first_working(address, killed)
        print(f"failover: a new tunnel worked {took:.2f} s after SIGKILL of the active server")
        assert took < FAILOVER_WITHIN_S
        assert server_tunnels(second) >= 1
        assert await ending == "reset"  # never a clean end of a truncated stream

        eps = await endpoints(api)
        assert eps[first.address]["state"] == "down" and eps[first.address]["lastError"]
        assert eps[second.address]["state"] == "connected" and eps[second.address]["active"]
        text = await status_text(api)
        print(text)
        assert f"{second.address}" in text and "connected (active)" in text
    finally:
        await run.stop()
        await reap(second, first)
        backend.close()


@pytest.mark.timeout(90)
async def test_spread_uses_both_and_survives_one(
    short_tmp: Path, state_dir: Path, tmp_path: Path
) -> None:
    backend = await echo().tcp()
    one = await start_server(state_dir)
    two = await start_server(tmp_path)
    api = short_tmp / "api.sock"
    # dead-after 5 s: new tunnels must avoid the dead server before dead-after says it died
    # (a connection silent for 2 x keep-alive + 0.5 s = 0.9 s is passed over)
    mode = 'server-endpoint-mode = "spread"'
    toml = client_toml(api, [one.address, two.address], backend, mode, dead_after=5)
    run, address = await start_client(short_tmp, toml)
    try:
        await wait_endpoints(api, {one.address: "connected", two.address: "connected"})
        tunnels = [await Tunnel.open(address) for _ in range(6)]
        assert server_tunnels(one) == 3 and server_tunnels(two) == 3  # least loaded first
        eps = await endpoints(api)
        assert eps[one.address]["tunnels"] == 3 and eps[two.address]["tunnels"] == 3

        one.kill()  # the one a tie goes to
        killed = time.monotonic()
        await asyncio.sleep(1.2)
        assert (await endpoints(api))[one.address]["state"] == "connected"  # not yet dead
        for _ in range(4):  # yet every new tunnel goes to the live one, at once
            (await Tunnel.open(address, within=1.5)).close()
        took = time.monotonic() - killed
        print(f"spread: 4 new tunnels worked {took:.2f} s after SIGKILL of one server")
        assert server_tunnels(two) == 3 + 4
        await wait_endpoints(api, {one.address: "down", two.address: "connected"})
        fates = await asyncio.gather(*(t.fate() for t in tunnels))
        assert sorted(fates) == ["alive"] * 3 + ["reset"] * 3  # never a clean EOF
    finally:
        await run.stop()
        await reap(one, two)
        backend.close()


@pytest.mark.timeout(90)
async def test_name_with_two_addresses(short_tmp: Path, state_dir: Path, tmp_path: Path) -> None:
    """One name, two addresses: the client's own /etc/hosts (a private mount namespace, the
    real resolver; the host's file is untouched) maps it to 127.0.0.1 and 127.0.0.2."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private /etc/hosts")
    backend = await echo().tcp()
    two = await start_server(tmp_path, listen="127.0.0.2:0")
    port = int(two.address.rsplit(":", 1)[1])
    one = await start_server(state_dir, listen=f"127.0.0.1:{port}")
    hosts = short_tmp / "hosts"
    hosts.write_text("127.0.0.1 gw.multiserver.test\n127.0.0.2 gw.multiserver.test\n")
    api = short_tmp / "api.sock"
    toml = client_toml(
        api, [f"gw.multiserver.test:{port}"], backend, 'server-endpoint-mode = "spread"'
    )
    private_hosts = f'mount --bind {hosts} /etc/hosts && exec "$@"'
    prefix = ("unshare", "--mount", "sh", "-c", private_hosts, "-")
    run, address = await start_client(short_tmp, toml, prefix)
    try:
        want = {f"127.0.0.1:{port}": "connected", f"127.0.0.2:{port}": "connected"}
        await wait_endpoints(api, want)
        tunnels = [await Tunnel.open(address) for _ in range(4)]
        assert server_tunnels(one) == 2 and server_tunnels(two) == 2
        for t in tunnels:
            t.close()
    finally:
        await run.stop()
        await reap(one, two)
        backend.close()


def test_loopback_two_is_local() -> None:
    """127.0.0.2 is a local address here (the test above depends on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))


@pytest.mark.timeout(120)
async def test_failback_when_asked(short_tmp: Path, state_dir: Path, tmp_path: Path) -> None:
    """``failback = true``: back to the first server once it answers again; the tunnel still
    on the second keeps working until it ends, then that connection closes."""
    backend = await echo().tcp()
    first = await start_server(state_dir)
    second = await start_server(tmp_path)
    api = short_tmp / "api.sock"
    toml = client_toml(api, [first.address, second.address], backend, "failback = true")
    run, address = await start_client(short_tmp, toml)
    try:
        (await Tunnel.open(address)).close()
        await reap(first)
        await first_working(address, time.monotonic())
        held = await Tunnel.open(address)  # on the second
        assert server_tunnels(second) >= 2
        first = await start_server(state_dir, listen=first.address)
        # the pool tries the first every 10 s (Pool.FAILBACK_S)
        await wait_endpoints(api, {first.address: "connected"}, within=15)
        assert (await endpoints(api))[first.address]["active"]
        (await Tunnel.open(address)).close()
        assert server_tunnels(first) == 1  # new tunnels go to the first again
        await held.echo()  # the one on the second is not cut
        held.close()
        await wait_endpoints(api, {second.address: "standby"}, within=5)  # then it closes
    finally:
        await run.stop()
        await reap(first, second)
        backend.close()
