# cython: language_level=3, boundscheck=False, wraparound=False
"""An ACK frame of an established aioquic connection, handled in C (issue 15).

Every datagram a sender gets back carries an ACK frame, and on a request/response tunnel every
datagram does.  Handling one went through six layers of Python: aioquic's
``_handle_ack_frame`` and ``pull_ack_frame`` (a ``RangeSet`` built range by range), the
adapter's ``ReorderingRecovery.on_ack_received`` (spurious losses, the holes below the largest
acknowledged packet, RTT samples of packets that jumped ahead, BBR's once-per-ACK call),
aioquic's ``on_ack_received`` (the acknowledged packets, the RTT estimate) and the adapter's
``_detect_loss`` (RFC 9002 section 6.1 with adaptive thresholds): ~20 of the ~70 µs an engine
spent per echo (docs/performance.md).

:func:`handle_ack` does all six for an ACK frame in a 1-RTT packet of a connection whose
recovery is the adapter's ``ReorderingRecovery`` (every aioquic connection quictund makes) and
that has no qlog; otherwise, or if the frame is malformed, it leaves the buffer where it found
it and returns False, and the caller runs aioquic's handler, which reads the frame again and
raises aioquic's error for it.  What it still calls in Python is what is not aioquic's
bookkeeping: the congestion controller's hooks (BBR per packet, per RTT sample and per ACK),
each packet's delivery handlers (streams, credit), the reordering window
(``quictund.quic.reorder``) and the loss handling when packets are lost.  The order of every
step, and each floating-point operation, is that of the Python it replaces;
tests/test_engine_ack.py runs pairs with and without it side by side (loss, reordering, jumps)
and compares every packet, timer and the recovery state.
"""

from bisect import bisect_left

from aioquic import tls
from aioquic.quic.packet_builder import QuicDeliveryState

from quictund.quic.aioquic_cc import EnginePacer
from quictund.quic.aioquic_recovery import JUMPED_HOLES, MAX_HOLES, ReorderingRecovery
from quictund.quic.reorder import K_TIME_THRESHOLD

cdef object _EPOCH_ONE_RTT = tls.Epoch.ONE_RTT
cdef object _ACKED = QuicDeliveryState.ACKED
cdef object _Recovery = ReorderingRecovery
cdef object _EnginePacer = EnginePacer
cdef Py_ssize_t _MAX_HOLES = MAX_HOLES
cdef Py_ssize_t _JUMPED_HOLES = JUMPED_HOLES
cdef double _K_TIME = K_TIME_THRESHOLD
cdef long _ACK_ECN = 0x03


cdef bint _acked(list ranges, long long pn):
    """``pn in ack_rangeset``: ``ranges`` ascending, a handful at most."""
    for r in ranges:
        if pn < <long long>r.start:
            return False
        if pn < <long long>r.stop:
            return True
    return False


def handle_ack(conn, context, long frame_type, buf):
    """aioquic's ``_handle_ack_frame`` and what it calls, for the common case (see the module
    docstring); False, with ``buf`` untouched, if not in it."""
    if context.epoch is not _EPOCH_ONE_RTT or conn._quic_logger is not None:
        return False
    loss = conn._loss
    if type(loss) is not _Recovery:
        return False
    # a wrapper of on_ack_received (a test's probe) must see the call: aioquic's path takes it
    if "on_ack_received" in loss.__dict__:
        return False
    start = buf.tell()
    ranges = _pull_ranges(buf)
    if ranges is None:
        buf.seek(start)
        return False
    delay_encoded = ranges.pop()
    if frame_type == _ACK_ECN:
        try:
            buf.pull_uint_var()
            buf.pull_uint_var()
            buf.pull_uint_var()
        except Exception:
            buf.seek(start)
            return False
    cdef double ack_delay = (delay_encoded << conn._remote_ack_delay_exponent) / 1000000
    if not loss.peer_completed_address_validation:
        loss.peer_completed_address_validation = True
    cdef double now = context.time
    space = conn._one_rtt[1]  # the 1-RTT space (AioquicConnection._initialize)
    _reordering_on_ack(loss, ranges, ack_delay, now, space)
    ack_done = loss.ack_done  # BBR's once-per-ACK call, as ReorderingRecovery makes it
    if ack_done is not None:
        ack_done(now)
    return True


