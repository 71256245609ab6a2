"""Issue 13 section 5: a ``unix:`` allow glob matches the path *after* symlinks are resolved.

A server allows ``unix:DIR/allowed/*``.  A real socket inside is reached; a symlink inside
pointing at a socket outside (``DIR/outside/secret.sock``) is refused, with no connection to
the secret socket, and the refusal is logged as a policy denial."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.e2e.harness import connect, echo, start_client, start_server


async def tunnel_echo(client_address: str) -> bytes:
    reader, writer = await connect(client_address)
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.read(4), 15)
    except (ConnectionResetError, BrokenPipeError):  # how the client ends an untunnelled one
        return b""
    finally:
        writer.close()


async def test_symlink_out_of_the_allowed_directory_is_refused(
    short_tmp: Path, state_dir: Path
) -> None:
    (short_tmp / "allowed").mkdir()
    (short_tmp / "outside").mkdir()
    inside = await echo().unix(str(short_tmp / "allowed" / "app.sock"))
    secret = await echo().unix(str(short_tmp / "outside" / "secret.sock"))
    os.symlink(short_tmp / "outside" / "secret.sock", short_tmp / "allowed" / "link.sock")
    os.symlink(short_tmp / "outside", short_tmp / "allowed" / "dir")
    server = await start_server(state_dir, "--allow", f"unix:{short_tmp}/allowed/*")
    clients = []
    try:
        for name in ("app.sock", "link.sock"):
            client = await start_client(server.address, f"unix:{short_tmp}/allowed/{name}")
            clients.append(client)
            got = await tunnel_echo(client.address)
            assert got == (b"ping" if name == "app.sock" else b""), name
        await server.wait_log(lambda e: "link.sock" in str(e.get("reason", "")), within=10)
    finally:
        for client in clients:
            await client.stop()
        await server.stop()
        inside.close()
        secret.close()
    assert inside.accepted == 1
    assert secret.accepted == 0
    reasons = [str(e.get("reason")) for e in server.logs if e.get("msg") == "tunnel failed"]
    assert len(reasons) == 1 and "not allowed by policy" in reasons[0], reasons
