"""A model-based congestion controller for lossy paths (BBR, v1 with a v2-style loss guard).

Why: loss-based controllers (reno, cubic) read every lost packet as congestion, so 1 % random
loss on a 50 ms path holds them to a few Mbit/s (Mathis: rate ~ MSS/RTT * 1.22/sqrt(p)).  BBR
instead *measures* the path: the bottleneck bandwidth (``btl_bw``, the windowed maximum of
delivery-rate samples) and the propagation delay (``min_rtt``, the windowed minimum of RTT
samples), and sends at ``pacing_gain * btl_bw`` with at most ``cwnd_gain * BDP`` in flight.
Random loss barely moves either estimate, so the rate holds.

It stays fair, never a fixed-rate blaster: every estimate comes from what the path delivered
to *this* flow, so a competing flow's share lowers our delivery rate and with it our rate; the
PROBE_BW cycle (1.25x, then 0.75x to drain) and PROBE_RTT (cwnd of 4 packets for 200 ms every
10 s) let flows converge.  Loss that is clearly congestion -- more than ``LOSS_THRESHOLD`` of
a round's packets, far above random-loss rates -- caps in-flight data and bandwidth at 70 % of
what they were (BBRv2's ``inflight_hi``/``bw_lo`` idea), lifted again by 5 % a round.

Sans-IO and engine-independent: the owner calls

* ``on_sent(now, bytes_in_flight, size)`` for each packet and keeps the returned
  :class:`SentState` with it (delivery-rate sampling, draft-cheng-iccrg-delivery-rate-
  estimation);
* ``on_acked(now, size, state)`` / ``on_lost(size)`` for each acknowledged / lost packet, then
  ``on_ack_done(now, bytes_in_flight)`` once per ACK frame, which updates the model;
  ``on_spurious(size)`` when a packet it called lost is acknowledged after all (reordering);
* ``on_rtt(now, rtt)`` for each RTT sample, ``on_app_limited(bytes_in_flight)`` when it had
  nothing to send while the window was open;

and reads ``cwnd`` (bytes) and ``pacing_rate`` (bytes/s, ``None`` before the first RTT sample).
"""

from __future__ import annotations

import math
import random
from enum import Enum
from typing import NamedTuple

STARTUP_GAIN = 2 / math.log(2)  # 2.885: doubles the delivery rate each round
DRAIN_GAIN = 1 / STARTUP_GAIN
CWND_GAIN = 2.0
PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BW_WINDOW_ROUNDS = 10
MIN_RTT_WINDOW_S = 10.0
PROBE_RTT_S = 0.2
FULL_BW_GROWTH = 1.25
FULL_BW_ROUNDS = 3
PACING_MARGIN = 0.99  # pace 1 % below the estimate so queues drain
MIN_CWND_PACKETS = 4
LOSS_THRESHOLD = 0.2  # a round losing more than this is congestion, not noise
LOSS_MIN_PACKETS = 8
LOSS_BETA = 0.7
LOSS_RECOVERY_PER_ROUND = 1.05
EXTRA_ACKED_MAX_S = 0.1  # ack-aggregation allowance at most this many seconds of btl_bw
MIN_RTT_SAMPLE_S = 0.0001  # an ACK handled in the same clock tick reads as 0
MIN_RTT_CONFIRM = 4  # a lower min_rtt must show in this many consecutive RTT samples


