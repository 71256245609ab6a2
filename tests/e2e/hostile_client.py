"""A hostile QUIC client on a real UDP socket, driving a raw aioquic connection (test helper).

``QuicPeer`` is the smallest asyncio shell for an aioquic connection: datagrams in, datagrams
out, one timer.  ``gap_attack`` runs issue 13's attack against a real server process (see
tests/hostile_streams.py for the frames): a byte at the edge of each stream's window, then a
bad token, never FIN or RESET_STREAM.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from tests.hostile_streams import TOKEN, HostileClient, send_at, stream_acked


class QuicPeer(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int]) -> None:
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
        )
        config.server_name = "localhost"
        self.conn = HostileClient(configuration=config)
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.terminated: events.ConnectionTerminated | None = None
        self.handshake_done = False
        self._wake = asyncio.Event()

    @classmethod
    async def connect(cls, server: tuple[str, int], within: float = 10) -> QuicPeer:
        loop = asyncio.get_running_loop()
        peer = cls(server)
        await loop.create_datagram_endpoint(lambda: peer, remote_addr=server)
        peer.conn.connect(server, now=time.monotonic())
        await peer.run_until(lambda: peer.handshake_done, within)
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.conn.receive_datagram(data, addr, now=time.monotonic())
        self._wake.set()

    def _drive(self) -> None:
        now = time.monotonic()
        timer = self.conn.get_timer()
        if timer is not None and timer <= now:
            self.conn.handle_timer(now)
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted):
                self.handshake_done = True
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = event
        assert self.transport is not None
        for data, _addr in self.conn.datagrams_to_send(now=now):
            self.transport.sendto(data)

    async def run_until(self, done: Callable[[], bool], within: float) -> bool:
        """Drive the connection until ``done()`` (True) or ``within`` seconds pass (False)."""
        deadline = time.monotonic() + within
        while True:
            self._drive()
            if done():
                return True
            if self.terminated is not None or time.monotonic() >= deadline:
                return False
            self._wake.clear()
            timer = self.conn.get_timer()
            wait = 0.02 if timer is None else min(0.02, max(0.0, timer - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def close(self) -> None:
        self.conn.close(error_code=0, reason_phrase="bye")
        self._drive()
        if self.transport is not None:
            self.transport.close()


async def gap_attack(peer: QuicPeer, streams: int, batch: int = 6) -> int:
    """Attack ``streams`` streams; return how many got their far byte through."""
    conn = peer.conn
    offset = conn._remote_max_stream_data_bidi_remote - 1
    attacked = 0
    while attacked < streams:
        sids = []
        for _ in range(min(batch, streams - attacked)):
            sids.append(sid := conn.get_next_available_stream_id())
            send_at(conn, sid, offset, b"x")
        if not await peer.run_until(
            lambda sids=sids: all(stream_acked(conn, s, offset + 1) for s in sids), 3
        ):
            break  # no more credit: the server contains the attack
        for sid in sids:
            send_at(conn, sid, 0, TOKEN)
        if not await peer.run_until(
            lambda sids=sids: all(stream_acked(conn, s, len(TOKEN)) for s in sids), 3
        ):
            break
        attacked += len(sids)
    return attacked
