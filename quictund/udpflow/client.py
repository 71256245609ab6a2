"""The client side of UDP flows: a UDP listener, one flow per app address.

The first datagram from an app address opens a flow: fetch the token for that address, take
the QUIC connection, open a stream and send the 512-byte token on it (quic-tun's handshake,
so the server's token checks, policy, quotas and error codes apply unchanged), wait for the
one-byte ack.  The stream then stays open as the flow's control channel: closing or resetting
it ends the flow at both ends.  Datagrams travel in DATAGRAM frames (``codec``), never on the
stream.  While the flow opens, up to ``PENDING`` datagrams wait (then the newest are dropped).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

from quictund.config.settings import ClientSettings
from quictund.errors import ConfigError, TokenError, os_reason
from quictund.policy.addresses import format_host_port
from quictund.quic.pool import Pool
from quictund.quic.session import Address, QuicSession
from quictund.quic.settings import ALPN_QUICTUND
from quictund.tokens import TokenSource
from quictund.tunnel.tunnels import TunnelRecord, TunnelTable
from quictund.udpflow import codec
from quictund.udpflow.flow import NOT_OPEN, FlowCounters, IdleTimer, mux_for, send
from quictund.wire import Ack, ErrorCode, TokenTooLong, encode_token

logger = logging.getLogger(__name__)

_ACK_NAMES: dict[int, str] = {
    Ack.BAD_TOKEN: "server could not parse the token",
    Ack.UNREACHABLE: "server could not reach (or may not reach) the destination",
}

PENDING = 64  # datagrams held per flow while its handshake runs
MAX_FLOWS = 16384  # flows per UDP listener (as max-tunnels); beyond it new app addresses wait
# A flow that failed to open keeps its app address for this long, dropping what the app sends:
# an app retrying (or flooding) a refused destination costs one handshake a second, not one
# per datagram.
FAILED_HOLD_S = 1.0


class UdpClient(asyncio.DatagramProtocol):
    """The UDP listening socket of one client endpoint and its flows."""

    def __init__(
        self,
        settings: ClientSettings,
        source: TokenSource,
        connector: Pool,
        table: TunnelTable,
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.settings = settings
        self.source = source
        self.connector = connector
        self.table = table
        self.spawn = spawn
        self.flows: dict[Address, ClientFlow] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._warned: QuicSession | None = None

    async def bind(self) -> str:
        loop = asyncio.get_running_loop()
        a = self.settings.listen_on
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(a.host, a.port)
            )
        except OSError as exc:
            raise ConfigError(f"listen-on {a}: {os_reason(exc)}") from None
        self.transport = transport  # uvloop calls connection_made a loop turn later
        _buffers(transport, self.settings.socket_buffer)
        host, port = transport.get_extra_info("sockname")[:2]
        return f"{a.network}:{format_host_port(host, port)}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        app = (addr[0], addr[1])
        flow = self.flows.get(app)
        if flow is None:
            if len(self.flows) >= MAX_FLOWS:
                return
            flow = self.flows[app] = ClientFlow(self, app)
            self.spawn(flow.open(), f"udp-flow-{flow.record.uuid[:8]}")
        flow.from_app(data)

    def close(self, reason: str = "shutdown") -> None:
        for flow in list(self.flows.values()):
            flow.close(reason, ErrorCode.SHUTDOWN)
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def incompatible(self, session: QuicSession) -> bool:
        """True (and one log line per connection) if the server cannot carry UDP flows."""
        if session.alpn == ALPN_QUICTUND and session.datagram_room() > 0:
            return False
        if self._warned is not session:
            self._warned = session
            logger.error(
                "[%s] server %s cannot carry UDP flows (ALPN %s, DATAGRAM frames %s): "
                "udp: listeners need a quictund server; quic-tun carries TCP only",
                self.settings.name,
                self.settings.server_endpoint,
                session.alpn,
                "accepted" if session.datagram_room() else "not accepted",
            )
        return True


def _buffers(transport: asyncio.BaseTransport, size: int) -> None:
    """All flows of a listener share its one socket: give it ``socket-buffer`` as the QUIC
    socket has, so a burst from the apps waits in the kernel instead of being dropped there
    (the kernel caps it at net.core.rmem_max / wmem_max)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass


