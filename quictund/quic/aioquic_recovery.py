"""aioquic's loss recovery with adaptive reordering tolerance and spurious-loss undo.

aioquic declares a packet lost 3 packets or 9/8 RTT after later ones are acknowledged, forever
(RFC 9002's defaults), and forgets it; an ACK that later covers it is ignored.  On a path that
reorders, that is a stream of spurious losses, each one a congestion event.  :func:`install`
turns the connection's ``QuicPacketRecovery`` into :class:`ReorderingRecovery`, which

* remembers packets it declared lost and spots those acknowledged afterwards
  (:class:`quictund.quic.reorder.ReorderWindow`, one per packet number space);
* detects loss with the thresholds that window adapts (``_detect_loss`` below is RFC 9002
  §6.1 with them, in place of aioquic's fixed ones);
* keeps the congestion controller from paying for spurious losses: BBR takes them back out of
  its loss guard's count (``Bbr.on_spurious``); a loss-based controller (cubic, reno) gets the
  window it had before the recovery episode back once every packet that episode declared lost
  turned out to have arrived (TCP's "undo", RFC 8985 §6.2 / Linux ``tcp_try_undo_recovery``).

Only the engine adapter may touch aioquic internals; this module is part of it (private
``_detect_loss``, ``_on_packets_lost``, ``_cc``, ``_rtt_*``, aioquic 1.x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace

from quictund.quic.aioquic_cc import BbrCongestionControl
from quictund.quic.reorder import Lost, ReorderWindow

_UNDO_SKIP = frozenset({"bytes_in_flight"})
MAX_HOLES = 32  # outstanding packets below the largest acked looked at per ACK
# An ACK whose new largest packet leaves this many older ones outstanding acknowledges a packet
# that jumped ahead of them: its RTT is shorter than the path's (25 ms on a 50 ms path when
# packets overtake by 25 ms) and would halve min_rtt, hence BBR's BDP and window.  Random
# loss leaves fewer holes: they are declared lost 3 packets later.
JUMPED_HOLES = 16


def _no_rtt(*, now: float, rtt: float) -> None:
    return None


class ReorderingRecovery(QuicPacketRecovery):
    """``QuicPacketRecovery`` plus the state below (added by :func:`install`, not ``__init__``,
    because aioquic's connection builds the object itself)."""

    windows: dict[int, ReorderWindow]
    _undo_state: dict[str, Any] | None
    _undo_pending: int
    _undo_since: float
    # BBR's once-per-ACK-frame model run (``BbrCongestionControl.on_ack_done``); None for
    # aioquic's own controllers, which need no such call
    ack_done: Callable[[float], None] | None

    def window(self, space: QuicPacketSpace) -> ReorderWindow:
        win = self.windows.get(id(space))
        if win is None:
            win = self.windows[id(space)] = ReorderWindow()
        return win

    @property
    def spurious_losses(self) -> int:
        return sum(w.spurious for w in self.windows.values())

    def on_ack_received(
        self, *, ack_rangeset: RangeSet, ack_delay: float, now: float, space: QuicPacketSpace
    ) -> None:
        win = self.window(space)
        found = win.on_ack(ack_rangeset, now, self._rtt_smoothed)
        if found:
            self._on_spurious(found)
        # the outstanding packets below this ACK's largest: few (the holes), oldest first
        largest = ack_rangeset.bounds().stop - 1
        holes: list[int] = []
        for pn in space.sent_packets:
            if pn >= largest or len(holes) >= MAX_HOLES:
                break
            holes.append(pn)
        unacked = sum(1 for pn in holes if pn not in ack_rangeset)
        jumped = unacked >= JUMPED_HOLES and largest > space.largest_acked_packet
        if jumped:  # not a path RTT sample: keep it out of min_rtt, srtt and BBR's model
            saved = (self._rtt_latest, self._rtt_min, self._rtt_smoothed, self._rtt_variance)
            self._cc.on_rtt_measurement = _no_rtt  # type: ignore[method-assign]
        try:
            super().on_ack_received(
                ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space
            )
        finally:
            if jumped:
                del self._cc.on_rtt_measurement
                self._rtt_latest, self._rtt_min, self._rtt_smoothed, self._rtt_variance = saved
        below = space.largest_acked_packet
        if any(
            pn < below and pn not in space.sent_packets and not win.was_lost(pn) for pn in holes
        ):
            win.on_reordered()  # a hole was filled late, and not declared lost: tolerated
        if self.ack_done is not None:
            self.ack_done(now)

    def _detect_loss(self, *, now: float, space: QuicPacketSpace) -> None:
        """RFC 9002 §6.1 with the packet and time thresholds of this space's window."""
        win = self.window(space)
        if self._rtt_initialized:
            loss_delay = win.loss_delay(self._rtt_smoothed, self._rtt_latest, self._rtt_min)
        else:
            loss_delay = win.loss_delay(self._rtt_initial, self._rtt_initial, self._rtt_initial)
        packet_threshold = space.largest_acked_packet - win.packet_threshold
        time_threshold = now - loss_delay
        lost_packets = []
        space.loss_time = None
        for packet_number, packet in space.sent_packets.items():
            if packet_number > space.largest_acked_packet:
                break
            sent_time = packet.sent_time or 0.0
            if packet_number <= packet_threshold or sent_time <= time_threshold:
                lost_packets.append(packet)
            else:
                packet_loss_time = sent_time + loss_delay
                if space.loss_time is None or space.loss_time > packet_loss_time:
                    space.loss_time = packet_loss_time
        if not lost_packets:
            return
        self._on_packets_lost(
            now=now,
            packets=lost_packets,
            persistent_congestion=self._in_persistent_congestion(packets=lost_packets),
            space=space,
        )

    def _on_packets_lost(
        self,
        *,
        congestion_event: bool = True,
        now: float,
        packets: Any,
        persistent_congestion: bool = False,
        space: QuicPacketSpace,
    ) -> None:
        packets = list(packets)
        if congestion_event and packets:
            self._remember(packets, space, now)
        super()._on_packets_lost(
            congestion_event=congestion_event,
            now=now,
            packets=packets,
            persistent_congestion=persistent_congestion,
            space=space,
        )

    def _remember(self, packets: list[QuicSentPacket], space: QuicPacketSpace, now: float) -> None:
        win = self.window(space)
        in_flight = [p for p in packets if p.in_flight]
        for packet in in_flight:
            win.on_lost(packet.packet_number, space.largest_acked_packet, packet.sent_bytes)
        if in_flight and not isinstance(self._cc, BbrCongestionControl):
            # a new episode (none open, or the open one is over: a real loss kept it open)
            if self._undo_state is None or now - self._undo_since > 2 * self._rtt_smoothed:
                self._undo_since, self._undo_pending = now, 0
                self._undo_state = {k: v for k, v in vars(self._cc).items() if k not in _UNDO_SKIP}
            self._undo_pending += len(in_flight)

    def _on_spurious(self, found: list[Lost]) -> None:
        cc = self._cc
        if isinstance(cc, BbrCongestionControl):
            for lost in found:
                cc.model.on_spurious(lost.size)
            return
        if self._undo_state is None:
            return
        self._undo_pending -= len(found)
        if self._undo_pending <= 0:  # every loss of the episode was spurious: undo it
            state, self._undo_state, self._undo_pending = self._undo_state, None, 0
            if state.get("congestion_window", 0) > cc.congestion_window:
                vars(cc).update(state)


def install(loss: QuicPacketRecovery) -> ReorderingRecovery:
    """Make ``loss`` (aioquic's, freshly built by the connection) a :class:`ReorderingRecovery`;
    call before anything wraps its methods."""
    loss.__class__ = ReorderingRecovery
    assert isinstance(loss, ReorderingRecovery)
    loss.windows = {}
    loss._undo_state = None
    loss._undo_pending = 0
    loss._undo_since = 0.0
    cc = loss._cc
    loss.ack_done = cc.on_ack_done if isinstance(cc, BbrCongestionControl) else None
    return loss
