"""Issue 17 §3: 30 clients, real nginx hashing client addresses, 3 servers (and a spare).

* One server crashes (SIGKILL) or is stopped (SIGTERM): its clients must reconnect through the
  balancer to the others within the reconnect time, and every other client must never notice:
  its open tunnel keeps echoing through the whole failover and its connector logs no loss.
* nginx is reloaded with the spare added to the pool: only the clients that consistent hashing
  hands to it reconnect; the others keep their connections.

Set-up in ``l4_balancer.py`` (namespaces, nftables SNAT, the nginx config docs/scaling.md
shows).  Timings are printed (``pytest -s``) and quoted in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e import l4_balancer as lb
from tests.e2e.harness import TEST_ENGINE, Endpoint

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
    nginx: asyncio.subprocess.Process
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
        yield Scene(servers, clients, run, nginx, server_of)
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
    try:
        async with asyncio.timeout(15):
            assert await reader.readexactly(len(line)) == line
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    msg = f"ping {n}\n".encode()
    writer.write(msg)
    async with asyncio.timeout(2.0):
        assert await reader.readexactly(len(msg)) == msg


@dataclass
class Watch:
    """One client's tunnel, pinged every 0.2 s until ``done``; reopened once if it breaks."""

    pings: int = 0
    broke_s: float | None = None  # after the event: the old tunnel ended (or stopped echoing)
    back_s: float | None = None  # after the event: a new tunnel through the same client echoed


@dataclass
class Phase:
    opened: int = 0
    all_open: asyncio.Event = field(default_factory=asyncio.Event)
    event: asyncio.Event = field(default_factory=asyncio.Event)  # the action happened at ``at``
    at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def _watch(scene: Scene, i: int, phase: Phase) -> Watch:
    reader, writer = await _open(scene, i)
    phase.opened += 1
    if phase.opened == lb.CLIENTS:
        phase.all_open.set()
    w = Watch()
    try:
        while not phase.done.is_set():
            try:
                await _ping(reader, writer, w.pings)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, AssertionError):
                break
            w.pings += 1
            await asyncio.sleep(0.2)
        else:
            return w
        assert phase.event.is_set(), f"client {i}'s tunnel broke before anything happened"
        # The old tunnel must end (reset, never a silent hang) once the client gives up on
        # its server; then a new tunnel through the same listener must work.
        async with asyncio.timeout(30):
            while await reader.read(1 << 16):
                pass
        w.broke_s = time.monotonic() - phase.at
        writer.close()
        del scene.server_of[i]
        reader, writer = await _open(scene, i)
        w.back_s = time.monotonic() - phase.at
        await _ping(reader, writer, 0)
        return w
    finally:
        writer.close()


async def _around(scene: Scene, action: Callable[[], object], settle_s: float) -> dict[int, Watch]:
    """Watch every client's tunnel, run ``action()`` after 1 s, keep watching ``settle_s``."""
    phase = Phase()
    watches = [
        asyncio.ensure_future(_watch(scene, i, phase))  # noqa: TID251
        for i in range(lb.CLIENTS)
    ]
    try:
        async with asyncio.timeout(30):
            await phase.all_open.wait()  # every tunnel echoed its hello
        await asyncio.sleep(1.0)
        phase.at = time.monotonic()
        phase.event.set()
        action()
        await asyncio.sleep(settle_s)
        phase.done.set()
        return dict(enumerate(await asyncio.gather(*watches)))
    finally:
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)  # their writers get closed


def _lost(scene: Scene, i: int) -> list[str]:
    """The client connector's "connection lost" lines for client ``i``."""
    msgs = (e.get("msg", "") for e in scene.clients.logs)
    return [m for m in msgs if m.startswith(f"[c{i}] QUIC connection to")]


def _report(what: str, moved: list[int], watches: dict[int, Watch]) -> tuple[float, float]:
    broke = [watches[i].broke_s or 0.0 for i in moved]
    back = [watches[i].back_s or 0.0 for i in moved]
    print(
        f"\n{what}: {len(moved)} of {lb.CLIENTS} clients moved; old tunnels ended after "
        f"{min(broke):.2f}..{max(broke):.2f} s, new tunnel up after "
        f"{min(back):.2f}..{max(back):.2f} s"
    )
    return min(back), max(back)


