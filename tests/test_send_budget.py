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


def wait_with(budget: SendBudget[int], engine: Engine, sid: int, count: int) -> None:
    """``sid`` queued ``count`` bytes and stopped reading (because of the budget or its share)."""
    engine.queue(sid, count)
    budget.sent(sid, count)
    budget.wait(sid, sid)


def test_waiters_are_woken_oldest_first() -> None:
    engine = Engine()
    budget: SendBudget[int] = SendBudget(16 * MiB, lambda s: engine.unsent.get(s, 0))
    for sid in range(4):
        wait_with(budget, engine, sid, STREAM_HIGH)
        engine.drain(sid)
    budget.refresh()
    assert budget.ready() == [0, 1, 2, 3]
    wait_with(budget, engine, 1, STREAM_HIGH)  # 1 had to wait again before 0
    wait_with(budget, engine, 0, STREAM_HIGH)
    engine.drain(0)
    engine.drain(1)
    budget.refresh()
    assert budget.ready() == [1, 0]


def test_room_limits_how_many_waiters_with_bytes_queued_wake() -> None:
    engine = Engine()
    budget: SendBudget[int] = SendBudget(MiB, lambda s: engine.unsent.get(s, 0))
    for sid in range(4):
        wait_with(budget, engine, sid, MiB // 4)  # the connection is full
    for sid in (0, 1, 2):
        engine.drain(sid, 210 * 1024)  # each below its low-water mark; room for 2 reads
    budget.refresh()
    assert budget.ready() == [0, 1]  # oldest first; 2 keeps its place
    engine.drain(3)  # nothing queued: 3 wakes in any case, and there is room for 2 again
    budget.refresh()
    assert budget.ready() == [2, 3]


def test_shares_shrink_as_more_tunnels_hold_bytes() -> None:
    engine = Engine()
    budget: SendBudget[int] = SendBudget(16 * MiB, lambda s: engine.unsent.get(s, 0))
    assert budget.share == STREAM_HIGH
    for sid in range(300):
        read_until_told_to_wait(budget, engine, sid)
    assert budget.share == 16 * MiB // 301
    assert max(engine.unsent.values()) <= STREAM_HIGH


def test_forget_returns_the_room() -> None:
    engine = Engine()
    budget: SendBudget[int] = SendBudget(STREAM_HIGH, lambda s: engine.unsent.get(s, 0))
    while budget.total < budget.budget:
        read_until_told_to_wait(budget, engine, len(engine.unsent))
    assert budget.allowance(999) == MIN_READ
    for sid in list(engine.unsent):
        budget.forget(sid)
    engine.unsent.clear()
    assert budget.total == 0 and budget.waiting == 0
    assert budget.allowance(999) == READ_CHUNK


def test_a_refresh_of_what_moved_reads_only_those_streams_and_keeps_the_total() -> None:
    """The engine names the streams it sent from; 1,000 stuck ones are not re-read."""
    engine = Engine()
    reads: list[int] = []

    def unsent(sid: int) -> int:
        reads.append(sid)
        return engine.unsent.get(sid, 0)

    budget: SendBudget[int] = SendBudget(64 * MiB, unsent)
    for sid in range(1000):
        engine.queue(sid, 10_000)
        budget.sent(sid, 10_000)
    engine.drain(7, 4_000)
    engine.drain(8)
    budget.refresh({7, 8, 5000})  # 5000: sent from, but not tracked
    assert sorted(reads) == [7, 8]
    assert budget.total == sum(engine.unsent.values()) == 1000 * 10_000 - 14_000
    assert budget.tracked == 999  # stream 8 has nothing queued any more
    reads.clear()
    budget.refresh()  # the engine cannot tell: every tracked stream
    assert len(reads) == 999 and budget.total == 1000 * 10_000 - 14_000


def test_ready_visits_only_tunnels_that_may_read() -> None:
    """1,000 tunnels a peer never drains wait above their low-water mark; one that drains is
    woken without the others being looked at (a scan of them all on every re-read took a
    quarter of a millisecond, dozens of times a second, under a flooding peer)."""
    engine = Engine()
    budget: SendBudget[int] = SendBudget(16 * MiB, lambda s: engine.unsent.get(s, 0))
    for sid in range(1, 1001):
        read_until_told_to_wait(budget, engine, sid)
    # The first 16 took the budget in 1 MiB shares; the rest read 4 KiB each and wait for room
    # (below their low-water mark): each is moved to the wait-ordered queue once, here.
    assert budget.ready() == [] and budget.examined >= 900
    for _ in range(5):
        read_until_told_to_wait(budget, engine, 0)
        engine.drain(0)
        budget.refresh({0})
        assert budget.ready() == [0]
        assert budget.examined <= 3
        budget.refresh()  # nothing else moved: still nobody to look at
        assert budget.ready() == [] and budget.examined == 0
    assert budget.waiting == 1000


class ScanningBudget(SendBudget[int]):
    """The rule as first written: every waiting tunnel looked at on every ``ready``."""

    def ready(self) -> list[int]:
        room = self.budget - self.total
        low = self.share // 4
        woken = []
        for sid, (_, handler) in list(self._waiting.items()):
            queued = self._queued.get(sid, 0)
            if queued > low:
                continue
            if room >= READ_CHUNK:
                room -= READ_CHUNK
            elif queued:
                continue
            woken.append(handler)
        for sid in woken:
            del self._waiting[sid]
        return woken


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["read", "drain", "drain-some", "forget", "refresh-all"]),
            st.integers(0, 11),
            st.integers(1, 600_000),
        ),
        max_size=120,
    )
)
def test_the_indexed_wake_order_is_the_scanning_one(steps: list[tuple[str, int, int]]) -> None:
    """Whatever tunnels read, drain, end and however the counts are refreshed, ``ready``
    wakes exactly whom (and in the order) a scan of every waiting tunnel would."""
    engines = (Engine(), Engine())
    budgets: tuple[SendBudget[int], SendBudget[int]] = (
        SendBudget(2 * MiB, lambda s: engines[0].unsent.get(s, 0)),
        ScanningBudget(2 * MiB, lambda s: engines[1].unsent.get(s, 0)),
    )
    for op, sid, n in steps:
        for engine, budget in zip(engines, budgets, strict=True):
            if op == "read" and sid not in budget._waiting:
                count = min(n, budget.allowance(sid))
                engine.queue(sid, count)
                if budget.sent(sid, count):
                    budget.wait(sid, sid)
            elif op in ("drain", "drain-some"):
                engine.drain(sid, None if op == "drain" else n)
                budget.refresh({sid})
            elif op == "forget":
                engine.unsent.pop(sid, None)
                budget.forget(sid)
            elif op == "refresh-all":
                budget.refresh()
        assert budgets[0].ready() == budgets[1].ready()
        assert budgets[0].total == budgets[1].total
