"""The server endpoint: accept QUIC connections and keep their books (flood limits, tunnels
per identity, the tunnel table, reload); each client-opened stream is handed to a
``ServerHandshake`` (quictund/tunnel/server_handshake.py), which reads the token and splices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from quictund import memory
from quictund.config.settings import ServerSettings
from quictund.errors import ConfigError, os_reason
from quictund.policy.addresses import format_host_port
from quictund.policy.identity import Identity
from quictund.policy.limits import (
    AdmissionSettings,
    Limit,
    LimitLog,
    SourceBuckets,
    source_key,
    worker_share,
)
from quictund.policy.policy import Policy
from quictund.policy.selfsigned import default_state_dir
from quictund.quic import engine
from quictund.quic.handlers import StreamHandler
from quictund.quic.quic_lb import CidSource
from quictund.quic.server import QuicServerProtocol
from quictund.quic.session import Address, QuicSession
from quictund.quic.stateless_reset import Responder, derive_key, load_key
from quictund.quic.steering import DEFAULT_CID_LENGTH, SharedSockets
from quictund.quic.udp import UdpSocket, adopt_udp, open_udp
from quictund.tokens import TokenParser
from quictund.tunnel.endpoint import EndpointBase
from quictund.tunnel.server_handshake import Refused, ServerHandshake
from quictund.tunnel.splice import Splice
from quictund.tunnel.tunnels import TunnelRecord, TunnelTable
from quictund.udpflow.flow import close_flows, stray_datagrams
from quictund.wire import ErrorCode

logger = logging.getLogger(__name__)

# A connection that opened this many streams may have pinned a lot: collect and trim after it.
RECLAIM_AFTER_STREAMS = 64


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
        self._reset_key: bytes | None = None
        self.shared: SharedSockets | None = None  # a worker's inherited sockets (steering.py)
        self._steered = False
        self._cids: CidSource | None = None

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Bind the UDP socket (or take the one the supervisor bound for this worker);
        handshakes then run as tasks of ``tg``."""
        self._tg = tg
        s = self.settings
        key = str(s.listen_on)
        sock = self.shared.take(key) if self.shared is not None else None
        self._steered = sock is not None
        proto = QuicServerProtocol(
            configuration=self.configuration,
            make_connection=self._make_connection,
            new_session=self._new_session,
            max_connections=-(-s.max_connections // self.workers),  # this worker's share
            admission=self._admission_settings(),
            handshake_timeout_s=s.handshake_timeout_s,
            on_limit=self.limit_hit,
        )
        self._proto = proto
        self._issue_cids()  # QUIC-LB and worker ids: Retry packets carry them too
        try:
            if sock is not None:
                udp = adopt_udp(sock, proto.datagram_received, buffer=s.socket_buffer)
            else:
                udp = await open_udp(
                    proto.datagram_received,
                    local=(s.listen_on.host, s.listen_on.port),
                    buffer=s.socket_buffer,
                    reuse_port=self.reuse_port,
                )
        except OSError as exc:
            self._give_back()
            raise ConfigError(f"listen-on {s.listen_on}: {os_reason(exc)}") from None
        proto.transport = udp
        self._udp = udp
        self.bound = udp.sockname[:2]
        # Stateless resets: a key of this machine, address and worker (quic/stateless_reset.py)
        self._reset_key = reset_key(s, f"{format_host_port(*self.bound)} worker {self.worker}")
        if self._reset_key is not None:
            proto.resets = Responder(self._reset_key, cid_length=8)
        logger.info(
            "[%s] server endpoint listening on udp %s", s.name, format_host_port(*self.bound)
        )
        if self._steered:
            logger.info(
                "[%s] worker %s: datagrams steered to it by connection id", s.name, self.worker
            )
        if self.reuse_port and not self._steered and self.worker == 0:
            logger.warning(
                "[%s] the workers share udp %s by client address: a client whose address "
                "changes (NAT rebinding, roaming) loses its connection (%s)",
                s.name,
                s.listen_on,
                "quic-engine qh3 cannot issue connection ids that name a worker"
                if s.quic_engine == "qh3"
                else "listen-on added or changed by a reload; restart to steer it by "
                "connection id",
            )

    def _issue_cids(self) -> None:
        """Where this server's connection ids come from (new connections and Retry)."""
        codec = self.settings.quic_lb_codec()
        self._cids = codec
        if self._steered and self.shared is not None:
            self._cids = self.shared.cids(
                None if codec is None else codec.new,
                DEFAULT_CID_LENGTH if codec is None else codec.cid_length,
            )
        if self._proto is not None:
            self._proto.new_cid = None if self._cids is None else self._cids.new

    def _give_back(self) -> None:
        if self._steered and self.shared is not None:
            self.shared.give_back(str(self.settings.listen_on))
            self._steered = False

    def stop_accepting(self) -> None:
        if self._proto is not None:
            self._proto.accepting = False
        close_flows(self.table, self.settings.name, "server endpoint stopping")

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
            self._give_back()

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
            settings=dataclasses.replace(
                s.engine_settings(), reset_key=self._reset_key, quic_lb=self._cids
            ),
            client_cafile=s.ca_file if s.verify_remote_endpoint else None,
            client_pins=frozenset(s.client_fingerprints or []),
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid,
        )

    @property
    def workers(self) -> int:
        """How many workers serve this listener (1 without ``workers``)."""
        return self.shared.count if self.shared is not None else 1

    def _admission_settings(self) -> AdmissionSettings:
        """The connection limits, this worker's share of them.  Tunnel limits
        (``source-tunnel-rate``, ``max-tunnels-per-identity``) stay whole: a connection's
        tunnels all live on one worker."""
        s = self.settings
        whole = AdmissionSettings(
            max_half_open=s.max_half_open,
            retry_threshold=s.retry_threshold,
            connection_rate=s.source_connection_rate,
            connection_burst=s.source_connection_burst,
        )
        return worker_share(whole, self.workers)

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
        if session.streams_seen >= RECLAIM_AFTER_STREAMS:
            memory.reclaim_soon()  # what the connection pinned goes back to the system
        logger.info(
            "[%s] QUIC connection from %s closed: %s (%d streams)%s",
            self.settings.name,
            format_host_port(*session.peer),
            reason,
            session.streams_seen,
            stray_datagrams(session),  # UDP flows (quictund/udpflow)
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
        self._issue_cids()
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


def reset_key(s: ServerSettings, scope: str) -> bytes | None:
    """This endpoint's stateless reset key: the state directory's (quic/stateless_reset.py)
    derived for this machine and ``scope`` (bound address, worker), or None with a warning
    when it cannot be kept (a restarted server then cannot tell its old clients, who notice
    at dead-after instead)."""
    state = Path(s.state_dir) if s.state_dir else default_state_dir()
    if not s.state_dir and not state.is_dir():  # cert-file given, nothing kept so far: none
        logger.info(
            "[%s] stateless resets off: no state directory %s to keep their key in (set "
            "state-dir); clients of a restarted server notice at dead-after", s.name, state,
        )  # fmt: skip
        return None
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = load_key(state)
    except OSError as exc:
        logger.warning(
            "[%s] stateless resets off: cannot keep their key in %s (%s); clients of a "
            "restarted server notice only at dead-after. Set state-dir to a writable directory",
            s.name, state, os_reason(exc),
        )  # fmt: skip
        return None
    return derive_key(key, scope)
