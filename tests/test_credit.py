"""``credit.ReceiveLedger`` and ``credit.StreamWindows`` against their stated invariants, under
any sequence of deliveries, consumption, window updates and forgotten streams."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quictund.quic.credit import ReceiveLedger, StreamWindows

STREAMS = st.integers(min_value=0, max_value=12).map(lambda n: 4 * n)
OPS = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "consume", "limit", "forget"]),
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
    for op, sid, n in ops:
        if op == "deliver":
            ledger.delivered(sid, n)
        elif op == "consume":
            ledger.consume(sid, n)
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
