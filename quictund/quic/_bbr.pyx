# cython: language_level=3, boundscheck=False, wraparound=False
"""quictund.quic.bbr's model, compiled (issue 15).

The aioquic engine calls its congestion controller per packet sent and acknowledged and once
per ACK frame (``on_ack_done``, which runs the whole model); in Python that was ~6 µs of every
ACK and ~1 µs of every packet, the largest block left in an ACK's handling once the rest was
compiled (docs/performance.md).  :class:`Bbr` here is ``quictund.quic.bbr.Bbr`` written for C:
the same state (C fields, readable from Python under the same names), the same methods, the
same constants (imported from the Python module), and every comparison and floating-point
operation in the same order, so both produce the same windows and rates from the same events.
tests/test_bbr_compiled.py feeds both long random event sequences and compares their whole
state after each one; tests/test_bbr.py runs its checks on both.  The Python module stays the
reference, and what runs when this one is not built (``engine_aioquic_build``).
"""

from libc.math cimport isinf

from quictund.quic.bbr import (
    BW_WINDOW_ROUNDS,
    CWND_GAIN,
    DRAIN_GAIN,
    EXTRA_ACKED_MAX_S,
    FULL_BW_GROWTH,
    FULL_BW_ROUNDS,
    LOSS_BETA,
    LOSS_MIN_PACKETS,
    LOSS_RECOVERY_PER_ROUND,
    LOSS_THRESHOLD,
    MIN_CWND_PACKETS,
    MIN_RTT_CONFIRM,
    MIN_RTT_SAMPLE_S,
    MIN_RTT_WINDOW_S,
    PACING_MARGIN,
    PROBE_BW_GAINS,
    PROBE_RTT_S,
    STARTUP_GAIN,
    Mode,
)
import random

cdef double _STARTUP_GAIN = STARTUP_GAIN
cdef double _DRAIN_GAIN = DRAIN_GAIN
cdef double _CWND_GAIN = CWND_GAIN
cdef tuple _GAINS = tuple(PROBE_BW_GAINS)
cdef Py_ssize_t _N_GAINS = len(PROBE_BW_GAINS)
cdef double _MIN_RTT_WINDOW_S = MIN_RTT_WINDOW_S
cdef double _PROBE_RTT_S = PROBE_RTT_S
cdef double _FULL_BW_GROWTH = FULL_BW_GROWTH
cdef long _FULL_BW_ROUNDS = FULL_BW_ROUNDS
cdef double _PACING_MARGIN = PACING_MARGIN
cdef long _MIN_CWND_PACKETS = MIN_CWND_PACKETS
cdef double _LOSS_THRESHOLD = LOSS_THRESHOLD
cdef long _LOSS_MIN_PACKETS = LOSS_MIN_PACKETS
cdef double _LOSS_BETA = LOSS_BETA
cdef double _LOSS_RECOVERY = LOSS_RECOVERY_PER_ROUND
cdef double _EXTRA_ACKED_MAX_S = EXTRA_ACKED_MAX_S
cdef double _MIN_RTT_SAMPLE_S = MIN_RTT_SAMPLE_S
cdef Py_ssize_t _MIN_RTT_CONFIRM = MIN_RTT_CONFIRM

cdef object _STARTUP = Mode.STARTUP
cdef object _DRAIN = Mode.DRAIN
cdef object _PROBE_BW = Mode.PROBE_BW
cdef object _PROBE_RTT = Mode.PROBE_RTT
cdef list _PROBE_BW_START = [0, 2, 3, 4, 5, 6, 7]


cdef class SentState:
    """``bbr.SentState``: what a packet carries from send to ack for a rate sample."""

    cdef readonly long long delivered
    cdef readonly double delivered_time
    cdef readonly double first_sent_time
    cdef readonly bint app_limited
    cdef readonly double sent_time

    def __init__(self, delivered, delivered_time, first_sent_time, app_limited, sent_time):
        self.delivered = delivered
        self.delivered_time = delivered_time
        self.first_sent_time = first_sent_time
        self.app_limited = app_limited
        self.sent_time = sent_time


