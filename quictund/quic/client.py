"""The client's one QUIC connection, kept alive: connect, watch, reconnect with backoff.

quic-tun dials once at start and panics when that fails; it never reconnects.  Here the
connector runs for the life of the listener: on failure or loss it waits a jittered,
exponentially growing delay (``backoff``, pure) and tries again, with a fresh UDP socket (a new
source port, so NAT rebinding and network changes heal).  Tunnels ask ``get_session`` and wait a
bounded time while it is down.

Rules for the connection attempts:

1. An ICMP port-unreachable during the handshake ends that attempt at once ("connection
   refused"), so the next one starts on the backoff schedule the log announced, instead of
   after the handshake timeout.  A forged one costs one retry, nothing more.
2. Once connected, ICMP errors are noted and ignored: anyone on the path can forge them, and
   QUIC's own liveness (``dead-after``) decides whether the server is gone.
3. An app connection that finds no connection cuts the backoff short: the next attempt starts
   at once, but never sooner than ``DEMAND_GAP_S`` after the previous one began, so apps
   connecting in a loop cannot make the client hammer a server that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import time
from collections.abc import Callable

from quictund.quic import engine, tls_advice
from quictund.quic.handlers import StreamHandler
from quictund.quic.migrate import ClientPath
from quictund.quic.session import Address, QuicSession

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
    DEMAND_GAP_S = 0.5  # rule 3: at most two demand-driven attempts per second

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
        self._sockets: dict[QuicSession, ClientPath] = {}
        self._wanted = asyncio.Event()  # an app connection is waiting for a session
        self._attempt_at = 0.0

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
                    "[%s] cannot connect to %s:%d (%s); retry %d in %.1f s"
                    " (sooner when an app connects)",
                    self.name,
                    self.host,
                    self.port,
                    self.last_error,
                    attempt,
                    delay,
                )
                self.state = "reconnecting"
                await self._pause(delay)
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
            self.last_error = self._explain(session.close_reason)
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
                self.last_error,
                delay,
            )
            await self._pause(delay)

    async def get_session(self, wait_s: float) -> QuicSession:
        """The live session, waiting at most ``wait_s`` for one; raises ``TimeoutError``."""
        deadline = time.monotonic() + wait_s
        while True:
            session = self.session
            if session is not None and not session.closed.is_set():
                return session
            self._wanted.set()
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._up.wait()

    # ---- driven by a pool (quic/pool.py): one attempt at a time, no backoff of its own ----

    async def connect_once(self) -> QuicSession:
        """One connection attempt; the session becomes current.  Raises what ``_connect`` does,
        with ``state`` "down" and ``last_error`` set."""
        self.state = "connecting"
        try:
            session = await self._connect()
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            self.state = "down"
            raise
        self.session = session
        self.state = "connected"
        self._up.set()
        logger.info("[%s] connected to %s:%d", self.name, self.host, self.port)
        return session

    async def hold(self, session: QuicSession) -> None:
        """Return when ``session`` (from ``connect_once``) ends; note why."""
        await session.closed.wait()
        if self.session is session:
            self._up.clear()
            self.session = None
        self.state = "down"
        self.reconnects += 1
        self.last_error = self._explain(session.close_reason)

    def want(self) -> None:
        """An app connection waits for this connector (rule 3 of the module docstring)."""
        self._wanted.set()

    async def wait_up(self) -> None:
        """Until a connection is up; an app connection is waiting for it."""
        self._wanted.set()
        await self._up.wait()

    @property
    def quiet_s(self) -> float:
        """Silence after which the connection is suspect: a keep-alive is answered within
        ``keep-alive`` + RTT, so twice that with no packet means it probably died."""
        return 2 * self._keepalive_s + 0.5 if self._keepalive_s else self._dead_after_s

    @property
    def tunnels(self) -> int:
        session = self.session
        return session.stream_count if session is not None else 0

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

    async def _pause(self, delay_s: float) -> None:
        """Wait ``delay_s`` before the next attempt, or less if an app is waiting (rule 3)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._wanted.wait()
                gap = self._attempt_at + self.DEMAND_GAP_S - time.monotonic()
                await asyncio.sleep(max(0.0, gap))

    def _icmp_error(self, session: QuicSession, exc: OSError) -> None:
        """Rules 1 and 2: a refusal ends a handshake; otherwise ICMP is only noted."""
        if not session.handshake_done.done() and exc.errno == errno.ECONNREFUSED:
            session.close(0, "connection refused: nothing listens on that UDP port")
            return
        logger.debug(
            "[%s] ICMP error from %s:%d ignored (%s); QUIC liveness decides",
            self.name, self.host, self.port, exc.strerror,
        )  # fmt: skip

    async def _connect(self) -> QuicSession:
        self._attempt_at = time.monotonic()
        self._wanted.clear()
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

        def icmp_error(exc: OSError) -> None:
            if holder:
                self._icmp_error(holder[0], exc)

        # The socket is owned by a ClientPath, which moves the connection to a new one when
        # the host's address or route changes (roaming, quic/migrate.py).
        path = ClientPath(
            name=self.name, peer=peer, family=family, buffer=self._socket_buffer,
            on_datagram=received, on_error=icmp_error,
        )  # fmt: skip
        udp = await path.open()
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
            path.send_many,
            self,
            peer=peer,
            keepalive_s=self._keepalive_s,
            dead_after_s=self._dead_after_s,
            send_budget=self._settings.send_budget,
        )
        self._sockets[session] = path
        holder.append(session)
        path.attach(session)
        conn.connect(peer, now=time.monotonic())
        session.transmit_soon()
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                await session.handshake_done
        except TimeoutError:
            session.close(0, "handshake timeout")
            raise TimeoutError("QUIC handshake timed out") from None
        except ConnectionError:
            raise ConnectionError(self._explain(session.close_reason)) from None
        return session

    def _explain(self, reason: str) -> str:
        """A certificate refusal, either side's, said with its fix (``tls_advice``)."""
        config = self._configuration()
        return tls_advice.explain(
            reason,
            endpoint=f"{self.host}:{self.port}",
            cafile=config.cafile,
            server_name=config.server_name,
        )
