"""Hostile and mismatched peers of UDP flows (issue 16), on aioquic's own client API.

A quictund/1 client sending DATAGRAM frames that are empty, carry a truncated flow id, name a
flow it never opened, or exceed nothing but our patience: all dropped, the connection and its
honest flow carry on.  A quic-tun client (ALPN quic-tun) asking for a udp: destination gets
quic-tun's "unreachable" ack, nothing else.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import DatagramFrameReceived, QuicEvent

from quictund.udpflow import codec
from tests.e2e.harness import start_server
from tests.e2e.test_wire_compat import RawPeer, token_block
from tests.e2e.udp_apps import udp_echo


class DatagramPeer(RawPeer):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.datagrams: list[bytes] = []

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.datagrams.append(event.data)
            self.changed.set()
        super().quic_event_received(event)


async def test_hostile_datagrams_fail_nothing(state_dir: Path) -> None:
    echo = await udp_echo()
    dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", dest)
    host, port = server.host_port
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["quictund/1"],
        verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=65535,
    )
    try:
        async with connect(host, port, configuration=config, create_protocol=DatagramPeer) as p:
            assert isinstance(p, DatagramPeer)
            quic = p._quic
            sid = quic.get_next_available_stream_id()
            quic.send_stream_data(sid, token_block(dest))
            p.transmit()
            await p.wait_for(lambda: bytes(p.data.get(sid, b"")) == b"\x01")
            flow = codec.flow_id_of(sid)
            for junk in (b"", b"\x40", b"\xc0\x00", codec.encode(flow + 1, b"not mine"),
                         codec.encode(2**40, b"far away")) * 200:  # fmt: skip
                quic.send_datagram_frame(junk)
                p.transmit()
            quic.send_datagram_frame(codec.encode(flow, b"honest"))
            p.transmit()
            await p.wait_for(lambda: codec.encode(flow, b"echo:honest") in p.datagrams)
            assert echo.received == 1  # nothing else reached the destination
            assert not server.messages("tunnel closed")
    finally:
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()
    line = next(e for e in server.logs if e.get("msg") == "tunnel closed")
    assert line["datagrams_from_tunnel"] == 1
    closed = next(e["msg"] for e in server.logs if "QUIC connection from" in e.get("msg", ""))
    assert "(400 DATAGRAM frames for no flow, 600 malformed)" in closed


async def test_a_quic_tun_client_cannot_open_a_udp_flow(state_dir: Path) -> None:
    echo = await udp_echo()
    dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", dest)
    host, port = server.host_port
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    try:
        async with connect(host, port, configuration=config, create_protocol=RawPeer) as p:
            assert isinstance(p, RawPeer)
            sid = p._quic.get_next_available_stream_id()
            p._quic.send_stream_data(sid, token_block(dest))
            p.transmit()
            await p.wait_for(lambda: sid in p.ended)
            assert bytes(p.data[sid]) == b"\x03"
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "UDP flows need a quictund client" in line["reason"]
    finally:
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()
