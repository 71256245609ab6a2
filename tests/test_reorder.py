"""The sans-IO reordering window (quictund/quic/reorder.py): spurious-loss detection, growth of
the packet and time thresholds, decay after clean rounds, bounded memory; and BBR taking a
spurious loss back out of its loss guard."""

from __future__ import annotations

import pytest

from quictund.quic import engine_aioquic_build as build
from quictund.quic.bbr import Bbr
from quictund.quic.reorder import (
    K_PACKET_THRESHOLD,
    MAX_MULT,
    PERSIST_ROUNDS,
    ReorderWindow,
)

RTT = 0.05
ROUND = RTT * 1.1  # a clock step that surely ends a round (floats: 0.101 - 0.051 < 0.05)


def test_defaults_are_rfc9002() -> None:
    win = ReorderWindow()
    assert win.packet_threshold == K_PACKET_THRESHOLD == 3
    assert win.loss_delay(RTT, RTT, RTT) == 9 / 8 * RTT


def test_ack_of_a_lost_packet_is_spurious_and_widens_both_thresholds() -> None:
    win = ReorderWindow()
    win.on_ack([range(0, 10)], now=0.0, srtt=RTT)
    # packet 10 declared lost when 210 was the largest acknowledged: 200 packets of reordering
    win.on_lost(10, largest_acked=210, size=1200)
    win.on_lost(11, largest_acked=210, size=1200)
    assert win.on_ack([range(12, 220)], now=0.01, srtt=RTT) == []  # 10 and 11 not acked yet
    found = win.on_ack([range(10, 11), range(12, 220)], now=0.02, srtt=RTT)
    assert [lost.size for lost in found] == [1200]
    assert win.spurious == 1
    assert win.packet_threshold == 400  # twice the distance: headroom as the rate grows
    assert win.mult == 1
    assert win.loss_delay(RTT, RTT, RTT) == RTT + RTT / 4  # 1 quarter of min RTT on top
    # the same ACK again: nothing new (10 is forgotten once found)
    assert win.on_ack([range(10, 11)], now=0.03, srtt=RTT) == []
    assert win.spurious == 1


def test_time_window_grows_once_per_round_and_caps_at_srtt() -> None:
    win = ReorderWindow()
    now, pn = 0.0, 0
    for round_ in range(MAX_MULT + 3):
        for _ in range(3):  # three spurious losses in one round count as one step
            win.on_lost(pn, largest_acked=pn + 5, size=1000)
            win.on_ack([range(pn, pn + 1)], now=now, srtt=RTT)
            pn += 1
            now += 0.001
        assert win.mult == min(round_ + 1, MAX_MULT)
        now += ROUND  # the next ACK starts a new round
    assert win.loss_delay(RTT, RTT, RTT) == 2 * RTT  # window capped at one srtt
    assert win.packet_threshold == 10


def test_decays_after_clean_rounds() -> None:
    win = ReorderWindow()
    win.on_ack([range(0, 1)], now=0.0, srtt=RTT)
    win.on_lost(5, largest_acked=100, size=1000)
    win.on_ack([range(5, 6)], now=0.001, srtt=RTT)
    assert (win.packet_threshold, win.mult) == (190, 1)
    now = 0.001
    for _ in range(PERSIST_ROUNDS):  # the first tick closes the round with the spurious loss
        now += ROUND
        win.on_ack([range(200, 201)], now=now, srtt=RTT)
    assert (win.packet_threshold, win.mult) == (190, 1)  # one clean round short
    now += ROUND
    win.on_ack([range(201, 202)], now=now, srtt=RTT)
    assert (win.packet_threshold, win.mult) == (3, 0)
    assert win.loss_delay(RTT, RTT, RTT) == 9 / 8 * RTT


