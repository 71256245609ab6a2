"""The local API stays available while local users attack it (issue 13 §6, docs/security.md).

A real daemon (uvloop) serves its API socket; slowloris clients run as other UIDs (Debian's
``/usr/bin/python3`` with ``setuid`` through ``subprocess``), hold as many connections as they
can with request heads that never finish, and reconnect whenever cut off.  Meanwhile another
UID's ``GET /healthz`` and root's ``quictund reload`` must answer promptly, one UID never
holds more than its share, and the head deadline disconnects every slow client.

The same rules on the asyncio loop (the tests' own) are checked in-process at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from quictund.api import Limits, Router, start_unix
from quictund.api.metrics_listener import start_metrics
from quictund.api.peers import peer_of, tcp_peer_uid
from quictund.api.slots import SlotPolicy, Slots
from tests.e2e.test_daemon import Run
from tests.test_api import FakeProvider, parse_raw, raw_exchange

SYSTEM_PYTHON = "/usr/bin/python3"  # executable by every UID (ours may be under /root)
SCRIPT = Path(__file__).with_name("slowloris.py")
ATTACKER, HONEST = 65534, 65533  # nobody, and another unprivileged UID

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root (to run clients as other UIDs) and /usr/bin/python3",
)


@dataclass
class Attacker:
    proc: asyncio.subprocess.Process
    lines: list[dict[str, object]] = field(default_factory=list)

    @classmethod
    async def start(cls, api: Path | str, uid: int, connections: int) -> Attacker:
        proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, str(SCRIPT), "attack", str(api), str(connections),
            user=uid, group=0, extra_groups=[], stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        attacker = cls(proc)
        attacker._task = asyncio.get_running_loop().create_task(attacker._read())
        return attacker

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(json.loads(line))

    @property
    def max_held(self) -> int:
        return max((int(str(line["held"])) for line in self.lines), default=0)

    @property
    def last(self) -> dict[str, object]:
        return self.lines[-1] if self.lines else {"held": 0, "refused": 0, "cut": []}

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        await self._task


async def probe(api: Path | str, uid: int, path: str = "/healthz") -> tuple[int, float]:
    """``GET path`` as ``uid``: (status, seconds from connect to the full answer)."""
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(SCRIPT), "probe", str(api), path,
        user=uid, group=0, extra_groups=[], stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    answer = json.loads(out)
    return int(answer["status"]), float(answer["seconds"])


async def reload_as_root(api: Path) -> tuple[int, float, str]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quictund", "reload", "--api", str(api), "--timeout", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, time.monotonic() - started, out.decode()


@pytest.fixture
def api_dir(short_tmp: Path) -> Path:
    short_tmp.chmod(0o755)  # other UIDs must reach the socket (mode 0660, group root)
    (short_tmp / "api.toml").write_text('[log]\nlevel = "info"\n')
    return short_tmp


@pytest.fixture
async def daemon_api(api_dir: Path) -> AsyncIterator[Path]:
    config = api_dir / "api.toml"
    api = api_dir / "api.sock"
    run = await Run.start("--config", str(config), "--api-socket", str(api))
    try:
        await run.wait_log("ready:")
        yield api
    finally:
        assert await run.stop() == 0


async def wait_for(condition: object, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@needs_root
async def test_one_uid_slowloris_cannot_starve_others(daemon_api: Path) -> None:
    attacker = await Attacker.start(daemon_api, ATTACKER, connections=80)
    try:
        # saturated: it holds all it may and the rest of its connections are refused
        await wait_for(lambda: attacker.last["held"] == 8 and attacker.last["refused"], 15)
        for _ in range(3):
            status, seconds = await probe(daemon_api, HONEST)
            assert status == 200
            assert seconds < 2.0, f"another UID waited {seconds:.2f} s for /healthz"
        rc, seconds, out = await reload_as_root(daemon_api)
        assert rc == 0, out
        assert "accepted" in out
        assert seconds < 15, f"quictund reload took {seconds:.1f} s"
        # The head deadline: every held connection is cut off 5 s after it connected (408).
        await wait_for(lambda: len(attacker.last["cut"]) >= 8, 15)  # type: ignore[arg-type]
        cut = attacker.last["cut"]
        assert isinstance(cut, list)
        # 408 (checked exactly in-process below), or a reset this client saw instead: it keeps
        # writing, and a write racing our close makes asyncio drop what it had not yet read.
        assert {status for status, _ in cut} <= {"408", "eof"}, cut
        held_for = [float(seconds) for _, seconds in cut]
        assert 4.5 <= min(held_for) and max(held_for) < 7.0, held_for
        assert attacker.max_held == 8  # never more than its share
    finally:
        await attacker.stop()


@needs_root
async def test_many_uids_cannot_lock_out_root(daemon_api: Path) -> None:
    attackers = [await Attacker.start(daemon_api, 60000 + i, connections=10) for i in range(10)]
    try:

        def total() -> int:
            return sum(int(str(a.last["held"])) for a in attackers)

        await wait_for(lambda: total() == 60, 20)  # 64 slots, 4 reserved
        rc, seconds, out = await reload_as_root(daemon_api)
        assert rc == 0, out
        assert seconds < 15, f"quictund reload took {seconds:.1f} s"
        # Root's own request is served from the reserved slots.
        reply = await asyncio.wait_for(
            raw_exchange(str(daemon_api), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 5
        )
        assert reply.startswith(b"HTTP/1.1 200 ")
        status, _ = await probe(daemon_api, HONEST)  # unprivileged users share 60 slots
        assert status == 503
        assert total() <= 60 and all(a.max_held <= 8 for a in attackers)
    finally:
        for attacker in attackers:
            await attacker.stop()


# ------------------------------------------------------------------ the rules, in-process


def test_slot_rules() -> None:
    slots = Slots(SlotPolicy(total=6, per_peer=2, reserved=2), privileged=frozenset({0}))
    a, b, c, root = ("uid", 1000), ("uid", 1001), ("uid", 1002), ("uid", 0)
    assert slots.acquire(a) is None and slots.acquire(a) is None
    assert "uid 1000 (at most 2 at once)" in str(slots.acquire(a))
    assert slots.acquire(b) is None and slots.acquire(b) is None
    assert "reserved for root" in str(slots.acquire(c))
    assert slots.acquire(root) is None and slots.acquire(root) is None
    assert slots.acquire(root) == "too many API connections"
    slots.release(a)
    assert slots.acquire(c) is None
    assert slots.in_use == 6


async def test_peer_of_unix_and_tcp_on_asyncio(short_tmp: Path) -> None:
    """On the asyncio loop (the daemon's is uvloop): our own UID over UNIX, IPv4 and IPv6 TCP."""
    seen: list[object] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_of(writer.get_extra_info("socket")))
        writer.close()

    path = str(short_tmp / "p.sock")
    servers = [
        await asyncio.start_unix_server(accepted, path),
        await asyncio.start_server(accepted, "127.0.0.1", 0),
        await asyncio.start_server(accepted, "::1", 0),
    ]
    writers = [(await asyncio.open_unix_connection(path))[1]]
    for server in servers[1:]:
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writers.append(writer)
    await wait_for(lambda: len(seen) == 3, 5)
    assert seen == [("uid", os.geteuid())] * 3
    for w in writers:
        w.close()
    for s in servers:
        s.close()
        await s.wait_closed()


