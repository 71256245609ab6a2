"""``congestion-control = "bbr"`` inside the aioquic engine: registered, fed, and pacing."""

from __future__ import annotations

from quictund.quic.aioquic_cc import BbrCongestionControl, EnginePacer
from quictund.quic.bbr import Mode
from quictund.quic.engine import EngineSettings
from tests.test_engine import KIB, Certs, certs, make_pair  # noqa: F401 - certs is a fixture

BBR = EngineSettings(
    stream_window=256 * KIB,
    connection_window=1024 * KIB,
    max_streams=100,
    congestion_control="bbr",
)


def test_bbr_moves_a_stream_and_builds_its_model(certs: Certs) -> None:  # noqa: F811
    pair = make_pair(certs, BBR)
    client = pair.engine_client
    cc = client._loss._cc
    assert isinstance(cc, BbrCongestionControl)
    assert isinstance(client._loss._pacer, EnginePacer)
    sid = client.open_stream()
    total = 4 * 1024 * KIB
    client.send_stream_data(sid, b"x" * total)

    def done() -> bool:
        pair.consume(sid, pair.received[sid] - pair.consumed[sid])
        return pair.received[sid] == total

    pair.run_until(done, max_rounds=20000)
    model = cc.model
    assert model.delivered >= total  # every acknowledged byte reached the model
    assert model.pacing_rate is not None and model.pacing_rate > 0
    assert model.min_rtt < 0.05  # an in-memory pair: ~1 ms steps
    assert model.round_count > 5
    assert model.mode in (Mode.STARTUP, Mode.DRAIN, Mode.PROBE_BW)
    assert cc.bytes_in_flight >= 0
    assert client.stats()["cwnd_bytes"] == model.cwnd


def test_cubic_stays_unpaced(certs: Certs) -> None:  # noqa: F811
    pair = make_pair(certs, EngineSettings(congestion_control="cubic"))
    pacer = pair.engine_client._loss._pacer
    assert isinstance(pacer, EnginePacer)
    assert pacer.next_send_time(pair.now) is None
    assert pacer.pacer.rate is None
