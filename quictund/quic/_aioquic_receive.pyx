# cython: language_level=3, boundscheck=False, wraparound=False
"""The common case of aioquic's ``receive_datagram``, compiled (issue 15).

On an established connection nearly every datagram is one 1-RTT packet from the peer's
current address to our current connection id.  aioquic still runs its general path for it:
a ``Buffer`` and a ``QuicHeader`` per packet, a walk over our connection ids, a dozen checks
that only matter during the handshake or a migration, and ``Enum`` hashing for every epoch
lookup -- a quarter of a receiver's CPU per packet (docs/performance.md).

:func:`receive_short` takes that case and nothing else.  It first checks, without changing
anything, that the datagram is exactly that case (state CONNECTED, no qlog, a short header
with our current id, from the active and validated path, keys that open it); if not, or if
the packet does not open, it returns False and the caller runs aioquic's ``receive_datagram``
unchanged, which repeats those (side-effect free) steps.  Once the packet is open it does
what aioquic does for a 1-RTT packet, in aioquic's order (RFC 9000 sections 10.1, 12.3,
13.2, 17.3 and 17.4): duplicates dropped, reserved bits checked, the spin bit, the frames
(:func:`_payload_received`: aioquic's, with PADDING and STREAM frames handled here and every
other frame by aioquic's own handler), the idle timer, and the packet recorded for ACKs.
tests/test_engine_receive.py runs connections with and without it side by side.
"""

from aioquic import tls
from aioquic._crypto import CryptoError
from aioquic.buffer import UINT_VAR_MAX, Buffer, BufferReadError
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.connection import (
    END_STATES,
    MAX_ACK_RANGES,
    QuicConnectionError,
    QuicConnectionState,
    QuicReceiveContext,
    dump_cid,
)
from aioquic.quic.crypto import KeyUnavailableError
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicStreamFrame
from aioquic.quic.recovery import K_GRANULARITY
from aioquic.quic.stream import FinalSizeError, StreamFinishedError

cdef object _CONNECTED = QuicConnectionState.CONNECTED
cdef object _ONE_RTT = tls.Epoch.ONE_RTT
cdef object _END_STATES = END_STATES
cdef object _PADDING = QuicFrameType.PADDING
cdef object _PROTOCOL_VIOLATION = QuicErrorCode.PROTOCOL_VIOLATION
cdef Py_ssize_t _MAX_ACK_RANGES = MAX_ACK_RANGES
cdef double _K_GRANULARITY = K_GRANULARITY
cdef object _FRAME_ENCODING_ERROR = QuicErrorCode.FRAME_ENCODING_ERROR
cdef object _FLOW_CONTROL_ERROR = QuicErrorCode.FLOW_CONTROL_ERROR
cdef object _FINAL_SIZE_ERROR = QuicErrorCode.FINAL_SIZE_ERROR
cdef object _STREAM_STATE_ERROR = QuicErrorCode.STREAM_STATE_ERROR
cdef unsigned long long _UINT_VAR_MAX = UINT_VAR_MAX
# frame types (RFC 9000 section 12.4) the flags of _payload_received depend on
cdef enum:
    F_PADDING = 0x00
    F_ACK = 0x02
    F_ACK_ECN = 0x03
    F_STREAM = 0x08  # to 0x0f
    F_NEW_CONNECTION_ID = 0x18
    F_PATH_CHALLENGE = 0x1A
    F_PATH_RESPONSE = 0x1B
# frame type -> may it come in a 1-RTT packet (aioquic's table says; filled on first sight)
cdef dict _one_rtt_allowed = {}


cdef double _idle_timeout(conn) except? -1.0:
    """aioquic's ``_idle_timeout`` (RFC 9000 section 10.1: the smaller of both sides' idle
    timeouts, but at least three PTOs) without its two Python calls per packet."""
    cdef double idle = conn._configuration.idle_timeout
    remote = conn._remote_max_idle_timeout
    if remote is not None and remote < idle:
        idle = remote
    loss = conn._loss
    cdef double pto, variance
    if loss._rtt_initialized:  # QuicPacketRecovery.get_probe_timeout()
        variance = 4 * loss._rtt_variance
        pto = loss._rtt_smoothed + (variance if variance > _K_GRANULARITY else _K_GRANULARITY)
        pto += loss.max_ack_delay
    else:
        pto = 2 * loss._rtt_initial
    return idle if idle > 3 * pto else 3 * pto


