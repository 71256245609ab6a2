"""When a session re-reads its tunnels' send backlogs (the asyncio shell of ``send_budget``).

``SendBudget`` (sans-IO) knows how much each tunnel may still queue on its QUIC connection;
its counts go stale as the engine sends.  Re-reading them costs one engine call per tunnel
re-read: only the tunnels the engine sent from (``moved``, when the engine can tell; else
every queued one).  With a few tunnels the session re-reads after every transmit, and with
many it batches them on a short timer (longer the more tunnels there are), and not more
often than every ``REFRESH_IDLE_S`` while hardly anything went out (ACKs and PINGs move no
backlog).  Re-reading every tunnel of thousands that a peer never drains was one loop turn
of several milliseconds every few: 12 % of a server's CPU under four flooding peers, and
the honest tunnels' latency.
Tunnels that may read again are woken through ``wake``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from quictund.quic.send_budget import MIN_READ, SendBudget

H = TypeVar("H")

REFRESH_NOW = 16  # re-read at once while this few tunnels are queued or waiting
REFRESH_S = 0.002
REFRESH_PER_STREAM_S = 2e-6
REFRESH_IDLE_S = 0.1  # at most this often while less than MIN_READ went out


class BudgetRefresh(Generic[H]):
    """Re-reads ``budget`` soon after bytes went out, and wakes the tunnels it lets read."""

    def __init__(
        self,
        budget: SendBudget[H],
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[H], None],
        moved: Callable[[], set[int] | None] = lambda: None,
    ) -> None:
        self._budget = budget
        self._moved = moved
        self._loop = loop
        self._wake = wake
        self._timer: asyncio.TimerHandle | None = None
        self._sent = 0  # bytes out since the last re-read
        self._at = 0.0  # when the last re-read was

    def sent(self, size: int) -> None:
        """``size`` bytes left (or, for a forgotten tunnel, room was freed): re-read soon."""
        self._sent += size
        budget = self._budget
        count = budget.tracked + budget.waiting
        if count <= REFRESH_NOW:
            self._refresh()
        elif self._timer is None:
            delay = REFRESH_S + count * REFRESH_PER_STREAM_S
            self._timer = self._loop.call_later(delay, self._on_timer)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        idle_left = self._at + REFRESH_IDLE_S - time.monotonic()
        if self._sent < MIN_READ and idle_left > 0:
            # Hardly anything went out (ACKs, PINGs): the counts cannot have moved much.
            self._timer = self._loop.call_later(idle_left, self._on_timer)
            return
        self._refresh()

    def _refresh(self) -> None:
        self._sent = 0
        self._at = time.monotonic()
        budget = self._budget
        budget.refresh(self._moved())
        if budget.waiting:
            for handler in budget.ready():
                self._wake(handler)
