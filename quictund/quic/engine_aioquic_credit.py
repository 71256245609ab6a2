"""aioquic adapter, part: receive credit follows consumption, within a per-connection budget.

aioquic doubles MAX_STREAM_DATA / MAX_DATA whenever the peer's highest offset passes half the
limit, i.e. it grants credit for bytes nobody has read, and keeps a zero-filled buffer up to a
stream's highest offset until the peer sends FIN or RESET_STREAM (issue 13).  Here a stream's
limit is ``consumed + its window`` (``credit.StreamWindows``: 32 KiB first, grown while its
tunnel consumes), MAX_DATA is ``credit.connection_limit`` (a window in flight, the budget in
memory, gaps counted as what they span), and ``release`` drops a stream's buffers at once and
credits only bytes that arrived until aioquic discarded it.  *Held* counts bytes handed to a
tunnel but not yet drained into its TCP/UNIX socket.  ``ConsumptionCredit`` is a base class of
``engine_aioquic.AioquicConnection``; only ``engine_*`` modules touch engine internals.
"""

from __future__ import annotations

from typing import Any

from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
)
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from quictund.quic.credit import (
    ReceiveLedger,
    StreamWindows,
    connection_limit,
    initial_stream_window,
    raised_limit,
)
from quictund.quic.engine_aioquic_sched import SlicedSending
from quictund.quic.reclaim import reclaim_longest_stalled
from quictund.quic.settings import EngineSettings


