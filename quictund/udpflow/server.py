"""The server side of UDP flows: one connected UDP socket per flow.

``open_flow`` runs where a TCP tunnel would ``connect()``: after the token was parsed and the
destination resolved and checked by the same policy (``udp:`` rules), so quotas, limits and
error codes are those of TCP tunnels.  The socket is *connected* to the checked address: the
kernel drops datagrams from anyone else, and replies from the destination go back on the flow
they belong to.  A flood from the destination is bounded by the connection's DATAGRAM queue
(``DATAGRAM_QUEUE``, oldest dropped) and by the kernel's socket buffer, never by our memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from quictund.errors import os_reason
from quictund.policy.addresses import StreamAddress, format_host_port
from quictund.quic.session import QuicSession
from quictund.quic.settings import ALPN_QUICTUND
from quictund.tunnel.tunnels import TunnelRecord
from quictund.udpflow import codec
from quictund.udpflow.flow import UNREACHABLE, FlowCounters, IdleTimer, mux_for, send
from quictund.wire import Ack, ErrorCode

if TYPE_CHECKING:
    from quictund.tunnel.server_handshake import ServerHandshake

logger = logging.getLogger(__name__)


class ServerFlow(asyncio.DatagramProtocol):
    """The destination side of one flow: its socket, its control stream, its mux entry."""

    def __init__(
        self,
        session: QuicSession,
        stream_id: int,
        record: TunnelRecord,
        idle_s: float,
        on_end: Callable[[str], None],
    ) -> None:
        self.session = session
        self.stream_id = stream_id
        self.flow_id = codec.flow_id_of(stream_id)
        self.record = record
        self.counters = record.udp = FlowCounters()
        record.closer = lambda reason: self.close(reason, ErrorCode.CLOSED_BY_OPERATOR)
        self.transport: asyncio.DatagramTransport | None = None
        self.finished = False
        self._on_end = on_end
        self.idle = IdleTimer(idle_s, lambda: self.close(f"idle for {idle_s:g} s"))

    # ---- destination side (asyncio.DatagramProtocol) -------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.finished:
            return
        self.idle.touch()
        if send(self.session, self.flow_id, data, self.counters):
            self.record.server_total_bytes += len(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: UDP has no connection to fail, so count it.
        self.counters.drops[UNREACHABLE] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("destination socket closed")

    # ---- tunnel side ---------------------------------------------------------------------

    def from_tunnel(self, payload: bytes) -> None:
        if self.finished or self.transport is None:
            return
        self.idle.touch()
        self.counters.from_tunnel += 1
        self.counters.bytes_from_tunnel += len(payload)
        self.record.client_total_bytes += len(payload)
        self.transport.sendto(payload)

    # ---- StreamHandler (the control stream) ----------------------------------------------

    def on_stream_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.session.consume(self.stream_id, len(data))  # nothing is defined on it yet
        if end_stream:
            self.close("client ended the flow")

    def on_stream_reset(self, error_code: int) -> None:
        self.close(
            "client closed the flow" if error_code == 0 else f"client reset (0x{error_code:x})"
        )

    def on_stop_sending(self, error_code: int) -> None:
        self.on_stream_reset(error_code)

    def on_send_ready(self) -> None:
        pass

    def on_session_lost(self, reason: str) -> None:
        self.close(f"QUIC connection lost: {reason}")

    def close(self, reason: str, code: int = ErrorCode.NO_ERROR) -> None:
        if self.finished:
            return
        self.finished = True
        self.idle.cancel()
        mux_for(self.session).flows.pop(self.flow_id, None)
        if not self.session.closed.is_set():
            self.session.reset(self.stream_id, code)
            self.session.forget(self.stream_id)
        if self.transport is not None:
            self.transport.close()
        self._on_end(reason)


async def open_flow(hs: ServerHandshake, dest: StreamAddress) -> None:
    """The UDP branch of a server handshake: check, open the socket, ack, register."""
    ep, session = hs.endpoint, hs.session
    if session.alpn != ALPN_QUICTUND:
        hs.fail_handshake(
            Ack.UNREACHABLE, ErrorCode.REFUSED, f"{dest}: UDP flows need a quictund client"
        )
        return
    quota = hs.quota
    flow = ServerFlow(
        session,
        hs.stream_id,
        hs.record,
        ep.settings.udp_idle_timeout_s,
        lambda reason: ep.tunnel_ended(hs.record, quota, reason),
    )
    try:
        async with asyncio.timeout(ep.settings.connect_timeout_s):
            target = await hs.resolve_and_check(dest)
            if target is None:
                flow.idle.cancel()
                hs.fail_handshake(
                    Ack.UNREACHABLE,
                    ErrorCode.POLICY_DENIED,
                    f"destination {dest} not allowed by policy",
                )
                return
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(lambda: flow, remote_addr=target)
            flow.transport = transport  # uvloop calls connection_made a loop turn later
    except (TimeoutError, OSError) as exc:
        flow.idle.cancel()
        why = "timed out" if isinstance(exc, TimeoutError) else os_reason(exc)
        hs.fail_handshake(
            Ack.UNREACHABLE, ErrorCode.UNREACHABLE, f"cannot connect to {dest}: {why}"
        )
        return
    if hs.done:
        flow.finished = True
        flow.idle.cancel()
        if flow.transport is not None:
            flow.transport.close()
        return
    hs.done = True
    hs.record.server_app_addr = f"udp:{format_host_port(*target)}"
    mux_for(session).flows[flow.flow_id] = flow
    flow.counters.max_payload = codec.max_payload(session.datagram_room(), flow.flow_id)
    session.send(hs.stream_id, bytes([Ack.OK]))
    session.register(hs.stream_id, flow)
    ep.table.opened(hs.record)