cdef class MaxFilter:
    """``bbr.MaxFilter``: a windowed maximum (Kathleen Nichols' three samples)."""

    cdef double _window
    cdef bint _empty
    cdef double v0, t0, v1, t1, v2, t2

    def __init__(self, double window):
        self._window = window
        self._empty = True

    @property
    def value(self):
        return 0.0 if self._empty else self.v0

    cdef inline double get(self):
        return 0.0 if self._empty else self.v0

    cdef void reset(self, double value, double tick):
        self._empty = False
        self.v0 = self.v1 = self.v2 = value
        self.t0 = self.t1 = self.t2 = tick

    cdef void update(self, double value, double tick):
        if self._empty or value >= self.v0 or tick - self.t2 > self._window:
            self.reset(value, tick)
            return
        if value >= self.v1:
            self.v1 = self.v2 = value
            self.t1 = self.t2 = tick
        elif value >= self.v2:
            self.v2 = value
            self.t2 = tick
        # expire old maxima: the best is too old, the second takes over, and so on
        cdef double dt = tick - self.t0
        if dt > self._window:
            self.v0, self.t0 = self.v1, self.t1
            self.v1, self.t1 = self.v2, self.t2
            self.v2, self.t2 = value, tick
            if tick - self.t0 > self._window:
                self.v0, self.t0 = self.v1, self.t1
                self.v1, self.t1 = self.v2, self.t2
        elif self.t1 == self.t0 and dt > self._window / 4:
            self.v1 = self.v2 = value
            self.t1 = self.t2 = tick
        elif self.t2 == self.t1 and dt > self._window / 2:
            self.v2 = value
            self.t2 = tick


