"""Engine deadlines on the event loop (quictund/quic/timers.py): never early, on both loops.

uvloop rounds a timer's delay to the nearest millisecond from a clock truncated to the
millisecond, so ``call_later(at - now)`` fired up to 1.5 ms before ``at`` (and, with less than
half a millisecond left, at once): the session then found nothing due and spun.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest
import uvloop

from quictund.quic.timers import timer_delay


@pytest.mark.parametrize(
    ("at", "now", "delay"),
    [
        (10.0004, 10.0001, 0.001),  # both in one millisecond: to its end
        (10.0012, 10.0009, 0.002),  # from the start of now's millisecond to the end of at's
        (10.002, 10.0, 0.002),  # whole milliseconds stay whole
        (10.0, 10.0, 0.0),  # due: at once
        (9.99, 10.0, 0.0),  # past: at once
    ],
)
def test_the_delay_covers_the_deadline_in_whole_milliseconds(
    at: float, now: float, delay: float
) -> None:
    assert timer_delay(at, now) == pytest.approx(delay, abs=1e-9)


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_deadline_armed_with_it_never_fires_early(loop_name: str) -> None:
    """200 deadlines 0-3 ms ahead, armed as the session arms the engine's timer."""
    rng = random.Random(7)
    early: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(200):
            done = loop.create_future()
            await asyncio.sleep(rng.random() * 0.001)  # anywhere inside a millisecond
            now = time.monotonic()
            at = now + rng.random() * 0.003

            def fired(at: float = at, done: asyncio.Future[None] = done) -> None:
                if time.monotonic() < at:
                    early.append(at - time.monotonic())
                done.set_result(None)

            loop.call_later(timer_delay(at, now), fired)
            await done

    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert early == []
