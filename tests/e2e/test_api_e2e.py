"""The tunnel API of a running daemon: curl on the UNIX socket, /tunnels, DELETE, /metrics,
/listeners, the CLI tables, and a Spice exchange replayed byte for byte through a tunnel."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from jsonschema import validate  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import Backend, connect, echo
from tests.e2e.test_daemon import Run, client_toml, free_udp_port, server_toml
from tests.test_api import _to_json_schema
from tests.test_classify import MAIN_EXCHANGE, README_MAIN


async def curl(sock: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
        str(sock),
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    body, _, code = out.decode().rpartition("\n")
    return int(code), body



pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def start(short_tmp: Path, state_dir: Path, ca: Path, backend: Backend) -> tuple[Run, Path]:
    port = free_udp_port()
    api = short_tmp / "api.sock"
    conf = short_tmp / "d.toml"
    conf.write_text(
        f'[api]\nsocket = "{api}"\n'
        + server_toml("edge", port, state_dir, [backend.address])
        + client_toml("app", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
    )
    run = await Run.start("--config", str(conf))
    await run.wait_log("ready:")
    return run, api


async def test_tunnels_delete_metrics_listeners(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await echo().tcp()
    run, api = await start(short_tmp, state_dir, ca, backend)
    try:
        assert stat.S_IMODE(os.stat(api).st_mode) == 0o660
        code, body = await curl(api, "http://localhost/tunnels")
        assert (code, json.loads(body)) == (200, [])

        conns = []
        for size in (1000, 2000):
            reader, writer = await connect(f"unix:{short_tmp}/c.sock")
            writer.write(b"x" * size)
            assert await reader.readexactly(size) == b"x" * size
            conns.append((reader, writer))
        code, body = await curl(api, "http://localhost/tunnels")
        tunnels = json.loads(body)
        assert code == 200 and len(tunnels) == 4  # two tunnels, seen by both endpoints
        by_side = {t["endpoint"]: [] for t in tunnels}
        for t in tunnels:
            by_side[t["endpoint"]].append(t)
            assert t["listener"] in ("edge", "app")
            assert t["createdAt"][-6] in "+-"  # RFC 3339 with a time zone
            assert t["serverSendRate"].endswith(" kB/s")
        assert sorted(t["clientTotalBytes"] for t in by_side["client"]) == [1000, 2000]
        assert sorted(t["serverTotalBytes"] for t in by_side["server"]) == [1000, 2000]
        assert all("serverAppAddr" in t for t in by_side["server"])
        assert all(
            t["serverAppAddr"] == backend.address.removeprefix("tcp:") for t in by_side["server"]
        )

        # DELETE closes exactly that tunnel, with a reset
        victim = next(t for t in by_side["client"] if t["clientTotalBytes"] == 1000)
        code, _ = await curl(api, "-X", "DELETE", f"http://localhost/tunnels/{victim['uuid']}")
        assert code == 204
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):  # UNIX: EOF
            await asyncio.wait_for(conns[0][0].readexactly(1), 10)
        conns[1][1].write(b"survivor")
        assert await conns[1][0].readexactly(8) == b"survivor"
        code, _ = await curl(api, f"http://localhost/tunnels/{victim['uuid']}")
        assert code == 404
        code, body = await curl(api, "-X", "POST", "http://localhost/tunnels")
        assert code == 405 and json.loads(body)["message"] == "Please use GET request method"

        code, body = await curl(api, "http://localhost/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        assert samples[("quictund_tunnels_opened_total", (("listener", "app"),))] == 2
        assert samples[("quictund_tunnels_active", (("listener", "edge"),))] == 1
        assert samples[("quictund_tunnels_closed_total", (("listener", "app"),))] == 1

        code, body = await curl(api, "http://localhost/listeners")
        listeners = {item["name"]: item for item in json.loads(body)}
        assert listeners["app"]["quic"]["state"] == "connected"
        assert listeners["app"]["quic"]["rttMs"] > 0
        assert listeners["edge"]["connections"] == 1
        assert listeners["app"]["quic"]["bytesSent"] > 3000

        # every tunnel object matches the daemon's own OpenAPI document
        code, body = await curl(api, "http://localhost/openapi.json")
        components = _to_json_schema(json.loads(body)["components"])
        _, body = await curl(api, "http://localhost/tunnels")
        for tunnel in json.loads(body):
            validate(tunnel, {"$ref": "#/components/schemas/Tunnel", "components": components})

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quictund",
            "tunnels",
            "--api",
            str(api),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and b"2 tunnel(s)" in out and b"edge" in out
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quictund",
            "status",
            "--api",
            str(api),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and b"connected to 127.0.0.1" in out
        for _, writer in conns:
            writer.close()
    finally:
        assert await run.stop() == 0
        backend.close()
    assert not api.exists(), "the API socket is removed on exit"


class _SpiceServer(asyncio.Protocol):
    """Answers the client's link message and ticket with the recorded server bytes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.got = b""
        self.step = 0
        self.expect = [len(d) for side, d in MAIN_EXCHANGE if side == "c"]
        self.replies = [d for side, d in MAIN_EXCHANGE if side == "s"]

    def data_received(self, data: bytes) -> None:
        self.got += data
        while self.step < len(self.replies) and len(self.got) >= self.expect[self.step]:
            self.got = self.got[self.expect[self.step] :]
            self.t.write(self.replies[self.step])
            self.step += 1


async def test_spice_exchange_is_classified(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await Backend(_SpiceServer).tcp()
    run, api = await start(short_tmp, state_dir, ca, backend)
    try:
        reader, writer = await connect(f"unix:{short_tmp}/c.sock")
        client_steps = [d for side, d in MAIN_EXCHANGE if side == "c"]
        server_steps = [d for side, d in MAIN_EXCHANGE if side == "s"]
        for i, data in enumerate(client_steps):
            writer.write(data)
            if i < len(server_steps):
                assert await reader.readexactly(len(server_steps[i])) == server_steps[i]
        expected = json.loads(README_MAIN)
        for _ in range(100):
            _, body = await curl(api, "http://localhost/tunnels")
            tunnels = json.loads(body)
            if len(tunnels) == 2 and all(t["protocolProperties"] == expected for t in tunnels):
                break
            await asyncio.sleep(0.05)
        assert [t["protocol"] for t in tunnels] == ["spice", "spice"]
        assert all(t["protocolProperties"] == expected for t in tunnels), tunnels
        writer.close()
    finally:
        assert await run.stop() == 0
        backend.close()