cdef object _pull_ranges(buf):
    """``pull_ack_frame``: the acknowledged ranges, ascending, then the encoded delay, as one
    list; None if the frame is malformed (aioquic's reading raises for it)."""
    cdef long long end, count, gap, n, i
    try:
        end = buf.pull_uint_var()
        delay = buf.pull_uint_var()
        n = buf.pull_uint_var()
        count = buf.pull_uint_var()
        found = [range(end - count, end + 1)]
        end -= count
        for i in range(n):
            gap = buf.pull_uint_var()
            end -= gap + 2
            count = buf.pull_uint_var()
            found.append(range(end - count, end + 1))
            end -= count
    except Exception:
        return None
    if end < 0:
        return None
    found.reverse()
    found.append(delay)
    return found


cdef _reordering_on_ack(loss, list ranges, double ack_delay, double now, space):
    """``ReorderingRecovery.on_ack_received``."""
    win = loss.window(space)
    found = win.on_ack(ranges, now, loss._rtt_smoothed)
    if found:
        loss._on_spurious(found)
    # the outstanding packets below this ACK's largest: few (the holes), oldest first
    cdef long long largest = ranges[len(ranges) - 1].stop - 1
    cdef list holes = []
    cdef long long pn
    cdef Py_ssize_t unacked = 0
    sent_packets = space.sent_packets
    for key in sent_packets:
        pn = key
        if pn >= largest or len(holes) >= _MAX_HOLES:
            break
        holes.append(key)
        if not _acked(ranges, pn):
            unacked += 1
    cdef bint jumped = unacked >= _JUMPED_HOLES and largest > space.largest_acked_packet
    if jumped:  # not a path RTT sample: keep it out of min_rtt, srtt and BBR's model
        saved = (loss._rtt_latest, loss._rtt_min, loss._rtt_smoothed, loss._rtt_variance)
    try:
        _on_ack_received(loss, ranges, largest, ack_delay, now, space, jumped)
    finally:
        if jumped:
            loss._rtt_latest, loss._rtt_min, loss._rtt_smoothed, loss._rtt_variance = saved
    cdef long long below = space.largest_acked_packet
    for key in holes:
        pn = key
        if pn < below and key not in sent_packets and not win.was_lost(key):
            win.on_reordered()  # a hole was filled late, and not declared lost: tolerated
            break