cdef _ack_later(ack_queue, long long packet_number):
    """``ack_queue.add(packet_number)`` and its cap at MAX_ACK_RANGES ranges (RFC 9000
    section 13.2.3).  The packet nearly always extends the last range or starts one after it:
    that is done on the list here (``RangeSet.add`` walks every range from the first)."""
    ranges = ack_queue._RangeSet__ranges
    cdef Py_ssize_t count = len(ranges)
    if count:
        last = ranges[count - 1]  # (no negative indexes: wraparound is off in this module)
        if last.stop == packet_number:
            ranges[count - 1] = range(last.start, packet_number + 1)
        elif last.stop < packet_number:
            ranges.append(range(packet_number, packet_number + 1))
        else:
            ack_queue.add(packet_number)
    else:
        ranges.append(range(packet_number, packet_number + 1))
    if len(ranges) > _MAX_ACK_RANGES:
        del ranges[0]


def receive_short(conn, data, addr, double now):
    """Handle ``data`` if it is one 1-RTT packet of an established connection; else False."""
    cdef Py_ssize_t size = len(data)
    if size == 0:
        return False
    cdef const unsigned char[:] view = data
    cdef unsigned char first = view[0]
    if first & 0x80 or not first & 0x40:  # long header, or a fixed bit aioquic rejects
        return False
    if conn._state is not _CONNECTED or conn._quic_logger is not None:
        return False
    paths = conn._network_paths
    if not paths:
        return False
    network_path = paths[0]
    if network_path.addr != addr or not network_path.is_validated:
        return False
    if conn._close_at is None or conn._peer_cid.sequence_number is None:
        return False
    cdef Py_ssize_t cid_length = conn._configuration.connection_id_length
    if size < 1 + cid_length:
        return False
    host_cid = conn.host_cid
    dcid = data[1:1 + cid_length]
    if dcid != host_cid:
        return False

    # the 1-RTT pair, space and crypto stream and the 0-RTT pair (AioquicConnection._initialize:
    # aioquic's dictionaries are keyed by an Enum whose hash is Python code)
    one_rtt = conn._one_rtt
    if one_rtt is None:
        return False
    crypto = one_rtt[0]
    space = one_rtt[1]
    crypto_zero_rtt = one_rtt[3]
    try:
        plain_header, plain_payload, packet_number = crypto.decrypt_packet(
            data, 1 + cid_length, space.expected_packet_number
        )
    except (KeyUnavailableError, CryptoError):
        return False  # aioquic's path drops it (and says why in its debug log)

    # Past this point the packet is ours: aioquic's path must not see it again.
    if packet_number in space.received_packets:
        return True  # a duplicate (RFC 9000 section 12.3)
    cdef unsigned char plain_first = plain_header[0]
    if plain_first & 0x18:
        conn.close(
            error_code=_PROTOCOL_VIOLATION,
            frame_type=_PADDING,
            reason_phrase="Reserved bits must be zero",
        )
        return True
    if packet_number > space.expected_packet_number:
        space.expected_packet_number = packet_number + 1
    is_client = conn._is_client
    if not is_client:
        zero_rtt = crypto_zero_rtt.recv
        if zero_rtt.is_valid():
            zero_rtt.teardown()  # RFC 9001 section 4.9.3
    if packet_number > conn._spin_highest_pn:
        spin = bool(plain_first & 0x20)
        conn._spin_bit = (not spin) if is_client else spin
        conn._spin_highest_pn = packet_number

    context = QuicReceiveContext(
        epoch=_ONE_RTT,
        host_cid=dcid,
        network_path=network_path,
        quic_logger_frames=None,
        time=now,
        version=None,
    )
    is_ack_eliciting = False
    is_probing = None
    try:
        is_ack_eliciting, is_probing = _payload_received(conn, context, plain_payload)
    except QuicConnectionError as exc:
        conn._logger.warning(exc)
        conn.close(
            error_code=exc.error_code,
            frame_type=exc.frame_type,
            reason_phrase=exc.reason_phrase,
        )
    if conn._state in _END_STATES or conn._close_pending:
        return True

    conn._close_at = now + _idle_timeout(conn)
    conn._ack_eliciting_sent_since_receipt = False

    # a frame (RETIRE_CONNECTION_ID) may have moved our id: aioquic moves it back to the one
    # this packet used, as for a peer switching ids (RFC 9000 section 9.5)
    if not is_client and not is_probing and context.host_cid != conn.host_cid:
        conn._logger.debug("Peer switching to CID %s", dump_cid(context.host_cid))
        conn.host_cid = context.host_cid
        if network_path.peer_cid is None:
            conn.change_connection_id()

    # the path: aioquic's rules, should a frame have moved it from the front of the list
    paths = conn._network_paths
    if network_path not in paths:
        conn._add_network_path(network_path)
    idx = paths.index(network_path)
    if not is_client and idx and not is_probing and packet_number > space.largest_received_packet:
        paths.pop(idx)
        paths.insert(0, network_path)
        if network_path.peer_cid is not None:
            conn._use_reserved_peer_cid(network_path)
        if not network_path.is_validated:
            network_path.local_challenge_sent = False
            network_path.validation_deadline = None

    if not space.discarded:
        if packet_number > space.largest_received_packet:
            space.largest_received_packet = packet_number
            space.largest_received_time = now
        _ack_later(space.ack_queue, packet_number)
        space.received_packets.add(packet_number)
        if is_ack_eliciting and space.ack_at is None:
            space.ack_at = now + conn._ack_delay
    return True


