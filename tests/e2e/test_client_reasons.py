"""The client's log says why the server refused a tunnel, in plain words naming the
destination (issue 14: it said ``peer stopped reading (policy_denied)``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.e2e.harness import connect, echo, start_client, start_server


async def test_policy_refusal_in_plain_words(state_dir: Path) -> None:
    allowed, other = await echo().tcp(), await echo().tcp()
    server = await start_server(state_dir, "--allow", allowed.address)
    client = await start_client(server.address, other.address)
    try:
        reader, writer = await connect(client.address)
        writer.write(b"hello")
        with contextlib.suppress(ConnectionResetError):  # refused: reset (or ended)
            assert await reader.read() == b""
        writer.close()
        line = await client.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert line["reason"].startswith(
            f"the server refused destination {other.address}: not allowed by its policy"
        ), line
        assert other.accepted == 0
    finally:
        for ep in (client, server):
            ep.kill()
            await ep.proc.wait()
        allowed.close()
        other.close()
