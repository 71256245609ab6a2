"""Start a quictund server + client pair from TOML files (settings the quic-tun flags lack).

Used where a benchmark needs a listener setting such as ``congestion-control``, or needs the
daemons inside network namespaces (``server_ns`` / ``client_ns``, run with ``ip netns exec``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from _daemons import _LISTEN, _discard, _drains


async def start_config(
    config: Path, netns: str | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """Run ``quictund run --config CONFIG`` (in ``netns``); return it and its first address."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "quictund",
        "run",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while line := (await proc.stderr.readline()).decode():
        if m := _LISTEN.search(line.strip()):
            _drains.append(asyncio.get_running_loop().create_task(_discard(proc.stderr)))
            return proc, m.group(1)
    raise SystemExit(f"quictund run --config {config} exited")


async def start_pair(
    workdir: Path,
    *,
    congestion_control: str,
    server_listen: str,
    client_listen: str,
    destination: str,
    server_ns: str | None = None,
    client_ns: str | None = None,
    extra: str = "",
) -> tuple[asyncio.subprocess.Process, asyncio.subprocess.Process, str]:
    """Server on UDP ``server_listen``, client on TCP ``client_listen`` tunnelling to
    ``destination`` (``tcp:HOST:PORT``); returns both processes and the client's address."""
    server_toml, client_toml = _write_configs(
        workdir, congestion_control, server_listen, destination, extra
    )
    server, udp = await start_config(server_toml, server_ns)
    client_toml.write_text(client_toml.read_text().format(listen=client_listen, udp=udp))
    client, listen = await start_config(client_toml, client_ns)
    return server, client, listen


def _write_configs(
    workdir: Path, congestion_control: str, server_listen: str, destination: str, extra: str
) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    knobs = f'congestion-control = "{congestion_control}"\n{extra}'
    server_toml = workdir / "server.toml"
    server_toml.write_text(
        f'[[server]]\nname = "bench"\nlisten-on = "{server_listen}"\n'
        f'state-dir = "{workdir / "state"}"\nallow = ["{destination}"]\n{knobs}'
    )
    client_toml = workdir / "client.toml"
    client_toml.write_text(  # completed by start_pair once the server's port is known
        '[[client]]\nname = "bench"\nlisten-on = "tcp:{listen}"\n'
        f'server-endpoint = "{{udp}}"\ntoken-source = "{destination}"\n'
        f"verify-remote-endpoint = false\n{knobs}"
    )
    return server_toml, client_toml
