"""The server's UDP demultiplexer: datagrams -> sessions by destination connection id.

Our own instead of ``aioquic.asyncio.serve`` (as hypercorn does) so that we can refuse new
connections while draining, cap their number, swap the TLS configuration on reload for *new*
connections only, and close one misbehaving connection without touching the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from quictund.quic import engine
from quictund.quic.session import Address, QuicSession

logger = logging.getLogger(__name__)

MIN_INITIAL_SIZE = 1200


class QuicServerProtocol(asyncio.DatagramProtocol):
    def __init__(
        self,
        *,
        configuration: Callable[[], engine.QuicConfiguration],
        make_connection: Callable[[engine.QuicConfiguration, bytes], engine.EngineConnection],
        new_session: Callable[
            [engine.EngineConnection, Address, Callable[[bytes, bool], None]], QuicSession
        ],
        max_connections: int = 10000,
    ) -> None:
        self._configuration = configuration
        self._make_connection = make_connection
        self._new_session = new_session
        self._max_connections = max_connections
        self._by_cid: dict[bytes, QuicSession] = {}
        self._cids: dict[QuicSession, set[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.accepting = True

    @property
    def sessions(self) -> list[QuicSession]:
        return list(self._cids)

    # ---- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's ABCs: cast, don't isinstance.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            header = engine.parse_header(data, 8)
        except ValueError:
            return
        session = self._by_cid.get(header.destination_cid)
        if session is None:
            session = self._accept(data, header, addr)
            if session is None:
                return
        try:
            session.datagram_received(data, addr[:2])
        except Exception:
            logger.exception("QUIC connection from %s failed; closing it", addr)
            self._drop(session)
            session.close(0x1, "internal error")  # INTERNAL_ERROR for this connection only

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP error: %s", exc)

    # ---- public --------------------------------------------------------------------------

    def session_closed(self, session: QuicSession) -> None:
        self._drop(session)

    def close_all(self, error_code: int, reason: str) -> None:
        for session in list(self._cids):
            session.close(error_code, reason)

    # ---- private -------------------------------------------------------------------------

    def _accept(self, data: bytes, header: engine.QuicHeader, addr: Address) -> QuicSession | None:
        assert self.transport is not None
        config = self._configuration()
        if header.packet_type != engine.QuicPacketType.INITIAL or len(data) < MIN_INITIAL_SIZE:
            return None  # not a new connection; a stateless reset is future work
        if header.version not in config.supported_versions:
            self.transport.sendto(
                engine.version_negotiation(header, engine.supported_versions(config)), addr
            )
            return None
        if not self.accepting:
            return None
        if len(self._cids) >= self._max_connections:
            logger.warning(
                "refusing QUIC connection from %s: %d connections open", addr, len(self._cids)
            )
            return None
        conn = self._make_connection(config, header.destination_cid)
        holder: list[QuicSession] = []

        def on_cid(cid: bytes, issued: bool) -> None:
            session = holder[0]
            if issued:
                self._by_cid[cid] = session
                self._cids[session].add(cid)
            else:
                self._by_cid.pop(cid, None)
                self._cids[session].discard(cid)

        session = self._new_session(conn, addr[:2], on_cid)
        holder.append(session)
        self._cids[session] = {header.destination_cid, conn.host_cid}
        self._by_cid[header.destination_cid] = session
        self._by_cid[conn.host_cid] = session
        return session

    def _drop(self, session: QuicSession) -> None:
        for cid in self._cids.pop(session, ()):
            self._by_cid.pop(cid, None)