# SIGKILL: a crash, found by the clients' dead-after.  SIGTERM: a planned stop, which closes
# its QUIC connections after shutdown-grace, so its clients reconnect without waiting for
# dead-after; but until the draining daemon has closed its UDP socket, nginx still sends their
# new Initials to it (it drops them silently, so nginx cannot tell), hence about a second more.
# Measured 1.5..4.1 s with a 1 s grace (load 7 on 2 cores).
BOUNDS = {
    signal.SIGKILL: RECONNECT_BOUND_S,
    signal.SIGTERM: lb.GRACE_S + 1.0 + HANDSHAKES_S,
}


# Found by this test, not fixed here (engine_qh3.py belongs to other work): on qh3 a peer's
# CONNECTION_CLOSE reaches the session only when qh3's draining period ends (~3 s later);
# meanwhile new tunnels are opened on the closed connection and fail ("tunnel set-up failed:
# connection is closed").  And after an nginx reload up to 15-18 of 30 clients reconnect on qh3
# (aioquic: 9, every run): a qh3 server does not carry over every connection whose packets
# start arriving from a new port (nginx's new workers); not investigated further.
QH3_CLOSE = pytest.mark.xfail(
    TEST_ENGINE == "qh3", strict=False,
    reason="qh3: peer close surfaces only after the draining period; tunnels opened meanwhile fail",
)  # fmt: skip
QH3_REBIND = pytest.mark.xfail(
    TEST_ENGINE == "qh3", strict=False,
    reason="qh3 server: not every connection survives arriving from a new port",
)  # fmt: skip


@pytest.mark.parametrize(
    "sig",
    [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=QH3_CLOSE)],
    ids=lambda s: signal.Signals(s).name,
)
async def test_stopped_server_clients_move_others_never_notice(scene: Scene, sig: int) -> None:
    pids = [ep.proc.pid for ep in scene.servers]
    victim: list[int] = []

    def stop_busiest() -> None:
        load = {pid: list(scene.server_of.values()).count(pid) for pid in pids}
        assert sum(1 for n in load.values() if n) >= 2, load  # the hash spreads the clients
        victim.append(max(load, key=lambda pid: load[pid]))
        os.kill(victim[0], sig)

    before: dict[int, int] = {}
    watches = await _around(
        scene, lambda: (before.update(scene.server_of), stop_busiest()), BOUNDS[sig] + 2.0
    )
    moved = sorted(i for i, pid in before.items() if pid == victim[0])
    stayed = sorted(set(range(lb.CLIENTS)) - set(moved))
    assert moved and stayed
    _, slowest = _report(signal.Signals(sig).name, moved, watches)
    for i in stayed:  # never noticed: echoed all along, no loss logged
        assert watches[i].broke_s is None and not _lost(scene, i), (i, watches[i])
        assert watches[i].pings >= BOUNDS[sig], (i, watches[i])  # >= 1 echo a second
    for i in moved:  # reconnected through the balancer, to another server, in time
        assert watches[i].back_s is not None and _lost(scene, i), (i, watches[i])
        assert scene.server_of[i] in set(pids) - {victim[0]}
    assert slowest <= BOUNDS[sig]


@QH3_REBIND
async def test_balancer_reload_adding_a_server(scene: Scene) -> None:
    """A fourth server joins the pool (nginx reload): consistent hashing sends it only its
    share of the clients, which reconnect (to it, for their old connection ids mean nothing
    there); everyone else keeps their connection although nginx's new workers forward it from
    a new source port (the server validates the new path, RFC 9000 §9)."""
    pool = (*lb.SERVER_PORTS, lb.SPARE_PORT)
    watches = await _around(
        scene, lambda: lb.reload_nginx(scene.nginx, scene.run, pool), RECONNECT_BOUND_S + 2.0
    )
    moved = sorted(i for i, w in watches.items() if w.broke_s is not None)
    _, slowest = _report("nginx reload, 3 -> 4 servers", moved, watches)
    assert 0 < len(moved) <= lb.CLIENTS // 2, moved  # about a quarter, never everyone
    for i, w in watches.items():
        if i in moved:
            assert w.back_s is not None and _lost(scene, i), (i, w)
        else:
            assert not _lost(scene, i) and w.pings >= RECONNECT_BOUND_S, (i, w)
    assert slowest <= RECONNECT_BOUND_S
