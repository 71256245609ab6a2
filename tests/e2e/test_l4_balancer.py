"""Issue 17 §3: 30 clients, real nginx hashing client addresses, 3 servers, one killed.

The clients of the killed server must reconnect through the balancer to the others within the
reconnect time (dead-after + backoff), and every other client must never notice: its open
tunnel keeps echoing through the whole failover and its connector logs no loss.  Set-up in
``l4_balancer.py`` (namespaces, nftables SNAT, the nginx config docs/scaling.md shows).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e import l4_balancer as lb
from tests.e2e.harness import Endpoint

_why = lb.available()
pytestmark = [
    pytest.mark.skipif(bool(_why) and not os.environ.get("CI"), reason=_why or "ok"),
    pytest.mark.timeout(120),
]

KEEP_ALIVE_S = 1.0
DEAD_AFTER_S = 3.0
# Reconnect time = dead-after (silence before the client gives up on the server; the session
# checks it on each keep-alive tick, so up to keep-alive later) + the first backoff (<= 0.25 s)
# + one handshake through the balancer.  One client daemon hosts all 30 connections here, so
# the moved clients' ~12 handshakes share one core (~0.1 s of CPU each): 2 s for those and the
# backoff, 1 s for a loaded CI machine.  Measured 3.4..5.0 s on a shared 2-core box (load 7).
HANDSHAKES_S = 3.0
RECONNECT_BOUND_S = DEAD_AFTER_S + KEEP_ALIVE_S + HANDSHAKES_S


class _PidEcho(asyncio.Protocol):
    """Echo that learns which server daemon (PID) connected and which client it serves."""

    def __init__(self, seen: dict[int, int]) -> None:
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid = struct.unpack("3i", creds)[0]
        self.hello = b""

    def data_received(self, data: bytes) -> None:
        if b"\n" not in self.hello:
            self.hello += data
            if self.hello.startswith(b"hello ") and b"\n" in self.hello:
                self.seen[int(self.hello[6:].split(b"\n")[0])] = self.pid
        self.t.write(data)


@dataclass
class Scene:
    servers: list[Endpoint]
    clients: Endpoint
    run: Path
    server_of: dict[int, int] = field(default_factory=dict)  # client index -> server pid


@pytest.fixture
async def scene(ca: Path, state_dir: Path) -> AsyncIterator[Scene]:
    assert not lb.available(), lb.available()  # CI must run this: fail loudly there
    topo = lb.Topology()
    run = Path(f"/tmp/{topo.client_ns}")
    run.mkdir(exist_ok=True)  # noqa: ASYNC240 (set-up, before any traffic)
    server_of: dict[int, int] = {}
    echo_path = str(run / "echo.sock")
    backend = await asyncio.get_running_loop().create_unix_server(
        lambda: _PidEcho(server_of), echo_path
    )
    started: list[Endpoint] = []
    nginx = None
    try:
        topo.create()
        nginx = await lb.start_nginx(topo, run)
        knobs = {"keep_alive": KEEP_ALIVE_S, "dead_after": DEAD_AFTER_S}
        servers = await lb.start_servers(topo, run, state_dir, echo_path, **knobs)
        started += servers
        clients = await lb.start_clients(topo, run, ca, echo_path, **knobs)
        started.append(clients)
        yield Scene(servers, clients, run, server_of)
    finally:
        for ep in started:
            ep.kill()
            await ep.proc.wait()
        if nginx is not None:
            lb.stop_nginx(nginx)
            await nginx.wait()
        backend.close()
        topo.close()
        shutil.rmtree(run, ignore_errors=True)


async def _open(scene: Scene, i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A tunnel through client ``i`` that has echoed its hello line (so its server is known)."""
    reader, writer = await asyncio.open_unix_connection(str(scene.run / f"c{i}.sock"))
    line = f"hello {i}\n".encode()
    writer.write(line)
    async with asyncio.timeout(15):
        assert await reader.readexactly(len(line)) == line
    return reader, writer


async def _ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    msg = f"ping {n}\n".encode()
    writer.write(msg)
    async with asyncio.timeout(2.0):
        assert await reader.readexactly(len(msg)) == msg


