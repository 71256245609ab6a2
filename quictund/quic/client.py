"""The client's one QUIC connection, kept alive: connect, watch, reconnect with backoff.

quic-tun dials once at start and panics when that fails; it never reconnects.  Here the
connector runs for the life of the listener: on failure or loss it waits a jittered,
exponentially growing delay (``backoff``, pure) and tries again, with a fresh UDP socket (a new
source port, so NAT rebinding and network changes heal).  Tunnels ask ``get_session`` and wait a
bounded time while it is down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable

from quictund.quic import engine
from quictund.quic.session import Address, QuicSession, StreamHandler
from quictund.quic.udp import UdpSocket, open_udp

logger = logging.getLogger(__name__)


def backoff(
    attempt: int,
    *,
    base_s: float = 0.25,
    cap_s: float = 10.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before reconnect attempt ``attempt`` (1, 2, …): equal-jitter exponential backoff."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt - 1, 30)))
    return float(ceiling / 2 + rand() * ceiling / 2)


class Connector:
    STABLE_S = 10.0  # a connection that lived this long resets the backoff

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        configuration: Callable[[], engine.QuicConfiguration],
        settings: engine.EngineSettings,
        keepalive_s: float,
        dead_after_s: float,
        handshake_timeout_s: float,
        socket_buffer: int,
        server_pins: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._configuration = configuration
        self._settings = settings
        self._keepalive_s = keepalive_s
        self._dead_after_s = dead_after_s
        self._handshake_timeout_s = handshake_timeout_s
        self._socket_buffer = socket_buffer
        self._server_pins = server_pins
        self.session: QuicSession | None = None
        self._up = asyncio.Event()
        self.state = "connecting"
        self.reconnects = 0
        self.last_error = ""
        self._sockets: dict[QuicSession, UdpSocket] = {}

    async def run(self) -> None:
        """Keep a connection up until cancelled."""
        attempt = 0
        while True:
            try:
                session = await self._connect()
            except (OSError, ConnectionError, TimeoutError) as exc:
                attempt += 1
                self.last_error = str(exc) or type(exc).__name__
                delay = backoff(attempt)
                log = logger.warning if attempt <= 3 or attempt % 10 == 0 else logger.debug
                log(
                    "[%s] cannot connect to %s:%d (%s); retry %d in %.1f s",
                    self.name,
                    self.host,
                    self.port,
                    self.last_error,
                    attempt,
                    delay,
                )
                self.state = "reconnecting"
                await asyncio.sleep(delay)
                continue
            self.session = session
            self.state = "connected"
            self._up.set()
            up_since = time.monotonic()
            logger.info("[%s] connected to %s:%d", self.name, self.host, self.port)
            await session.closed.wait()
            self._up.clear()
            self.session = None
            self.state = "reconnecting"
            self.reconnects += 1
            self.last_error = session.close_reason
            # A connection that dies at once (the server refusing our client certificate
            # after TLS 1.3 let us finish, a crash loop) counts as a failed attempt, so the
            # backoff keeps growing instead of hammering the server.
            if time.monotonic() - up_since < self.STABLE_S:
                attempt += 1
            else:
                attempt = 1
            delay = backoff(attempt)
            logger.warning(
                "[%s] QUIC connection to %s:%d lost (%s); reconnecting in %.1f s",
                self.name,
                self.host,
                self.port,
                session.close_reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def get_session(self, wait_s: float) -> QuicSession:
        """The live session, waiting at most ``wait_s`` for one; raises ``TimeoutError``."""
        deadline = time.monotonic() + wait_s
        while True:
            session = self.session
            if session is not None and not session.closed.is_set():
                return session
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._up.wait()

    def close(self, error_code: int, reason: str) -> None:
        if self.session is not None:
            self.session.close(error_code, reason)

    # ---- SessionOwner --------------------------------------------------------------------

    def stream_opened(self, session: QuicSession, stream_id: int) -> StreamHandler | None:
        return None  # servers never open streams in quic-tun's protocol

    def session_closed(self, session: QuicSession, reason: str) -> None:
        udp = self._sockets.pop(session, None)
        if udp is not None:
            udp.close()

    # ---- private -------------------------------------------------------------------------

    async def _connect(self) -> QuicSession:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve {self.host}")
        family, _, _, _, sockaddr = infos[0]
        peer: Address = (str(sockaddr[0]), int(sockaddr[1]))
        holder: list[QuicSession] = []

        def received(data: bytes, addr: tuple[object, ...]) -> None:
            if holder:
                holder[0].datagram_received(data, peer)

        udp = await open_udp(received, remote=peer, family=family, buffer=self._socket_buffer)
        config = self._configuration()
        limit = udp.path_payload()
        if limit is not None and limit < config.max_datagram_size:
            logger.info(
                "[%s] route to %s carries %d-byte UDP payloads: max-datagram-size lowered "
                "from %d", self.name, self.host, limit, config.max_datagram_size,
            )  # fmt: skip
            config = engine.with_datagram_size(config, max(1200, limit))
        conn = engine.new_connection(
            configuration=config,
            settings=self._settings,
            server_pins=self._server_pins,
        )
        session = QuicSession(
            conn,
            udp.send_many,
            self,
            peer=peer,
            keepalive_s=self._keepalive_s,
            dead_after_s=self._dead_after_s,
            send_budget=self._settings.send_budget,
        )
        self._sockets[session] = udp
        holder.append(session)
        conn.connect(peer, now=time.monotonic())
        session.transmit_soon()
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                await session.handshake_done
        except TimeoutError:
            session.close(0, "handshake timeout")
            raise TimeoutError("QUIC handshake timed out") from None
        except ConnectionError:
            raise ConnectionError(session.close_reason) from None
        return session