cdef inline Py_ssize_t _pull_varint(
    const unsigned char[:] view, Py_ssize_t size, Py_ssize_t *pos, unsigned long long *value
):
    """Read a variable-length integer (RFC 9000 section 16) at ``pos``; -1 if it runs past
    ``size`` (the caller raises aioquic's error for it), else 0."""
    cdef Py_ssize_t at = pos[0]
    if at >= size:
        return -1
    cdef unsigned char first = view[at]
    cdef Py_ssize_t length = 1 << (first >> 6)
    if at + length > size:
        return -1
    cdef unsigned long long v = first & 0x3F
    cdef Py_ssize_t i
    for i in range(1, length):
        v = (v << 8) | view[at + i]
    value[0] = v
    pos[0] = at + length
    return 0


cdef tuple _payload_received(conn, context, bytes plain):
    """aioquic's ``_payload_received`` for a 1-RTT packet: the frames in order, each checked
    against aioquic's table (known, allowed in 1-RTT), PADDING and STREAM handled here, every
    other frame by aioquic's handler on one ``Buffer``; the same errors for the same faults.
    Returns (is_ack_eliciting, is_probing)."""
    cdef const unsigned char[:] view = plain
    cdef Py_ssize_t size = len(plain)
    cdef Py_ssize_t pos = 0
    cdef unsigned long long frame_type
    cdef bint frame_found = False
    cdef bint is_ack_eliciting = False
    is_probing = None
    table = conn._QuicConnection__frame_handlers
    buf = None
    while pos < size:
        if _pull_varint(view, size, &pos, &frame_type) < 0:
            _fail(_FRAME_ENCODING_ERROR, None, "Malformed frame type")
        entry = table.get(frame_type)
        if entry is None:
            _fail(_FRAME_ENCODING_ERROR, frame_type, "Unknown frame type")
        allowed = _one_rtt_allowed.get(frame_type)
        if allowed is None:
            allowed = _one_rtt_allowed[frame_type] = _ONE_RTT in entry[1]
        if not allowed:
            _fail(_PROTOCOL_VIOLATION, frame_type, "Unexpected frame type")
        if frame_type == F_PADDING:
            while pos < size and view[pos] == 0:
                pos += 1
        elif F_STREAM <= frame_type <= F_STREAM + 7:
            pos = _stream_frame(conn, <long>frame_type, view, size, pos, plain)
        else:
            if buf is None:
                buf = Buffer(data=plain)
            buf.seek(pos)
            try:
                entry[0](context, frame_type, buf)
            except BufferReadError:
                _parse_failed(frame_type)
            except StreamFinishedError:
                pass  # we lack the state for the stream, ignore the frame
            pos = buf.tell()
        frame_found = True
        if frame_type != F_ACK and frame_type != F_ACK_ECN and frame_type != F_PADDING:
            is_ack_eliciting = True
        if not (
            frame_type == F_PATH_CHALLENGE
            or frame_type == F_PATH_RESPONSE
            or frame_type == F_PADDING
            or frame_type == F_NEW_CONNECTION_ID
        ):
            is_probing = False
        elif is_probing is None:
            is_probing = True
    if not frame_found:
        _fail(_PROTOCOL_VIOLATION, _PADDING, "Packet contains no frames")
    return is_ack_eliciting, bool(is_probing)


