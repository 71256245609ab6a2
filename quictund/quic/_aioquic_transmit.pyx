# cython: language_level=3, boundscheck=False, wraparound=False
"""The send pass and the timer of an established aioquic connection, compiled (issue 15).

Every transmit of a session is aioquic's ``datagrams_to_send`` followed by ``get_timer``, and a
request/response tunnel does two per round trip on each side (one answers, one finds nothing
to send).  With the packets themselves compiled (``_aioquic_builder``, ``_aioquic_send``),
what was left of a pass in Python was the pass's own frame: the builder's construction with
nine keyword arguments, the epoch and state checks, ``_flush_builder`` registering each packet
with loss recovery (``on_packet_sent``, the idle deadline), and then ``get_timer`` walking the
packet number spaces and the probe timeout through four Python calls: ~10 µs of the ~37 µs
an engine spent per datagram sent, on every pass (docs/performance.md).

:func:`datagrams_to_send` takes the case a connection is in for all its life after the
handshake: connected, the handshake confirmed, not closing, no qlog, one network path and
that path validated (so no anti-amplification limit and no probing of other paths), and on a
client no server preferred address to probe.  Anything else returns None before changing
anything, and the caller runs aioquic's own method.  In that case it does what aioquic's
method does, in aioquic's order, and calls the connection's own ``_write_application`` (the
adapter's sliced one, and through it the compiled packet writer) and the congestion
controller's own ``on_packet_sent``.  :func:`get_timer` is aioquic's ``get_timer`` for the same
case (None when not in it).  tests/test_engine_transmit.py runs pairs with and without both,
side by side, and compares every packet, every timer and the recovery state.
"""

from aioquic import tls
from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.packet_builder import QuicPacketBuilderStop
from aioquic.quic.recovery import K_GRANULARITY, QuicPacketRecovery

from quictund.quic._aioquic_builder import PacketBuilder

cdef object _CONNECTED = QuicConnectionState.CONNECTED
cdef object _EPOCH_ONE_RTT = tls.Epoch.ONE_RTT
cdef object _Stop = QuicPacketBuilderStop
cdef object _ON_PACKET_SENT = QuicPacketRecovery.on_packet_sent
cdef double _K_GRANULARITY = K_GRANULARITY


cdef inline bint _common_case(conn):
    """Connected, confirmed, not closing, no qlog, one validated path, nothing to probe."""
    if conn._state is not _CONNECTED or conn._close_pending or not conn._handshake_confirmed:
        return False
    if conn._quic_logger is not None:
        return False
    paths = conn._network_paths
    if len(paths) != 1 or not paths[0].is_validated:
        return False
    if conn._is_client and conn._remote_preferred_address is not None:
        return False
    return True


cdef double _probe_timeout(loss, bint include_max_ack_delay):
    """aioquic's ``QuicPacketRecovery.get_probe_timeout``."""
    if not loss._rtt_initialized:
        return 2 * loss._rtt_initial
    cdef double pto = loss._rtt_smoothed + max(4 * loss._rtt_variance, _K_GRANULARITY)
    if include_max_ack_delay:
        pto += loss.max_ack_delay
    return pto


def datagrams_to_send(conn, double now):
    """aioquic's ``datagrams_to_send`` for an established connection; None if not in that case
    (nothing changed: the caller runs aioquic's method)."""
    if not _common_case(conn):
        return None
    network_path = conn._network_paths[0]
    cdef Py_ssize_t mds = conn._max_datagram_size
    builder = PacketBuilder(
        host_cid=conn.host_cid,
        is_client=conn._is_client,
        max_datagram_size=mds,
        packet_number=conn._packet_number,
        peer_cid=conn._peer_cid.cid,
        peer_token=conn._peer_token,
        quic_logger=None,
        spin_bit=conn._spin_bit,
        version=conn._version,
    )
    # Only pacing holding back this pass sets the pacing time (aioquic's comment: RFC 9002
    # section 7.7).
    conn._pacing_at = None
    loss = conn._loss
    cc = loss._cc
    cdef long long room = cc.congestion_window - cc.bytes_in_flight
    if conn._probe_pending and room < mds:  # only probes may exceed the window
        room = mds
    builder.max_flight_bytes = room
    try:
        conn._write_application(builder, network_path, now)
    except _Stop:
        pass
    return _flush(conn, builder, network_path, now)


