"""Wire compatibility: speak quic-tun's exact bytes with a raw aioquic peer, both directions.

The raw peers here do what quic-tun's Go code does on the wire: a 512-byte NUL-padded token
written on a fresh bidirectional stream (here split over two STREAM frames sent 300 ms apart,
which quic-tun's own server gets wrong), one ack byte back, then raw bytes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

from quictund.policy import tls
from quictund.quic.engine import engine_available
from tests.e2e.harness import (
    Backend,
    Endpoint,
    echo,
    start_client,
    start_server,
    transfer_both_ways,
)
from tests.e2e.harness import connect as tcp_connect


class RawPeer(QuicConnectionProtocol):
    """Collects stream data per stream id; exposes the raw QUIC connection."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.changed = asyncio.Event()
        self.on_stream: object = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.ended.add(event.stream_id)
            if callable(self.on_stream):
                self.on_stream(self, event)
            self.changed.set()

    async def wait_for(self, pred: object, within: float = 10) -> None:
        async with asyncio.timeout(within):
            while not pred():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()


def token_block(token: str) -> bytes:
    return token.encode().ljust(512, b"\x00")


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[Endpoint]:
    ep = await start_server(state_dir)
    yield ep
    ep.kill()
    await ep.proc.wait()


async def test_raw_quic_tun_client_against_our_server(server: Endpoint) -> None:
    backend = await echo().tcp()
    host, port = server.host_port
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    async with connect(host, port, configuration=config, create_protocol=RawPeer) as peer:
        assert isinstance(peer, RawPeer)
        quic = peer._quic
        # 1. a token split across two STREAM frames, 300 ms apart
        sid = quic.get_next_available_stream_id()
        block = token_block(backend.address)
        quic.send_stream_data(sid, block[:200])
        peer.transmit()
        await asyncio.sleep(0.3)
        quic.send_stream_data(sid, block[200:] + b"payload after the token")
        peer.transmit()
        await peer.wait_for(lambda: len(peer.data.get(sid, b"")) >= 1 + 23)
        assert bytes(peer.data[sid][:1]) == b"\x01"
        assert bytes(peer.data[sid][1:]) == b"payload after the token"

        # 2. an unparsable token: exactly one 0x02 byte, then FIN (no flood)
        bad = quic.get_next_available_stream_id()
        quic.send_stream_data(bad, token_block("not-a-network:address"))
        peer.transmit()
        await peer.wait_for(lambda: bad in peer.ended)
        assert bytes(peer.data[bad]) == b"\x02"

        # 3. an unreachable target: exactly one 0x03 byte, then FIN
        closed = await Backend(asyncio.Protocol).tcp()
        closed.close()
        await closed.server.wait_closed()  # type: ignore[union-attr]
        gone = quic.get_next_available_stream_id()
        quic.send_stream_data(gone, token_block(closed.address))
        peer.transmit()
        await peer.wait_for(lambda: gone in peer.ended)
        assert bytes(peer.data[gone]) == b"\x03"

        # 4. the connection is not wedged: a new tunnel still works (quic-tun's is)
        again = quic.get_next_available_stream_id()
        quic.send_stream_data(again, token_block(backend.address) + b"still alive")
        peer.transmit()
        await peer.wait_for(lambda: len(peer.data.get(again, b"")) >= 12)
        assert bytes(peer.data[again]) == b"\x01still alive"
    backend.close()


async def test_base64_token_parser(state_dir: Path) -> None:
    import base64

    backend = await echo().tcp()
    server = await start_server(state_dir, "--token-parser-key", "base64")
    try:
        host, port = server.host_port
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
        )
        async with connect(host, port, configuration=config, create_protocol=RawPeer) as peer:
            assert isinstance(peer, RawPeer)
            quic = peer._quic
            sid = quic.get_next_available_stream_id()
            token = base64.b64encode(backend.address.encode()).decode()
            quic.send_stream_data(sid, token_block(token) + b"b64")
            peer.transmit()
            await peer.wait_for(lambda: len(peer.data.get(sid, b"")) >= 4)
            assert bytes(peer.data[sid]) == b"\x01b64"
            bad = quic.get_next_available_stream_id()
            quic.send_stream_data(bad, token_block("%%%not base64"))
            peer.transmit()
            await peer.wait_for(lambda: bad in peer.ended)
            assert bytes(peer.data[bad]) == b"\x02"
    finally:
        server.kill()
        await server.proc.wait()
        backend.close()


