# cython: language_level=3, boundscheck=False, wraparound=False
"""The adapter's sliced send pass (``SlicedSending._write_application``), compiled (issue 15).

``quictund/quic/engine_aioquic_sched.py`` shows aioquic's packet writer the send queue a slice
of streams at a time and sorts the queue afterwards (see its docstring for why).  That Python
ran on every send pass, also on the half of a request/response tunnel's passes that find
nothing to send: two dictionaries, a slice, a sort key and three lists per pass, ~6 µs of the
~30 µs a pass cost once the packets themselves were compiled (docs/performance.md).

:func:`write_sliced` is the same method, step for step and in the same order (the Python one is
the reference: tests/test_engine.py's slicing, parking and fairness tests run on both, the
pure-Python path under ``make test``'s ``QUICTUND_PURE_PYTHON=1`` stage).  It calls the same
methods of the connection for what is rare or long (``_unpark``, ``_settle``,
``_stays_queued``, the reordering of a slice with stream resets) and the packet writer the
Python method calls (``engine_aioquic_build.fast_write``, or aioquic's own
``_write_application`` when that declines).
"""

from quictund.quic import engine_aioquic_build as _build
from quictund.quic.engine_aioquic_sched import (
    MIN_STREAM_FRAME,
    SEND_SLICE,
    SLICE_BYTES,
    _stops_first as _sorted_stops_first,
)

cdef Py_ssize_t _SEND_SLICE = SEND_SLICE
cdef long long _SLICE_BYTES = SLICE_BYTES
cdef Py_ssize_t _MIN_STREAM_FRAME = MIN_STREAM_FRAME


def write_sliced(conn, builder, network_path, double now, aioquic_write):
    """``SlicedSending._write_application``; ``aioquic_write`` is aioquic's method (unbound),
    for the passes the compiled writer declines."""
    if conn._parked and conn._remote_max_data_used < conn._remote_max_data:
        conn._unpark()  # MAX_DATA (or the peer's transport parameters) raised the limit
    every = conn._streams
    cdef list queue = conn._streams_queue
    cdef list waited = []
    cdef list sent = []
    cdef Py_ssize_t pos = 0, end, n = len(queue)
    cdef bint full = False
    cdef list batch
    cdef dict before, current
    moved = conn._moved
    parked = conn._parked
    try:
        while True:
            end = _slice_end(queue, pos, n)
            batch = _stops_first(queue[pos:end])
            pos = end
            before = {}
            current = {}
            for stream in batch:
                sid = stream.stream_id
                before[sid] = stream.sender.highest_offset
                current[sid] = stream
            conn._streams = current
            conn._streams_queue = batch
            try:
                fast = _build.fast_write  # looked up each time, as the Python method does
                if fast is None or not fast(conn, builder, network_path, now):
                    aioquic_write(conn, builder, network_path, now)
            finally:
                for stream in batch:
                    sid = stream.stream_id
                    if sid not in conn._streams:  # aioquic discarded it
                        every.pop(sid, None)
                        conn._settle(stream)
                        moved.add(sid)
                        parked.pop(sid, None)
                for stream in conn._streams_queue:
                    sid = stream.stream_id
                    if stream.sender.highest_offset != before[sid]:
                        sent.append(stream)
                        moved.add(sid)
                    else:
                        waited.append(stream)
            if pos >= n or conn._pacing_at is not None:
                break
            if _window_full(builder):
                full = True
                break
    finally:
        conn._streams = every
        rest = queue[pos:]
        stays = conn._stays_queued
        waited = [s for s in waited if stays(s)]
        sent = [s for s in sent if stays(s)]
        conn._streams_queue = waited + rest + sent if full else rest + waited + sent


cdef Py_ssize_t _slice_end(list queue, Py_ssize_t pos, Py_ssize_t n):
    """``engine_aioquic_sched._slice_end``: SEND_SLICE streams, more while they are small."""
    cdef Py_ssize_t end = pos + _SEND_SLICE
    if end > n:
        end = n
    cdef long long pending = 0
    cdef Py_ssize_t i
    for i in range(pos, end):
        sender = queue[i].sender
        pending += <long long>sender._buffer_stop - <long long>sender.highest_offset
    while end < n and pending < _SLICE_BYTES:
        sender = queue[end].sender
        pending += <long long>sender._buffer_stop - <long long>sender.highest_offset
        end += 1
    return end


cdef list _stops_first(list batch):
    """``engine_aioquic_sched._stops_first``: the (rare) reordering is the Python function's."""
    for stream in batch:
        if stream.sender.reset_pending or stream.receiver.stop_pending:
            return _sorted_stops_first(batch)
    return batch


cdef bint _window_full(builder):
    """``engine_aioquic_sched._window_full``."""
    try:
        return builder.packet_is_empty and builder.remaining_flight_space < _MIN_STREAM_FRAME
    except (AssertionError, AttributeError):  # no packet open: the slice started none
        return False
