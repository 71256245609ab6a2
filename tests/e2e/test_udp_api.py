"""UDP flows in a running daemon (issue 16): every token plugin, /tunnels, DELETE, /metrics
and ``quictund tunnels``, through curl on the API's UNIX socket."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_api_e2e import curl
from tests.e2e.test_daemon import Run, client_toml, free_udp_port, server_toml
from tests.e2e.udp_apps import UdpEcho, udp_app, udp_echo

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


async def token_http(token: str, asked: list[str]) -> tuple[asyncio.Server, int]:
    """A minimal Http token source: records each ``addr=`` and answers ``token``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = request.split(" ", 2)[1]
        asked.extend(parse_qs(urlsplit(target).query).get("addr", []))
        body = json.dumps({"token": token}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_udp_flows_with_every_token_plugin_in_the_api(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    echo: UdpEcho = await udp_echo()
    dest = f"udp:127.0.0.1:{echo.port}"
    asked: list[str] = []
    http, http_port = await token_http(dest, asked)
    tokens = short_tmp / "tokens"
    tokens.write_text(f"127.0.0.1 {dest}\n")
    port, fixed, mapped, fetched = (free_udp_port() for _ in range(4))
    api = short_tmp / "api.sock"
    conf = short_tmp / "d.toml"
    conf.write_text(
        f'[api]\nsocket = "{api}"\n'
        + server_toml("edge", port, state_dir, [dest])
        + client_toml("fixed", f"udp:127.0.0.1:{fixed}", port, ca, dest)
        + client_toml("file", f"udp:127.0.0.1:{mapped}", port, ca, token_file=tokens)
        + client_toml("http", f"udp:127.0.0.1:{fetched}", port, ca, "")
        .replace('token-source = ""', f'token-source-plugin = "Http"\ntoken-source = '
                 f'"http://127.0.0.1:{http_port}/token"')
    )  # fmt: skip
    run = await Run.start("--config", str(conf))
    apps = []
    try:
        await run.wait_log("ready:")
        for listen in (fixed, mapped, fetched):
            app = await udp_app(f"udp:127.0.0.1:{listen}")
            apps.append(app)
            assert await app.ask(b"via %d" % listen) == b"echo:via %d" % listen
        assert len(asked) == 1 and asked[0].startswith("127.0.0.1:")  # Http got ?addr=

        code, body = await curl(api, "http://localhost/tunnels")
        flows = json.loads(body)
        assert code == 200 and len(flows) == 6  # three flows, seen by both endpoints
        assert {f["protocol"] for f in flows} == {"udp"}
        client_side = {f["listener"]: f for f in flows if f["endpoint"] == "client"}
        assert set(client_side) == {"fixed", "file", "http"}
        props = client_side["fixed"]["protocolProperties"]
        assert props["datagrams_to_tunnel"] >= 1 and props["datagrams_from_tunnel"] >= 1
        assert client_side["fixed"]["clientTotalBytes"] >= len(b"via 1")
        server_side = [f for f in flows if f["endpoint"] == "server"]
        assert {f["serverAppAddr"] for f in server_side} == {dest}

        # DELETE closes exactly that flow, at both ends; the app's next datagram reopens it.
        victim = client_side["file"]["uuid"]
        code, _ = await curl(api, "-X", "DELETE", f"http://localhost/tunnels/{victim}")
        assert code == 204
        await run.wait_log("closed through the API")
        await run.wait_log("client reset (0x10a)")  # the server closed its socket too
        assert await apps[1].ask(b"again") == b"echo:again"

        code, body = await curl(api, "http://localhost/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        key = ("quictund_udp_datagrams_total", (("direction", "to_tunnel"), ("listener", "file")))
        assert samples[key] >= 1
        # The "fixed" flow is still open: its datagrams are counted live, not only at its end.
        live = (("direction", "from_tunnel"), ("listener", "fixed"))
        assert samples[("quictund_udp_datagrams_total", live)] >= 1

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quictund", "tunnels", "--api", str(api),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and b"6 tunnel(s)" in out
    finally:
        for app in apps:
            app.close()
        await run.stop()
        http.close()
        assert echo.transport is not None
        echo.transport.close()
