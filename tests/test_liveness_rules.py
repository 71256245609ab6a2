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
    """Our datagrams stop arriving, the peer's keep coming: dead-after still holds, counted
    from when the unanswered PING fell due (4.5 s after the last ACK)."""
    live = make()
    live.acknowledged(2.0)  # the last proof the peer hears us
    died = None
    for step in range(6, 60):
        t = step / 2
        live.heard(t)  # the peer's retransmissions keep coming
        verdict = live.check(t, in_flight=True)
        assert verdict.ping == (t == 6.5)  # 4.5 s after the last ACK, then wait for its answer
        if verdict.dead:
            died = (t, verdict.dead)
            break
    assert died == (17.0, "not acknowledging our PINGs for 15.0 s")


def test_an_acknowledged_ping_proves_the_peer_hears_us() -> None:
    live = make()
    live.heard(6.0)
    assert live.check(6.0, in_flight=True).ping  # nothing acknowledged since the start
    live.acknowledged(6.01)
    live.heard(20.0)
    assert live.check(20.0, in_flight=False).dead is None


def test_a_peer_that_acknowledged_our_data_and_went_silent_dies_at_dead_after() -> None:
    """The early-death flake of tests/e2e/test_liveness.py: data acknowledged at 0.3 s (no PING
    answered since the start), then silence.  It used to die at 10.0, 9.7 s after the last
    packet, because the unanswered PING was counted from one keep-alive before it left."""
    live = Liveness(0.0, keepalive_s=5.0, dead_after_s=10.0)
    live.heard(0.3)
    live.acknowledged(0.3)
    t, died = 0.0, None
    while died is None:
        verdict = live.check(t, in_flight=t < 0.3)
        died = verdict.dead
        t += verdict.next_s if verdict.next_s > 0 else 0.0
    assert t == 10.3 and died == "silent for 10.0 s"


def test_silence_after_packets_that_prove_nothing_still_dies_at_dead_after() -> None:
    """Heard but never acknowledged (the peer only sent ACK-only packets of its own)."""
    live = Liveness(0.0, keepalive_s=5.0, dead_after_s=10.0)
    live.heard(0.3)
    for t in (4.8, 9.9):
        assert live.check(t, in_flight=False).dead is None
    assert live.check(10.3, in_flight=False).dead == "silent for 10.0 s"


def test_checks_land_when_the_ping_falls_due_whatever_the_timer_phase() -> None:
    """Driven by its own ``next_s`` as the session is: our direction breaks 3.3 s into a
    keep-alive period (the last ACK), the peer keeps sending.  A check at the period's next
    tick would send the PING late and count it from then (dead at 18.8, not 18.3)."""
    live = make()
    t = 0.0
    verdict = live.check(t, in_flight=True)
    for t_ack in (1.0, 2.0, 3.3):
        live.acknowledged(t_ack)
    t = verdict.next_s
    pings = []
    while True:
        live.heard(t)
        verdict = live.check(t, in_flight=True)
        if verdict.ping:
            pings.append(round(t, 6))
        if verdict.dead:
            break
        t += verdict.next_s
    assert pings[0] == 3.3 + 4.5
    assert round(t, 6) == 3.3 + 15 and verdict.dead == "not acknowledging our PINGs for 15.0 s"
