"""Two small UDP middleboxes for the QUIC-LB roaming test (loopback only, test code).

* ``Router`` -- a load balancer that routes by QUIC connection id (QUIC-LB plaintext, decoded
  with quictund's own codec) and falls back to a hash of the client's address and port for ids
  it cannot route (a client's first Initial).  With ``by_cid=False`` it only hashes: a plain
  L4 balancer, the control.
* ``Nat`` -- a NAT in front of it whose ``rebind()`` gives every client a new source port at
  once, as a NAT that lost its state (or a client that moved) does.

Each keeps one upstream socket per (client, destination), so replies find their way back.
"""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections.abc import Callable

from quictund.quic import quic_lb

Addr = tuple[str, int]


def destination_cid(data: bytes) -> bytes:
    """A QUIC packet's DCID: after the version for long headers, 8 octets for short ones."""
    if data and data[0] & 0x80:
        length = data[5] if len(data) > 5 else 0
        return data[6 : 6 + length]
    return data[1:9]


class _Upstreams:
    """UDP sockets connected to a destination, one per key; replies go to ``on_reply``."""

    def __init__(self, on_reply: Callable[[object, bytes], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_reply = on_reply
        self.socks: dict[object, socket.socket] = {}

    def send(self, key: object, dest: Addr, data: bytes) -> None:
        sock = self.socks.get(key)
        if sock is None:
            sock = self._open(key, dest)
        try:
            sock.send(data)
        except OSError:
            pass  # a dead destination: UDP loses it, as a real network would

    def _open(self, key: object, dest: Addr) -> socket.socket:
        sock = self.socks[key] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        sock.connect(dest)
        self._loop.add_reader(sock.fileno(), self._drain, key, sock)
        return sock

    def replace_all(self) -> int:
        """A new socket (so a new port: the old one is still bound) for every key."""
        old = dict(self.socks)
        for key, sock in old.items():
            self._open(key, sock.getpeername())
            self._loop.remove_reader(sock.fileno())
            sock.close()
        return len(old)

    def _drain(self, key: object, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, ConnectionRefusedError):
                return
            self._on_reply(key, data)

    def close(self, key: object | None = None) -> None:
        for k in [key] if key is not None else list(self.socks):
            sock = self.socks.pop(k, None)
            if sock is not None:
                self._loop.remove_reader(sock.fileno())
                sock.close()


class _Front(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Addr], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.on_datagram(data, addr)


class Router:
    def __init__(self, servers: dict[bytes, Addr], *, by_cid: bool) -> None:
        self.servers = servers  # server id -> address; may be filled in before start()
        self.by_cid = by_cid
        self.routed_by_cid = 0
        self._front: _Front | None = None

    async def start(self) -> Addr:
        loop = asyncio.get_running_loop()
        self._order = sorted(self.servers)
        self._sid_len = len(self._order[0])
        self._up = _Upstreams(self._reply)
        self._front = _Front(self._forward)
        await loop.create_datagram_endpoint(lambda: self._front, local_addr=("127.0.0.1", 0))
        assert self._front.transport is not None
        host, port = self._front.transport.get_extra_info("sockname")[:2]
        return host, port

    def route(self, data: bytes, client: Addr) -> bytes:
        """The server id this datagram goes to."""
        if self.by_cid:
            try:
                sid = quic_lb.decode(destination_cid(data), self._sid_len).server_id
            except quic_lb.QuicLbError:
                sid = b""
            if sid in self.servers:
                self.routed_by_cid += 1
                return sid
        key = f"{client[0]}:{client[1]}".encode()
        return self._order[zlib.crc32(key) % len(self._order)]

    def _forward(self, data: bytes, client: Addr) -> None:
        sid = self.route(data, client)
        self._up.send((client, sid), self.servers[sid], data)

    def _reply(self, key: object, data: bytes) -> None:
        client, _ = key  # type: ignore[misc]
        assert self._front is not None and self._front.transport is not None
        self._front.transport.sendto(data, client)

    def close(self) -> None:
        if self._front is None:
            return
        self._up.close()
        if self._front.transport is not None:
            self._front.transport.close()


class Nat:
    """Forwards every client to ``target`` from a socket of its own; ``rebind`` swaps them all."""

    def __init__(self, target: Addr) -> None:
        self.target = target

    async def start(self) -> Addr:
        loop = asyncio.get_running_loop()
        self._up = _Upstreams(self._reply)
        self._front = _Front(lambda data, client: self._up.send(client, self.target, data))
        await loop.create_datagram_endpoint(lambda: self._front, local_addr=("127.0.0.1", 0))
        assert self._front.transport is not None
        host, port = self._front.transport.get_extra_info("sockname")[:2]
        return host, port

    def rebind(self) -> int:
        """New mappings for every client: its datagrams now leave from a new port."""
        return self._up.replace_all()

    def _reply(self, client: object, data: bytes) -> None:
        assert self._front.transport is not None
        self._front.transport.sendto(data, client)  # type: ignore[arg-type]

    def close(self) -> None:
        self._up.close()
        if self._front.transport is not None:
            self._front.transport.close()
