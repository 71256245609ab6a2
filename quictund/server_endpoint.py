"""The server endpoint: accept QUIC connections, and for each client-opened stream read the
token, check it against policy, connect to the destination and splice.

Each stream's handshake runs in its own task (``ServerHandshake``), so a slow token or a slow
``connect()`` delays only that tunnel (quic-tun handles them one after another per connection).
A failed handshake sends exactly **one** ack byte and ends the stream (quic-tun floods the ack
byte forever and wedges the connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from quictund.addresses import StreamAddress, format_host_port
from quictund.config import ServerSettings
from quictund.endpoint import EndpointBase
from quictund.errors import ConfigError, TokenRejected, os_reason
from quictund.identity import Identity
from quictund.limits import AdmissionSettings, Limit, LimitLog, SourceBuckets, source_key
from quictund.policy import IPAddress, Policy
from quictund.quic import engine
from quictund.quic.server import QuicServerProtocol
from quictund.quic.session import Address, QuicSession, StreamHandler
from quictund.quic.udp import UdpSocket, open_udp
from quictund.splice import Splice
from quictund.tokens import TokenParser
from quictund.tunnels import TunnelRecord, TunnelTable
from quictund.wire import Ack, BadToken, ErrorCode, TokenDecoder

logger = logging.getLogger(__name__)


class ServerEndpoint(EndpointBase):
    role = "server"

    def __init__(
        self,
        settings: ServerSettings,
        *,
        parser: TokenParser,
        policy: Policy,
        quic_config: engine.QuicConfiguration,
        table: TunnelTable,
    ) -> None:
        super().__init__(quic_config)
        self.settings = settings
        self.parser = parser
        self.policy = policy
        self.policies_for: list[tuple[str, Policy]] = []  # (identity pattern, policy)
        self.table = table
        self._tg: asyncio.TaskGroup | None = None
        self._proto: QuicServerProtocol | None = None
        self._udp: UdpSocket | None = None
        self.bound: Address | None = None
        self.limit_log = LimitLog()
        self._tunnel_rate = SourceBuckets(settings.source_tunnel_rate, settings.source_tunnel_burst)
        self._per_identity: dict[str, int] = {}

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Bind the UDP socket; handshakes then run as tasks of ``tg``."""
        self._tg = tg
        s = self.settings
        proto = QuicServerProtocol(
            configuration=self.configuration,
            make_connection=self._make_connection,
            new_session=self._new_session,
            max_connections=s.max_connections,
            admission=self._admission_settings(),
            handshake_timeout_s=s.handshake_timeout_s,
            on_limit=self.limit_hit,
        )
        try:
            udp = await open_udp(
                proto.datagram_received,
                local=(s.listen_on.host, s.listen_on.port),
                buffer=s.socket_buffer,
                reuse_port=self.reuse_port,
            )
        except OSError as exc:
            raise ConfigError(f"listen-on {s.listen_on}: {os_reason(exc)}") from None
        proto.transport = udp
        self._proto, self._udp = proto, udp
        self.bound = udp.sockname[:2]
        logger.info(
            "[%s] server endpoint listening on udp %s", s.name, format_host_port(*self.bound)
        )

    def stop_accepting(self) -> None:
        if self._proto is not None:
            self._proto.accepting = False

    async def resume_accepting(self) -> None:
        """Undo ``stop_accepting`` (a reload that was rolled back); the socket never closed."""
        if self._proto is not None:
            self._proto.accepting = True

    def close(self, error_code: int = ErrorCode.SHUTDOWN, reason: str = "shutdown") -> None:
        if self._proto is not None:
            self._proto.close_all(error_code, reason)
        for splice in list(self.splices):
            splice.abort(reason, error_code)
        if self._udp is not None:
            self._udp.close()

    @property
    def sessions(self) -> list[QuicSession]:
        return self._proto.sessions if self._proto is not None else []

    # ---- SessionOwner --------------------------------------------------------------------

    def _make_connection(
        self, config: engine.QuicConfiguration, odcid: bytes, retry_scid: bytes | None
    ) -> engine.EngineConnection:
        s = self.settings
        return engine.new_connection(
            configuration=config,
            settings=s.engine_settings(),
            client_cafile=s.ca_file if s.verify_remote_endpoint else None,
            client_pins=frozenset(s.client_fingerprints or []),
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid,
        )

    def _admission_settings(self) -> AdmissionSettings:
        s = self.settings
        return AdmissionSettings(
            max_half_open=s.max_half_open,
            retry_threshold=s.retry_threshold,
            connection_rate=s.source_connection_rate,
            connection_burst=s.source_connection_burst,
        )

    def limit_hit(self, limit: Limit, detail: str) -> None:
        """Count a refusal (metric ``quictund_limit_hits_total``) and log it, throttled."""
        line = self.limit_log.hit(limit, detail, asyncio.get_running_loop().time())
        if line is not None:
            logger.warning("[%s] %s", self.settings.name, line)

    def _new_session(
        self, conn: engine.EngineConnection, peer: Address, on_cid: Callable[[bytes, bool], None]
    ) -> QuicSession:
        udp = self._udp
        assert udp is not None
        return QuicSession(
            conn,
            udp.send_many,
            self,
            peer=peer,
            keepalive_s=self.settings.keep_alive_s,
            dead_after_s=max(self.settings.dead_after_s, self.settings.idle_timeout_s),
            on_cid=on_cid,
            send_budget=self.settings.connection_send_budget,
        )

    def stream_opened(self, session: QuicSession, stream_id: int) -> StreamHandler | None:
        s = self.settings
        peer = format_host_port(*session.peer)
        now = asyncio.get_running_loop().time()
        if not self._tunnel_rate.take(source_key(session.peer[0]), now):
            self.limit_hit(Limit.TUNNEL_RATE, f"{peer}: stream {stream_id}")
            return Refused(session, stream_id)
        quota = self.quota_key(session)
        if self._per_identity.get(quota, 0) >= s.max_tunnels_per_identity:
            self.limit_hit(
                Limit.TUNNELS_PER_IDENTITY, f"{quota}: {s.max_tunnels_per_identity} tunnels open"
            )
            return Refused(session, stream_id)
        if session.stream_count >= s.max_tunnels:
            # The peer has used all of its stream credit: it is now blocked until one closes.
            self.limit_hit(Limit.TUNNELS_PER_CONNECTION, f"{peer}: {s.max_tunnels} tunnels open")
        self._per_identity[quota] = self._per_identity.get(quota, 0) + 1
        return ServerHandshake(self, session, stream_id, quota)

    @staticmethod
    def quota_key(session: QuicSession) -> str:
        """Whose tunnels count together: the certificate identity, else the source."""
        return str(session.identity) or f"source {source_key(session.peer[0])}"

    def tunnel_ended(self, record: TunnelRecord, quota: str, reason: str) -> None:
        left = self._per_identity.get(quota, 0) - 1
        if left > 0:
            self._per_identity[quota] = left
        else:
            self._per_identity.pop(quota, None)
        self.table.closed(record, reason)

    def session_closed(self, session: QuicSession, reason: str) -> None:
        if self._proto is not None:
            self._proto.session_closed(session)
        logger.info(
            "[%s] QUIC connection from %s closed: %s",
            self.settings.name,
            format_host_port(*session.peer),
            reason,
        )

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._tg is not None
        return self._tg.create_task(coro, name=name)

    def adopt(self, other: ServerEndpoint) -> None:
        """Reload with the same UDP address: new connections and tunnels use ``other``'s
        settings, parser, policy and TLS; open ones are not touched."""
        self.settings = other.settings
        self.parser = other.parser
        self.policy = other.policy
        self.policies_for = other.policies_for
        self.quic_config = other.quic_config
        if (other.settings.source_tunnel_rate, other.settings.source_tunnel_burst) != (
            self._tunnel_rate.rate,
            self._tunnel_rate.burst,
        ):
            self._tunnel_rate = other._tunnel_rate
        if self._proto is not None:
            self._proto.admission.settings = other._admission_settings()
            self._proto.handshake_timeout_s = other.settings.handshake_timeout_s

    def policy_for(self, identity: Identity) -> Policy:
        """The first ``allow-for`` whose identity matches, else the listener's ``allow``."""
        for pattern, policy in self.policies_for:
            if identity.matches(pattern):
                return policy
        return self.policy

    def splice_finished(self, splice: Splice, reason: str, quota: str) -> None:
        self.untrack(splice)
        self.tunnel_ended(splice.record, quota, reason)