class ClientFlow:
    """One app address's flow: a ``StreamHandler`` for its control stream and a mux sink."""

    def __init__(self, owner: UdpClient, app: Address) -> None:
        self.owner = owner
        self.app = app
        self.record = TunnelRecord(
            endpoint="client",
            listener=owner.settings.name,
            remote_endpoint_addr=str(owner.settings.server_endpoint),
            client_app_addr=format_host_port(*app),
        )
        self.counters = FlowCounters()
        self.record.udp = self.counters
        self.record.closer = lambda reason: self.close(reason, ErrorCode.CLOSED_BY_OPERATOR)
        self.pending: deque[bytes] = deque()
        self.session: QuicSession | None = None
        self.stream_id = -1
        self.flow_id = -1
        self.ack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.finished = False
        self.listed = False
        self.idle = IdleTimer(owner.settings.udp_idle_timeout_s, self._idle_out)

    # ---- app side ------------------------------------------------------------------------

    def from_app(self, data: bytes) -> None:
        self.idle.touch()
        if self.finished:  # failed, held for FAILED_HOLD_S
            self.counters.drops[NOT_OPEN] += 1
            return
        if not self.is_open:
            if len(self.pending) >= PENDING:
                self.counters.drops[NOT_OPEN] += 1
            else:
                self.pending.append(data)
            return
        assert self.session is not None
        if send(self.session, self.flow_id, data, self.counters):
            self.record.client_total_bytes += len(data)

    def from_tunnel(self, payload: bytes) -> None:
        transport = self.owner.transport
        if self.finished or transport is None:
            return
        self.idle.touch()
        self.counters.from_tunnel += 1
        self.counters.bytes_from_tunnel += len(payload)
        self.record.server_total_bytes += len(payload)
        transport.sendto(payload, self.app)

    # ---- handshake -----------------------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._open()
        except asyncio.CancelledError:
            self.close("endpoint shutting down", ErrorCode.SHUTDOWN)
            raise
        except Exception:
            logger.exception("UDP flow set-up failed")
            self.close("internal error", ErrorCode.INTERNAL)

    async def _open(self) -> None:
        s = self.owner.settings
        got = await self._token_and_session()
        if got is None:
            return
        block, session = got
        try:
            stream_id = session.open_stream(self)
        except ConnectionRefusedError as exc:  # the qh3 engine at the server's stream limit
            self.close(str(exc), ErrorCode.RATE_LIMITED)
            return
        self.session, self.stream_id = session, stream_id
        self.record.stream_id = stream_id
        self.flow_id = codec.flow_id_of(stream_id)
        mux_for(session).flows[self.flow_id] = self
        session.send(stream_id, block)
        try:
            async with asyncio.timeout(s.handshake_timeout_s):
                ack = await self.ack
        except TimeoutError:
            self.close(f"no ack from the server in {s.handshake_timeout_s:g} s", ErrorCode.TIMEOUT)
            return
        if ack != Ack.OK:
            why = _ACK_NAMES.get(ack, "stream ended")
            self.close(f"refused: {why}", ErrorCode.REFUSED)
            return
        self._opened()

    async def _token_and_session(self) -> tuple[bytes, QuicSession] | None:
        """The token block and a connection that takes UDP flows, or None (flow closed)."""
        s = self.owner.settings
        try:
            block = encode_token(await self.owner.source.fetch(self.record.client_app_addr))
            session = await self.owner.connector.get_session(s.connect_wait_s)
        except (TokenError, TokenTooLong) as exc:
            self._list()
            self.close(f"no token: {exc}")
            return None
        except TimeoutError:
            self._list()
            self.close(f"server {s.server_endpoint} unreachable for {s.connect_wait_s:g} s")
            return None
        if self.finished:
            return None
        if self.owner.incompatible(session):
            self.close("server cannot carry UDP flows")  # not listed: one log line in all
            return None
        self._list()
        return block, session

    def _list(self) -> None:
        self.listed = True
        self.owner.table.add(self.record)

    def _opened(self) -> None:
        self.is_open = True
        assert self.session is not None
        self.counters.max_payload = codec.max_payload(self.session.datagram_room(), self.flow_id)
        self.owner.table.opened(self.record)
        pending, self.pending = self.pending, deque()
        for data in pending:
            self.from_app(data)

    # ---- StreamHandler (the control stream) ----------------------------------------------

    def on_stream_data(self, data: bytes, end_stream: bool) -> None:
        if self.session is not None and data:
            self.session.consume(self.stream_id, len(data))
        if data and not self.ack.done():
            self.ack.set_result(data[0])
        if end_stream:
            if not self.ack.done():
                self.ack.set_result(-1)
            elif self.is_open:
                self.close("server ended the flow")

    def on_stream_reset(self, error_code: int) -> None:
        # The server closes a flow (idle, socket gone) with both RESET_STREAM and
        # STOP_SENDING; whichever arrives first ends it.
        if error_code == ErrorCode.NO_ERROR:
            self._lost("server closed the flow")
        else:
            self._lost(f"server reset the flow (0x{error_code:x})")

    def on_stop_sending(self, error_code: int) -> None:
        self.on_stream_reset(error_code)

    def on_send_ready(self) -> None:
        pass

    def on_session_lost(self, reason: str) -> None:
        self.session = None
        self._lost(f"QUIC connection lost: {reason}")

    # ---- end -----------------------------------------------------------------------------

    def _lost(self, reason: str) -> None:
        if not self.ack.done():
            self.ack.set_result(-1)
        self.close(reason)

    def _idle_out(self) -> None:
        self.close(f"idle for {self.owner.settings.udp_idle_timeout_s:g} s")

    def close(self, reason: str, code: int = ErrorCode.NO_ERROR) -> None:
        """End the flow: reset its control stream (the server closes its socket) and forget it."""
        if self.finished:
            return
        self.finished = True
        self.idle.cancel()
        if self.is_open or code == ErrorCode.SHUTDOWN:
            self._forget()
        else:
            asyncio.get_running_loop().call_later(FAILED_HOLD_S, self._forget)
        if not self.ack.done():
            self.ack.cancel()
        session = self.session
        if session is not None and self.stream_id >= 0:
            mux_for(session).flows.pop(self.flow_id, None)
            session.reset(self.stream_id, code)
            session.forget(self.stream_id)
        if self.listed:
            self.owner.table.closed(self.record, reason)

    def _forget(self) -> None:
        if self.owner.flows.get(self.app) is self:
            del self.owner.flows[self.app]