# SIGKILL: a crash, found by the clients' dead-after.  SIGTERM: a planned stop, which closes
# its QUIC connections after shutdown-grace, so its clients reconnect without waiting for
# dead-after; but until the draining daemon has closed its UDP socket, nginx still sends their
# new Initials to it (it drops them silently, so nginx cannot tell), hence about a second more.
# Measured 2.1..4.1 s with a 1 s grace (load 7 on 2 cores).
BOUNDS = {
    signal.SIGKILL: RECONNECT_BOUND_S,
    signal.SIGTERM: lb.GRACE_S + 1.0 + HANDSHAKES_S,
}


@pytest.mark.parametrize("sig", list(BOUNDS), ids=lambda s: signal.Signals(s).name)
async def test_stopped_server_clients_move_others_never_notice(scene: Scene, sig: int) -> None:
    tunnels = await asyncio.gather(*(_open(scene, i) for i in range(lb.CLIENTS)))
    pids = {ep.proc.pid: ep for ep in scene.servers}
    # "ip netns exec" execs the daemon, so the PID the echo sees is the server's own.
    assert set(scene.server_of.values()) <= set(pids)
    load = {pid: sum(1 for p in scene.server_of.values() if p == pid) for pid in pids}
    assert sum(load.values()) == lb.CLIENTS
    assert sum(1 for n in load.values() if n) >= 2, load  # the hash spreads the clients
    victim = max(load, key=lambda pid: load[pid])
    moved = sorted(i for i, pid in scene.server_of.items() if pid == victim)
    stayed = sorted(set(range(lb.CLIENTS)) - set(moved))
    assert moved and stayed, load

    failures: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def keep_pinging(i: int) -> int:
        reader, writer = tunnels[i]
        n = 0
        while not done.is_set():
            try:
                await _ping(reader, writer, n)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, AssertionError) as exc:
                failures.append((i, repr(exc)))
                return n
            n += 1
            await asyncio.sleep(0.2)
        return n

    kill_at = 0.0

    async def recover(i: int) -> tuple[float, float]:
        reader, writer = tunnels[i]
        # The old tunnel ends (reset, never a silent hang) once the client declares the
        # server dead; then a new tunnel through the same listener must work.
        async with asyncio.timeout(BOUNDS[sig] + 5):
            while await reader.read(1 << 16):
                pass
        detected = time.monotonic() - kill_at
        writer.close()
        del scene.server_of[i]
        new_reader, new_writer = await _open(scene, i)
        took = time.monotonic() - kill_at
        await _ping(new_reader, new_writer, 0)
        new_writer.close()
        return detected, took

    async def failover() -> list[tuple[float, float]]:
        nonlocal kill_at
        await asyncio.sleep(1.0)  # the survivors' pings are running
        kill_at = time.monotonic()
        os.kill(victim, sig)
        times = await asyncio.gather(*(recover(i) for i in moved))
        await asyncio.sleep(2 * KEEP_ALIVE_S)  # the survivors keep echoing after it
        done.set()
        return list(times)

    pings, times = await asyncio.gather(
        asyncio.gather(*(keep_pinging(i) for i in stayed)), failover()
    )
    for _, writer in (tunnels[i] for i in stayed):
        writer.close()

    detect = [d for d, _ in times]
    took = [t for _, t in times]
    print(
        f"\n{signal.Signals(sig).name}: {len(moved)} of {lb.CLIENTS} clients moved; "
        "old tunnels reset after "
        f"{min(detect):.2f}..{max(detect):.2f} s, new tunnel up after "
        f"{min(took):.2f}..{max(took):.2f} s"
    )
    assert not failures, failures
    assert min(pings) >= 5, pings  # each survivor echoed all along the failover
    assert max(took) <= BOUNDS[sig], took
    assert all(scene.server_of[i] not in (victim,) for i in moved), scene.server_of
    assert {scene.server_of[i] for i in moved} <= set(pids) - {victim}
    logs = scene.clients.logs
    lost = {m for m in (e.get("msg", "") for e in logs) if "QUIC connection to" in m}
    for i in stayed:
        assert not [m for m in lost if m.startswith(f"[c{i}] ")], (i, lost)
    for i in moved:
        assert [m for m in lost if m.startswith(f"[c{i}] ")], (i, lost)
