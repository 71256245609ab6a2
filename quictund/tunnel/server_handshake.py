"""The per-stream handshake on the server: read the token, check the destination against
policy, connect to it and hand the stream to a splice (``ServerHandshake``); or refuse the
stream before reading anything when a flood limit says so (``Refused``).

Each stream's handshake runs in its own task, so a slow token or a slow ``connect()`` delays
only that tunnel (quic-tun handles them one after another per connection).  A failed handshake
sends exactly **one** ack byte and ends the stream (quic-tun floods the ack byte forever and
wedges the connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from quictund.errors import TokenRejected, os_reason
from quictund.policy.addresses import StreamAddress, format_host_port
from quictund.policy.limits import Limit
from quictund.policy.policy import IPAddress, Policy
from quictund.quic.session import QuicSession
from quictund.tunnel.splice import Splice
from quictund.tunnel.tunnels import TunnelRecord
from quictund.tunnel.unixdest import connect_unix
from quictund.udpflow.server import open_flow
from quictund.wire import Ack, BadToken, ErrorCode, TokenDecoder

if TYPE_CHECKING:
    from quictund.tunnel.server_endpoint import ServerEndpoint

logger = logging.getLogger("quictund.tunnel.server_endpoint")  # the name operators filter on


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
        if dest.is_udp:
            await open_flow(self, dest)
            return
        quota = self.quota
        splice = Splice(
            self.record,
            # Before attach the handshake ends the tunnel itself (_fail, _abandon): a splice
            # aborted then must not end it twice (the per-identity count went down twice).
            lambda sp, reason: ep.splice_finished(sp, reason, quota) if sp.attached else None,
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
                if dest.is_unix:  # the resolved path the policy checked, as it was checked
                    await connect_unix(loop, lambda: splice, target[0])
                else:
                    await loop.create_connection(lambda: splice, target[0], target[1])
        except TimeoutError:
            self._fail(Ack.UNREACHABLE, ErrorCode.TIMEOUT, f"connect to {dest} timed out")
            return
        except asyncio.CancelledError:  # _abandon: a connection made just now must not linger
            splice.abort("client gone before the handshake finished")
            raise
        except OSError as exc:
            self._fail(
                Ack.UNREACHABLE,
                ErrorCode.UNREACHABLE,
                f"cannot connect to {dest}: {os_reason(exc)}",
            )
            return
        if not self.done and self.session.closed.is_set():  # closed while we connected
            self._abandon(f"QUIC connection lost: {self.session.close_reason}")
        if self.done:  # the stream or connection went away while we were connecting
            splice.abort("client gone before the handshake finished")
            return
        if not dest.is_unix and splice.transport is not None:
            peer = splice.transport.get_extra_info("peername")
            if peer:
                self.record.server_app_addr = format_host_port(peer[0], peer[1])
        # Still the stream's handler while the ack goes out: a send that finds the connection
        # gone (qh3 refuses writes once the peer closed, before it reports the close) ends the
        # session, whose on_session_lost reaches us and ends the tunnel once.  Marked done
        # first, nobody ended it: the splice was then attached and tracked after its session
        # had closed, and kept the session, its engine and the identity's quota slot forever.
        self.session.send(self.stream_id, bytes([Ack.OK]))
        if self.done:
            splice.abort("client gone before the handshake finished")
            return
        self.done = True
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
            real = self._policy().unix_target(dest)  # symlinks resolved, then checked
            return None if real is None else (real, 0)
        family = {
            "tcp4": socket.AF_INET,
            "tcp6": socket.AF_INET6,
            "udp4": socket.AF_INET,
            "udp6": socket.AF_INET6,
        }.get(
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

    # The UDP branch (quictund/udpflow/server.py) ends a handshake the same two ways.
    async def resolve_and_check(self, dest: StreamAddress) -> tuple[str, int] | None:
        return await self._resolve_and_check(dest)

    def fail_handshake(self, ack: Ack, code: ErrorCode, reason: str) -> None:
        self._fail(ack, code, reason)

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
