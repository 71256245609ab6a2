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
(aioquic's own ``_payload_received``), the idle timer, and the packet recorded for ACKs.
tests/test_engine_receive.py runs connections with and without it side by side.
"""

from aioquic import tls
from aioquic._crypto import CryptoError
from aioquic.quic.connection import (
    END_STATES,
    MAX_ACK_RANGES,
    QuicConnectionError,
    QuicConnectionState,
    QuicReceiveContext,
    dump_cid,
)
from aioquic.quic.crypto import KeyUnavailableError
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from aioquic.quic.recovery import K_GRANULARITY

cdef object _CONNECTED = QuicConnectionState.CONNECTED
cdef object _ONE_RTT = tls.Epoch.ONE_RTT
cdef object _ZERO_RTT = tls.Epoch.ZERO_RTT
cdef object _END_STATES = END_STATES
cdef object _PADDING = QuicFrameType.PADDING
cdef object _PROTOCOL_VIOLATION = QuicErrorCode.PROTOCOL_VIOLATION
cdef Py_ssize_t _MAX_ACK_RANGES = MAX_ACK_RANGES
cdef double _K_GRANULARITY = K_GRANULARITY


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

    cryptos = conn._cryptos
    spaces = conn._spaces
    space = spaces[_ONE_RTT]
    try:
        plain_header, plain_payload, packet_number = cryptos[_ONE_RTT].decrypt_packet(
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
        zero_rtt = cryptos[_ZERO_RTT].recv
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
        is_ack_eliciting, is_probing = conn._payload_received(context, plain_payload)
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