cdef Py_ssize_t _stream_frame(
    conn, long frame_type, const unsigned char[:] view, Py_ssize_t size, Py_ssize_t pos,
    bytes plain,
) except -1:
    """aioquic's ``_handle_stream_frame`` (and ``QuicStreamReceiver.handle_frame``'s own fast
    path for new in-order data, inlined); returns where the next frame starts."""
    cdef unsigned long long stream_id, offset = 0, length
    if _pull_varint(view, size, &pos, &stream_id) < 0 or (
        frame_type & 4 and _pull_varint(view, size, &pos, &offset) < 0
    ):
        _parse_failed(frame_type)
    if frame_type & 2:
        if _pull_varint(view, size, &pos, &length) < 0:
            _parse_failed(frame_type)
    else:
        length = size - pos
    if offset + length > _UINT_VAR_MAX:
        _fail(_FRAME_ENCODING_ERROR, frame_type, "offset + length cannot exceed 2^62 - 1")
    if length > <unsigned long long>(size - pos):
        _parse_failed(frame_type)
    data = plain[pos:pos + <Py_ssize_t>length]
    pos += <Py_ssize_t>length
    cdef bint fin = frame_type & 1

    # the stream's direction: a peer cannot send on our unidirectional streams
    cdef bint is_client = conn._is_client
    if (not (stream_id & 1)) == is_client and stream_id & 2:
        _fail(_STREAM_STATE_ERROR, frame_type, "Stream is send-only")
    try:
        stream = conn._get_or_create_stream(frame_type, stream_id)
    except StreamFinishedError:
        return pos  # we lack the state for the stream, ignore the frame

    # flow control
    cdef unsigned long long end = offset + length
    if end > <unsigned long long>stream.max_stream_data_local:
        _fail(_FLOW_CONTROL_ERROR, frame_type, "Over stream data limit")
    receiver = stream.receiver
    cdef unsigned long long highest = receiver.highest_offset
    cdef unsigned long long newly = end - highest if end > highest else 0
    max_data = conn._local_max_data
    if max_data.used + newly > max_data.value:
        _fail(_FLOW_CONTROL_ERROR, frame_type, "Over connection data limit")

    if (
        not fin
        and length
        and receiver._final_size is None
        and not receiver.is_finished
        and offset == <unsigned long long>receiver._buffer_start
        and not receiver._buffer
    ):
        # new in-order data with nothing buffered: delivered as it is
        if newly:
            receiver.highest_offset = end
        receiver._buffer_start = end
        conn._events.append(StreamDataReceived(data=data, end_stream=False, stream_id=stream_id))
    else:
        try:
            event = receiver.handle_frame(QuicStreamFrame(offset=offset, data=data, fin=fin))
        except FinalSizeError as exc:
            _fail(_FINAL_SIZE_ERROR, frame_type, str(exc))
        if event is not None:
            conn._events.append(event)
        if len(receiver._ranges):  # bytes wait behind a hole: engine_aioquic_credit.py
            conn.note_behind_hole(stream_id)
    max_data.used += newly
    return pos


cdef int _parse_failed(long frame_type) except -1:
    _fail(_FRAME_ENCODING_ERROR, frame_type, "Failed to parse frame")


cdef int _fail(error_code, frame_type, str reason) except -1:
    """Raise aioquic's QuicConnectionError for a faulty frame (the connection closes with it)."""
    raise QuicConnectionError(error_code=error_code, frame_type=frame_type, reason_phrase=reason)