class ServerHandshake:
    """StreamHandler for a stream whose token has not been handled yet."""

    def __init__(
        self, endpoint: ServerEndpoint, session: QuicSession, stream_id: int, quota: str
    ) -> None:
        self.endpoint = endpoint
        self.quota = quota
        self.session = session
        self.stream_id = stream_id
        self.decoder = TokenDecoder()
        self.pending: list[bytes] = []
        self.pending_fin = False
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self.record = TunnelRecord(
            endpoint="server",
            listener=endpoint.settings.name,
            remote_endpoint_addr=format_host_port(*session.peer),
            stream_id=stream_id,
            identity=str(session.identity),
        )
        endpoint.table.add(self.record)
        loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = loop.call_later(
            endpoint.settings.token_timeout_s, self._token_timeout
        )

    # ---- StreamHandler -------------------------------------------------------------------

    def on_stream_data(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        if self.task is None:
            before = self.decoder.received
            try:
                result = self.decoder.feed(data)
            except BadToken as exc:
                self.session.consume(self.stream_id, len(data))
                self._fail(Ack.BAD_TOKEN, ErrorCode.BAD_TOKEN, f"bad token: {exc}")
                return
            if result is None:
                self.session.consume(self.stream_id, len(data))
                if end_stream:
                    self._fail(
                        Ack.BAD_TOKEN,
                        ErrorCode.BAD_TOKEN,
                        f"stream ended after {self.decoder.received} of 512 token bytes",
                    )
                return
            token, rest = result
            self.session.consume(self.stream_id, self.decoder.received - before)
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            data = rest
            self.task = self.endpoint.spawn(self._guarded(token), f"handshake-{self.stream_id}")
        if data:
            self.pending.append(data)
        if end_stream:
            self.pending_fin = True

    def on_stream_reset(self, error_code: int) -> None:
        self._abandon("client reset the stream during the handshake")

    def on_stop_sending(self, error_code: int) -> None:
        self._abandon("client stopped the stream during the handshake")

    def on_send_ready(self) -> None:
        pass

    def on_session_lost(self, reason: str) -> None:
        self._abandon(f"QUIC connection lost: {reason}")

    # ---- private -------------------------------------------------------------------------

    async def _guarded(self, token: str) -> None:
        try:
            await self._connect(token)
        except Exception:
            logger.exception("handshake of stream %d failed", self.stream_id)
            self._fail(Ack.UNREACHABLE, ErrorCode.INTERNAL, "internal error")

    async def _connect(self, token: str) -> None:
        ep = self.endpoint
        try:
            dest = ep.parser.parse(token)
        except TokenRejected as exc:
            self._fail(Ack.BAD_TOKEN, ErrorCode.BAD_TOKEN, f"token rejected: {exc}")
            return
        self.record.server_app_addr = str(dest)
        quota = self.quota
        splice = Splice(
            self.record,
            lambda sp, reason: ep.splice_finished(sp, reason, quota),
            app_is_client=False,
        )
        try:
            async with asyncio.timeout(ep.settings.connect_timeout_s):
                target = await self._resolve_and_check(dest)
                if target is None:
                    self._fail(
                        Ack.UNREACHABLE,
                        ErrorCode.POLICY_DENIED,
                        f"destination {dest} not allowed by policy",
                    )
                    return
                loop = asyncio.get_running_loop()
                if dest.is_unix:
                    await loop.create_unix_connection(lambda: splice, dest.path)
                else:
                    await loop.create_connection(lambda: splice, target[0], target[1])
        except TimeoutError:
            self._fail(Ack.UNREACHABLE, ErrorCode.TIMEOUT, f"connect to {dest} timed out")
            return
        except OSError as exc:
            self._fail(
                Ack.UNREACHABLE,
                ErrorCode.UNREACHABLE,
                f"cannot connect to {dest}: {os_reason(exc)}",
            )
            return
        if self.done:  # the stream or connection went away while we were connecting
            splice.abort("client gone before the handshake finished")
            return
        self.done = True
        if not dest.is_unix and splice.transport is not None:
            peer = splice.transport.get_extra_info("peername")
            if peer:
                self.record.server_app_addr = format_host_port(peer[0], peer[1])
        self.session.send(self.stream_id, bytes([Ack.OK]))
        self.session.register(self.stream_id, splice)
        splice.attach(self.session, self.stream_id)
        ep.track(splice)
        ep.table.opened(self.record)
        for chunk in self.pending:
            splice.on_stream_data(chunk, False)
        if self.pending_fin:
            splice.on_stream_data(b"", True)
        self.pending.clear()

    async def _resolve_and_check(self, dest: StreamAddress) -> tuple[str, int] | None:
        """Resolve once, check every address, return one checked address to connect to."""
        if dest.is_unix:
            return ("", 0) if self._policy().allows(dest, []) else None
        family = {"tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}.get(
            dest.network, socket.AF_UNSPEC
        )
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(dest.host, dest.port, family=family, type=socket.SOCK_STREAM)
        addrs: list[IPAddress] = []
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if addr not in addrs:
                addrs.append(addr)
        if not self._policy().allows(dest, addrs):
            return None
        return (str(addrs[0]), dest.port)

    def _policy(self) -> Policy:
        return self.endpoint.policy_for(self.session.identity)

    def _fail(self, ack: Ack, code: ErrorCode, reason: str) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        # Exactly one ack byte, then FIN; stop the client's direction so nothing piles up.
        self.session.send(self.stream_id, bytes([ack]), end_stream=True)
        self.session.stop(self.stream_id, code)
        self.session.forget(self.stream_id)
        self.endpoint.tunnel_ended(self.record, self.quota, reason)

    def _abandon(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.session.reset(self.stream_id, ErrorCode.NO_ERROR)
        self.session.forget(self.stream_id)
        self.endpoint.tunnel_ended(self.record, self.quota, reason)

    def _token_timeout(self) -> None:
        self.timer = None
        self.endpoint.limit_hit(
            Limit.TOKEN_TIMEOUT, f"{self.record.remote_endpoint_addr}: stream {self.stream_id}"
        )
        self._fail(
            Ack.BAD_TOKEN,
            ErrorCode.TIMEOUT,
            f"token not received in {self.endpoint.settings.token_timeout_s:g} s "
            f"({self.decoder.received} of 512 bytes)",
        )


class Refused:
    """StreamHandler for a tunnel refused by a flood limit before anything was read.

    The client gets quic-tun's "unreachable" ack (``0x03``) and FIN, and its direction is
    stopped with ``RATE_LIMITED``; no token is parsed, no tunnel record is made (a flood would
    otherwise flood the log: ``limit_hit`` reports it, throttled).
    """

    def __init__(self, session: QuicSession, stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.done = False

    def on_stream_data(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        self.done = True
        self.session.send(self.stream_id, bytes([Ack.UNREACHABLE]), end_stream=True)
        self.session.stop(self.stream_id, ErrorCode.RATE_LIMITED)
        self.session.forget(self.stream_id)

    def on_stream_reset(self, error_code: int) -> None:
        self.on_stop_sending(error_code)

    def on_stop_sending(self, error_code: int) -> None:
        if not self.done:
            self.done = True
            self.session.reset(self.stream_id, ErrorCode.RATE_LIMITED)
            self.session.forget(self.stream_id)

    def on_send_ready(self) -> None:
        pass

    def on_session_lost(self, reason: str) -> None:
        self.done = True
