"""QuicSession: an exception inside one connection's engine closes that connection only."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from quictund.policy import tls
from quictund.quic import engine
from quictund.quic.engine_aioquic import AioquicConnection
from quictund.quic.handlers import StreamHandler
from quictund.quic.session import QuicSession
from tests.quic_packets import client_initial_datagram


class _Owner:
    def __init__(self) -> None:
        self.closed: list[str] = []

    def stream_opened(self, session: QuicSession, stream_id: int) -> StreamHandler | None:
        return None

    def session_closed(self, session: QuicSession, reason: str) -> None:
        self.closed.append(reason)


class _BrokenTimer(AioquicConnection):
    def handle_timer(self, now: float) -> None:
        raise RuntimeError("engine bug")


def _server_session(state_dir: Path) -> tuple[QuicSession, _Owner, list[object]]:
    """A server session whose engine fails in its timer, after a client's first Initial."""
    cert, key = tls.ensure_self_signed(state_dir, ["localhost"])
    settings = engine.EngineSettings()
    config = engine.make_configuration(
        is_client=False, settings=settings, certfile=str(cert), keyfile=str(key)
    )
    initial = client_initial_datagram()
    header = engine.parse_header(initial, 8)
    conn = _BrokenTimer(
        configuration=config,
        settings=settings,
        original_destination_connection_id=header.destination_cid,
    )
    sent: list[object] = []
    owner = _Owner()
    session = QuicSession(
        conn,
        lambda *datagrams: sent.append(datagrams),  # (data, addr) or one batch
        owner,
        peer=("127.0.0.1", 5000),
        keepalive_s=0,
        dead_after_s=30,
    )
    session.datagram_received(initial, ("127.0.0.1", 5000))
    return session, owner, sent


async def test_an_exception_in_the_timer_closes_that_connection(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session, owner, sent = _server_session(state_dir)
    await asyncio.sleep(0)  # the coalesced transmit: the server's first flight, a timer armed
    assert sent and session._timer is not None
    with caplog.at_level(logging.ERROR, "quictund.quic.session"):
        session._on_timer()  # what the loop calls when the timer fires
    assert session.closed.is_set() and owner.closed == ["internal error"]
    assert "failed in its timer; closing it" in caplog.text
    with pytest.raises(ConnectionError):
        await session.handshake_done


class _Handler:
    def __init__(self) -> None:
        self.lost: list[str] = []

    def on_stream_data(self, data: bytes, end_stream: bool) -> None: ...
    def on_stream_reset(self, error_code: int) -> None: ...
    def on_stop_sending(self, error_code: int) -> None: ...
    def on_send_ready(self) -> None: ...

    def on_session_lost(self, reason: str) -> None:
        self.lost.append(reason)


async def test_a_handler_registered_after_the_close_is_told_and_not_kept(state_dir: Path) -> None:
    # A tunnel whose connect finished after its QUIC connection closed registered its splice on
    # the closed session, which then kept the session, the engine's connection and its buffers
    # alive with it (issue 13: ~23 MiB per hostile connection that never came back).
    session, _, _ = _server_session(state_dir)
    await asyncio.sleep(0)
    early = _Handler()
    session.register(4, early)  # type: ignore[arg-type]
    assert session._handlers == {4: early}
    session._on_timer()  # the engine fails: the session closes
    assert session.closed.is_set() and early.lost == ["internal error"]
    late = _Handler()
    session.register(8, late)  # type: ignore[arg-type]
    assert late.lost == ["internal error"] and session._handlers == {}
    with pytest.raises(ConnectionError):
        await session.handshake_done


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x40]) + bytes(range(1, 9)) + b"payload",  # short header, fixed bit
        bytes([0x5F]) + bytes(range(9, 17)) + bytes(30),
        bytes([0x00]) + bytes(range(1, 9)) + b"payload",  # fixed bit clear: parse refuses
        bytes([0x40]) + bytes(5),  # too short for the id
        client_initial_datagram(),  # long header
        b"",
    ],
)
def test_the_servers_short_header_shortcut_reads_the_id_the_parser_reads(data: bytes) -> None:
    # quic/server.py routes 1-RTT datagrams by short_header_cid and the rest by parse_header
    cid = engine.short_header_cid(data, 8)
    try:
        header = engine.parse_header(data, 8)
    except ValueError:
        assert cid is None
        return
    if header.packet_type == engine.QuicPacketType.ONE_RTT:
        assert cid == header.destination_cid
    else:
        assert cid is None
