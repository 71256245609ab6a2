"""The per-connection send budget's rules (quictund/quic/send_budget.py), sans-IO.

A fake engine backlog (a dict) stands in for ``unsent``: streams whose peer grants no credit
keep everything they queued; draining streams lose what the test says was sent.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quictund.quic.send_budget import (
    MIN_READ,
    READ_CHUNK,
    STREAM_HIGH,
    STREAM_LOW,
    SendBudget,
)

MiB = 1024 * 1024


class Engine:
    def __init__(self) -> None:
        self.unsent: dict[int, int] = {}

    def queue(self, sid: int, n: int) -> None:
        self.unsent[sid] = self.unsent.get(sid, 0) + n

    def drain(self, sid: int, n: int | None = None) -> None:
        self.unsent[sid] = 0 if n is None else max(0, self.unsent.get(sid, 0) - n)


def read_until_told_to_wait(budget: SendBudget[int], engine: Engine, sid: int) -> int:
    """A socket with endless data: read what the budget allows until it says wait."""
    total = 0
    while True:
        n = budget.allowance(sid)
        engine.queue(sid, n)
        total += n
        if budget.sent(sid, n):
            budget.wait(sid, sid)
            return total


def test_a_stream_stops_at_its_own_high_water_mark() -> None:
    engine = Engine()
    budget: SendBudget[int] = SendBudget(16 * MiB, lambda s: engine.unsent.get(s, 0))
    assert read_until_told_to_wait(budget, engine, 0) == STREAM_HIGH  # no read overshoots
    engine.drain(0, STREAM_HIGH - STREAM_LOW - 1)
    budget.refresh()
    assert budget.ready() == []  # still above its low-water mark
    engine.drain(0, 1)
    budget.refresh()
    assert budget.ready() == [0]


@given(tunnels=st.integers(1, 600), budget_mib=st.integers(1, 32))
def test_stuck_streams_hold_at_most_the_budget_plus_one_small_read_each(
    tunnels: int, budget_mib: int
) -> None:
    """Every tunnel reads an endless flood; the peer never takes a byte."""
    engine = Engine()
    budget: SendBudget[int] = SendBudget(budget_mib * MiB, lambda s: engine.unsent.get(s, 0))
    for sid in range(tunnels):
        read_until_told_to_wait(budget, engine, sid)
    for _ in range(3):  # woken again and again: nothing drained, so nobody reads
        budget.refresh()
        assert budget.ready() == []
    held = sum(engine.unsent.values())
    assert held == budget.total
    assert held <= budget_mib * MiB + tunnels * MIN_READ


def test_an_idle_stream_still_moves_while_stuck_ones_hold_the_budget() -> None:
    engine = Engine()
    budget: SendBudget[int] = SendBudget(4 * MiB, lambda s: engine.unsent.get(s, 0))
    for sid in range(1, 40):  # stuck: they fill the budget and never drain
        read_until_told_to_wait(budget, engine, sid)
    assert budget.allowance(0) == MIN_READ  # the honest one gets a small read...
    moved = 0
    for _ in range(20):
        moved += read_until_told_to_wait(budget, engine, 0)
        engine.drain(0)  # ...which the peer takes
        budget.refresh()
        assert budget.ready() == [0]  # so it is woken: it never starves
    assert moved == 20 * MIN_READ
    assert budget.total <= 4 * MiB + 40 * MIN_READ


def test_waiters_are_woken_oldest_first_as_room_allows() -> None:
    engine = Engine()
    each = 300 * 1024  # above a stream's low-water mark
    budget: SendBudget[int] = SendBudget(8 * each, lambda s: engine.unsent.get(s, 0))
    for sid in range(8):
        engine.queue(sid, each)
        assert budget.sent(sid, each) == (sid == 7)
        budget.wait(sid, sid)
    for sid in (5, 6, 7):
        engine.drain(sid, 100 * 1024)  # below their low-water mark; room for one full read
    budget.refresh()
    assert budget.ready() == [5]
    engine.drain(2)  # nothing queued: room for one more full read
    budget.refresh()
    assert budget.ready() == [2, 6]  # 7 has bytes queued and no room: it keeps its place
    budget.wait(6, 6)  # 6 had to wait again: to the back
    engine.drain(0)
    engine.drain(1)
    budget.refresh()
    assert budget.ready() == [0, 1, 7, 6]


def test_forget_returns_the_stream_share() -> None:
    engine = Engine()
    budget: SendBudget[int] = SendBudget(STREAM_HIGH, lambda s: engine.unsent.get(s, 0))
    read_until_told_to_wait(budget, engine, 0)
    assert budget.allowance(1) == MIN_READ
    budget.forget(0)
    engine.unsent.pop(0)
    assert budget.total == 0 and budget.waiting == 0
    assert budget.allowance(1) == READ_CHUNK
