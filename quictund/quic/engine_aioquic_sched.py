"""aioquic adapter, part: what aioquic sees per packet it builds (``SlicedSending``).

aioquic walks ``_streams`` (for limits) and ``_streams_queue`` (for data) once per packet it
builds, so a packet costs O(streams).  ``SlicedSending`` shows it only streams that have work
(idle ones leave the queue, ``_stays_queued``, and rejoin on any event, ``_activate``), and of
those a slice at a time (``_slice_end``).  A stream whose data waits only for the *connection's*
credit is idle too: it is parked (``_parked``) until the limit rises, when all the parked rejoin
at once.  Only ``engine_*`` modules touch engine internals;
this one is a base class of ``engine_aioquic.AioquicConnection``, which keeps the credit state
(``_credit_dirty``, ``_settle``) and the pacer (``_pacing_at``) it reads.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.stream import QuicStream

from quictund.quic import engine_aioquic_build as build

# What aioquic sees per packet-building pass (_write_application): at least SEND_SLICE busy
# streams, and more while together they have less than SLICE_BYTES to send -- so many streams
# with a few bytes each still share packets.
SEND_SLICE = 8
SLICE_BYTES = 16 * 1024
# the smallest STREAM frame: type, a 1-byte id and a 2-byte length (FIN only, offset 0)
MIN_STREAM_FRAME = 4


class SlicedSending(QuicConnection):
    """The send-queue half of the aioquic adapter (see the module docstring)."""

    _credit_dirty: set[int]  # streams whose MAX_STREAM_DATA must go out (the adapter's)
    _pacing_at: float | None
    # Streams idle only for want of connection credit, waiting for MAX_DATA (by id: a stream
    # parked again after some event re-queued it is kept once).  Tunnels whose data waits for
    # a peer that grants no MAX_DATA (a hostile or dead reader) stayed queued and were
    # re-checked by every pass (tests/test_engine.py: 508 of 1,000).
    _parked: dict[int, QuicStream]
    _moved: set[int]  # streams sent from or discarded (``unsent`` changed), for the session

    def _init_sending(self) -> None:
        self._parked = {}
        self._moved = set()

    def _settle(self, stream: QuicStream) -> None:
        """A stream aioquic discarded (the adapter returns its credit)."""
        raise NotImplementedError

    def _write_application(self, builder: QuicPacketBuilder, network_path: Any, now: float) -> None:
        # aioquic walks ``_streams`` (for limits) and ``_streams_queue`` (for data) once per
        # packet it builds, so a packet costs O(streams).  Show it only streams that have work
        # (see _stays_queued), and those a slice at a time (_slice_end): the next slice only
        # once this one has nothing left to send, so 100 busy tunnels cost what 8 do.
        # Fairness across calls is aioquic's own rule applied to the whole queue: streams that
        # sent new data go to the back, behind those not reached and those that had nothing.
        sliced = build.fast_sliced  # this method, compiled (_aioquic_sched.pyx)
        if sliced is not None:
            sliced(self, builder, network_path, now, QuicConnection._write_application)
            return
        if self._parked and self._remote_max_data_used < self._remote_max_data:
            self._unpark()  # MAX_DATA (or the peer's transport parameters) raised the limit
        every = self._streams
        queue = self._streams_queue
        waited: list[QuicStream] = []
        sent: list[QuicStream] = []
        pos = 0
        full = False  # the congestion window filled: the streams not reached could not send
        try:
            while True:
                end = _slice_end(queue, pos)
                batch = _stops_first(queue[pos:end])
                pos = end
                before = {s.stream_id: s.sender.highest_offset for s in batch}
                self._streams = {s.stream_id: s for s in batch}  # type: ignore[misc]
                self._streams_queue = batch
                try:
                    fast = build.fast_write
                    if fast is None or not fast(self, builder, network_path, now):
                        super()._write_application(builder, network_path, now)
                finally:
                    for stream in batch:
                        if stream.stream_id not in self._streams:  # aioquic discarded it
                            every.pop(stream.stream_id, None)  # type: ignore[arg-type]
                            self._settle(stream)
                            self._moved.add(stream.stream_id)  # type: ignore[arg-type]
                            self._parked.pop(stream.stream_id, None)  # type: ignore[arg-type]
                    for stream in self._streams_queue:
                        if stream.sender.highest_offset != before[stream.stream_id]:
                            sent.append(stream)
                            self._moved.add(stream.stream_id)  # type: ignore[arg-type]
                        else:
                            waited.append(stream)
                if pos >= len(queue) or self._pacing_at is not None:
                    break
                if _window_full(builder):
                    full = True
                    break
        finally:
            self._streams = every
            # Only the streams this call served are checked: those not reached were left as
            # they were (checked when reached).  Filtering the whole queue cost every call --
            # one per datagram in and out -- a walk over every stream with data waiting for
            # the congestion window: 30 % of a server's CPU under four flooding peers.
            # A pass the pacer stopped leaves the streams it did not reach first for the next
            # one.  Otherwise every stream it did not ask could not have sent either (the
            # window was full): aioquic's round-robin order, those that sent at the back.
            # Putting them first there made the slice that found the window full lose its
            # turn every time: streams starved (test_100_busy_streams_share...).
            rest = queue[pos:]
            waited = [s for s in waited if self._stays_queued(s)]
            sent = [s for s in sent if self._stays_queued(s)]
            self._streams_queue = waited + rest + sent if full else rest + waited + sent

    def _unpark(self) -> None:
        parked, self._parked = self._parked, {}
        for stream_id in parked:
            self._activate(stream_id)

    def _activate(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not getattr(stream, "_qt_queued", True):
            stream._qt_queued = True  # type: ignore[attr-defined]
            self._streams_queue.append(stream)

    def _mark_new_streams(self) -> None:
        # aioquic appends new streams to the queue; they carry no mark yet.
        for stream in reversed(self._streams_queue):
            if hasattr(stream, "_qt_queued"):
                break
            stream._qt_queued = True  # type: ignore[attr-defined]

    def _stays_queued(self, stream: QuicStream) -> bool:
        """False (and unmark) for a stream with nothing to send, resend, ack or announce."""
        sender, receiver = stream.sender, stream.receiver
        # A stream waiting for the peer's MAX_STREAM_DATA (a stalled reader over there) has
        # nothing to send either: _handle_max_stream_data_frame re-queues it.  Without this,
        # 500 such streams cost every packet a walk over them all.
        everything_acked = sender._buffer_start >= sender.highest_offset
        waits_for_credit = (
            everything_acked and sender.highest_offset >= stream.max_stream_data_remote
        )
        waits_for_connection = (
            everything_acked
            and not waits_for_credit
            and not sender.buffer_is_empty
            and self._remote_max_data_used >= self._remote_max_data
        )
        idle = (
            (
                waits_for_credit
                or waits_for_connection
                or (sender.buffer_is_empty and sender._buffer_start == sender._buffer_stop)
            )
            and sender._buffer_fin is None
            and sender._reset_error_code is None
            and not sender.reset_pending
            and not stream.is_blocked
            and receiver._stop_error_code is None
            and not receiver.is_finished
            and stream.max_stream_data_local_sent == stream.max_stream_data_local
            and stream.stream_id not in self._credit_dirty
        )
        if idle:
            stream._qt_queued = False  # type: ignore[attr-defined]
            if waits_for_connection and stream.stream_id is not None:
                self._parked[stream.stream_id] = stream
        return not idle


def _stops_first(batch: list[QuicStream]) -> list[QuicStream]:
    """``batch`` with the streams that have a STOP_SENDING or RESET_STREAM to send first.

    aioquic writes those frames where the stream comes in the queue.  Behind a stream whose
    data filled the packet they find no room, ``start_frame`` raises QuicPacketBuilderStop,
    and that ends the whole ``datagrams_to_send``: one packet per pass for as long as the
    streams before it have data.  After 300 busy tunnels, one reset tunnel left that way held
    8 new ones to ~11 Mbit/s for seconds (tests/test_engine_send.py).  First, they go into a
    packet that has room, and the data after them.
    """
    for stream in batch:
        if stream.sender.reset_pending or stream.receiver.stop_pending:
            return sorted(
                batch, key=lambda s: not (s.sender.reset_pending or s.receiver.stop_pending)
            )
    return batch


def _window_full(builder: QuicPacketBuilder) -> bool:
    """True when the slice left an empty packet with no room for a STREAM frame: the
    congestion window is full, and no slice after it can send either (a fresh packet always
    has room in its datagram: the builder starts a new one below 128 bytes).

    Without this a pass over a full window asked every slice in turn: with 1,000 streams
    queued (a peer opening thousands of tunnels, each with data waiting), every ACK and timer
    of that connection cost 1.3 ms to send nothing (100 streams: 134 µs; 1: 9 µs)."""
    try:
        return builder.packet_is_empty and builder.remaining_flight_space < MIN_STREAM_FRAME
    except (AssertionError, AttributeError):  # no packet open: the slice started none
        return False


def _slice_end(queue: list[QuicStream], pos: int) -> int:
    """End of the slice starting at ``pos``: SEND_SLICE streams, more while they are small."""
    end = min(pos + SEND_SLICE, len(queue))
    pending = sum(s.sender._buffer_stop - s.sender.highest_offset for s in queue[pos:end])
    while end < len(queue) and pending < SLICE_BYTES:
        sender = queue[end].sender
        pending += sender._buffer_stop - sender.highest_offset
        end += 1
    return end
