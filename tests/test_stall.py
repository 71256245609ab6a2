"""quic/stall.py: when a client PINGs because the datagrams it was receiving stopped."""

from __future__ import annotations

from quictund.quic.stall import BUSY_GAP_S, MIN_STALL_S, StallWatch, stall_after


def test_only_back_to_back_datagrams_arm_the_watch() -> None:
    watch = StallWatch(give_up_s=5.0)
    assert not watch.received(1.0)  # a lone datagram (a PING's ACK): idle, not a stream
    assert watch.received(BUSY_GAP_S / 2)  # a stream of data: start watching
    assert not watch.received(0.001)  # already watching


def test_a_stall_pings_then_again_at_doubling_silences_until_the_keep_alive() -> None:
    watch = StallWatch(give_up_s=5.0)
    watch.received(0.001)
    assert watch.due(0.1, rtt_s=0.001) == (False, MIN_STALL_S - 0.1)
    assert watch.due(MIN_STALL_S, rtt_s=0.001) == (True, 2 * MIN_STALL_S)
    # the PING's ACK came back alone (0.01 s of silence since): not yet the next threshold
    assert watch.received(0.3) is False
    assert watch.due(0.01, rtt_s=0.001) == (False, 2 * MIN_STALL_S - 0.01)
    pings = [watch.due(s, rtt_s=0.001)[0] for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert pings == [True, True, True, True, False]  # past 5 s: the keep-alive's business
    assert not watch.armed


def test_the_stream_resuming_resets_the_backoff() -> None:
    watch = StallWatch(give_up_s=5.0)
    watch.received(0.001)
    watch.due(1.0, rtt_s=0.001)  # a stall: next PING after 2x
    watch.received(0.001)
    assert watch.due(MIN_STALL_S, rtt_s=0.001)[0]  # back to the first threshold


def test_long_paths_wait_three_rtts() -> None:
    assert stall_after(0.001) == MIN_STALL_S
    assert stall_after(0.2) == 3 * 0.2
