"""Splice: one TCP/UNIX connection <-> one QUIC stream, with backpressure both ways.

State (each flag only ever goes False -> True):

* ``_fin_to_stream``  the app half-closed (EOF read); we sent the stream FIN.
* ``_fin_to_app``     the peer's FIN arrived and every byte before it was written; we called
  ``write_eof`` (shutdown(SHUT_WR)).
* The socket is closed only when both are set (half-close works, unlike quic-tun), and the
  stream is reset -- never FINed -- when anything ends abnormally: an app RST becomes
  RESET_STREAM, and RESET_STREAM / STOP_SENDING / a lost connection become an RST (SO_LINGER 0)
  on the socket.

Backpressure:

* socket -> stream: the splice is a ``BufferedProtocol`` so that each read is *sized*: never more
  than the session's ``read_allowance`` (the stream's room below 1 MiB unsent, and its
  connection's room in ``connection-send-budget``, see ``quic/send_budget.py``).  When a send
  leaves no room, stop reading until the session wakes us (``on_send_ready``), oldest first.
  Reads go into one buffer shared by every splice of the process (a read is filled and handed
  over in one callback pair), so 10,000 tunnels do not cost 10,000 read buffers.
* stream -> socket: bytes written while the socket's buffer is above its high-water mark are
  *held*; the engine grants the peer more credit only for bytes that drained
  (``session.consume``), so a slow reader costs one stream window, not the whole transfer.

The client endpoint's splice starts *unattached*: it does not read the app until its stream is
open and the token sent (``begin_handshake``, then ``attach`` right away, so the app's first
bytes travel with the token); the server's ack byte is stripped from the stream when it comes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from quictund.tunnel.tunnels import TunnelRecord
from quictund.wire import Ack, ErrorCode

if TYPE_CHECKING:
    from quictund.quic.session import QuicSession

logger = logging.getLogger(__name__)
# this side reset the tunnel to take back its memory (quic/reclaim.py); "reclaimed" is what
# tunnels.RECLAIMED_REASON counts, as in the peer's "peer reset the stream (reclaimed)"
RECLAIMED_HERE = (
    "reclaimed here: its app read nothing for reclaim-stalled-after while other tunnels of "
    "the connection needed the memory its data held"
)

WRITE_HIGH_WATER = 256 * 1024
_EARLY_READ = 64 * 1024  # what an unattached splice reads (it pauses at once)
_LINGER_RST = struct.pack("ii", 1, 0)
_READ_BUFFER = memoryview(bytearray(256 * 1024))  # shared: see the module docstring
_EARLY_BUFFER = _READ_BUFFER[:_EARLY_READ]


class Splice(asyncio.BufferedProtocol):
    def __init__(
        self,
        record: TunnelRecord,
        on_finished: Callable[[Splice, str], None],
        *,
        on_connected: Callable[[Splice], None] | None = None,
        app_is_client: bool,
    ) -> None:
        self.record = record
        record.closer = self._close_by_operator
        self.transport: asyncio.Transport | None = None
        self.session: QuicSession | None = None
        self.stream_id = -1
        self.ack: asyncio.Future[int] | None = None
        self._on_finished = on_finished
        self._on_connected = on_connected
        self._app_is_client = app_is_client  # which byte counter the app's bytes go to
        self._attached = False
        self._fin_to_stream = False
        self._fin_to_app = False
        self._write_paused = False
        self._read_paused = False  # by us, waiting for the session's on_send_ready
        self._held = 0
        self._finished = False
        self._early: list[bytes] = []
        self._out: list[bytes] = []  # stream -> app bytes of this loop turn (see flush)
        self._out_fin = False
        self._early_eof = False

    # ---- asyncio.Protocol callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's ABCs: cast, don't isinstance.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self._attached:
            transport.pause_reading()
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        session = self.session
        if not self._attached or session is None or self._finished:
            return _EARLY_BUFFER
        size = session.read_allowance(self.stream_id)
        return _READ_BUFFER if size >= len(_READ_BUFFER) else _READ_BUFFER[:size]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if not self._attached:
            # uvloop may start reading right after connection_made despite pause_reading();
            # keep the early bytes (bounded: we pause again at once) until the tunnel is up.
            self._early.append(data)
            assert self.transport is not None
            self.transport.pause_reading()
            return
        session = self.session
        if session is None or self._finished:
            return
        self._count_from_app(data)
        stop = self._send(session, data, end_stream=False)
        if stop is None:
            return
        if stop and not self._read_paused:
            assert self.transport is not None
            self._read_paused = True
            self.transport.pause_reading()
            session.wait_send_ready(self.stream_id, self)

    def eof_received(self) -> bool:
        if not self._attached:
            self._early_eof = True
            return True
        if self.session is not None and not self._finished:
            self._fin_to_stream = True
            if self._send(self.session, b"", end_stream=True) is not None:
                self._maybe_close()
        return True  # keep the socket open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        if self._finished:
            return
        if exc is not None or not (self._fin_to_stream and self._fin_to_app):
            reason = f"app connection lost: {exc}" if exc else "app closed before both FINs"
            if isinstance(exc, ConnectionResetError):
                reason = "app reset the connection"
            self._reset_stream(ErrorCode.APP_RESET)
            self._finish(reason)
        else:
            self._finish("closed")

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._held and self.session is not None and not self._finished:
            self.session.consume(self.stream_id, self._held)
        self._held = 0

    # ---- StreamHandler callbacks (from the QUIC session) ---------------------------------

    def on_stream_data(self, data: bytes, end_stream: bool) -> None:
        if self._finished:
            return
        if self.ack is not None and not self.ack.done():
            if not data:
                if end_stream:
                    self.ack.set_result(-1)
                return
            self.ack.set_result(data[0])
            if data[0] != Ack.OK:
                return
            data = data[1:]
            self.session.consume(self.stream_id, 1)  # type: ignore[union-attr]
        assert self.session is not None
        if data or end_stream:
            if not self._out and not self._out_fin:
                self.session.flush_soon(self)
            if data:
                self._out.append(data)
            self._out_fin = self._out_fin or end_stream

    def flush(self) -> None:
        """Write what the stream delivered this loop turn in one syscall, then the FIN.

        A QUIC packet carries ~1.3 KB; one ``send()`` per packet cost a fifth of the receiver's
        CPU.  The session calls this once per loop turn, before it transmits.
        """
        out, self._out = self._out, []
        transport = self.transport
        if self._finished or transport is None or self.session is None:
            return
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            self._count_to_app(data)
            transport.write(data)
            if self._write_paused:
                self._held += len(data)
            else:
                self.session.consume(self.stream_id, len(data))
        if self._out_fin and not self._fin_to_app:
            self._fin_to_app = True
            if transport.can_write_eof():
                transport.write_eof()
            self._maybe_close()

    def on_stream_reset(self, error_code: int) -> None:
        reason = f"peer reset the stream ({_code_name(error_code)})"
        if self.session is not None and self.session.reclaimed_here(self.stream_id):
            reason = RECLAIMED_HERE
        self._reset_stream(error_code)  # finish our sending half too, so the stream is freed
        self._abort_app(reason)

    def on_stop_sending(self, error_code: int) -> None:
        self._reset_stream(error_code)
        self._abort_app(f"peer stopped reading ({_code_name(error_code)})")

    def on_send_ready(self) -> None:
        self._read_paused = False
        if not self._finished and self.transport is not None:
            self.transport.resume_reading()

    def on_session_lost(self, reason: str) -> None:
        self.session = None  # the session already forgot us
        self._abort_app(f"QUIC connection lost: {reason}")

    # ---- public API ----------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Relaying (``attach`` was called): until then the handshake owns the tunnel's ending."""
        return self._attached

    def begin_handshake(self, session: QuicSession, stream_id: int) -> asyncio.Future[int]:
        """Client side: the stream is open and the token sent; the next byte is the ack."""
        self.session = session
        self.stream_id = stream_id
        self.record.stream_id = stream_id
        self.ack = asyncio.get_running_loop().create_future()
        return self.ack

    def attach(self, session: QuicSession, stream_id: int) -> None:
        """Start relaying: from now on app bytes go to ``stream_id``."""
        self.session = session
        self.stream_id = stream_id
        self.record.stream_id = stream_id
        self._attached = True
        early, self._early = self._early, []
        for chunk in early:
            self.data_received(chunk)
        if self._early_eof:
            self.eof_received()
        elif self.transport is not None and not self._finished and not self._read_paused:
            self.transport.resume_reading()

    def abort(self, reason: str, error_code: int = ErrorCode.INTERNAL) -> None:
        """Reset both sides (used for refused handshakes, DELETE and forced shutdown)."""
        self._reset_stream(error_code)
        self._abort_app(reason)

    def _close_by_operator(self, reason: str) -> None:
        self.abort(reason, ErrorCode.CLOSED_BY_OPERATOR)

    @property
    def finished(self) -> bool:
        return self._finished

    # ---- private -------------------------------------------------------------------------

    def _count_from_app(self, data: bytes) -> None:
        record = self.record
        if self._app_is_client:
            record.client_total_bytes += len(data)
            if not record.classifier.done:
                record.classifier.feed_client(data)
        else:
            record.server_total_bytes += len(data)
            if not record.classifier.done:
                record.classifier.feed_server(data)

    def _count_to_app(self, data: bytes) -> None:
        record = self.record
        if self._app_is_client:
            record.server_total_bytes += len(data)
            if not record.classifier.done:
                record.classifier.feed_server(data)
        else:
            record.client_total_bytes += len(data)
            if not record.classifier.done:
                record.classifier.feed_client(data)

    def _send(self, session: QuicSession, data: bytes, *, end_stream: bool) -> bool | None:
        """Hand app bytes to the stream: None if the tunnel ended meanwhile, else whether it
        must stop reading (the connection's send budget, ``session.send``).  An exception
        must not escape a protocol callback: the loop would close the app connection
        cleanly (a FIN, which looks like a complete transfer), so it resets the tunnel."""
        try:
            stop = session.send(self.stream_id, data, end_stream)
        except Exception as exc:
            logger.debug("QUIC stream %d refused app data: %s", self.stream_id, exc)
            try:
                self._reset_stream(ErrorCode.INTERNAL)
            except Exception:  # the engine that refused the data may refuse the reset too
                logger.debug("QUIC stream %d: reset refused as well", self.stream_id)
            self._abort_app(f"QUIC stream refused data: {exc}")
            return None
        return None if self._finished else stop

    def _maybe_close(self) -> None:
        if self._fin_to_stream and self._fin_to_app and self.transport is not None:
            self.transport.close()  # flushes what is buffered; connection_lost(None) follows

    def _reset_stream(self, error_code: int) -> None:
        if self.session is not None and self.stream_id >= 0:
            self.session.reset(self.stream_id, error_code)

    def _abort_app(self, reason: str) -> None:
        if self._finished:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family != socket.AF_UNIX:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
                except OSError:
                    pass
            transport.abort()
        elif transport is not None:
            transport.abort()
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self.ack is not None and not self.ack.done():
            self.ack.set_result(-1)
        if self.session is not None and self.stream_id >= 0:
            self.session.forget(self.stream_id)
        self._on_finished(self, reason)


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"0x{code:x}"
