"""``workers = N``: several processes share the ports, the supervisor merges the API."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import connect, echo
from tests.e2e.test_daemon import Run, client_toml, free_udp_port, server_toml
from tests.e2e.test_flood import api_get


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}/cmdline").exists()


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(x) for x in path.read_text().split()} if path.exists() else set()


async def test_two_workers_share_ports_and_one_api(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    """A server daemon and a client daemon with two workers each (started one after the other,
    as on two hosts: a server worker joining the SO_REUSEPORT group later would move existing
    QUIC connections, see docs/design.md)."""
    backend = await echo().tcp()
    udp, tcp = free_udp_port(), free_tcp_port()
    api, sapi = short_tmp / "api.sock", short_tmp / "sapi.sock"
    sconf, conf = short_tmp / "s.toml", short_tmp / "c.toml"
    sconf.write_text(
        f'[api]\nsocket = "{sapi}"\n[daemon]\nworkers = 2\n'
        + server_toml("edge", udp, state_dir, [backend.address])
    )
    conf.write_text(
        f'[api]\nsocket = "{api}"\n'
        + client_toml("tcp", f"tcp:127.0.0.1:{tcp}", udp, ca, backend.address)
        + client_toml("unix", f"unix:{short_tmp}/u.sock", udp, ca, backend.address)
    )
    server = await Run.start("--config", str(sconf))
    await server.wait_log("ready: 2 workers", within=60)
    run = await Run.start("--config", str(conf), "--workers", "2")
    workers: set[int] = set()
    try:
        await run.wait_log("ready: 2 workers", within=60)
        workers = children(run.proc.pid) | children(server.proc.pid)
        assert len(workers) == 4

        held = []
        for i in range(24):  # the kernel spreads these over both workers' listeners
            reader, writer = await connect(f"tcp:127.0.0.1:{tcp}")
            writer.write(b"%02d" % i)
            assert await reader.readexactly(2) == b"%02d" % i
            held.append((reader, writer))
        reader, writer = await connect(f"unix:{short_tmp}/u.sock")
        writer.write(b"unix")
        assert await reader.readexactly(4) == b"unix"
        held.append((reader, writer))

        tunnels = json.loads(await api_get(api, "/tunnels"))
        assert len(tunnels) == 25
        assert len(json.loads(await api_get(sapi, "/tunnels"))) == 25
        listeners = json.loads(await api_get(api, "/listeners"))
        by_worker = {(x["worker"], x["name"]) for x in listeners}
        assert by_worker == {(0, "tcp"), (1, "tcp"), (0, "unix")}
        active: dict[str, float] = {}
        for family in text_string_to_metric_families(await api_get(api, "/metrics")):
            if family.name == "quictund_tunnels_active":
                for sample in family.samples:
                    if sample.labels["listener"] == "tcp":
                        active[sample.labels["worker"]] = sample.value
        assert sum(active.values()) == 24
        assert all(active.get(w, 0) > 0 for w in ("0", "1")), active  # both workers used

        health = json.loads(await api_get(api, "/healthz"))
        assert health["status"] == "ok" and len(health["workers"]) == 2

        # A reload reaches every worker; the supervisor reports when all answered.
        conf.write_text(conf.read_text().replace('name = "unix"', 'name = "unix2"'))
        run.proc.send_signal(signal.SIGHUP)
        await run.wait_log("reloaded", within=30)
        deadline = time.monotonic() + 30
        while not json.loads(await api_get(api, "/healthz"))["reload"]["ok"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        names = {x["name"] for x in json.loads(await api_get(api, "/listeners"))}
        assert "unix2" in names and "unix" not in names
        for reader, writer in held[:-1]:  # the reload did not touch the TCP tunnels
            writer.write(b"ok")
            assert await reader.readexactly(2) == b"ok"
        for _, writer in held:
            writer.close()
    finally:
        assert await run.stop() == 0
        assert await server.stop() == 0
        backend.close()
    await asyncio.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
    assert not api.exists() and not sapi.exists()
