"""One QUIC connection driven on asyncio: the only caller of the engine's I/O methods.

Responsibilities, and the rules that keep them cheap:

* Feed datagrams to the engine with a **high-resolution** ``now`` (``time.monotonic``), never
  ``loop.time()``: uvloop's clock moves in 1 ms steps and breaks RTT estimates.
* **Coalesce transmits**: any number of writes or received datagrams in one loop turn lead to
  one ``datagrams_to_send`` pass (``transmit_soon``).
* Keep **one timer** for the engine, re-armed only when its deadline changes.
* Dispatch engine events to one ``StreamHandler`` per stream id.  Handlers are plain objects
  whose callbacks never await; an exception in one is logged and resets only that stream.
* **Bound what tunnels queue** (``quic/send_budget.py``): each tunnel's reads are sized to its
  room and to the connection's ``connection-send-budget``; tunnels that must wait are woken
  oldest first once data went out.  Re-reading every queued stream's backlog costs one engine
  call per stream, so with many streams it runs at most every few milliseconds, and while
  little was sent (a peer that grants no credit), at most every 100 ms.
* **Keep-alive, liveness and stall probes** are ``quic/session_watch.py``'s (``PeerWatch``):
  the session tells it what arrived and what was acknowledged, and sends its PINGs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from quictund.policy.identity import Identity
from quictund.quic.engine import EngineConnection, StreamReclaimed, events
from quictund.quic.handlers import Flushable, SessionOwner, StreamHandler
from quictund.quic.reclaim import reclaimed_message
from quictund.quic.send_budget import DEFAULT_BUDGET, MIN_READ, SendBudget
from quictund.quic.send_refresh import BudgetRefresh
from quictund.quic.session_watch import PeerWatch
from quictund.quic.timers import timer_delay
from quictund.wire import ErrorCode

logger = logging.getLogger(__name__)

Address = tuple[str, int]


class QuicSession:
    def __init__(
        self,
        conn: EngineConnection,
        send: Callable[[list[tuple[bytes, Address]]], None],
        owner: SessionOwner,
        *,
        peer: Address,
        keepalive_s: float,
        dead_after_s: float,
        on_cid: Callable[[bytes, bool], None] | None = None,
        send_budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.conn = conn
        self.peer = peer
        self._send = send
        self._owner = owner
        self._on_cid = on_cid
        self._loop = asyncio.get_running_loop()
        self._handlers: dict[int, StreamHandler] = {}
        self._reclaimed: set[int] = set()  # streams this side reclaimed, until forgotten
        self._budget: SendBudget[StreamHandler] = SendBudget(send_budget, conn.unsent)
        self._refresh = BudgetRefresh(
            self._budget,
            self._loop,
            lambda handler: self._guard(handler.on_send_ready),
            conn.sent_streams,
        )
        self._to_flush: list[Flushable] = []
        self._transmit_scheduled = False
        self._events_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._ping_uid = 0
        self.handshake_done: asyncio.Future[None] = self._loop.create_future()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._identity: Identity | None = None
        self.streams_seen = 0  # streams opened on this connection, by either side
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        # UDP flows (quictund/udpflow): the negotiated ALPN and who takes DATAGRAM frames.
        self.alpn: str | None = None
        self.datagram_handler: Callable[[bytes], None] | None = None
        self._watch = PeerWatch(
            self._loop,
            peer=peer,
            is_client=conn.is_client,
            keepalive_s=keepalive_s,
            dead_after_s=dead_after_s,
            rtt=lambda: float(conn.stats()["rtt_s"]),
            in_flight=lambda: conn.stats()["bytes_in_flight"] > 0,
            ping=self._ping,
            dead=self._peer_dead,
        )
        self.created_at = self._watch.created_at

    # ---- input ---------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.closed.is_set():
            return
        now = time.monotonic()
        self._watch.heard(now)
        self.datagrams_in += 1
        self.bytes_in += len(data)
        in_flight = self.conn.bytes_in_flight
        self.conn.receive_datagram(data, addr, now)
        if self.conn.bytes_in_flight < in_flight:  # it acknowledged something of ours
            self._watch.acknowledged(now)
        self._process_events()
        self.transmit_soon()

    # ---- stream API for tunnels ----------------------------------------------------------

    def open_stream(self, handler: StreamHandler) -> int:
        sid = self.conn.open_stream()
        self._handlers[sid] = handler
        self.streams_seen += 1
        return sid

    def register(self, stream_id: int, handler: StreamHandler) -> None:
        """Route ``stream_id``'s events to ``handler``; on a session already over, tell the
        handler at once instead.  Kept, the handler would keep the closed session, and with it
        the engine's connection and buffers, alive for as long as its app socket lives (a
        tunnel whose connect finished after the close: ~23 MiB per hostile connection)."""
        if self.closed.is_set():
            self._guard(handler.on_session_lost, self.close_reason or "closed")
            return
        self._handlers[stream_id] = handler

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue ``data``; True when the tunnel must stop reading (``wait_send_ready``).  If
        the engine refuses because the connection is over, end the session here, so every
        tunnel sees a lost connection (a reset), never a clean end."""
        if self.closed.is_set():
            return True
        try:
            self.conn.send_stream_data(stream_id, data, end_stream)
        except Exception:
            # qh3 refuses writes as soon as the peer closed, before it reports
            # ConnectionTerminated: end the session now.  A stream-level refusal is the caller's.
            self._process_events()
            if not self.closed.is_set() and self.conn.is_closed:
                self._terminate("closed by peer or engine")
            if self.closed.is_set():
                return True
            raise
        self.transmit_soon()
        return self._budget.sent(stream_id, len(data))

    def unsent(self, stream_id: int) -> int:
        return self.conn.unsent(stream_id)

    def read_allowance(self, stream_id: int) -> int:
        """How many bytes the tunnel on ``stream_id`` may read from its socket next."""
        return self._budget.allowance(stream_id)

    def wait_send_ready(self, stream_id: int, handler: StreamHandler) -> None:
        """Call ``handler.on_send_ready()`` once the stream and the connection have room."""
        self._budget.wait(stream_id, handler)

    def flush_soon(self, handler: Flushable) -> None:
        """Call ``handler.flush()`` once, before this loop turn's transmit."""
        self._to_flush.append(handler)
        self.transmit_soon()

    def consume(self, stream_id: int, count: int) -> None:
        self.conn.consume(stream_id, count)
        # An engine that withholds events until the tunnels catch up (qh3) may have released
        # some: handle them in this turn's transmit, never re-entrantly from a tunnel callback.
        if self.conn.events_ready:
            self._events_pending = True
        self.transmit_soon()

    def reset(self, stream_id: int, error_code: int) -> None:
        """Abort both directions of ``stream_id`` (RESET_STREAM + STOP_SENDING), quietly."""
        for op in (self.conn.reset_stream, self.conn.stop_stream):
            try:
                op(stream_id, error_code)
            except (ValueError, AssertionError):
                pass  # that direction is already finished or the stream discarded
        self.transmit_soon()

    def stop(self, stream_id: int, error_code: int) -> None:
        try:
            self.conn.stop_stream(stream_id, error_code)
        except (ValueError, AssertionError):
            pass
        self.transmit_soon()

    def forget(self, stream_id: int) -> None:
        """The tunnel on ``stream_id`` is over: drop its handler and its credit accounting."""
        self._handlers.pop(stream_id, None)
        self._reclaimed.discard(stream_id)
        if self._budget.tracked or self._budget.waiting:
            self._budget.forget(stream_id)
            self._refresh.sent(MIN_READ)  # room freed: worth a re-read
        self.conn.release(stream_id)
        if self.conn.events_ready:
            self._events_pending = True
        self.transmit_soon()

    def reclaimed_here(self, stream_id: int) -> bool:
        """Whether the reset a tunnel is being told of is this side's reclaim (its own app
        stalled), not the peer's RESET_STREAM with the same code."""
        return stream_id in self._reclaimed

    def send_datagram(self, data: bytes) -> bool:
        """Queue one DATAGRAM frame (False: the engine's queue was full; it dropped its oldest)."""
        queued = self.conn.send_datagram(data)
        self.transmit_soon()
        return queued

    def datagram_room(self) -> int:
        """The largest DATAGRAM frame payload one packet carries (0: the peer takes none)."""
        return self.conn.datagram_room()

    @property
    def identity(self) -> Identity:
        """What the handshake verified about the peer (``identity.py``); empty if nothing."""
        if self._identity is None:
            self._identity = self.conn.peer_identity
        return self._identity

    @property
    def stream_count(self) -> int:
        return len(self._handlers)

    # ---- lifecycle -----------------------------------------------------------------------

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "closed") -> None:
        """Send CONNECTION_CLOSE and reset every tunnel on this connection."""
        if self.closed.is_set():
            return
        self.conn.close(error_code=error_code, reason_phrase=reason)
        self._transmit()
        self._terminate(reason)

    def _terminate(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._refresh.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._watch.stop()
        if not self.handshake_done.done():
            self.handshake_done.set_exception(ConnectionError(reason))
            self.handshake_done.exception()  # mark retrieved; the connector reads close_reason
        handlers = list(self._handlers.values())
        self._handlers.clear()
        self._budget.clear()
        for handler in handlers:
            self._guard(handler.on_session_lost, reason)
        self._owner.session_closed(self, reason)

    # ---- private -------------------------------------------------------------------------

    def transmit_soon(self) -> None:
        if not self._transmit_scheduled and not self.closed.is_set():
            self._transmit_scheduled = True
            self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        if self._to_flush:
            handlers, self._to_flush = self._to_flush, []
            for handler in handlers:
                self._guard(handler.flush)
        self._transmit_scheduled = False
        if self.closed.is_set():
            return
        if self._events_pending:
            self._events_pending = False
            self._process_events()
            if self.closed.is_set():
                return
        now = time.monotonic()
        try:
            datagrams = self.conn.datagrams_to_send(now)
        except Exception:
            logger.exception("QUIC engine failed while sending to %s", self.peer)
            self._terminate("internal error")
            return
        if datagrams:
            self._send(datagrams)  # one batch: GSO sends (quic/udp.py)
            size = sum(len(data) for data, _ in datagrams)
            self.bytes_out += size
            self.datagrams_out += len(datagrams)
            if self._budget.tracked:
                self._refresh.sent(size)
            else:
                self.conn.sent_streams()  # nothing queued to re-read: forget what moved
        if self.conn.events_ready:  # a tunnel the engine reclaimed (events.StreamReclaimed)
            self._events_pending = True
            self.transmit_soon()
        self._arm_timer()

    def _arm_timer(self) -> None:
        at = self.conn.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_later(timer_delay(at, time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.conn.handle_timer(time.monotonic())
            self._process_events()
        except Exception:
            # As for a datagram (quic/server.py): a bug inside one connection closes that
            # connection, instead of leaving it without a timer until the keep-alive gives up.
            logger.exception("QUIC connection with %s failed in its timer; closing it", self.peer)
            self.close(ErrorCode.INTERNAL, "internal error")
            return
        self._transmit()

    @property
    def last_rx(self) -> float:
        """When the last datagram from the peer arrived (``time.monotonic``)."""
        return self._watch.last_rx

    def _peer_dead(self) -> None:
        """``PeerWatch``: the peer stopped answering; close with CONNECTION_LOST."""
        self.conn.close(error_code=ErrorCode.CONNECTION_LOST, reason_phrase="peer silent")
        self._transmit()
        self._terminate("peer unresponsive")

    def _ping(self) -> int:
        """Queue a PING (its ACK comes back as ``PingAcknowledged`` with this uid)."""
        self._ping_uid += 1
        self.conn.send_ping(self._ping_uid)
        self.transmit_soon()
        return self._ping_uid

    def _process_events(self) -> None:
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                handler = self._handlers.get(event.stream_id)
                if handler is None:
                    handler = self._new_peer_stream(event.stream_id)
                    if handler is None:
                        continue
                self._guard_stream(
                    event.stream_id, handler.on_stream_data, event.data, event.end_stream
                )
            elif isinstance(event, events.StreamReset):
                handler = self._handlers.get(event.stream_id)
                if isinstance(event, StreamReclaimed):
                    logger.warning("%s", reclaimed_message(event, self.peer))
                    if handler is not None:  # it asks reclaimed_here, until it forgets
                        self._reclaimed.add(event.stream_id)
                if handler is not None:
                    self._guard_stream(event.stream_id, handler.on_stream_reset, event.error_code)
                else:
                    self.conn.release(event.stream_id)
            elif isinstance(event, events.StopSendingReceived):
                handler = self._handlers.get(event.stream_id)
                if handler is not None:
                    self._guard_stream(event.stream_id, handler.on_stop_sending, event.error_code)
            elif isinstance(event, events.DatagramFrameReceived):
                if self.datagram_handler is not None:
                    self._guard(self.datagram_handler, event.data)
            elif isinstance(event, events.PingAcknowledged):
                self._watch.ping_acknowledged(event.uid)
            elif isinstance(event, events.HandshakeCompleted):
                self.alpn = event.alpn_protocol
                if not self.handshake_done.done():
                    self.handshake_done.set_result(None)
            elif isinstance(event, events.ConnectionTerminated):
                reason = event.reason_phrase or f"error 0x{event.error_code:x}"
                self._terminate(f"closed by peer or engine: {reason}")
                return
            elif isinstance(event, events.ConnectionIdIssued):
                if self._on_cid is not None:
                    self._on_cid(event.connection_id, True)
            elif isinstance(event, events.ConnectionIdRetired):
                if self._on_cid is not None:
                    self._on_cid(event.connection_id, False)

    def _new_peer_stream(self, stream_id: int) -> StreamHandler | None:
        # Only the server accepts peer-opened streams; data for a stream we already forgot
        # (late frames after a reset) is simply dropped.
        if self.conn.is_client or stream_id % 4 != 0 or self.conn.is_released(stream_id):
            self.conn.release(stream_id)
            return None
        self.streams_seen += 1
        handler = self._owner.stream_opened(self, stream_id)
        if handler is None:
            self.conn.release(stream_id)
            return None
        self._handlers[stream_id] = handler
        return handler

    def _guard_stream(self, stream_id: int, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("tunnel on stream %d failed; resetting it", stream_id)
            self.reset(stream_id, ErrorCode.INTERNAL)
            self.forget(stream_id)

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            logger.exception("tunnel callback failed")
