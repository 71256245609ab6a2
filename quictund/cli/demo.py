"""``quictund demo``: a server endpoint, a client endpoint and an echo app on loopback, in one
process, with the secure defaults on (the client verifies the server's self-signed certificate,
the server may reach only the echo app).  It proves the tunnel with one round trip, then keeps
running so a person can try it with a tool every Debian has (python3) -- or exits with
``--once``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from quictund.config.files import Config, DaemonSection
from quictund.config.settings import ClientSettings, ServerSettings
from quictund.daemon.daemon import Daemon
from quictund.policy import tls

logger = logging.getLogger(__name__)


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        self.transport.write_eof()
        return True


def try_it(port: int) -> str:
    """A one-liner that sends a line through the tunnel and prints the echo.  Not ``nc``: a
    fresh Debian has no netcat, but always python3 (quictund needs it)."""
    return (
        "python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', "
        f"{port})); s.sendall(b'hi\\\\n'); print(s.recv(99).decode(), end='')\""
    )


async def run_demo(*, client_port: int, server_port: int, state_dir: Path, once: bool) -> bool:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(_Echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    cert, key = tls.ensure_self_signed(state_dir, ["localhost", socket.gethostname()])
    server = ServerSettings.model_validate(
        {
            "name": "demo-server",
            "listen-on": f"127.0.0.1:{server_port}",
            "cert-file": str(cert),
            "key-file": str(key),
            "state-dir": str(state_dir),  # its stateless reset key too: nothing left behind
            "allow": [f"tcp:127.0.0.1:{echo_port}"],
        }
    )
    client = ClientSettings.model_validate(
        {
            "name": "demo-client",
            "listen-on": f"tcp:127.0.0.1:{client_port}",
            "server-endpoint": f"127.0.0.1:{server_port}",
            "server-name": "localhost",
            "token-source-plugin": "Fixed",
            "token-source": f"tcp:127.0.0.1:{echo_port}",
            "ca-file": str(cert),
            "verify-remote-endpoint": True,
        }
    )
    config = Config(
        clients=[client], servers=[server], daemon=DaemonSection(**{"shutdown-grace": 1.0})
    )
    daemon = Daemon(config)
    stop = asyncio.Event()
    ok = False

    async def prove() -> None:
        nonlocal ok
        await daemon.ready.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", client_port)
        message = b"hello through quictund\n"
        writer.write(message)
        ok = await asyncio.wait_for(reader.readexactly(len(message)), 15) == message
        writer.close()
        await writer.wait_closed()
        if ok:
            print(
                f"demo: tunnel works: 127.0.0.1:{client_port} -> QUIC udp/{server_port} "
                f"-> echo app on 127.0.0.1:{echo_port}",
                flush=True,
            )
            if not once:
                print(f"demo: try it:  {try_it(client_port)}   (Ctrl-C stops the demo)", flush=True)
        else:
            print("demo: the echo did not come back", flush=True)
        if once or not ok:
            stop.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(prove(), name="demo-prove")
        await daemon.run(shutdown_trigger=None if not once else stop.wait)
    echo.close()
    return ok
