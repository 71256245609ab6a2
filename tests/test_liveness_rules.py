"""quic/liveness.py: when a session PINGs and when it declares its peer dead."""

from __future__ import annotations

from quictund.quic.liveness import Liveness


def make() -> Liveness:
    return Liveness(0.0, keepalive_s=5.0, dead_after_s=15.0)


def test_silence_pings_then_kills_at_dead_after() -> None:
    live = make()
    assert not live.check(4.0, in_flight=False).ping
    assert live.check(4.5, in_flight=False).ping
    verdict = live.check(14.0, in_flight=False)
    assert verdict.dead is None and verdict.next_s == 1.0  # checked exactly at dead-after
    assert live.check(15.0, in_flight=False).dead == "silent for 15.0 s"


def test_an_idle_connection_whose_peer_talks_sends_no_pings() -> None:
    live = make()
    for t in range(1, 60):
        live.heard(float(t))
        verdict = live.check(float(t), in_flight=False)
        assert not verdict.ping and verdict.dead is None


def test_one_way_failure_kills_at_dead_after_from_the_last_ack() -> None:
    """Our datagrams stop arriving, the peer's keep coming: dead-after still holds."""
    live = make()
    live.ping_acknowledged(2.0)  # the last proof the peer hears us
    died = None
    for t in range(3, 30):
        live.heard(float(t))  # the peer's retransmissions keep coming
        verdict = live.check(float(t), in_flight=True)
        assert verdict.ping == (t == 7)  # 4.5 s after the last ACK, then wait for its answer
        if verdict.dead:
            died = (t, verdict.dead)
            break
    assert died == (17, "not acknowledging our PINGs for 15.0 s")


def test_an_acknowledged_ping_proves_the_peer_hears_us() -> None:
    live = make()
    live.heard(6.0)
    assert live.check(6.0, in_flight=True).ping  # nothing acknowledged since the start
    live.ping_acknowledged(6.01)
    live.heard(20.0)
    assert live.check(20.0, in_flight=False).dead is None