class ConsumptionCredit(SlicedSending):
    """The receive-credit half of the aioquic adapter (see the module docstring).

    The tunnel layer calls ``consume(stream_id, n)`` once ``n`` delivered bytes have left
    quictund (written to the socket and drained below its high-water mark), and ``release``
    when it stops caring about a stream.
    """

    def _init_credit(self, settings: EngineSettings) -> None:
        self._connection_window = settings.connection_window
        self._budget = max(settings.receive_budget, settings.connection_window)
        self._ledger = ReceiveLedger()
        self._windows = StreamWindows(
            initial=initial_stream_window(settings.stream_window, settings.initial_stream_window),
            maximum=settings.stream_window,
            pool=self._budget - self._budget // 4,
            ledger=self._ledger,
        )
        # Connection credit: bytes that left quictund's memory ("retired").  Live streams add
        # what their tunnel consumed; a released stream adds what it had really received (its
        # buffers are dropped at once), and the rest of its extent -- gaps, late frames -- only
        # once aioquic discarded the stream (_unsettled holds what was credited so far).  So
        # used - credit_base is what this connection holds, gaps included, and MAX_DATA keeps
        # it within the budget (credit.connection_limit).
        self._credit_base = 0
        self._released: dict[int, None] = {}  # insertion-ordered set, bounded
        self._unsettled: dict[int, int] = {}
        self._credit_dirty: set[int] = set()
        self._limits_seen = (-1, -1)  # (used, credit base) _write_connection_limits last saw
        # Reclaiming stalled tunnels (docs/design.md): held memory past this mark leaves less
        # than a quarter of the budget in flight, which is pressure as much as a refused window.
        self._reclaim_after = settings.reclaim_stalled_after_s or None
        self._pressure_mark = self._budget - self._budget // 4

    def next_event(self) -> events.QuicEvent | None:
        event = super().next_event()
        if (
            isinstance(event, events.StreamDataReceived)
            and event.data
            and event.stream_id not in self._released
        ):
            self._ledger.delivered(event.stream_id, len(event.data))
        return event

    def consume(self, stream_id: int, count: int) -> None:
        """``count`` bytes of ``stream_id`` have been drained: the peer may send that many more."""
        if not self._ledger.tracks(stream_id):
            return
        self._activate(stream_id)
        self._credit_base += self._ledger.consume(stream_id, count)
        self._credit_dirty.add(stream_id)

    def note_behind_hole(self, stream_id: int) -> None:
        """Data of ``stream_id`` arrived past a hole: its credit may grow (``settle_stream_credit``)
        although its tunnel consumed nothing, since nothing can be delivered until the hole
        fills.  Called by the receive path for each such frame."""
        if stream_id not in self._released:
            self._credit_dirty.add(stream_id)
            self._activate(stream_id)

    def _handle_stream_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        # the pure-Python receive path (the compiled one calls note_behind_hole itself)
        start = buf.tell()
        stream_id = buf.pull_uint_var()
        buf.seek(start)
        super()._handle_stream_frame(context, frame_type, buf)
        stream = self._streams.get(stream_id)
        if stream is not None and len(stream.receiver._ranges):
            self.note_behind_hole(stream_id)

    def release(self, stream_id: int) -> None:
        """Stop tracking ``stream_id``: drop its receive buffers, ignore what still comes.

        Its receiving half is marked finished, so aioquic buffers nothing more for it and
        discards the stream once our sending half is done too -- whether or not the peer
        ever answers our STOP_SENDING with a RESET_STREAM.
        """
        if stream_id in self._released:
            return
        self._released[stream_id] = None
        self._parked.pop(stream_id, None)  # engine_aioquic_sched.py: it waits for nothing now
        if len(self._released) > 65536:
            del self._released[next(iter(self._released))]
        held, consumed = self._ledger.forget(stream_id)
        self._credit_dirty.discard(stream_id)
        self._windows.forget(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:  # aioquic discarded it: everything it received was delivered
            self._credit_base += held
            return
        receiver = stream.receiver
        received = receiver._buffer_start + sum(len(r) for r in receiver._ranges)
        self._credit_base += received - consumed
        self._unsettled[stream_id] = received
        if not receiver.is_finished:
            receiver._buffer = bytearray()
            receiver._ranges = RangeSet()
            receiver._buffer_start = receiver.highest_offset
            receiver.is_finished = True
        self._activate(stream_id)

    def reclaim_if_pressed(self, now: float) -> None:
        """Under pressure, reset the tunnel stalled the longest (if stalled long enough).

        Called before each send pass, never while a packet is being built (the reset frames
        go out in the same pass).  The tunnel learns it from a ``StreamReclaimed`` event.
        """
        ledger = self._ledger
        ledger.now = now
        if self._reclaim_after is None:
            return
        windows = self._windows
        if self._local_max_data.used - self._credit_base <= self._pressure_mark:
            # A refused window is pressure only while parked bytes fill half the pool: busy
            # tunnels that drain fill it with credit, and a tunnel paused beside them (a
            # terminal on XOFF) holds little; resetting it would free nothing they need.
            if not windows.refused or ledger.held_total < windows.pool // 2:
                windows.refused = False
                return
        windows.refused = False
        reclaim_longest_stalled(self, ledger, self._reclaim_after, self._events.append)

    def _settle(self, stream: QuicStream) -> None:
        """aioquic discarded ``stream``: credit the rest of a released stream's extent."""
        credited = self._unsettled.pop(stream.stream_id, None)  # type: ignore[arg-type]
        if credited is not None:
            self._credit_base += stream.receiver.highest_offset - credited

    def is_released(self, stream_id: int) -> bool:
        return stream_id in self._released

    @property
    def receive_buffered(self) -> int:
        """Bytes held in the streams' receive buffers (gaps included), for tests and stats."""
        return sum(len(s.receiver._buffer) for s in self._streams.values())

    @property
    def held_bytes(self) -> int:
        return self._ledger.held_total

    def raise_max_data(self) -> None:
        """Set MAX_DATA to what the budget allows now (announced by the next packet)."""
        max_data = self._local_max_data
        # Asked for every packet built: the target depends only on what was received and
        # what left our memory, so recompute it only when one of them moved.
        seen = (max_data.used, self._credit_base)
        if seen == self._limits_seen:
            return
        self._limits_seen = seen
        target = connection_limit(
            used=max_data.used,
            retired=self._credit_base,
            window=self._connection_window,
            budget=self._budget,
        )
        # Batch by a quarter of the window the peer would really get: when parked bytes
        # leave only 3 MiB in flight, a 4 MiB gain would never raise the limit again.
        window = min(self._connection_window, target - max_data.used)
        raised = raised_limit(target, max_data.value, max(window, 4096))
        if raised is not None:
            max_data.value = raised

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        self.raise_max_data()
        max_data = self._local_max_data
        bidi, uni = self._local_max_streams_bidi, self._local_max_streams_uni
        if max_data.value == max_data.sent and bidi.value == bidi.sent and uni.value == uni.sent:
            return
        for limit in (max_data, bidi, uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # batch MAX_STREAMS, as aioquic does
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    def settle_stream_credit(self, stream: QuicStream) -> None:
        """Set the MAX_STREAM_DATA a consumed-from stream may announce (by the next packet)."""
        sid = stream.stream_id
        if sid in self._credit_dirty:
            self._credit_dirty.discard(sid)
            receiver = stream.receiver
            if stream.max_stream_data_local and not receiver.is_finished:
                stream.max_stream_data_local = self._windows.limit(
                    sid,
                    consumed=self._ledger.consumed.get(sid, 0),
                    advertised=stream.max_stream_data_local,
                    behind=receiver.highest_offset - receiver._buffer_start
                    if len(receiver._ranges)
                    else 0,
                )

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        sid = stream.stream_id
        self.settle_stream_credit(stream)
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            assert sid is not None
            buf.push_uint_var(sid)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