class Mode(Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"
    PROBE_RTT = "probe_rtt"


class SentState(NamedTuple):
    """What a packet must carry from send to ack for a delivery-rate sample."""

    delivered: int
    delivered_time: float
    first_sent_time: float
    app_limited: bool
    sent_time: float


class MaxFilter:
    """Windowed maximum over ``window`` ticks (Kathleen Nichols' three-sample algorithm)."""

    __slots__ = ("_s", "_window")

    def __init__(self, window: float) -> None:
        self._window = window
        self._s: list[tuple[float, float]] = []  # (value, tick) best, second, third

    @property
    def value(self) -> float:
        return self._s[0][0] if self._s else 0.0

    def reset(self, value: float, tick: float) -> None:
        self._s = [(value, tick)] * 3

    def update(self, value: float, tick: float) -> None:
        s = self._s
        if not s or value >= s[0][0] or tick - s[2][1] > self._window:
            self.reset(value, tick)
            return
        if value >= s[1][0]:
            s[1] = s[2] = (value, tick)
        elif value >= s[2][0]:
            s[2] = (value, tick)
        # expire old maxima: the best is too old, the second takes over, and so on
        dt = tick - s[0][1]
        if dt > self._window:
            s[0], s[1], s[2] = s[1], s[2], (value, tick)
            if tick - s[0][1] > self._window:
                s[0], s[1] = s[1], s[2]
        elif s[1][1] == s[0][1] and dt > self._window / 4:
            s[1] = s[2] = (value, tick)
        elif s[2][1] == s[1][1] and dt > self._window / 2:
            s[2] = (value, tick)


class Bbr:
    """The BBR state machine; all sizes in bytes, times in seconds, rates in bytes/s."""

    def __init__(
        self, *, max_datagram_size: int, initial_window_packets: int = 10, seed: int = 0
    ) -> None:
        self.mds = max_datagram_size
        self.min_cwnd = MIN_CWND_PACKETS * max_datagram_size
        self.cwnd = initial_window_packets * max_datagram_size
        self.pacing_rate: float | None = None
        self.mode = Mode.STARTUP
        self.pacing_gain = STARTUP_GAIN
        self.cwnd_gain = STARTUP_GAIN
        self._rng = random.Random(seed)
        # delivery-rate sampling
        self.delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0
        self._app_limited_until = 0  # `delivered` value that ends the app-limited phase
        self._sample: SentState | None = None  # newest packet acked in this ACK frame
        self._acked_in_frame = 0
        # model
        self._bw = MaxFilter(BW_WINDOW_ROUNDS)
        self.min_rtt = math.inf
        self._recent_rtt: tuple[float, ...] = ()  # the last MIN_RTT_CONFIRM - 1 raw samples
        self._min_rtt_stamp = 0.0
        self.round_count = 0
        self._next_round_delivered = 0
        # startup
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        # probe_bw
        self._cycle_index = 0
        self._cycle_stamp = 0.0
        self._lost_in_cycle = False
        # probe_rtt
        self._probe_rtt_done: float | None = None
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        # loss guard
        self._round_lost = 0
        self._round_delivered = 0
        self._round_lost_packets = 0
        self.inflight_cap: float | None = None
        self.bw_cap: float | None = None
        self.congestion_rounds = 0
        # ack aggregation
        self._agg_start = 0.0
        self._agg_acked = 0
        self._extra_acked = MaxFilter(BW_WINDOW_ROUNDS)

    # ---- estimates -----------------------------------------------------------------------

    @property
    def btl_bw(self) -> float:
        """The bandwidth the model sends at (the windowed max, under the loss guard's cap)."""
        bw = self._bw.value
        return bw if self.bw_cap is None else min(bw, self.bw_cap)

    def bdp(self, gain: float = 1.0) -> float:
        if math.isinf(self.min_rtt) or self._bw.value == 0:
            return float(self.cwnd)
        return gain * self.btl_bw * self.min_rtt

    # ---- input ---------------------------------------------------------------------------

    def on_sent(self, now: float, bytes_in_flight: int, size: int) -> SentState:
        """A packet of ``size`` leaves with ``bytes_in_flight`` already outstanding."""
        if bytes_in_flight == 0:
            self._first_sent_time = self._delivered_time = now
        return SentState(
            self.delivered,
            self._delivered_time,
            self._first_sent_time,
            self._app_limited_until > 0,
            now,
        )

    def on_app_limited(self, bytes_in_flight: int) -> None:
        """The sender had nothing to send although the window was open."""
        self._app_limited_until = max(self.delivered + bytes_in_flight, 1)

    def on_acked(self, now: float, size: int, state: SentState) -> None:
        self.delivered += size
        self._delivered_time = now
        self._acked_in_frame += size
        self._round_delivered += size
        sample = self._sample
        if sample is None or state.delivered >= sample.delivered:
            self._sample = state
            self._first_sent_time = state.sent_time

    def on_lost(self, size: int) -> None:
        self._round_lost += size
        self._round_lost_packets += 1
        self._lost_in_cycle = True

    def on_spurious(self, size: int) -> None:
        """A packet counted by :meth:`on_lost` was acknowledged after all (reordering): take it
        back out of the loss guard's count, so reordering never caps the rate."""
        self._round_lost = max(self._round_lost - size, 0)
        self._round_lost_packets = max(self._round_lost_packets - 1, 0)

    def on_rtt(self, now: float, rtt: float) -> None:
        rtt = max(rtt, MIN_RTT_SAMPLE_S)
        if self.pacing_rate is None:
            # as Linux: start pacing at the startup gain over the initial window and RTT, so
            # an app-limited flow (tiny delivery-rate samples) is never paced below that
            self.pacing_rate = STARTUP_GAIN * self.cwnd / rtt
        # min_rtt takes the largest of the last MIN_RTT_CONFIRM samples: a packet or an ACK
        # that overtook the others on a reordering path reads 25 ms on a 50 ms path (both:
        # ~1 ms), and as min_rtt it shrinks the BDP and the window for 10 s.  With 1 % of
        # packets and of ACKs jumping ahead, two such samples in a row came every few
        # seconds at low rates, and min_rtt fell to 26, then 8 ms: the window to a third of
        # the path's BDP, the rate with it (bench/scenarios/lossy.py, "25 ms ahead").  A real
        # RTT drop shows in every sample.
        recent = self._recent_rtt
        self._recent_rtt = (*recent, rtt)[1 - MIN_RTT_CONFIRM :]
        if recent:
            rtt = max(rtt, *recent)
        expired = now > self._min_rtt_stamp + MIN_RTT_WINDOW_S
        if rtt <= self.min_rtt or expired:
            self.min_rtt = rtt
            self._min_rtt_stamp = now
        if expired and self.mode is not Mode.PROBE_RTT and self.filled_pipe:
            self._enter_probe_rtt()

    def on_persistent_congestion(self) -> None:
        self._prior_cwnd = max(self._prior_cwnd, self.cwnd)
        self.cwnd = self.min_cwnd

    def on_ack_done(self, now: float, bytes_in_flight: int) -> None:
        """End of one ACK frame: take the rate sample and run the model once."""
        sample, acked = self._sample, self._acked_in_frame
        self._sample = None
        self._acked_in_frame = 0
        if sample is None:
            return
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0
        # round trips, counted in delivered data
        round_start = sample.delivered >= self._next_round_delivered
        if round_start:
            self._next_round_delivered = self.delivered
            self.round_count += 1
            self._end_round()
        # delivery rate
        interval = max(sample.sent_time - sample.first_sent_time, now - sample.delivered_time)
        if interval > 0 and (math.isinf(self.min_rtt) or interval >= self.min_rtt):
            rate = (self.delivered - sample.delivered) / interval
            if not sample.app_limited or rate >= self._bw.value:
                self._bw.update(rate, self.round_count)
        self._update_ack_aggregation(now, acked)
        if round_start and not self.filled_pipe and not sample.app_limited:
            self._check_full_pipe()
        self._update_mode(now, bytes_in_flight, round_start)
        self._set_pacing_rate()
        self._set_cwnd(acked, bytes_in_flight)

    # ---- model ---------------------------------------------------------------------------

    def _end_round(self) -> None:
        """Loss guard: judge the round that just ended."""
        lost, total = self._round_lost, self._round_lost + self._round_delivered
        congested = (
            self._round_lost_packets >= LOSS_MIN_PACKETS and total > 0
            and lost / total > LOSS_THRESHOLD
        )
        self._round_lost = self._round_delivered = self._round_lost_packets = 0
        if congested:
            self.congestion_rounds += 1
            self.inflight_cap = max(float(self.min_cwnd), LOSS_BETA * self.cwnd)
            self.bw_cap = LOSS_BETA * self.btl_bw
            if not self.filled_pipe:
                self.filled_pipe = True  # startup overshot the buffer: stop doubling
                self._enter_drain()
            return
        if self.inflight_cap is not None:
            self.inflight_cap *= LOSS_RECOVERY_PER_ROUND
            if self.inflight_cap > self.bdp(self.cwnd_gain) + self._extra_acked.value:
                self.inflight_cap = None
        if self.bw_cap is not None:
            self.bw_cap *= LOSS_RECOVERY_PER_ROUND
            if self.bw_cap >= self._bw.value:
                self.bw_cap = None

    def _check_full_pipe(self) -> None:
        bw = self._bw.value
        if bw >= self._full_bw * FULL_BW_GROWTH:
            self._full_bw = bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _update_ack_aggregation(self, now: float, acked: int) -> None:
        bw = self._bw.value
        if bw <= 0:
            return
        expected = bw * (now - self._agg_start)
        if self._agg_acked <= expected:
            self._agg_start = now
            self._agg_acked = 0
            expected = 0.0
        self._agg_acked += acked
        extra = min(self._agg_acked - expected, bw * EXTRA_ACKED_MAX_S, float(self.cwnd))
        self._extra_acked.update(extra, self.round_count)

    def _update_mode(self, now: float, bytes_in_flight: int, round_start: bool) -> None:
        if self.mode is Mode.STARTUP and self.filled_pipe:
            self._enter_drain()
        if self.mode is Mode.DRAIN and bytes_in_flight <= self.bdp():
            self._enter_probe_bw(now)
        if self.mode is Mode.PROBE_BW:
            self._advance_cycle(now, bytes_in_flight)
        if self.mode is Mode.PROBE_RTT:
            self._handle_probe_rtt(now, bytes_in_flight, round_start)

    def _enter_drain(self) -> None:
        self.mode = Mode.DRAIN
        self.pacing_gain = DRAIN_GAIN
        self.cwnd_gain = STARTUP_GAIN

    def _enter_probe_bw(self, now: float) -> None:
        self.mode = Mode.PROBE_BW
        self.cwnd_gain = CWND_GAIN
        # start anywhere but the draining phase, so flows don't probe in lockstep
        self._cycle_index = self._rng.choice([0, 2, 3, 4, 5, 6, 7])
        self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
        self._cycle_stamp = now
        self._lost_in_cycle = False

    def _advance_cycle(self, now: float, bytes_in_flight: int) -> None:
        full_length = now - self._cycle_stamp > self.min_rtt
        gain = self.pacing_gain
        if gain > 1:
            done = full_length and (
                self._lost_in_cycle or bytes_in_flight >= self.bdp(gain)
            )
        elif gain < 1:
            done = full_length or bytes_in_flight <= self.bdp()
        else:
            done = full_length
        if done:
            self._cycle_index = (self._cycle_index + 1) % len(PROBE_BW_GAINS)
            self.pacing_gain = PROBE_BW_GAINS[self._cycle_index]
            self._cycle_stamp = now
            self._lost_in_cycle = False

    def _enter_probe_rtt(self) -> None:
        self.mode = Mode.PROBE_RTT
        self.pacing_gain = 1.0
        self._prior_cwnd = max(self._prior_cwnd, self.cwnd)
        self._probe_rtt_done = None

    def _handle_probe_rtt(self, now: float, bytes_in_flight: int, round_start: bool) -> None:
        # As Linux's BBR: what leaves under PROBE_RTT's 4-packet window is delivered at a
        # fraction of the path's rate, and those samples must not lower btl_bw.  They did when
        # the filter's maximum was older than its 10 rounds -- after an idle or request/response
        # phase, whose rounds count too -- and the flow restarted at ~1 % of the path's rate,
        # then climbed back at 1.25x per PROBE_BW cycle for seconds (the lossy bench's
        # bimodal rows).  Marked app-limited, they count only if they are higher.
        self._app_limited_until = max(self.delivered + bytes_in_flight, 1)
        if self._probe_rtt_done is None:
            if bytes_in_flight <= self.min_cwnd:
                self._probe_rtt_done = now + PROBE_RTT_S
                self._probe_rtt_round_done = False
                self._next_round_delivered = self.delivered
            return
        if round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done:
            self._min_rtt_stamp = now
            self.cwnd = max(self.cwnd, self._prior_cwnd)
            self._prior_cwnd = 0
            if self.filled_pipe:
                self._enter_probe_bw(now)
            else:
                self.mode = Mode.STARTUP
                self.pacing_gain = self.cwnd_gain = STARTUP_GAIN

    def _set_pacing_rate(self) -> None:
        bw = self.btl_bw
        if bw <= 0:
            return
        rate = self.pacing_gain * bw * PACING_MARGIN
        if not math.isinf(self.min_rtt):
            rate = max(rate, self.min_cwnd / self.min_rtt)  # never below 4 packets a round trip
        if self.filled_pipe or self.pacing_rate is None or rate > self.pacing_rate:
            self.pacing_rate = rate

    def _set_cwnd(self, acked: int, bytes_in_flight: int) -> None:
        if self.mode is Mode.PROBE_RTT:
            self.cwnd = max(self.min_cwnd, min(self.cwnd, self.min_cwnd))
            return
        target = self.bdp(self.cwnd_gain) + self._extra_acked.value + 3 * self.mds
        if self.filled_pipe:
            cwnd = min(self.cwnd + acked, target)
        elif self.cwnd < target or self.delivered < 10 * self.mds:
            cwnd = self.cwnd + acked
        else:
            cwnd = self.cwnd
        if self.inflight_cap is not None:
            cwnd = min(cwnd, self.inflight_cap)
        self.cwnd = int(max(cwnd, self.min_cwnd))
