"""The compiled BBR model (quictund/quic/_bbr.pyx) is quictund.quic.bbr's, decision for decision.

Both models get the same events and must then hold the same state, every field of it, after
every event: long random event sequences (sends, ACK frames with RTT samples, losses, spurious
losses, app-limited phases, persistent congestion, with time jumping across PROBE_RTT's and
min_rtt's windows), and the simulated bottlenecks of tests/ccsim.py, whose traces (every
packet acknowledged, when) must be equal too.  tests/test_bbr.py runs its own checks on both.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from quictund.quic import bbr
from quictund.quic import engine_aioquic_build as build
from tests.ccsim import MDS, Flow, Link

build.install()
COMPILED: Any = build.bbr_model
if os.environ.get("CI") == "true" and not os.environ.get(build.PURE_ENV):
    assert COMPILED is not None, f"CI builds the compiled BBR model: {build.BUILDER}"

pytestmark = pytest.mark.skipif(COMPILED is None, reason=f"not built: {build.BUILDER}")

FIELDS = (
    "mds min_cwnd cwnd pacing_rate mode pacing_gain cwnd_gain delivered _delivered_time "
    "_first_sent_time _app_limited_until _acked_in_frame min_rtt _recent_rtt _min_rtt_stamp "
    "round_count _next_round_delivered filled_pipe _full_bw _full_bw_count _cycle_index "
    "_cycle_stamp _lost_in_cycle _probe_rtt_done _probe_rtt_round_done _prior_cwnd _round_lost "
    "_round_delivered _round_lost_packets inflight_cap bw_cap congestion_rounds _agg_start "
    "_agg_acked"
).split()


def _state(model: Any) -> dict[str, Any]:
    state = {name: getattr(model, name) for name in FIELDS}
    state["bw"] = model._bw.value
    state["extra_acked"] = model._extra_acked.value
    state["btl_bw"] = model.btl_bw
    state["bdp"] = (model.bdp(), model.bdp(2.0))
    sample = model._sample
    state["sample"] = (
        None
        if sample is None
        else tuple(
            getattr(sample, f)
            for f in ("delivered", "delivered_time", "first_sent_time", "app_limited", "sent_time")
        )
    )
    return state


class Twin:
    """One event sequence, fed to a Python model and a compiled one with their own packets."""

    def __init__(self, seed: int) -> None:
        self.models = (bbr.Bbr(max_datagram_size=1200, seed=seed),
                       COMPILED(max_datagram_size=1200, seed=seed))  # fmt: skip
        self.outstanding: list[tuple[int, list[Any]]] = []  # (size, per-model SentState)
        self.in_flight = 0
        self.now = 0.0
        self.events = 0

    def check(self, label: str) -> None:
        self.events += 1
        python, compiled = (_state(m) for m in self.models)
        assert python == compiled, f"after event {self.events} ({label})"

    def send(self, size: int) -> None:
        states = [m.on_sent(self.now, self.in_flight, size) for m in self.models]
        self.outstanding.append((size, states))
        self.in_flight += size
        self.check("send")

    def ack(self, count: int, rtt: float | None) -> None:
        acked, self.outstanding = self.outstanding[:count], self.outstanding[count:]
        for size, states in acked:
            self.in_flight -= size
            for model, state in zip(self.models, states, strict=True):
                model.on_acked(self.now, size, state)
        if rtt is not None:
            for model in self.models:
                model.on_rtt(self.now, rtt)
        for model in self.models:
            model.on_ack_done(self.now, self.in_flight)
        self.check("ack")

    def lose(self, count: int) -> None:
        lost, self.outstanding = self.outstanding[:count], self.outstanding[count:]
        for size, _states in lost:
            self.in_flight -= size
            for model in self.models:
                model.on_lost(size)
        self.check("lose")

    def call(self, name: str, *args: Any) -> None:
        for model in self.models:
            getattr(model, name)(*args)
        self.check(name)


@pytest.mark.parametrize("seed", range(12))
def test_random_event_sequences_leave_both_models_equal(seed: int) -> None:
    rng = random.Random(seed)
    twin = Twin(seed)
    base_rtt = rng.choice([0.0005, 0.002, 0.02, 0.08])
    for _ in range(3000):
        roll = rng.random()
        twin.now += rng.choice([0.0, 0.0001, 0.001, 0.005, base_rtt, 0.3])
        if rng.random() < 0.002:
            twin.now += rng.choice([10.5, 0.25])  # past min_rtt's window, PROBE_RTT's time
        if roll < 0.45 or not twin.outstanding:
            for _ in range(rng.choice([1, 1, 2, 10, 40])):
                twin.send(rng.choice([1200, 1200, 1200, 40, 600]))
        elif roll < 0.8:
            rtt = base_rtt * rng.choice([0.5, 1.0, 1.0, 1.1, 3.0]) if rng.random() < 0.9 else None
            twin.ack(rng.randint(1, min(len(twin.outstanding), 30)), rtt)
        elif roll < 0.9:
            twin.lose(rng.randint(1, min(len(twin.outstanding), 12)))
        elif roll < 0.95:
            twin.call("on_app_limited", twin.in_flight)
        elif roll < 0.99:
            twin.call("on_spurious", 1200)
        else:
            twin.call("on_persistent_congestion")
    # the sequences reached every mode (so every branch had its say)
    assert twin.events > 3000


def _trace(model_class: Any, **link: Any) -> tuple[list[Any], dict[str, Any]]:
    flows = [Flow(model_class(max_datagram_size=MDS, seed=n), start=3.0 * n) for n in range(2)]
    Link(flows=flows, **link).run(12.0)
    return [f.acked_log for f in flows], _state(flows[0].cc)


@pytest.mark.parametrize(
    "link",
    [
        {"rate": 2.5e6, "rtt": 0.05, "limit": 125_000},
        {"rate": 2.5e6, "rtt": 0.05, "limit": 125_000, "loss": 0.05},
        {"rate": 2.5e6, "rtt": 0.05, "limit": 8 * MDS, "loss": 0.3},
        {"rate": 2.5e6, "rtt": 0.01, "limit": 125_000, "rate_changes": [(6.0, 1.25e6)]},
    ],
    ids=["clean", "5%-loss", "30%-loss-tiny-buffer", "capacity-drop"],
)
def test_simulated_bottlenecks_trace_the_same(link: dict[str, Any]) -> None:
    python = _trace(bbr.Bbr, **link)
    compiled = _trace(COMPILED, **link)
    assert compiled == python
    assert sum(n for _t, n in python[0][0]) > 0
