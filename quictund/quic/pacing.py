"""A pacer that works on a 1 ms event-loop clock (uvloop): a token bucket of ~4 ms of data.

Why not aioquic's pacer: it refills only when ``now`` changes and asks to be woken for every
packet, which on uvloop's 1 ms timer either caps the rate at one small bucket per tick or spins
the loop on sub-millisecond timers (see docs/design.md and performance-notes.md).  This one
accounts with the session's high-resolution clock, lets a burst of ``rate * BURST_S`` (at
least ``MIN_BURST_PACKETS``) go at once, and when the bucket is empty asks to be woken no
sooner than ``MIN_WAIT_S`` -- one timer tick -- by which time a tick's worth has accrued.  The
average rate is exact; the burst is small enough not to flood a shallow bottleneck queue (4 ms
is 8 % of a 50 ms BDP buffer) and large enough that a timer firing a few ms late on a busy
machine does not cost rate, which BBR would read as a lower bottleneck bandwidth.

Sans-IO: ``rate`` (bytes/s, ``None`` = unpaced) is set by the owner, typically from the
congestion controller on every call.
"""

from __future__ import annotations

BURST_S = 0.004
MIN_WAIT_S = 0.001
MIN_BURST_PACKETS = 4


class Pacer:
    __slots__ = ("_last", "_min_burst", "_tokens", "mds", "rate")

    def __init__(self, *, max_datagram_size: int) -> None:
        self.mds = max_datagram_size
        self.rate: float | None = None
        self._min_burst = MIN_BURST_PACKETS * max_datagram_size
        self._tokens = float(self._min_burst)
        self._last = 0.0

    def burst(self, rate: float) -> float:
        return max(rate * BURST_S, float(self._min_burst))

    def next_send_time(self, now: float) -> float | None:
        """``None`` if a packet may leave now, else when to try again."""
        rate = self.rate
        if rate is None:
            return None
        tokens = self._tokens + (now - self._last) * rate
        burst = self.burst(rate)
        self._tokens = tokens if tokens < burst else burst
        self._last = now
        if self._tokens >= self.mds:
            return None
        return now + max(MIN_WAIT_S, (self.mds - self._tokens) / rate)

    def on_sent(self, size: int) -> None:
        """Charge a packet that left.  The debt is capped at one burst: packets that left
        without asking -- aioquic sends a packet whose ACK is due whatever the pacer says,
        and counts every packet as a full one -- must not pile up a debt that then holds the
        next paced packet for seconds.  A server receiving a 100 Mbit/s upload over 50 ms
        sends ~4,000 ACK-only packets a second against a pacing rate of ~1 MB/s (its own
        sends are tiny): 10 s of upload left ~50 MB of debt, and the answer of the next
        tunnel on that connection waited until an incoming packet made an ACK due again --
        the client's keep-alive PING, 5 s later (bench/scenarios/lossy.py: a 10 s transfer
        at ~47 Mbit/s now and then).  Packets that do ask never take the bucket below
        zero, so the cap costs them nothing."""
        rate = self.rate
        if rate is not None:
            self._tokens = max(self._tokens - size, -self.burst(rate))
