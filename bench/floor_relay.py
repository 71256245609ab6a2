"""The least a Python tunnel on uvloop can cost: a bench-only relay with no QUIC in it.

    python bench/floor_relay.py server --listen 10.0.0.1:4000 --target 127.0.0.1:5000
    python bench/floor_relay.py client --listen 127.0.0.1:4001 --server 10.0.0.1:4000

Each app connection the client accepts gets its own connected UDP socket to the server; the
server opens one TCP connection to the target per client UDP address, on its first datagram.
Bytes go across as they were read, at most 1,376 per datagram, each datagram sealed with
AES-128-GCM (an 8-byte counter in front is its nonce; the key is fixed: this is a
measurement, not a secure channel) -- and with no acknowledgements, no retransmission and no
flow control: it moves an echo or a request/response workload on a clean link and nothing
else (a lost datagram is lost).

It exists to answer one question with a measurement (docs/performance.md, "The floor under
a Python tunnel"): how much of quictund's per-request time is the shape every Python daemon
on uvloop pays -- two ``asyncio.Protocol`` callbacks and two socket writes per hop -- and how
much is QUIC.  It is the same shape as quictund's data path (``asyncio.Protocol`` on both
sockets, uvloop, one process per end) with everything QUIC does taken out.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import uvloop
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_DATAGRAM = 1400
CHUNK = MAX_DATAGRAM - 8 - 16  # the counter in front, the tag behind
_AEAD = AESGCM(bytes(range(16)))
_sent = 0


def _seal(data: bytes) -> list[bytes]:
    """``data`` in datagrams: an 8-byte counter, then the sealed chunk."""
    global _sent
    out = []
    for i in range(0, len(data), CHUNK):
        _sent += 1
        head = _sent.to_bytes(8, "big")
        out.append(head + _AEAD.encrypt(bytes(4) + head, data[i : i + CHUNK], None))
    return out


def _open(datagram: bytes) -> bytes:
    return _AEAD.decrypt(bytes(4) + datagram[:8], datagram[8:], None)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class _ToUdp(asyncio.Protocol):
    """The client's app connection: TCP in -> its own UDP socket out, and back."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.tcp: asyncio.Transport | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.early: list[bytes] = []
        self.opening: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opening = asyncio.get_running_loop().create_task(self._open(), name="floor-open")

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(lambda: _Back(self), remote_addr=self.server)
        self.udp = udp
        for data in self.early:
            self._send(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.udp is None:
            self.early.append(data)
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        assert self.udp is not None
        for datagram in _seal(data):
            self.udp.sendto(datagram)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.udp is not None:
            self.udp.close()


class _Back(asyncio.DatagramProtocol):
    def __init__(self, owner: _ToUdp) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.owner.tcp is not None:
            self.owner.tcp.write(_open(data))


class _Server(asyncio.DatagramProtocol):
    """The server: one TCP connection to the target per client UDP address."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.udp: asyncio.DatagramTransport | None = None
        self.conns: dict[Any, _ToTarget] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.udp = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        conn = self.conns.get(addr)
        if conn is None:
            conn = self.conns[addr] = _ToTarget(self, addr)
            loop = asyncio.get_running_loop()
            conn.opening = loop.create_task(conn.open(self.target), name="floor-connect")
        conn.write(_open(data))


class _ToTarget(asyncio.Protocol):
    def __init__(self, server: _Server, addr: Any) -> None:
        self.server, self.addr = server, addr
        self.tcp: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.opening: asyncio.Task[None] | None = None

    async def open(self, target: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, *target)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in self.early:
            self.tcp.write(data)  # type: ignore[union-attr]
        self.early.clear()

    def write(self, data: bytes) -> None:
        if self.tcp is None:
            self.early.append(data)
        else:
            self.tcp.write(data)

    def data_received(self, data: bytes) -> None:
        udp = self.server.udp
        assert udp is not None
        for datagram in _seal(data):
            udp.sendto(datagram, self.addr)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.pop(self.addr, None)


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    if args.mode == "server":
        await loop.create_datagram_endpoint(
            lambda: _Server(_addr(args.target)), local_addr=_addr(args.listen)
        )
    else:
        server = _addr(args.server)
        host, port = _addr(args.listen)
        await loop.create_server(lambda: _ToUdp(server), host, port)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["server", "client"])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--target", help="server: where each tunnel connects")
    ap.add_argument("--server", help="client: the server's UDP address")
    args = ap.parse_args()
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
