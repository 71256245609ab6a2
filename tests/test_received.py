"""quictund/quic/received.py: duplicate detection over a window reordering cannot outrun."""

from __future__ import annotations

from aioquic.quic.recovery import QuicPacketNumberWindow
from hypothesis import given, settings
from hypothesis import strategies as st

from quictund.quic.received import WINDOW, ReceivedWindow
from tests.hypothesis_profiles import budget


def test_a_packet_300_numbers_late_is_not_a_duplicate() -> None:
    ours, aioquics = ReceivedWindow(), QuicPacketNumberWindow()
    for pn in range(1000):
        if pn != 500:
            ours.add(pn)
            aioquics.add(pn)
    assert 500 in aioquics  # aioquic's 128-number window: dropped as a "duplicate"
    assert 500 not in ours
    ours.add(500)
    assert 500 in ours and ours._starts == [0] and ours._stops == [1000]  # one range again


def test_what_falls_out_of_the_window_counts_as_received() -> None:
    window = ReceivedWindow(window=100)
    window.add(0)
    window.add(150)
    assert 10 in window and 50 in window  # below 150 - 100 + 1
    assert 51 not in window and 149 not in window and 150 in window


def test_ranges_are_bounded_and_the_oldest_go_first() -> None:
    window = ReceivedWindow(max_ranges=4)
    for pn in range(0, 20, 2):  # every other packet: a range each
        window.add(pn)
    assert len(window._starts) == 4
    assert all(pn in window for pn in range(0, 20, 2))
    assert 1 in window  # forgotten: counts as received
    assert 17 not in window


@settings(max_examples=budget(300), deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 400)), min_size=1, max_size=300),
)
def test_matches_a_set_within_the_window(steps: list[tuple[int, int]]) -> None:
    window = ReceivedWindow(max_ranges=10_000)
    seen: set[int] = set()
    largest = 0
    for jump, back in steps:  # mostly forward, now and then a late one
        largest += jump
        pn = max(0, largest - back)
        window.add(pn)
        seen.add(pn)
        for probe in range(max(0, largest - 500), largest + 3):
            below = probe <= max(seen) - WINDOW
            assert (probe in window) == (probe in seen or below), probe
    assert list(zip(window._starts, window._stops, strict=True)) == sorted(
        zip(window._starts, window._stops, strict=True)
    )


@settings(max_examples=budget(200), deadline=None)
@given(st.lists(st.integers(0, 3000), max_size=400), st.integers(1, 8))
def test_whatever_was_added_stays_received_and_ranges_stay_bounded(
    pns: list[int], max_ranges: int
) -> None:
    window = ReceivedWindow(window=1000, max_ranges=max_ranges)
    for pn in pns:
        window.add(pn)
        assert pn in window
        assert len(window._starts) <= max_ranges
    assert all(pn in window for pn in pns)