def test_a_spurious_loss_keeps_the_window_open() -> None:
    win = ReorderWindow()
    win.on_ack([range(0, 1)], now=0.0, srtt=RTT)
    now, pn = 0.0, 10
    for _ in range(3 * PERSIST_ROUNDS):  # one spurious loss every other round
        now += ROUND
        win.on_lost(pn, largest_acked=pn + 50, size=1000)
        win.on_ack([range(pn, pn + 1)], now=now, srtt=RTT)
        now += ROUND
        win.on_ack([range(pn + 1, pn + 2)], now=now, srtt=RTT)
        pn += 10
    assert win.packet_threshold == 100
    assert win.mult >= 1


def test_memory_is_bounded() -> None:
    win = ReorderWindow(max_tracked=100)
    for pn in range(1000):  # real losses are never acknowledged
        win.on_lost(pn, largest_acked=pn + 3, size=1000)
    assert len(win._lost) == len(win._order) == 100
    assert win.on_ack([range(0, 900)], now=0.0, srtt=RTT) == []  # forgotten
    assert len(win.on_ack([range(900, 1000)], now=0.0, srtt=RTT)) == 100


BBRS = [Bbr, pytest.param(None, id="compiled")]


def _bbr(impl: type[Bbr] | None) -> Bbr:
    """quictund.quic.bbr's model, or its compiled twin (_bbr.pyx) for None."""
    build.install()
    if impl is None:
        if build.bbr_model is None:
            pytest.skip(f"not built: {build.BUILDER}")
        return build.bbr_model(max_datagram_size=1200)  # type: ignore[no-any-return]
    return impl(max_datagram_size=1200)


@pytest.mark.parametrize("impl", BBRS)
def test_bbr_takes_a_spurious_loss_back(impl: type[Bbr] | None) -> None:
    bbr = _bbr(impl)
    for _ in range(3):
        bbr.on_lost(1200)
    bbr.on_spurious(1200)
    assert (bbr._round_lost, bbr._round_lost_packets) == (2400, 2)
    for _ in range(5):
        bbr.on_spurious(1200)
    assert (bbr._round_lost, bbr._round_lost_packets) == (0, 0)


def test_tolerated_reordering_keeps_the_window() -> None:
    """Once the window works, reordering shows up as late ACKs, not spurious losses; those
    keep it from decaying (else it resets every 16 rounds and pays spurious losses again)."""
    win = ReorderWindow()
    win.on_reordered()  # before any spurious loss: RFC 9002 values stay, nothing to keep
    assert (win.packet_threshold, win.mult) == (3, 0)
    win.on_ack([range(0, 1)], now=0.0, srtt=RTT)
    win.on_lost(5, largest_acked=100, size=1000)
    win.on_ack([range(5, 6)], now=0.001, srtt=RTT)
    now = 0.001
    for _ in range(3 * PERSIST_ROUNDS):
        now += ROUND
        win.on_reordered()
        win.on_ack([range(200, 201)], now=now, srtt=RTT)
    assert (win.packet_threshold, win.mult) == (190, 1)
    assert not win.was_lost(5)


@pytest.mark.parametrize("impl", BBRS)
def test_bbr_min_rtt_ignores_a_few_samples_that_overtook_the_others(
    impl: type[Bbr] | None,
) -> None:
    """1 % of packets and of ACKs jumping 25 ms ahead on a 50 ms path give samples of ~25 ms
    (one of them jumped) or ~1 ms (both did), two or three in a row at low rates: they must
    not lower BBR's min_rtt (two in a row took it to 26, then 8 ms, in the lossy bench)."""
    bbr = _bbr(impl)
    now = 0.0
    for rtt in (0.050, 0.051, 0.050):
        now += 0.01
        bbr.on_rtt(now, rtt)
    for burst in ((0.025,), (0.025, 0.026), (0.0015, 0.002, 0.026), (0.001, 0.001, 0.001)):
        for rtt in burst:
            now += 0.005
            bbr.on_rtt(now, rtt)
        assert bbr.min_rtt == 0.050, burst
        for rtt in (0.051, 0.052, 0.050):
            now += 0.01
            bbr.on_rtt(now, rtt)
    for _ in range(4):  # a real drop shows in every sample
        now += 0.01
        bbr.on_rtt(now, 0.040)
    assert bbr.min_rtt == 0.040