cdef _on_ack_received(loss, list ranges, long long largest_acked, double ack_delay, double now,
                      space, bint jumped):
    """aioquic's ``QuicPacketRecovery.on_ack_received`` (no qlog); with ``jumped`` the
    controller gets no RTT sample (``on_rtt_measurement`` is the adapter's ``_no_rtt``)."""
    cdef bint is_ack_eliciting = False
    largest_newly_acked = None
    largest_sent_time = None
    if largest_acked > space.largest_acked_packet:
        space.largest_acked_packet = largest_acked
    cc = loss._cc
    sent_packets = space.sent_packets
    packet_numbers = list(sent_packets)
    cdef Py_ssize_t lo, hi, i
    for r in ranges:
        lo = bisect_left(packet_numbers, r.start)
        hi = bisect_left(packet_numbers, r.stop)
        for i in range(lo, hi):
            packet_number = packet_numbers[i]
            packet = sent_packets.pop(packet_number)
            if packet.is_ack_eliciting:
                is_ack_eliciting = True
                space.ack_eliciting_in_flight -= 1
            if packet.in_flight:
                cc.on_packet_acked(packet=packet, now=now)
            largest_newly_acked = packet_number
            largest_sent_time = packet.sent_time
            for handler, args in packet.delivery_handlers:
                handler(_ACKED, *args)
    if largest_newly_acked is None:
        return
    cdef double latest_rtt, rtt_latest, rtt_min, max_ack_delay
    if largest_acked == largest_newly_acked and is_ack_eliciting:
        latest_rtt = now - largest_sent_time
        max_ack_delay = loss.max_ack_delay
        if max_ack_delay < ack_delay:  # min(ack_delay, max_ack_delay)
            ack_delay = max_ack_delay
        rtt_latest = latest_rtt if latest_rtt > 0.001 else 0.001  # max(latest_rtt, 0.001)
        rtt_min = loss._rtt_min
        if rtt_latest < rtt_min:
            rtt_min = rtt_latest
            loss._rtt_min = rtt_min
        if rtt_latest > rtt_min + ack_delay:
            rtt_latest -= ack_delay
        loss._rtt_latest = rtt_latest
        if not loss._rtt_initialized:
            loss._rtt_first_sample_time = now
            loss._rtt_initialized = True
            loss._rtt_variance = latest_rtt / 2
            loss._rtt_smoothed = latest_rtt
        else:
            loss._rtt_variance = 3 / 4 * loss._rtt_variance + 1 / 4 * abs(rtt_min - rtt_latest)
            loss._rtt_smoothed = 7 / 8 * loss._rtt_smoothed + 1 / 8 * rtt_latest
        if not jumped:
            cc.on_rtt_measurement(now=now, rtt=latest_rtt)
        pacer = loss._pacer
        if type(pacer) is not _EnginePacer:  # the adapter's ignores it
            pacer.update_rate(
                congestion_window=cc.congestion_window, smoothed_rtt=loss._rtt_smoothed
            )
    _detect_loss(loss, now, space)
    # Reset the PTO count, unless the client is not yet certain the server has validated
    # its address (RFC 9002 section 6.2.1).
    if loss.peer_completed_address_validation:
        loss._pto_count = 0


cdef _detect_loss(loss, double now, space):
    """``ReorderingRecovery._detect_loss``: RFC 9002 section 6.1 with the thresholds of this
    space's reordering window."""
    win = loss.window(space)
    cdef double srtt, latest, min_rtt
    if loss._rtt_initialized:
        srtt, latest, min_rtt = loss._rtt_smoothed, loss._rtt_latest, loss._rtt_min
    else:
        srtt = latest = min_rtt = loss._rtt_initial
    cdef double loss_delay = _loss_delay(win.mult, srtt, latest, min_rtt)
    cdef long long largest_acked = space.largest_acked_packet
    cdef long long packet_threshold = largest_acked - <long long>win.packet_threshold
    cdef double time_threshold = now - loss_delay
    cdef double sent_time, packet_loss_time
    cdef long long pn
    cdef list lost_packets = []
    loss_time = None
    space.loss_time = None
    for key, packet in space.sent_packets.items():
        pn = key
        if pn > largest_acked:
            break
        sent_time = packet.sent_time or 0.0
        if pn <= packet_threshold or sent_time <= time_threshold:
            lost_packets.append(packet)
        else:
            packet_loss_time = sent_time + loss_delay
            if loss_time is None or loss_time > packet_loss_time:
                loss_time = packet_loss_time
                space.loss_time = loss_time
    if not lost_packets:
        return
    loss._on_packets_lost(
        now=now,
        packets=lost_packets,
        persistent_congestion=loss._in_persistent_congestion(packets=lost_packets),
        space=space,
    )


cdef double _loss_delay(mult, double srtt, double latest_rtt, double min_rtt):
    """``ReorderWindow.loss_delay``."""
    cdef double rtt = srtt if srtt >= latest_rtt else latest_rtt  # max(srtt, latest_rtt)
    if mult == 0:
        return _K_TIME * rtt
    cdef double reo = <double>mult * min_rtt / 4
    if srtt < reo:  # min(mult * min_rtt / 4, srtt)
        reo = srtt
    cdef double eighth = rtt / 8
    return rtt + (eighth if eighth >= reo else reo)  # max(rtt / 8, ...)