def test_tcp_peer_uid_of_a_connection_that_is_gone() -> None:
    assert tcp_peer_uid(("127.0.0.1", 1), ("127.0.0.1", 1)) is None
    assert tcp_peer_uid(("192.0.2.1", 80), ("198.51.100.7", 5555)) is None  # another host


@needs_root
async def test_metrics_listener_slowloris_over_tcp(short_tmp: Path) -> None:
    """Over TCP the kernel still tells local users apart: nobody's slowloris on the metrics
    listener holds its 8 slots, and another UID's scrape answers at once."""
    server = await start_metrics("127.0.0.1:0", Router(FakeProvider()))
    target = f"tcp:{server.address}"
    attacker = await Attacker.start(target, ATTACKER, connections=80)
    try:
        await wait_for(lambda: attacker.last["held"] == 8 and attacker.last["refused"], 15)
        for _ in range(3):
            status, seconds = await probe(target, HONEST, "/metrics")
            assert status == 200
            assert seconds < 2.0, f"a scrape waited {seconds:.2f} s"
        assert attacker.max_held == 8
    finally:
        await attacker.stop()
        server.close()
        await server.wait_closed()


async def test_head_deadline_is_a_total_not_per_byte(short_tmp: Path) -> None:
    """A client trickling its head in gets 408 at the head deadline, well before the cycle's."""
    api = await start_unix(
        str(short_tmp / "h.sock"),
        Router(FakeProvider()),
        limits=Limits(head_timeout_s=0.5, request_timeout_s=30),
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, api.address)
        started = time.monotonic()
        got = b""
        # A plain socket, not a StreamReader: once the server has answered and closed, our
        # next byte fails with EPIPE, and a StreamReader would then drop the 408 it holds.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in b"GET /healthz HTTP/1.1\r\nX: " + b"y" * 1000:
                with contextlib.suppress(TimeoutError):
                    got += await asyncio.wait_for(loop.sock_recv(sock, 1024), 0.02)
                if got:
                    break
                await loop.sock_sendall(sock, bytes([byte]))
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
            got += chunk
        assert parse_raw(got).status == 408
        assert 0.5 <= time.monotonic() - started < 2.0
    finally:
        sock.close()
        api.close()
        await api.wait_closed()
