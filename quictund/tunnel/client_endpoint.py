"""The client endpoint: accept app connections and carry each over one QUIC stream.

Per app connection (``_open_tunnel``, one task each): get the token for the app's address,
wait (bounded) for the QUIC connection, open a stream, send the 512-byte token, wait for the
one-byte ack, then splice.  Any failure refuses that one app connection with an RST and a log
line; the listener and every other tunnel carry on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from quictund.config.settings import ClientSettings
from quictund.errors import ConfigError, TokenError
from quictund.policy import cafile
from quictund.policy.addresses import format_host_port
from quictund.quic import engine
from quictund.quic.client import Connector
from quictund.quic.pool import Pool
from quictund.tokens import TokenSource
from quictund.tunnel.endpoint import EndpointBase
from quictund.tunnel.listeners import StreamListener, listen
from quictund.tunnel.reasons import client_reason, for_ack
from quictund.tunnel.splice import Splice
from quictund.tunnel.tunnels import TunnelRecord, TunnelTable
from quictund.udpflow.client import UdpClient
from quictund.wire import Ack, ErrorCode, TokenTooLong, encode_token

logger = logging.getLogger(__name__)


class ClientEndpoint(EndpointBase):
    role = "client"

    def __init__(
        self,
        settings: ClientSettings,
        *,
        source: TokenSource,
        quic_config: engine.QuicConfiguration,
        table: TunnelTable,
    ) -> None:
        super().__init__(quic_config)
        self.settings = settings
        self.source = source
        self.table = table
        s = settings
        self.connector = Pool(
            name=s.name,
            endpoints=s.server_endpoints,
            mode=s.server_endpoint_mode,
            failback=s.failback,
            server_name=s.server_name,
            configuration=self.configuration,
            make=self._new_connector,
        )
        self.listener: StreamListener | None = None
        self.udp: UdpClient | None = None  # a udp: listen-on (quictund/udpflow)
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokens: dict[str, str] = {}  # tunnel uuid -> token sent (for failure reasons)

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Bind the listener and start the connector (as tasks of ``tg``)."""
        self._tg = tg
        bound = await self._bind_any()
        self._track(tg.create_task(self._connect(), name=f"connector-{self.settings.name}"))
        logger.info(
            "[%s] client endpoint listening on %s, server %s",
            self.settings.name,
            bound,
            self.settings.server_endpoints_text(),
        )

    def stop_accepting(self) -> None:
        if self.udp is not None:
            self.udp.close("endpoint stopped accepting")
            self.udp = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    async def resume_accepting(self) -> None:
        """Bind again after ``stop_accepting`` (a reload that was rolled back)."""
        if self.listener is not None or self.udp is not None or self._tg is None:
            return
        try:
            await self._bind_any()
        except ConfigError as exc:
            name = self.settings.name
            logger.error("[%s] cannot accept again after a refused reload: %s", name, exc)

    def close(self, error_code: int = ErrorCode.SHUTDOWN, reason: str = "shutdown") -> None:
        self.stop_accepting()
        self.connector.close(error_code, reason)
        for task in list(self._tasks):
            task.cancel()
        for splice in list(self.splices):
            splice.abort(reason, error_code)

    def _new_connector(
        self,
        label: str,
        host: str,
        port: int,
        configuration: Callable[[], engine.QuicConfiguration],
    ) -> Connector:
        s = self.settings
        return Connector(
            name=label,
            host=host,
            port=port,
            configuration=configuration,
            settings=s.engine_settings(),
            keepalive_s=s.keep_alive_s,
            dead_after_s=s.dead_after_s,
            handshake_timeout_s=s.handshake_timeout_s,
            socket_buffer=s.socket_buffer,
            server_pins=frozenset([s.server_fingerprint] if s.server_fingerprint else []),
        )

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- private -------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Run the connector, once ``ca-file`` exists (``cafile.py``: a server on this host
        may not have written it yet)."""
        if self.settings.ca_file:
            await cafile.wait_for_ca_file(self.settings.name, self.settings.ca_file, self.connector)
        await self.connector.run()

    async def _bind_any(self) -> str:
        """Bind a UDP listener (quictund/udpflow) or a TCP/UNIX one; return what was bound."""
        if self.settings.listen_on.is_udp:
            self.udp = UdpClient(
                self.settings, self.source, self.connector, self.table, self._spawn_flow
            )
            return await self.udp.bind()
        self.listener = await self._bind()
        return self.listener.bound

    def _spawn_flow(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        try:
            self._track(self._tg.create_task(coro, name=name))
        except RuntimeError:  # the daemon is shutting down
            coro.close()

    async def _bind(self) -> StreamListener:
        return await listen(
            self.settings.listen_on,
            self._new_splice,
            unix_mode=self.settings.unix_socket_mode,
            unix_group=self.settings.unix_socket_group,
            reuse_port=self.reuse_port,
        )

    def _new_splice(self) -> Splice:
        record = TunnelRecord(
            endpoint="client",
            listener=self.settings.name,
            remote_endpoint_addr=str(self.settings.server_endpoint),
        )
        return Splice(record, self._finished, on_connected=self._accepted, app_is_client=True)

    def _accepted(self, splice: Splice) -> None:
        assert splice.transport is not None and self._tg is not None
        splice.record.client_app_addr = _app_addr(splice.transport)
        self.table.add(splice.record)
        self.track(splice)
        coro = self._guarded(splice)
        try:
            task = self._tg.create_task(coro, name=f"tunnel-{splice.record.uuid[:8]}")
        except RuntimeError:  # the daemon is shutting down (its TaskGroup is closing)
            coro.close()
            splice.abort("endpoint shutting down", ErrorCode.SHUTDOWN)
            return
        self._track(task)

    def _finished(self, splice: Splice, reason: str) -> None:
        self.untrack(splice)
        token = self._tokens.pop(splice.record.uuid, None)
        self.table.closed(splice.record, client_reason(reason, token))

    async def _guarded(self, splice: Splice) -> None:
        try:
            await self._open_tunnel(splice)
        except Exception:
            logger.exception("tunnel set-up failed")
            splice.abort("internal error")

    async def _open_tunnel(self, splice: Splice) -> None:
        s = self.settings
        try:
            token = await self.source.fetch(splice.record.client_app_addr)
            block = encode_token(token)
        except (TokenError, TokenTooLong) as exc:
            splice.abort(f"no token: {exc}")
            return
        if splice.finished:
            return
        self._tokens[splice.record.uuid] = token  # names the destination in failures
        try:
            session = await self.connector.get_session(s.connect_wait_s)
        except TimeoutError:
            splice.abort(
                f"server {s.server_endpoints_text()} unreachable for {s.connect_wait_s:g} s "
                f"({self.connector.last_error or self.connector.state})"
            )
            return
        if splice.finished:
            return
        splice.record.remote_endpoint_addr = self.connector.address_of(session)
        try:
            sid = session.open_stream(splice)
        except ConnectionRefusedError as exc:  # the qh3 engine at the server's stream limit
            splice.abort(str(exc), ErrorCode.RATE_LIMITED)
            return
        ack_future = splice.begin_handshake(session, sid)
        session.send(sid, block)
        # One round trip, not two: the app's first bytes follow the token at once (quic-tun's
        # server, like ours, treats bytes after the 512-byte token as tunnel data and holds
        # them until its connect() succeeds).  The ack byte is stripped when it arrives.
        splice.attach(session, sid)
        try:
            async with asyncio.timeout(s.handshake_timeout_s):
                ack = await ack_future
        except TimeoutError:
            splice.abort(
                f"no ack from the server in {s.handshake_timeout_s:g} s", ErrorCode.TIMEOUT
            )
            return
        if splice.finished:
            return
        if ack != Ack.OK:
            splice.abort(for_ack(ack, token), ErrorCode.REFUSED)
            return
        self.table.opened(splice.record)


def _app_addr(transport: asyncio.BaseTransport) -> str:
    """The app's address in quic-tun's format: ``ip:port``, ``[v6]:port``, or ``@`` (UNIX)."""
    peer = transport.get_extra_info("peername")
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return peer if isinstance(peer, str) and peer else "@"
    if isinstance(peer, tuple):
        return format_host_port(str(peer[0]), int(peer[1]))
    return "@"
