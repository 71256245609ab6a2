# cython: language_level=3, boundscheck=False, wraparound=False
"""The common case of aioquic's ``_write_application``, compiled (issue 15).

aioquic builds every 1-RTT packet in ``QuicConnection._write_application``: a Python loop
that, per packet, asks a dozen questions that matter only during the handshake or a
migration, then walks the streams and writes each STREAM frame through
``_write_stream_frame`` and ``QuicStreamSender.get_frame`` (a ``QuicStreamFrame``, a bytes
copy of the data, a ``RangeSet`` subtraction).  After the packet builder, packet protection
and the receive path were compiled, that loop was the largest single cost of a sender and of
every request/response round trip (docs/performance.md).

:func:`write_application` takes the case an established connection is in nearly always and
nothing else: the handshake complete, 1-RTT keys, no qlog, a validated path, and none of the
rare frames waiting (HANDSHAKE_DONE, PATH_CHALLENGE/RESPONSE, NEW/RETIRE_CONNECTION_ID,
STREAMS_BLOCKED, PING, probes, CRYPTO).  It checks that first, without changing anything;
otherwise it returns False and the caller runs aioquic's method unchanged for this call.  In
that case it does what aioquic's loop does, in aioquic's order: pacing, ACK (aioquic's own
writer), the connection and stream limits (the adapter's writers, called only for a stream
that has a limit to announce: ``engine_aioquic_credit``'s no-op condition), DATAGRAM frames
(aioquic's writer), then the streams: discard finished ones, STOP_SENDING and RESET_STREAM
(aioquic's writers), and STREAM frames, written here.  One difference, on purpose: streams that
sent go to the back of the queue in the order they sent, where aioquic appends them in the
order of a ``set`` (by address).  tests/test_engine_send.py runs connections with and without
it side by side and compares their packets byte for byte.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize

from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilderStop

cdef object _ONE_RTT = QuicPacketType.ONE_RTT
cdef object _DATAGRAM = QuicFrameType.DATAGRAM_WITH_LENGTH
cdef object _Stop = QuicPacketBuilderStop
cdef long _STREAM_BASE = QuicFrameType.STREAM_BASE
# the smallest STREAM frame: type, a 1-byte id and a 2-byte length (FIN only, offset 0)
cdef Py_ssize_t _MIN_STREAM_FRAME = 4


cdef inline Py_ssize_t _size_uint_var(long long value):
    if value <= 0x3F:
        return 1
    if value <= 0x3FFF:
        return 2
    if value <= 0x3FFFFFFF:
        return 4
    return 8


cdef bint _nothing_rare(conn, network_path, crypto_stream):
    """True if none of the frames this module leaves to aioquic is waiting to be sent."""
    if not (network_path.is_validated or network_path.local_challenge_sent):
        return False
    if network_path.remote_challenges:
        return False
    if (
        conn._handshake_done_pending
        or conn._retire_connection_ids
        or conn._streams_blocked_pending
        or conn._ping_pending
        or conn._probe_pending
    ):
        return False
    if not crypto_stream.sender.buffer_is_empty:
        return False
    for connection_id in conn._host_cids:
        if not connection_id.was_sent:
            return False
    return True


def write_application(conn, builder, network_path, double now):
    """Build ``conn``'s 1-RTT packets into ``builder`` if it is in the common case; else False.

    Raises ``QuicPacketBuilderStop`` as aioquic's method does when the builder is full.
    """
    if conn._quic_logger is not None or not conn._handshake_complete:
        return False
    one_rtt = conn._one_rtt  # (pair, space, crypto stream, 0-RTT pair): AioquicConnection
    if one_rtt is None:
        return False
    crypto, space, crypto_stream, _ = one_rtt
    if not crypto.send.is_valid():
        return False
    if not _nothing_rare(conn, network_path, crypto_stream):
        return False

    pacer = conn._loss._pacer
    credit_dirty = conn._credit_dirty
    datagrams = conn._datagrams_pending
    cdef bint is_client = conn._is_client
    cdef bint full
    cdef list sent
    cdef set sent_set, discarded
    while True:
        ack_at = space.ack_at
        # apply pacing, except if we have ACKs to send
        if ack_at is None or ack_at >= now:
            pacing_at = pacer.next_send_time(now=now)
            conn._pacing_at = pacing_at
            if pacing_at is not None:
                break
        builder.start_packet(_ONE_RTT, crypto)

        if ack_at is not None and ack_at <= now:
            conn._write_ack_frame(builder=builder, space=space, now=now)

        # MAX_DATA and MAX_STREAMS, then MAX_STREAM_DATA where a stream has one to announce
        conn._write_connection_limits(builder=builder, space=space)
        for stream in conn._streams.values():
            if (
                stream.max_stream_data_local_sent != stream.max_stream_data_local
                or stream.stream_id in credit_dirty
            ):
                conn._write_stream_limits(builder=builder, space=space, stream=stream)

        while datagrams:
            try:
                conn._write_datagram_frame(builder=builder, data=datagrams[0], frame_type=_DATAGRAM)
            except _Stop:
                break
            datagrams.popleft()

        sent = []
        sent_set = set()
        discarded = set()
        queue = conn._streams_queue
        full = False  # no STREAM frame fits this packet any more (see below)
        try:
            for stream in queue:
                sender = stream.sender
                receiver = stream.receiver
                if receiver.is_finished and sender.is_finished:
                    stream_id = stream.stream_id
                    conn._logger.debug("Stream %d discarded", stream_id)
                    conn._streams.pop(stream_id)
                    if (not (stream_id & 1)) != is_client:
                        # Let the peer open a new stream for each one that closes
                        # (RFC 9000 section 4.6).
                        conn._stream_limit(stream_id).value += 1
                    discarded.add(stream)
                    continue
                if receiver.stop_pending:
                    conn._write_stop_sending_frame(builder=builder, stream=stream)
                if sender.reset_pending:
                    conn._write_reset_stream_frame(builder=builder, stream=stream)
                elif not full and not stream.is_blocked and not sender.buffer_is_empty:
                    if _write_stream_frame(conn, builder, stream, sender):
                        sent.append(stream)
                        sent_set.add(stream)
                    # A frame that filled the packet leaves room for no other: the streams
                    # after it would each find that out (aioquic asks them all), which with 8
                    # busy streams in a slice was 7 wasted tries per packet.
                    full = builder.remaining_flight_space < _MIN_STREAM_FRAME
        finally:
            # Served streams go to the back (see the module docstring), discarded ones leave;
            # also when the builder stopped us half-way.
            if sent_set or discarded:
                conn._streams_queue = [
                    s for s in queue if not (s in sent_set or s in discarded)
                ] + sent

        if builder.packet_is_empty:
            # Discarded streams may let the peer open new ones, which the next packet
            # announces with MAX_STREAMS.
            if not discarded:
                break
        else:
            pacer.update_after_send(now=now)
    return True


cdef bint _write_stream_frame(conn, builder, stream, sender) except -1:
    """aioquic's ``_write_stream_frame`` with ``QuicStreamSender.get_frame`` inlined: one
    STREAM frame of ``stream`` within the packet, the connection's and the stream's credit;
    True if it carried new data (the connection's used credit is counted here)."""
    cdef long long stream_id = stream.stream_id
    cdef long long highest = sender.highest_offset
    cdef long long max_offset = highest + conn._remote_max_data - conn._remote_max_data_used
    cdef long long stream_max = stream.max_stream_data_remote
    if stream_max < max_offset:
        max_offset = stream_max
    pending = sender._pending._RangeSet__ranges
    cdef long long next_offset = pending[0].start if pending else sender._buffer_stop
    cdef Py_ssize_t overhead = 3 + _size_uint_var(stream_id) + (
        _size_uint_var(next_offset) if next_offset else 0
    )
    cdef Py_ssize_t max_size = builder.remaining_flight_space - overhead
    if sender._reset_error_code is not None:
        raise AssertionError("cannot call get_frame() after reset()")
    # Without room for the header, not even a FIN without data can be sent.
    if max_size < 0:
        return False

    cdef long long start, stop, r_stop, buffer_start
    cdef bint fin = False
    if not pending:
        if not sender._pending_eof:
            sender.buffer_is_empty = True
            return False
        sender._pending_eof = False  # FIN only
        start = stop = sender._buffer_fin
        fin = True
        data = b""
    else:
        first = pending[0]
        start = first.start
        r_stop = first.stop
        stop = start + max_size
        if r_stop < stop:
            stop = r_stop
        if stop > max_offset:
            stop = max_offset
        if stop <= start:
            return False
        buffer_start = sender._buffer_start
        data = PyBytes_FromStringAndSize(
            PyByteArray_AS_STRING(sender._buffer) + (start - buffer_start), stop - start
        )
        if stop >= r_stop:  # RangeSet.subtract(start, stop) from the first range's start
            del pending[0]
        else:
            pending[0] = range(stop, r_stop)
        if stop > highest:
            sender.highest_offset = stop
        buffer_fin = sender._buffer_fin
        if buffer_fin is not None and <long long>buffer_fin == stop:
            fin = True
            sender._pending_eof = False

    cdef long frame_type = _STREAM_BASE | 2  # with a length
    if start:
        frame_type |= 4
    if fin:
        frame_type |= 1
    buf = builder.start_frame(
        frame_type,
        capacity=overhead,
        handler=sender.on_data_delivery,
        handler_args=(start, stop, fin),
    )
    buf.push_uint_var(stream_id)
    if start:
        buf.push_uint_var(start)
    buf.push_uint16((stop - start) | 0x4000)
    buf.push_bytes(data)
    if stop > highest:
        conn._remote_max_data_used += stop - highest
        return True
    return False
