"""How long to wait for an engine's deadline on the event loop (sans-IO).

uvloop counts a timer in whole milliseconds from libuv's clock, which it reads (truncated to the
millisecond) when the timer starts, and rounds the delay it is given to the nearest millisecond.
A deadline ``at`` armed as ``call_later(at - now)`` therefore fired up to 1.5 ms early; the
engine found nothing due, the session armed the timer again, and once less than half a
millisecond was left the delay rounded to 0, which uvloop runs as ``call_soon``: the session
spun, one empty send pass per loop turn, until the deadline passed.  That was 1.3 timer fires
per tunnel with nothing to do on a client opening tunnels back to back (docs/performance.md,
"Timers that fire when due").

:func:`timer_delay` asks for the whole milliseconds from the millisecond ``now`` falls in to the
one ``at`` ends in, so the timer fires when the deadline is due, at most a millisecond late, on
uvloop and on asyncio's own loop alike; a deadline already past fires at once.
"""

from __future__ import annotations

import math


def timer_delay(at: float, now: float) -> float:
    """Seconds to pass to ``loop.call_later`` for deadline ``at``; both on ``time.monotonic``
    (the clock of libuv's timers and of asyncio's loop)."""
    if at <= now:
        return 0.0
    return (math.ceil(at * 1000.0) - math.floor(now * 1000.0)) / 1000.0
