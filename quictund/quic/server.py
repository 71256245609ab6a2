"""The server's UDP demultiplexer: datagrams -> sessions by destination connection id.

Our own instead of ``aioquic.asyncio.serve`` (as hypercorn does) so that we can refuse new
connections while draining, cap their number, swap the TLS configuration on reload for *new*
connections only, and close one misbehaving connection without touching the others.

Flood limits (decided by the pure ``limits.Admission``): at most ``max_half_open`` handshakes in
progress; past ``retry_threshold`` of them a new client must first echo a Retry token, which
proves it owns its source address; a per-source rate of new connections; and a handshake that
is not done within ``handshake_timeout_s`` is closed, freeing its slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from quictund.policy.limits import Admission, AdmissionSettings, Decision, Limit
from quictund.quic import engine
from quictund.quic.session import Address, QuicSession
from quictund.quic.stateless_reset import Responder
from quictund.quic.udp import UdpSocket

logger = logging.getLogger(__name__)

MIN_INITIAL_SIZE = 1200


class QuicServerProtocol:
    def __init__(
        self,
        *,
        configuration: Callable[[], engine.QuicConfiguration],
        make_connection: Callable[
            [engine.QuicConfiguration, bytes, bytes | None], engine.EngineConnection
        ],
        new_session: Callable[
            [engine.EngineConnection, Address, Callable[[bytes, bool], None]], QuicSession
        ],
        max_connections: int = 10000,
        admission: AdmissionSettings | None = None,
        handshake_timeout_s: float = 10.0,
        on_limit: Callable[[Limit, str], None] | None = None,
        # Retry's id: QUIC-LB's (quic/quic_lb.py) or a worker's (quic/steering.py); else random
        new_cid: Callable[[], bytes] | None = None,
        resets: Responder | None = None,  # stateless resets (quic/stateless_reset.py)
    ) -> None:
        self._configuration = configuration
        self._make_connection = make_connection
        self._new_session = new_session
        self._max_connections = max_connections
        self.admission = Admission(admission or AdmissionSettings())
        self.handshake_timeout_s = handshake_timeout_s
        self._on_limit = on_limit
        self.new_cid = new_cid
        self.resets = resets
        self._by_cid: dict[bytes, QuicSession] = {}
        self._cids: dict[QuicSession, set[bytes]] = {}
        self._half_open: dict[QuicSession, asyncio.TimerHandle] = {}
        self.transport: UdpSocket | None = None  # set by the owner once bound
        self.accepting = True

    @property
    def sessions(self) -> list[QuicSession]:
        return list(self._cids)

    @property
    def half_open(self) -> int:
        """Connections whose handshake is still in progress."""
        return len(self._half_open)

    # ---- datagrams ------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        cid = engine.short_header_cid(data, 8)
        session = self._by_cid.get(cid) if cid is not None else None
        if session is None:
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
            # Not a new connection: a connection we lost (a restart) gets a stateless reset.
            if self.resets is not None and header.packet_type == engine.QuicPacketType.ONE_RTT:
                reset = self.resets.answer(data, asyncio.get_running_loop().time())
                if reset is not None:
                    self.transport.sendto(reset, addr)
            return None
        if header.version not in config.supported_versions:
            self.transport.sendto(
                engine.version_negotiation(header, engine.supported_versions(config)), addr
            )
            return None
        if not self.accepting:
            return None
        peer = f"{addr[0]}:{addr[1]}"
        if len(self._cids) >= self._max_connections:
            self._limit(Limit.MAX_CONNECTIONS, f"{peer}: {len(self._cids)} connections open")
            return None
        loop = asyncio.get_running_loop()
        source = (addr[0], addr[1])
        now = loop.time()
        verdict = self.admission.decide(
            addr=source, token=header.token, half_open=len(self._half_open), now=now
        )
        if verdict.decision is Decision.RETRY:
            scid = self.new_cid() if self.new_cid is not None else os.urandom(8)
            token = self.admission.tokens.issue(source, header.destination_cid, now)
            self.transport.sendto(engine.retry(header, scid, token), addr)
            self._limit(Limit.RETRY, f"{peer}: {len(self._half_open)} handshakes in progress")
            return None
        if verdict.decision is Decision.DROP:
            assert verdict.limit is not None
            self._limit(verdict.limit, peer)
            return None
        if verdict.odcid is not None:  # the client echoed our Retry token
            conn = self._make_connection(config, verdict.odcid, header.destination_cid)
        else:
            conn = self._make_connection(config, header.destination_cid, None)
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
        self._half_open[session] = loop.call_later(
            self.handshake_timeout_s, self._handshake_timeout, session
        )
        session.handshake_done.add_done_callback(lambda _: self._settled(session))
        return session

    def _settled(self, session: QuicSession) -> None:
        timer = self._half_open.pop(session, None)
        if timer is not None:
            timer.cancel()

    def _handshake_timeout(self, session: QuicSession) -> None:
        if self._half_open.pop(session, None) is None:
            return
        self._limit(
            Limit.HANDSHAKE_TIMEOUT,
            f"{session.peer[0]}:{session.peer[1]}: no handshake in {self.handshake_timeout_s:g} s",
        )
        self._drop(session)
        session.close(0x0, "handshake timeout")

    def _limit(self, limit: Limit, detail: str) -> None:
        if self._on_limit is not None:
            self._on_limit(limit, detail)

    def _drop(self, session: QuicSession) -> None:
        self._settled(session)
        for cid in self._cids.pop(session, ()):
            self._by_cid.pop(cid, None)
