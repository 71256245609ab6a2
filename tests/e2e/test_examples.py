"""The shipped examples tunnel together: etc/quictun/server.toml and client.toml as installed
on two hosts, with only their addresses filled in (here: loopback), run as real daemons.

Nothing else of the files may change: the server keeps its self-signed certificate where the
package's unit would (``$STATE_DIRECTORY``), and the client's ``ca-file`` is that file, as the
examples tell an admin to copy it.  Both listeners of client.toml (a TCP one with a Fixed
token, a UNIX one with a token map) carry bytes both ways.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import ENGINE_TOML, echo, transfer_both_ways
from tests.e2e.test_daemon import Run, free_udp_port

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "quictun"


def fill_in(text: str, addresses: dict[str, str]) -> str:
    """Replace each address (every occurrence, at least one) and nothing else."""
    for old, new in addresses.items():
        assert old in text, f"the example no longer mentions {old}"
        text = text.replace(old, new)
    if ENGINE_TOML:  # the qh3 run of the suite: each listener uses that engine
        text = re.sub(r"^(\[\[(?:client|server)\]\]\n)", rf"\1{ENGINE_TOML}", text, flags=re.M)
    return text


async def start(config: Path, state: Path) -> Run:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["STATE_DIRECTORY"] = str(state)  # what systemd's StateDirectory=quictund sets
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quictund",
        "run",
        "--config",
        str(config),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Run(proc)


async def test_shipped_examples_tunnel_together(short_tmp: Path) -> None:
    ssh, db = await echo().tcp(), await echo().unix(str(short_tmp / "pg.sock"))
    port = free_udp_port()
    state = short_tmp / "state"
    server_conf, client_conf = short_tmp / "server.toml", short_tmp / "client.toml"
    server_conf.write_text(
        fill_in(
            (EXAMPLES / "server.toml").read_text(),
            {
                "0.0.0.0:7500": f"127.0.0.1:{port}",
                "tcp:10.0.0.0/24:22": ssh.address,
                "unix:/run/postgresql/.s.PGSQL.5432": db.address,
            },
        )
    )
    server = await start(server_conf, state)
    client: Run | None = None
    try:
        await server.wait_log("ready:")
        assert (state / "server.pem").is_file()
        client_conf.write_text(
            fill_in(
                (EXAMPLES / "client.toml").read_text(),
                {
                    "tcp:127.0.0.1:6500": "tcp:127.0.0.1:0",
                    "10.0.0.1:7500": f"127.0.0.1:{port}",
                    "tcp:10.0.0.5:22": ssh.address,
                    "unix:/run/quictun/db.sock": f"unix:{short_tmp}/db.sock",
                    "unix:/run/postgresql/.s.PGSQL.5432": db.address,
                    # the admin's copy of the server's certificate: here, the file itself
                    "/etc/quictun/tunnel-server.pem": str(state / "server.pem"),
                },
            )
        )
        client = await start(client_conf, state)
        await client.wait_log("ready:")
        line = await client.wait_log("[ssh] client endpoint listening on tcp:")
        m = re.search(r"listening on (tcp:127\.0\.0\.1:\d+)", line)
        assert m, line
        for address in (m[1], f"unix:{short_tmp}/db.sock"):
            sent, got, n = await transfer_both_ways(address, 256 * 1024)
            assert (got, n) == (sent, 256 * 1024), address
        assert (ssh.accepted, db.accepted) == (1, 1)
        assert not [x for x in client.log if "tunnel failed" in x], client.log[-5:]
        assert await client.stop() == 0
        assert await server.stop() == 0
    finally:
        for run in (client, server):
            if run is not None and run.proc.returncode is None:
                run.proc.kill()
        ssh.close()
        db.close()


@pytest.mark.parametrize("name", ["client.toml", "server.toml"])
def test_examples_send_and_accept_plain_tokens(name: str) -> None:
    """The cause of the shipped pair failing every tunnel: a base64 parser on the server
    while the client sends plain tokens.  Either both say base64, or neither does."""
    import tomllib

    data = tomllib.loads((EXAMPLES / name).read_text())
    for server in data.get("server", []):
        assert server.get("token-parser-key") is None, server
    for client in data.get("client", []):
        assert client.get("token-source-plugin", "Fixed") in ("Fixed", "File"), client