async def test_our_client_against_raw_quic_tun_server(tmp_path: Path) -> None:
    """A raw server doing what quic-tun's server does: read 512 bytes, ack, echo."""
    cert, key = tls.ensure_self_signed(tmp_path, ["localhost"])
    tokens: list[bytes] = []

    def on_stream(peer: RawPeer, event: StreamDataReceived) -> None:
        buf = peer.data[event.stream_id]
        state = peer.__dict__.setdefault("acked", set())
        if event.stream_id not in state and len(buf) >= 512:
            token = bytes(buf[:512])
            tokens.append(token)
            state.add(event.stream_id)
            if token.rstrip(b"\x00") == b"tcp:refuse.me:1":
                peer._quic.send_stream_data(event.stream_id, b"\x03", end_stream=True)
            else:
                peer._quic.send_stream_data(event.stream_id, b"\x01" + bytes(buf[512:]))
            del buf[:512]
        elif event.stream_id in state and event.data:
            peer._quic.send_stream_data(event.stream_id, event.data)
        if event.end_stream and event.stream_id in state:
            peer._quic.send_stream_data(event.stream_id, b"", end_stream=True)
        peer.transmit()

    def make(*args: object, **kwargs: object) -> RawPeer:
        peer = RawPeer(*args, **kwargs)
        peer.on_stream = on_stream
        return peer

    config = QuicConfiguration(is_client=False, alpn_protocols=["quic-tun"])
    config.load_cert_chain(str(cert), str(key))
    raw = await serve("127.0.0.1", 0, configuration=config, create_protocol=make)
    port = raw._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    ok = await start_client(
        f"127.0.0.1:{port}",
        "tcp:10.9.8.7:22",
        "--verify-remote-endpoint",
        "--ca-file",
        str(cert),
        "--server-name",
        "localhost",
    )
    refused = await start_client(f"127.0.0.1:{port}", "tcp:refuse.me:1")
    try:
        reader, writer = await tcp_connect(ok.address)
        writer.write(b"over the raw server")
        assert await reader.readexactly(19) == b"over the raw server"
        assert tokens[0] == b"tcp:10.9.8.7:22".ljust(512, b"\x00")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()

        # An RST, never a clean EOF; it may come so fast that connect() itself reports it.
        with pytest.raises(ConnectionResetError):
            reader, writer = await tcp_connect(refused.address)
            try:
                await asyncio.wait_for(reader.readexactly(1), 10)
            finally:
                writer.close()
        line = await refused.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "could not reach" in line["reason"]
    finally:
        await ok.stop()
        await refused.stop()
        raw.close()


async def test_first_bytes_travel_with_the_token(tmp_path: Path) -> None:
    """New tunnels cost one round trip: the client does not wait for the ack before sending
    the app's first bytes.  This raw server acks only once it holds the token *and* app
    bytes, so a client that waited for the ack would never get one."""
    cert, key = tls.ensure_self_signed(tmp_path, ["localhost"])
    first_reads: list[bytes] = []

    def on_stream(peer: RawPeer, event: StreamDataReceived) -> None:
        buf = peer.data[event.stream_id]
        acked = peer.__dict__.setdefault("acked", set())
        if event.stream_id not in acked:
            if len(buf) > 512:
                acked.add(event.stream_id)
                first_reads.append(bytes(buf[512:]))
                peer._quic.send_stream_data(event.stream_id, b"\x01" + bytes(buf[512:]))
                del buf[:]
        elif event.data:
            peer._quic.send_stream_data(event.stream_id, event.data)
        peer.transmit()

    def make(*args: object, **kwargs: object) -> RawPeer:
        peer = RawPeer(*args, **kwargs)
        peer.on_stream = on_stream
        return peer

    config = QuicConfiguration(is_client=False, alpn_protocols=["quic-tun"])
    config.load_cert_chain(str(cert), str(key))
    raw = await serve("127.0.0.1", 0, configuration=config, create_protocol=make)
    port = raw._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    client = await start_client(
        f"127.0.0.1:{port}", "tcp:10.9.8.7:22", "--ca-file", str(cert),
        "--verify-remote-endpoint", "--server-name", "localhost",
    )  # fmt: skip
    try:
        reader, writer = await tcp_connect(client.address)
        writer.write(b"SSH-2.0-hello\r\n")
        assert await asyncio.wait_for(reader.readexactly(15), 10) == b"SSH-2.0-hello\r\n"
        assert first_reads and first_reads[0].startswith(b"SSH-2.0")
        writer.write(b"more")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"more"
        writer.close()
    finally:
        await client.stop()
        raw.close()


@pytest.mark.skipif(not engine_available("qh3"), reason="qh3 is not installed")
@pytest.mark.parametrize(
    ("client_engine", "server_engine"), [("aioquic", "qh3"), ("qh3", "aioquic")]
)
async def test_engines_interoperate(
    state_dir: Path, client_engine: str, server_engine: str
) -> None:
    """An aioquic-engine client and a qh3-engine server (and the reverse) carry a tunnel."""
    backend = await echo().tcp()
    server = await start_server(state_dir, "--quic-engine", server_engine)
    client = await start_client(server.address, backend.address, "--quic-engine", client_engine)
    try:
        sent, got, n = await transfer_both_ways(client.address, 8 * 1024 * 1024)
        assert (n, got) == (8 * 1024 * 1024, sent)
        reader, writer = await tcp_connect(client.address)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        writer.close()
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()
