"""UDP apps and destinations for the UDP flow tests, on the test's own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from tests.e2e.harness import Endpoint, start_client, start_server


class UdpEcho(asyncio.DatagramProtocol):
    """A destination answering each datagram with ``echo:`` + it (``silent``: never answers)."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.received = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if not self.silent and self.transport is not None:
            self.transport.sendto(b"echo:" + data, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


async def udp_echo(silent: bool = False) -> UdpEcho:
    loop = asyncio.get_running_loop()
    echo = UdpEcho(silent)
    transport, _ = await loop.create_datagram_endpoint(lambda: echo, local_addr=("127.0.0.1", 0))
    echo.transport = cast(asyncio.DatagramTransport, transport)
    return echo


class UdpApp(asyncio.DatagramProtocol):
    """An app with one source address, talking to a client's UDP listener."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def ask(self, data: bytes, within: float = 10, every: float = 0.5) -> bytes:
        """Send ``data`` until a reply comes (UDP: the first may be lost while opening)."""
        async with asyncio.timeout(within):
            while True:
                self.send(data)
                try:
                    return await asyncio.wait_for(self.replies.get(), every)
                except TimeoutError:
                    continue

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def udp_app(address: str) -> UdpApp:
    host, port = address.removeprefix("udp:").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    app = UdpApp()
    transport, _ = await loop.create_datagram_endpoint(lambda: app, remote_addr=(host, int(port)))
    app.transport = cast(asyncio.DatagramTransport, transport)
    return app


@dataclass
class OneFlow:
    """An echo destination, a server allowed to reach it, a client with a ``udp:`` listener
    whose token names it, and one app socket on that listener."""

    echo: UdpEcho
    server: Endpoint
    client: Endpoint
    app: UdpApp


@asynccontextmanager
async def one_flow(
    state_dir: Path,
    *,
    silent: bool = False,
    allow: str | None = None,
    server_args: tuple[str, ...] = (),
    client_args: tuple[str, ...] = (),
) -> AsyncIterator[OneFlow]:
    """Start ``OneFlow`` (``allow`` defaults to the echo itself); stop everything after."""
    echo = await udp_echo(silent=silent)
    dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", allow or dest, *server_args)
    client = await start_client(server.address, dest, *client_args, listen="udp:127.0.0.1:0")
    app = await udp_app(client.address)
    try:
        yield OneFlow(echo, server, client, app)
    finally:
        app.close()
        await client.stop()
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()
