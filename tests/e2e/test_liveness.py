"""When each side declares a silent peer dead (issue 14 §5): what README and
docs/configuration.md say, measured on real processes.

* client: after ``dead-after`` of silence (then it reconnects);
* server: after the later of ``dead-after`` and ``idle-timeout`` (the server never gives up on
  a client before the idle timeout it advertised; it has nothing to reconnect).

Both are checked at that moment, not at the next keep-alive tick (which made it 30-35 s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from pathlib import Path

import pytest

from tests.e2e.harness import Endpoint, echo, start_client
from tests.e2e.test_daemon import Run, server_toml
from tests.e2e.test_reconnect import echo_once, free_udp_port


def _log_time(line: str) -> dt.datetime:
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")


@pytest.mark.timeout(60)
async def test_server_declares_silent_client_dead_at_the_documented_time(
    short_tmp: Path, state_dir: Path
) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    conf = short_tmp / "s.toml"
    # dead-after 2 < idle-timeout 10: the server waits 10 s.  Its keep-alive (5) checks every
    # 5 s of each connection's life, so a check at the next tick would come 10-15 s after the
    # last packet; two clients (two tick phases) both at 10 s rule that out.
    conf.write_text(
        server_toml("s", port, state_dir, [backend.address])
        + "keep-alive = 5\ndead-after = 2\nidle-timeout = 10\n"
    )
    server = await Run.start("--config", str(conf))
    clients: list[Endpoint] = []
    try:
        await server.wait_log("listening on")
        for pause in (0.0, 2.3):
            await asyncio.sleep(pause)
            # keep-alive 0: the clients send nothing of their own after the last echo
            clients.append(
                await start_client(f"127.0.0.1:{port}", backend.address, "--keep-alive", "0")
            )
        for client in clients:
            await echo_once(client.address)
        for client in clients:
            client.proc.send_signal(signal.SIGSTOP)  # silent from now on
        last_heard = dt.datetime.now()
        seen = 0
        for _ in clients:
            # the server's own check ("peer unresponsive") or, at the same moment, the
            # engine's idle timer ("Idle timeout") -- either way at idle-timeout
            line = await server.wait_log("QUIC connection from", within=20, start=seen)
            seen = server.log.index(line) + 1
            after = (_log_time(line) - last_heard).total_seconds()
            assert 9.9 <= after < 10.5, line  # not dead-after (2), not the next tick (<= 15)
    finally:
        for client in clients:
            client.proc.send_signal(signal.SIGCONT)
            await client.stop()
        await server.stop()
        backend.close()
