"""``credit.ReceiveLedger`` and ``credit.StreamWindows`` against their stated invariants, under
any sequence of deliveries, consumption, window updates and forgotten streams."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quictund.quic.credit import ReceiveLedger, StreamWindows

STREAMS = st.integers(min_value=0, max_value=12).map(lambda n: 4 * n)
OPS = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "consume", "limit", "forget", "tick"]),
        STREAMS,
        st.integers(min_value=0, max_value=200_000),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_the_ledger_and_the_fair_share_keep_their_invariants(
    ops: list[tuple[str, int, int]],
) -> None:
    ledger = ReceiveLedger()
    windows = StreamWindows(initial=32_768, maximum=1_048_576, pool=3_000_000, ledger=ledger)
    advertised: dict[int, int] = {}
    last_drain: dict[int, float] = {}  # when each holding stream last drained or began holding
    for op, sid, n in ops:
        if op == "tick":
            ledger.now += n / 1000
        elif op == "deliver":
            if n and not ledger.held.get(sid):
                last_drain[sid] = ledger.now
            ledger.delivered(sid, n)
        elif op == "consume":
            if ledger.consume(sid, n):
                last_drain[sid] = ledger.now
        elif op == "limit" and ledger.tracks(sid):
            consumed = ledger.consumed.get(sid, 0)
            advertised[sid] = windows.limit(
                sid, consumed=consumed, advertised=advertised.get(sid, consumed + 32_768)
            )
        elif op == "forget" and ledger.tracks(sid):
            ledger.forget(sid)
            if sid in advertised:
                windows.forget(sid)
                del advertised[sid]
        assert ledger.holding == {s for s, held in ledger.held.items() if held}
        assert set(ledger.quiet_since) == ledger.holding
        assert all(ledger.quiet_since[s] == last_drain[s] for s in ledger.holding)
        # the first key is the longest stalled (the clock only moves forward)
        times = list(ledger.quiet_since.values())
        assert times == sorted(times)
        if times:
            oldest = min(ledger.holding, key=lambda s: (last_drain[s], s))
            found = ledger.longest_stalled(0.0)
            assert found is not None and found[1] == ledger.now - last_drain[oldest]
            assert ledger.longest_stalled(ledger.now - times[0] + 0.001) is None
        assert ledger.held_total == sum(ledger.held.values())
        # the fair share counts what the plain definition counts: windows holding nothing
        draining = sum(1 for s in windows._open if not ledger.held.get(s))
        assert windows._fair_share() == windows.pool // (2 * max(1, draining))
        assert windows.open_total == sum(windows._open.values())


def test_streams_holding_bytes_without_a_window_do_not_count_as_draining() -> None:
    ledger = ReceiveLedger()
    windows = StreamWindows(initial=32_768, maximum=1_048_576, pool=1_200_000, ledger=ledger)
    for sid in (0, 4, 8, 12):  # four streams with a window: three drained, one holding
        ledger.delivered(sid, 1000)
        ledger.consume(sid, 1000 if sid != 12 else 10)
        windows.limit(sid, consumed=ledger.consumed[sid], advertised=32_768)
    for sid in (16, 20):  # two that hold bytes and never consumed: no window yet
        ledger.delivered(sid, 5000)
    assert ledger.holding == {12, 16, 20}
    assert windows._fair_share() == 1_200_000 // (2 * 3)
    ledger.forget(12)
    windows.forget(12)
    assert windows._fair_share() == 1_200_000 // (2 * 3)
    ledger.consume(16, 5000)  # holding nothing now, but still without a window
    assert windows._fair_share() == 1_200_000 // (2 * 3)


def test_the_longest_stalled_is_the_one_that_drained_least_recently() -> None:
    ledger = ReceiveLedger()
    for sid in (0, 4, 8):
        ledger.delivered(sid, 1000)
        ledger.now += 1.0
    assert ledger.longest_stalled(0.5) == (0, 3.0)
    ledger.consume(0, 1)  # drained a byte: no longer stalled, however much it still holds
    assert ledger.longest_stalled(0.5) == (4, 2.0)
    assert ledger.longest_stalled(2.5) is None  # nobody stalled that long
    ledger.consume(4, 1000)  # drained everything: holds nothing, so cannot be stalled
    ledger.forget(8)
    assert ledger.longest_stalled(0.0) == (0, 0.0)


def test_a_window_that_cannot_grow_for_want_of_pool_says_so() -> None:
    ledger = ReceiveLedger()
    windows = StreamWindows(initial=32_768, maximum=1_048_576, pool=160_000, ledger=ledger)
    ledger.delivered(0, 32_768)
    ledger.consume(0, 32_768)
    windows.limit(0, consumed=32_768, advertised=32_768)
    assert windows.window(0) == 65_536 and not windows.refused  # the pool had room
    for sid in (4, 8, 12):  # three more streams, 32 KiB of credit each, holding bytes
        ledger.delivered(sid, 10)
        windows.limit(sid, consumed=0, advertised=32_768)
    ledger.delivered(0, 65_536)
    ledger.consume(0, 65_536)
    windows.limit(0, consumed=98_304, advertised=98_304)
    assert windows.window(0) == 65_536  # 96 KiB of others' credit + 64 KiB fill the pool
    assert windows.refused
