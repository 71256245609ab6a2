"""Hostile QUIC clients for tests and benchmarks, built on aioquic's own ``QuicConnection``.

Each attack is one QUIC connection carrying many streams (issue 13, point 1):

* ``flood`` -- every stream carries a *good* token (and optional first bytes, e.g. ``D`` for
  ``bench/load.py serve``'s source) naming a destination that sends as fast as it can, and the
  peer never grants credit: no MAX_DATA or MAX_STREAM_DATA beyond its initial windows, so the
  server can deliver almost nothing and whatever it reads from the destinations piles up.
* ``gap`` -- every stream gets one STREAM byte as far inside its window as the server's credit
  allows, then a *bad* token at offset 0; the peer never sends FIN or RESET_STREAM and ignores
  STOP_SENDING, so the server is left with a stream whose gap is never filled.

The peer ACKs packets and answers PINGs (aioquic does that), so the server cannot tell it
from a slow client.  Run it as its own process, so its CPU is not the test's event loop::

    python -m tests.hostile 127.0.0.1:7500 --flood 300 --token tcp:127.0.0.1:9 [--gap 300]

Both attacks can share one connection.  ``--source 127.13.0.1`` binds another loopback
address, so that several hostile connections do not share one source's rate limits.

It prints ``opened N`` once the server answered every stream (or as many as it answered within
``--open-within`` seconds: its credit may allow fewer), then holds the connection until its
stdin closes, then sends CONNECTION_CLOSE (``--vanish``: it just exits, like a dead host).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import time
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicStreamFrame
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.stream import QuicStreamSender

TOKEN_LENGTH = 512
BAD_TOKEN = b"\xff" * TOKEN_LENGTH  # not UTF-8: the server answers 0x02 and stops the stream


def encode_token(token: str) -> bytes:
    raw = token.encode()
    assert 0 < len(raw) <= TOKEN_LENGTH
    return raw + b"\x00" * (TOKEN_LENGTH - len(raw))


class _StingyConnection(QuicConnection):
    """Never raises a flow-control limit: the server may send its initial windows, no more."""

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        pass

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        pass


class _GapSender(QuicStreamSender):
    """Sends one byte at the far end of the credit it is given, then the bad token at 0.

    Never sends FIN, and ``reset`` (what aioquic does on STOP_SENDING) does nothing: the
    stream stays open on the server, gap and all.
    """

    def __init__(self, stream_id: int) -> None:
        super().__init__(stream_id, True)
        self.buffer_is_empty = False
        self._gap_sent = False
        self._token_sent = False

    @property
    def next_offset(self) -> int:
        return 0 if self._gap_sent else 1 << 30  # room for the largest offset field

    def get_frame(self, max_size: int, max_offset: int | None = None) -> QuicStreamFrame | None:
        if not self._gap_sent:
            if max_offset is None or max_offset <= TOKEN_LENGTH + 1 or max_size < 1:
                return None  # no credit for a gap worth the name yet
            self._gap_sent = True
            self.highest_offset = max(self.highest_offset, max_offset)
            return QuicStreamFrame(data=b"\x00", offset=max_offset - 1)
        if not self._token_sent and max_size >= TOKEN_LENGTH:
            self._token_sent = True
            self.buffer_is_empty = True
            return QuicStreamFrame(data=BAD_TOKEN, offset=0)
        return None

    def on_data_delivery(
        self, delivery: QuicDeliveryState, start: int, stop: int, fin: bool
    ) -> None:
        if delivery != QuicDeliveryState.ACKED:  # lost: send it again
            self.buffer_is_empty = False
            if start == 0:
                self._token_sent = False
            else:
                self._gap_sent = False

    def reset(self, error_code: int) -> None:
        pass  # ignore STOP_SENDING: never RESET_STREAM


class HostileClient(asyncio.DatagramProtocol):
    """One hostile QUIC connection driven over a connected UDP socket (loopback only)."""

    def __init__(
        self,
        server: tuple[str, int],
        *,
        streams: int,
        window: int = 4096,
        source: str | None = None,
    ) -> None:
        # Initial credit only: ``window`` per stream (room for the ack byte and a little more,
        # a reader that read a few bytes and stopped), and that much per stream in all.
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=["quic-tun"],
            verify_mode=ssl.CERT_NONE,
            max_data=max(streams, 1) * window,
            max_stream_data=window,
            idle_timeout=60.0,
        )
        config.server_name = "localhost"
        self.server = server
        self.source = source
        self.conn = _StingyConnection(configuration=config)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.handshake = self.loop.create_future()
        self.closed = asyncio.Event()
        self.received = 0  # stream bytes the server managed to deliver
        self.acks: dict[int, int] = {}  # stream id -> first byte the server answered
        self.expected = 0
        self.all_answered = asyncio.Event()  # every stream opened got its ack byte
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        await self.loop.create_datagram_endpoint(
            lambda: self,
            local_addr=(self.source, 0) if self.source else None,
            remote_addr=self.server,
        )
        self.conn.connect(self.server, now=time.monotonic())
        self.transmit()
        await asyncio.wait_for(self.handshake, 10)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.conn.receive_datagram(data, self.server, now=time.monotonic())
        self._drain_events()
        self.transmit()

    def transmit(self) -> None:
        assert self.transport is not None
        for data, _ in self.conn.datagrams_to_send(now=time.monotonic()):
            self.transport.sendto(data)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.conn.get_timer()
        if at is not None:
            self._timer = self.loop.call_later(max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.conn.handle_timer(now=time.monotonic())
        self._drain_events()
        self.transmit()

    def _drain_events(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted) and not self.handshake.done():
                self.handshake.set_result(None)
            elif isinstance(event, events.StreamDataReceived):
                if event.data and event.stream_id not in self.acks:
                    self.acks[event.stream_id] = event.data[0]
                    if len(self.acks) >= self.expected:
                        self.all_answered.set()
                self.received += len(event.data)
            elif isinstance(event, events.ConnectionTerminated):
                if not self.handshake.done():
                    self.handshake.set_exception(ConnectionError(event.reason_phrase))
                self.closed.set()

    # ---- the attacks ---------------------------------------------------------------------

    async def flood(self, streams: int, token: str, first: bytes = b"") -> None:
        """Open ``streams`` tunnels to ``token``'s destination, sending ``first`` on each."""
        payload = encode_token(token) + first
        self.expected += streams
        for i in range(streams):
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_stream_data(sid, payload)
            if i % 50 == 49:
                self.transmit()
                await asyncio.sleep(0.01)  # let the server keep up with the tokens
        self.transmit()

    async def gap(self, streams: int) -> None:
        """Open ``streams`` streams, each one byte far inside its window, then a bad token."""
        self.expected += streams
        for i in range(streams):
            sid = self.conn.get_next_available_stream_id()
            stream = self.conn._get_or_create_stream_for_send(sid)
            stream.sender = _GapSender(sid)
            if i % 50 == 49:
                self.transmit()
                await asyncio.sleep(0.01)
        self.transmit()

    def close(self, vanish: bool = False) -> None:
        if not vanish:
            self.conn.close(error_code=0, reason_phrase="bye")
            self.transmit()
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.server.rpartition(":")
    if (
        not host.startswith("127.")
        and host not in ("::1", "[::1]")
        or (args.source and not args.source.startswith("127."))
    ):
        sys.exit("hostile: loopback servers only")
    client = HostileClient(
        (host.strip("[]"), int(port)),
        streams=args.flood + args.gap,
        window=args.window,
        source=args.source,
    )
    await client.start()
    await asyncio.gather(
        client.flood(args.flood, args.token, args.first.encode()), client.gap(args.gap)
    )
    try:
        await asyncio.wait_for(client.all_answered.wait(), args.open_within)
    except TimeoutError:
        pass  # report how many the server answered
    print(f"opened {len(client.acks)}", flush=True)
    reader = asyncio.StreamReader()
    await client.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stdin_closed = client.loop.create_task(reader.read())
    closed = client.loop.create_task(client.closed.wait())
    await asyncio.wait({stdin_closed, closed}, return_when=asyncio.FIRST_COMPLETED)
    print(f"leaving: {client.received} bytes received", flush=True)
    client.close(vanish=args.vanish)
    for task in (stdin_closed, closed):
        task.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("server", help="HOST:PORT of a quictund server on loopback")
    p.add_argument("--flood", type=int, default=0, help="streams to a flooding destination")
    p.add_argument("--gap", type=int, default=0, help="streams with a gap and a bad token")
    p.add_argument("--token", default="", help="flood: the destination every stream names")
    p.add_argument("--source", default=None, help="local address to send from (127.x.y.z)")
    p.add_argument("--first", default="", help="flood: bytes sent after each token")
    p.add_argument("--window", type=int, default=4096, help="initial credit per stream")
    p.add_argument("--open-within", type=float, default=30.0)
    p.add_argument("--vanish", action="store_true", help="exit without CONNECTION_CLOSE")
    args = p.parse_args()
    if args.flood and not args.token:
        p.error("--flood needs --token")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