cdef list _flush(conn, builder, network_path, double now):
    """aioquic's ``_flush_builder`` for 1-RTT packets, with ``on_packet_sent`` inlined."""
    datagrams, packets = builder.flush()
    if not datagrams:
        return []
    conn._packet_number = builder.packet_number
    loss = conn._loss
    cc = loss._cc
    own_sent = type(loss).on_packet_sent is _ON_PACKET_SENT
    space = conn._one_rtt[1]  # set once the connection has keys (AioquicConnection._initialize)
    for packet in packets:
        packet.sent_time = now
        if packet.epoch is not _EPOCH_ONE_RTT:  # cannot happen: only 1-RTT packets were built
            loss.on_packet_sent(packet=packet, space=conn._spaces[packet.epoch])
        elif not own_sent:
            loss.on_packet_sent(packet=packet, space=space)
        else:
            space.sent_packets[packet.packet_number] = packet
            if packet.is_ack_eliciting:
                space.ack_eliciting_in_flight += 1
            if packet.in_flight:
                if packet.is_ack_eliciting and (
                    loss.handshake_confirmed or not space.is_application_data
                ):
                    loss._time_of_last_sent_ack_eliciting_packet = now
                cc.on_packet_sent(packet=packet)
        # Restart the idle timer on the first ack-eliciting packet sent since the last one
        # received (RFC 9000 section 10.1).
        if packet.is_ack_eliciting and not conn._ack_eliciting_sent_since_receipt:
            conn._close_at = now + _idle_timeout(conn, loss)
            conn._ack_eliciting_sent_since_receipt = True
    addr = network_path.addr
    cdef list out = []
    cdef Py_ssize_t total = 0
    for datagram in datagrams:
        total += len(datagram)
        out.append((datagram, addr))
    network_path.bytes_sent += total
    return out


cdef double _idle_timeout(conn, loss):
    """aioquic's ``QuicConnection._idle_timeout`` (RFC 9000 section 10.1)."""
    idle_timeout = conn._configuration.idle_timeout
    remote = conn._remote_max_idle_timeout
    if remote is not None and remote < idle_timeout:
        idle_timeout = remote
    cdef double pto3 = 3 * _probe_timeout(loss, True)
    return idle_timeout if idle_timeout > pto3 else pto3


def get_timer(conn):
    """aioquic's ``get_timer`` for an established connection (and, as aioquic's, it stores
    the loss detection time that ``handle_timer`` acts on); None if not in that case."""
    if not _common_case(conn):
        return None
    loss = conn._loss
    cdef double timer_at = conn._close_at
    cdef list spaces = loss.spaces
    for space in spaces:  # ack timers (never amplification-blocked: the path is validated)
        ack_at = space.ack_at
        if ack_at is not None and ack_at < timer_at:
            timer_at = ack_at
    loss_at = _loss_detection_time(loss, spaces)
    conn._loss_at = loss_at
    if loss_at is not None and loss_at < timer_at:
        timer_at = loss_at
    pacing_at = conn._pacing_at
    if pacing_at is not None and pacing_at < timer_at:
        timer_at = pacing_at
    # no path validation deadline: the path is validated
    return timer_at


cdef object _loss_detection_time(loss, list spaces):
    """aioquic's ``QuicPacketRecovery.get_loss_detection_time(amplification_limited=False)``."""
    loss_space = None
    for space in spaces:
        if space.loss_time is not None and (
            loss_space is None or space.loss_time < loss_space.loss_time
        ):
            loss_space = space
    if loss_space is not None:
        return loss_space.loss_time
    confirmed = loss.handshake_confirmed
    cdef long long in_flight = 0
    for space in spaces:
        if confirmed or not space.is_application_data:
            in_flight += space.ack_eliciting_in_flight
    if not loss.peer_completed_address_validation or in_flight:
        timeout = _probe_timeout(loss, confirmed) * (2 ** loss._pto_count)
        return loss._time_of_last_sent_ack_eliciting_packet + timeout
    return None
