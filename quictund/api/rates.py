"""Per-tunnel send rates, computed from the cumulative byte counters the daemon already keeps.

quic-tun reports ``serverSendRate``/``clientSendRate`` as the bytes counted during its last
1-second tick.  quictund does not add a ticker per tunnel: the daemon feeds ``(now, client_total,
server_total)`` samples to a :class:`RateMeter` (from its existing 1 s housekeeping tick, and
optionally again when the API takes a snapshot), and the meter answers "bytes per second over
the last second".  Pure: the caller passes ``now`` (``loop.time()``), nothing here reads a clock.

Rules:

1. The rate is ``(newest - baseline) / (newest.t - baseline.t)``, where *baseline* is the most
   recent sample taken at least ``window_s`` before the newest one (or the oldest sample if there
   is none yet).  With samples exactly one tick apart this is quic-tun's "bytes in the last tick".
2. Samples closer than ``window_s / 10`` to the previous kept sample replace the newest one
   instead of being appended, so memory stays bounded (about 12 samples) however often the API
   is polled.
3. Asking for the rate more than ``2 * window_s`` after the newest sample gives 0.0: the meter
   has seen nothing recently (the daemon is expected to sample about once per window while the
   tunnel lives; the factor 2 absorbs tick jitter so a steady rate does not flicker to zero).
4. A counter that goes backwards, or a sample older than the newest, restarts the meter
   (never a negative rate, never an exception).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class _Sample(NamedTuple):
    t: float
    client_total: int
    server_total: int


class RateMeter:
    """Bytes per second, client and server direction, over the last ``window_s`` seconds."""

    __slots__ = ("_samples", "_window_s")

    def __init__(self, window_s: float = 1.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 (got {window_s!r})")
        self._window_s = window_s
        self._samples: deque[_Sample] = deque()

    def sample(self, now: float, client_total: int, server_total: int) -> tuple[float, float]:
        """Record the cumulative totals seen at ``now``; return ``rates(now)``."""
        new = _Sample(now, client_total, server_total)
        samples = self._samples
        if samples and (
            now < samples[-1].t
            or client_total < samples[-1].client_total
            or server_total < samples[-1].server_total
        ):
            samples.clear()  # rule 4
        if len(samples) >= 2 and now - samples[-2].t < self._window_s / 10:
            samples[-1] = new  # rule 2
        else:
            samples.append(new)
        # Keep exactly one sample at or before ``now - window`` as the baseline (rule 1).
        while len(samples) >= 2 and samples[1].t <= now - self._window_s:
            samples.popleft()
        return self.rates(now)

    def rates(self, now: float) -> tuple[float, float]:
        """``(client_bytes_per_s, server_bytes_per_s)`` as of ``now`` (see the module rules)."""
        if len(self._samples) < 2:
            return (0.0, 0.0)
        base, newest = self._samples[0], self._samples[-1]
        if now - newest.t > 2 * self._window_s:
            return (0.0, 0.0)  # rule 3
        span = newest.t - base.t
        if span <= 0:
            return (0.0, 0.0)
        return (
            (newest.client_total - base.client_total) / span,
            (newest.server_total - base.server_total) / span,
        )


def format_rate(bytes_per_s: float) -> str:
    """quic-tun's rendering: ``fmt.Sprintf("%.2f kB/s", float64(n)/1024)``."""
    return f"{max(bytes_per_s, 0.0) / 1024:.2f} kB/s"