cdef class Bbr:
    """``quictund.quic.bbr.Bbr``, compiled (see the module docstring)."""

    cdef public long long mds, min_cwnd, cwnd
    cdef public object pacing_rate  # None before the first RTT sample
    cdef public object mode
    cdef public double pacing_gain, cwnd_gain
    cdef public object _rng
    cdef public long long delivered
    cdef public double _delivered_time, _first_sent_time
    cdef public long long _app_limited_until
    cdef public object _sample
    cdef public long long _acked_in_frame
    cdef readonly MaxFilter _bw
    cdef public double min_rtt
    cdef public object _recent_rtt
    cdef public double _min_rtt_stamp
    cdef public long long round_count, _next_round_delivered
    cdef public bint filled_pipe
    cdef public double _full_bw
    cdef public long long _full_bw_count
    cdef public long long _cycle_index
    cdef public double _cycle_stamp
    cdef public bint _lost_in_cycle
    cdef public object _probe_rtt_done
    cdef public bint _probe_rtt_round_done
    cdef public long long _prior_cwnd
    cdef public long long _round_lost, _round_delivered, _round_lost_packets
    cdef public object inflight_cap, bw_cap
    cdef public long long congestion_rounds
    cdef public double _agg_start
    cdef public long long _agg_acked
    cdef readonly MaxFilter _extra_acked

    def __init__(self, *, max_datagram_size, initial_window_packets=10, seed=0):
        self.mds = max_datagram_size
        self.min_cwnd = _MIN_CWND_PACKETS * max_datagram_size
        self.cwnd = initial_window_packets * max_datagram_size
        self.pacing_rate = None
        self.mode = _STARTUP
        self.pacing_gain = _STARTUP_GAIN
        self.cwnd_gain = _STARTUP_GAIN
        self._rng = random.Random(seed)
        self.delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0
        self._sample = None
        self._acked_in_frame = 0
        self._bw = MaxFilter(BW_WINDOW_ROUNDS)
        self.min_rtt = float("inf")
        self._recent_rtt = ()
        self._min_rtt_stamp = 0.0
        self.round_count = 0
        self._next_round_delivered = 0
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._lost_in_cycle = False
        self._probe_rtt_done = None
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        self._round_lost = 0
        self._round_delivered = 0
        self._round_lost_packets = 0
        self.inflight_cap = None
        self.bw_cap = None
        self.congestion_rounds = 0
        self._agg_start = 0.0
        self._agg_acked = 0
        self._extra_acked = MaxFilter(BW_WINDOW_ROUNDS)

    # ---- estimates -----------------------------------------------------------------------

    @property
    def btl_bw(self):
        return self._btl_bw()

    cdef double _btl_bw(self):
        cdef double bw = self._bw.get()
        if self.bw_cap is None:
            return bw
        cdef double cap = self.bw_cap
        return bw if bw <= cap else cap  # min(bw, bw_cap)

    def bdp(self, double gain=1.0):
        return self._bdp(gain)

    cdef double _bdp(self, double gain):
        if isinf(self.min_rtt) or self._bw.get() == 0:
            return <double>self.cwnd
        return gain * self._btl_bw() * self.min_rtt

    # ---- input ---------------------------------------------------------------------------

    def on_sent(self, double now, long long bytes_in_flight, long long size):
        if bytes_in_flight == 0:
            self._first_sent_time = self._delivered_time = now
        cdef SentState state = SentState.__new__(SentState)
        state.delivered = self.delivered
        state.delivered_time = self._delivered_time
        state.first_sent_time = self._first_sent_time
        state.app_limited = self._app_limited_until > 0
        state.sent_time = now
        return state

    def on_app_limited(self, long long bytes_in_flight):
        cdef long long until = self.delivered + bytes_in_flight
        self._app_limited_until = until if until >= 1 else 1  # max(..., 1)

    def on_acked(self, double now, long long size, SentState state):
        self.delivered += size
        self._delivered_time = now
        self._acked_in_frame += size
        self._round_delivered += size
        sample = self._sample
        if sample is None or state.delivered >= (<SentState>sample).delivered:
            self._sample = state
            self._first_sent_time = state.sent_time

    def on_lost(self, long long size):
        self._round_lost += size
        self._round_lost_packets += 1
        self._lost_in_cycle = True

    def on_spurious(self, long long size):
        cdef long long lost = self._round_lost - size
        self._round_lost = lost if lost > 0 else 0
        cdef long long packets = self._round_lost_packets - 1
        self._round_lost_packets = packets if packets > 0 else 0

    def on_rtt(self, double now, double rtt):
        if rtt < _MIN_RTT_SAMPLE_S:  # max(rtt, MIN_RTT_SAMPLE_S)
            rtt = _MIN_RTT_SAMPLE_S
        if self.pacing_rate is None:
            self.pacing_rate = _STARTUP_GAIN * self.cwnd / rtt
        # min_rtt takes the largest of the last MIN_RTT_CONFIRM samples (bbr.py says why)
        cdef tuple recent = self._recent_rtt
        self._recent_rtt = (recent + (rtt,))[1 - _MIN_RTT_CONFIRM :]
        cdef double other
        for value in recent:
            other = value
            if other > rtt:
                rtt = other
        cdef bint expired = now > self._min_rtt_stamp + _MIN_RTT_WINDOW_S
        if rtt <= self.min_rtt or expired:
            self.min_rtt = rtt
            self._min_rtt_stamp = now
        if expired and self.mode is not _PROBE_RTT and self.filled_pipe:
            self._enter_probe_rtt()

    def on_persistent_congestion(self):
        if self.cwnd > self._prior_cwnd:
            self._prior_cwnd = self.cwnd
        self.cwnd = self.min_cwnd

    def on_ack_done(self, double now, long long bytes_in_flight):
        sample_obj = self._sample
        cdef long long acked = self._acked_in_frame
        self._sample = None
        self._acked_in_frame = 0
        if sample_obj is None:
            return
        cdef SentState sample = <SentState>sample_obj
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0
        cdef bint round_start = sample.delivered >= self._next_round_delivered
        if round_start:
            self._next_round_delivered = self.delivered
            self.round_count += 1
            self._end_round()
        cdef double a = sample.sent_time - sample.first_sent_time
        cdef double b = now - sample.delivered_time
        cdef double interval = a if a >= b else b  # max(a, b)
        cdef double rate
        if interval > 0 and (isinf(self.min_rtt) or interval >= self.min_rtt):
            rate = <double>(self.delivered - sample.delivered) / interval
            if not sample.app_limited or rate >= self._bw.get():
                self._bw.update(rate, <double>self.round_count)
        self._update_ack_aggregation(now, acked)
        if round_start and not self.filled_pipe and not sample.app_limited:
            self._check_full_pipe()
        self._update_mode(now, bytes_in_flight, round_start)
        self._set_pacing_rate()
        self._set_cwnd(acked, bytes_in_flight)

    # ---- model ---------------------------------------------------------------------------

    cdef void _end_round(self):
        cdef long long lost = self._round_lost
        cdef long long total = self._round_lost + self._round_delivered
        cdef bint congested = (
            self._round_lost_packets >= _LOSS_MIN_PACKETS and total > 0
            and <double>lost / <double>total > _LOSS_THRESHOLD
        )
        self._round_lost = self._round_delivered = self._round_lost_packets = 0
        cdef double floor, beta_cwnd, cap
        if congested:
            self.congestion_rounds += 1
            floor = <double>self.min_cwnd
            beta_cwnd = _LOSS_BETA * self.cwnd
            self.inflight_cap = floor if floor >= beta_cwnd else beta_cwnd  # max(...)
            self.bw_cap = _LOSS_BETA * self._btl_bw()
            if not self.filled_pipe:
                self.filled_pipe = True  # startup overshot the buffer: stop doubling
                self._enter_drain()
            return
        if self.inflight_cap is not None:
            cap = <double>self.inflight_cap * _LOSS_RECOVERY
            self.inflight_cap = cap
            if cap > self._bdp(self.cwnd_gain) + self._extra_acked.get():
                self.inflight_cap = None
        if self.bw_cap is not None:
            cap = <double>self.bw_cap * _LOSS_RECOVERY
            self.bw_cap = cap
            if cap >= self._bw.get():
                self.bw_cap = None

    cdef void _check_full_pipe(self):
        cdef double bw = self._bw.get()
        if bw >= self._full_bw * _FULL_BW_GROWTH:
            self._full_bw = bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= _FULL_BW_ROUNDS:
            self.filled_pipe = True

    cdef void _update_ack_aggregation(self, double now, long long acked):
        cdef double bw = self._bw.get()
        if bw <= 0:
            return
        cdef double expected = bw * (now - self._agg_start)
        if self._agg_acked <= expected:
            self._agg_start = now
            self._agg_acked = 0
            expected = 0.0
        self._agg_acked += acked
        # min(agg_acked - expected, bw * EXTRA_ACKED_MAX_S, float(cwnd))
        cdef double extra = <double>self._agg_acked - expected
        cdef double most = bw * _EXTRA_ACKED_MAX_S
        if most < extra:
            extra = most
        if <double>self.cwnd < extra:
            extra = <double>self.cwnd
        self._extra_acked.update(extra, <double>self.round_count)

    cdef void _update_mode(self, double now, long long bytes_in_flight, bint round_start):
        if self.mode is _STARTUP and self.filled_pipe:
            self._enter_drain()
        if self.mode is _DRAIN and bytes_in_flight <= self._bdp(1.0):
            self._enter_probe_bw(now)
        if self.mode is _PROBE_BW:
            self._advance_cycle(now, bytes_in_flight)
        if self.mode is _PROBE_RTT:
            self._handle_probe_rtt(now, bytes_in_flight, round_start)

    cdef void _enter_drain(self):
        self.mode = _DRAIN
        self.pacing_gain = _DRAIN_GAIN
        self.cwnd_gain = _STARTUP_GAIN

    cdef void _enter_probe_bw(self, double now):
        self.mode = _PROBE_BW
        self.cwnd_gain = _CWND_GAIN
        # start anywhere but the draining phase, so flows don't probe in lockstep
        self._cycle_index = self._rng.choice(_PROBE_BW_START)
        self.pacing_gain = _GAINS[self._cycle_index]
        self._cycle_stamp = now
        self._lost_in_cycle = False

    cdef void _advance_cycle(self, double now, long long bytes_in_flight):
        cdef bint full_length = now - self._cycle_stamp > self.min_rtt
        cdef double gain = self.pacing_gain
        cdef bint done
        if gain > 1:
            done = full_length and (
                self._lost_in_cycle or bytes_in_flight >= self._bdp(gain)
            )
        elif gain < 1:
            done = full_length or bytes_in_flight <= self._bdp(1.0)
        else:
            done = full_length
        if done:
            self._cycle_index = (self._cycle_index + 1) % _N_GAINS
            self.pacing_gain = _GAINS[self._cycle_index]
            self._cycle_stamp = now
            self._lost_in_cycle = False

    cdef void _enter_probe_rtt(self):
        self.mode = _PROBE_RTT
        self.pacing_gain = 1.0
        if self.cwnd > self._prior_cwnd:
            self._prior_cwnd = self.cwnd
        self._probe_rtt_done = None

    cdef void _handle_probe_rtt(self, double now, long long bytes_in_flight, bint round_start):
        # PROBE_RTT's low-rate samples never lower btl_bw (bbr.py says why)
        cdef long long until = self.delivered + bytes_in_flight
        self._app_limited_until = until if until >= 1 else 1  # max(..., 1)
        if self._probe_rtt_done is None:
            if bytes_in_flight <= self.min_cwnd:
                self._probe_rtt_done = now + _PROBE_RTT_S
                self._probe_rtt_round_done = False
                self._next_round_delivered = self.delivered
            return
        if round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= <double>self._probe_rtt_done:
            self._min_rtt_stamp = now
            if self._prior_cwnd > self.cwnd:
                self.cwnd = self._prior_cwnd
            self._prior_cwnd = 0
            if self.filled_pipe:
                self._enter_probe_bw(now)
            else:
                self.mode = _STARTUP
                self.pacing_gain = self.cwnd_gain = _STARTUP_GAIN

    cdef void _set_pacing_rate(self):
        cdef double bw = self._btl_bw()
        if bw <= 0:
            return
        cdef double rate = self.pacing_gain * bw * _PACING_MARGIN
        cdef double floor
        if not isinf(self.min_rtt):
            floor = self.min_cwnd / self.min_rtt  # never below 4 packets a round trip
            if floor > rate:  # max(rate, floor)
                rate = floor
        if self.filled_pipe or self.pacing_rate is None or rate > <double>self.pacing_rate:
            self.pacing_rate = rate

    cdef void _set_cwnd(self, long long acked, long long bytes_in_flight):
        cdef long long small
        if self.mode is _PROBE_RTT:
            small = self.cwnd if self.cwnd <= self.min_cwnd else self.min_cwnd
            self.cwnd = self.min_cwnd if self.min_cwnd >= small else small
            return
        cdef double target = self._bdp(self.cwnd_gain) + self._extra_acked.get() + 3 * self.mds
        cdef double cwnd
        cdef double grown = <double>(self.cwnd + acked)
        if self.filled_pipe:
            cwnd = grown if grown <= target else target  # min(cwnd + acked, target)
        elif self.cwnd < target or self.delivered < 10 * self.mds:
            cwnd = grown
        else:
            cwnd = <double>self.cwnd
        cdef double cap
        if self.inflight_cap is not None:
            cap = self.inflight_cap
            if cap < cwnd:  # min(cwnd, inflight_cap)
                cwnd = cap
        if <double>self.min_cwnd > cwnd:  # int(max(cwnd, min_cwnd))
            cwnd = <double>self.min_cwnd
        self.cwnd = <long long>cwnd
