"""The flood limits' pure state machines (quictund/policy/limits.py), driven with explicit
``now``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quictund.policy.limits import (
    Admission,
    AdmissionSettings,
    Decision,
    Limit,
    LimitLog,
    RetryTokens,
    SourceBuckets,
    TokenBucket,
    source_key,
    worker_share,
)

ADDR = ("127.0.0.1", 40000)
ODCID = bytes(range(8))


def test_bucket_starts_full_then_refills_at_rate() -> None:
    b = TokenBucket(rate=2.0, burst=3.0)
    assert [b.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(10.4)  # 0.8 token
    assert b.take(10.5)  # 1.0 token
    assert not b.take(10.5)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_bucket_ignores_a_clock_going_backwards() -> None:
    b = TokenBucket(rate=1.0, burst=1.0)
    assert b.take(5.0)
    assert not b.take(4.0)
    assert not b.take(5.5)


def test_source_buckets_are_per_source_and_bounded() -> None:
    s = SourceBuckets(rate=0.001, burst=1, max_sources=3)
    assert s.take("a", 0) and not s.take("a", 0)
    assert s.take("b", 0) and s.take("c", 0)
    assert s.take("d", 0)  # evicts "a", the least recently used
    assert len(s) == 3
    assert s.take("a", 0)  # forgotten, so a fresh bucket


def test_source_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("not-an-address") == "not-an-address"


def test_retry_token_round_trip_and_binding() -> None:
    tokens = RetryTokens(lifetime_s=10.0)
    token = tokens.issue(ADDR, ODCID, now=100.0)
    assert tokens.validate(token, ADDR, now=105.0) == ODCID
    assert tokens.validate(token, ("127.0.0.2", 40000), now=105.0) is None  # other host
    assert tokens.validate(token, ("127.0.0.1", 40001), now=105.0) is None  # other port
    assert tokens.validate(token, ADDR, now=110.5) is None  # expired
    assert tokens.validate(token, ADDR, now=98.0) is None  # from the future
    assert RetryTokens().validate(token, ADDR, now=105.0) is None  # another process's key
    assert tokens.validate(b"", ADDR, now=105.0) is None
    assert tokens.validate(token[:-1], ADDR, now=105.0) is None
    assert tokens.validate(token + b"x", ADDR, now=105.0) is None


@given(st.data())
def test_retry_token_any_bit_flip_is_refused(data: st.DataObject) -> None:
    tokens = RetryTokens(key=b"k" * 32)
    token = bytearray(tokens.issue(ADDR, ODCID, now=1.0))
    bit = data.draw(st.integers(0, len(token) * 8 - 1))
    token[bit // 8] ^= 1 << (bit % 8)
    assert tokens.validate(bytes(token), ADDR, now=1.0) is None


@given(st.binary(max_size=300))
def test_retry_token_garbage_is_refused(garbage: bytes) -> None:
    assert RetryTokens(key=b"k" * 32).validate(garbage, ADDR, now=1.0) is None


def test_admission_accepts_below_threshold_and_retries_above() -> None:
    adm = Admission(AdmissionSettings(max_half_open=10, retry_threshold=2, connection_burst=100))
    assert adm.decide(addr=ADDR, token=b"", half_open=1, now=0).decision is Decision.ACCEPT
    v = adm.decide(addr=ADDR, token=b"", half_open=2, now=0)
    assert (v.decision, v.limit) == (Decision.RETRY, Limit.RETRY)
    token = adm.tokens.issue(ADDR, ODCID, now=0)
    v = adm.decide(addr=ADDR, token=token, half_open=5, now=1)
    assert (v.decision, v.odcid) == (Decision.ACCEPT, ODCID)
    v = adm.decide(addr=ADDR, token=token, half_open=10, now=1)
    assert (v.decision, v.limit) == (Decision.DROP, Limit.HALF_OPEN)
    v = adm.decide(addr=("127.0.0.9", 1), token=token, half_open=0, now=1)
    assert (v.decision, v.limit) == (Decision.DROP, Limit.BAD_RETRY_TOKEN)


def test_admission_threshold_zero_always_retries_first() -> None:
    adm = Admission(AdmissionSettings(retry_threshold=0))
    assert adm.decide(addr=ADDR, token=b"", half_open=0, now=0).decision is Decision.RETRY


def test_admission_rate_limits_per_source_but_not_unvalidated_retries() -> None:
    adm = Admission(
        AdmissionSettings(retry_threshold=5, connection_rate=1.0, connection_burst=2)
    )
    verdicts = [adm.decide(addr=ADDR, token=b"", half_open=0, now=0).limit for _ in range(3)]
    assert verdicts == [None, None, Limit.CONNECTION_RATE]
    # Another source has its own bucket.
    assert adm.decide(addr=("127.0.0.2", 1), token=b"", half_open=0, now=0).limit is None
    # Above the Retry threshold, a (possibly spoofed) source is not charged until validated.
    for _ in range(50):
        v = adm.decide(addr=("127.0.0.3", 1), token=b"", half_open=5, now=0)
        assert v.decision is Decision.RETRY
    assert adm.decide(addr=("127.0.0.3", 1), token=b"", half_open=0, now=0).limit is None
    assert adm.decide(addr=ADDR, token=b"", half_open=0, now=1.0).limit is None  # refilled


def test_limit_log_throttles_and_counts() -> None:
    log = LimitLog(every_s=10)
    assert log.hit(Limit.TUNNEL_RATE, "a", now=0) == "limit tunnel-rate: a"
    assert log.hit(Limit.TUNNEL_RATE, "b", now=1) is None
    assert log.hit(Limit.TUNNEL_RATE, "c", now=2) is None
    assert log.hit(Limit.HALF_OPEN, "x", now=2) == "limit half-open: x"  # other limits: own clock
    line = log.hit(Limit.TUNNEL_RATE, "d", now=10.5)
    assert line == "limit tunnel-rate: 3 refusals since the last report (first: b)"
    assert log.hits == {Limit.TUNNEL_RATE: 4, Limit.HALF_OPEN: 1}


@given(
    st.integers(1, 100_000),
    st.integers(1, 100_000),
    st.floats(0.1, 1e6),
    st.floats(1.0, 1e6),
    st.integers(1, 64),
)
def test_workers_together_admit_what_one_process_would(
    half_open: int, threshold: int, rate: float, burst: float, workers: int
) -> None:
    whole = AdmissionSettings(half_open, threshold, rate, burst)
    share = worker_share(whole, workers)
    assert whole.max_half_open <= share.max_half_open * workers < whole.max_half_open + workers
    threshold_sum = share.retry_threshold * workers
    assert whole.retry_threshold <= threshold_sum < whole.retry_threshold + workers
    assert abs(share.connection_rate * workers - rate) <= rate * 1e-9
    assert share.connection_burst >= 1.0
    assert share.connection_burst * workers >= burst * (1 - 1e-9)
    assert worker_share(whole, 1) == whole
