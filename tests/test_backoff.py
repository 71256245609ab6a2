"""Reconnect delays: equal-jitter exponential backoff, capped, deterministic with injected rand."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.quic.client import backoff


def ceiling(attempt: int, base_s: float = 0.25, cap_s: float = 10.0) -> float:
    return min(cap_s, base_s * 2.0 ** (attempt - 1))


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 7, 8, 20, 31, 32, 100, 10_000])
def test_bounds_with_default_parameters(attempt: int) -> None:
    top = ceiling(min(attempt, 40))
    assert backoff(attempt, rand=lambda: 0.0) == pytest.approx(top / 2)
    assert backoff(attempt, rand=lambda: 0.5) == pytest.approx(top * 3 / 4)
    assert backoff(attempt, rand=lambda: 1.0) == pytest.approx(top)
    for _ in range(50):
        d = backoff(attempt)
        assert top / 2 <= d <= top


def test_first_attempts_grow_by_doubling() -> None:
    lows = [backoff(a, base_s=0.25, cap_s=100.0, rand=lambda: 0.0) for a in range(1, 8)]
    assert lows == pytest.approx([0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
    highs = [backoff(a, base_s=0.25, cap_s=100.0, rand=lambda: 1.0) for a in range(1, 8)]
    assert highs == pytest.approx([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])


def test_cap_applies_to_the_ceiling() -> None:
    for attempt in range(6, 60):
        assert backoff(attempt, base_s=1.0, cap_s=30.0, rand=lambda: 0.0) == pytest.approx(
            min(30.0, 2.0 ** (attempt - 1)) / 2
        )
        assert backoff(attempt, base_s=1.0, cap_s=30.0, rand=lambda: 1.0) <= 30.0
    # once capped, the delay stays between cap/2 and cap however many attempts failed
    assert backoff(10**9, base_s=1.0, cap_s=30.0, rand=lambda: 0.0) == pytest.approx(15.0)
    assert backoff(10**9, base_s=1.0, cap_s=30.0, rand=lambda: 1.0) == pytest.approx(30.0)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    d = backoff(2**62, base_s=0.25, cap_s=10.0, rand=lambda: 0.5)
    assert d == pytest.approx(7.5)


def test_deterministic_with_injected_rand() -> None:
    seq_a = random.Random(7)
    seq_b = random.Random(7)
    a = [backoff(n, rand=seq_a.random) for n in range(1, 30)]
    b = [backoff(n, rand=seq_b.random) for n in range(1, 30)]
    assert a == b
    # and the jitter actually varies with rand
    assert backoff(5, rand=lambda: 0.1) != backoff(5, rand=lambda: 0.9)


def test_rand_is_called_once_per_delay() -> None:
    calls: list[int] = []

    def rand() -> float:
        calls.append(1)
        return 0.25

    backoff(3, rand=rand)
    assert len(calls) == 1


def test_cap_below_base() -> None:
    assert backoff(1, base_s=5.0, cap_s=1.0, rand=lambda: 0.0) == pytest.approx(0.5)
    assert backoff(1, base_s=5.0, cap_s=1.0, rand=lambda: 1.0) == pytest.approx(1.0)


@given(
    st.integers(1, 10_000),
    st.floats(0.001, 10.0),
    st.floats(0.001, 600.0),
    st.floats(0.0, 1.0, exclude_max=True),
)
def test_property_bounds(attempt: int, base_s: float, cap_s: float, r: float) -> None:
    d = backoff(attempt, base_s=base_s, cap_s=cap_s, rand=lambda: r)
    top = min(cap_s, base_s * 2.0 ** min(attempt - 1, 30))
    assert top / 2 <= d <= top * (1 + 1e-12)
    assert d <= cap_s * (1 + 1e-12)


@given(st.integers(1, 200), st.floats(0.0, 1.0, exclude_max=True))
def test_property_monotonic_in_attempt_for_fixed_rand(attempt: int, r: float) -> None:
    assert backoff(attempt, rand=lambda: r) <= backoff(attempt + 1, rand=lambda: r)
