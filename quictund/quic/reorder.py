"""Adaptive reordering tolerance for loss detection (sans-IO; RFC 9002 §6.1, RFC 8985 §6.2).

Why: RFC 9002's fixed thresholds (a packet is lost once 3 later packets are acknowledged, or
9/8 RTT after it was sent) read reordering as loss.  On a 100 Mbit/s, 50 ms path where 1 % of
packets arrive 25 ms early, every early packet makes the ~200 packets sent just before it
"lost"; their retransmissions are wasted and the congestion controller backs off for nothing
(measured: 3.8 Mbit/s where Linux TCP, whose RACK adapts, moves 70).

QUIC makes a spurious loss unambiguous: retransmitted data goes in new packets, so an ACK for a
packet number we declared lost means that very packet arrived.  This module, fed with the
packets declared lost and the ACK ranges that arrive, counts such packets and adapts, as TCP
RACK does (RFC 8985 §6.2; RFC 9002 §6.1.1/6.1.2 allow larger thresholds):

* **packet threshold**: raised to twice the reordering distance seen (how many packets above
  it were already acknowledged when it was declared lost), up to ``MAX_PACKET_THRESHOLD``: the
  distance grows with the sending rate, and a threshold of just the distance seen was crossed
  again at each rate increase (every round of BBR's startup);
* **time threshold**: ``max(srtt, latest_rtt)`` plus a reordering window of ``mult`` quarters
  of min RTT (at most one srtt), ``mult`` growing by one per round that saw a spurious loss
  (RACK's ``reo_wnd_mult``); before any reordering, RFC 9002's 9/8 RTT;
* **decay**: after ``PERSIST_ROUNDS`` rounds (of one srtt) that saw neither a spurious loss
  nor reordering the window tolerated (:meth:`on_reordered`: a packet below the largest
  acknowledged one acknowledged late, RACK's ``reordering_seen``) both go back to RFC 9002's
  values, so a path that stopped reordering gets fast loss detection back.  Counting only
  spurious losses would undo a working window every 16 rounds and pay a burst of spurious
  losses to rebuild it.

The caller tells its congestion controller about each spurious loss so it can undo the
reduction (see quictund/quic/aioquic_recovery.py).  Memory: at most ``max_tracked`` lost
packets are remembered (oldest forgotten first), a few dozen bytes each.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from typing import NamedTuple

K_PACKET_THRESHOLD = 3  # RFC 9002 §6.1.1
K_TIME_THRESHOLD = 9 / 8  # RFC 9002 §6.1.2
MAX_PACKET_THRESHOLD = 10_000  # far above any real reordering distance
MAX_MULT = 4  # the window never exceeds one srtt anyway (RFC 8985 §6.2 caps it there)
PERSIST_ROUNDS = 16  # RFC 8985's reo_wnd_persist
MAX_TRACKED = 4096


class Lost(NamedTuple):
    """A packet declared lost, remembered until it is acknowledged or forgotten."""

    size: int
    distance: int  # largest acknowledged packet number minus this one, when declared lost


class ReorderWindow:
    """Spurious-loss detection and the loss thresholds it adapts (one packet number space)."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.packet_threshold = K_PACKET_THRESHOLD
        self.mult = 0  # 0: no reordering seen, RFC 9002's 9/8 RTT
        self.spurious = 0  # spurious losses detected, ever
        self._max_tracked = max_tracked
        self._lost: dict[int, Lost] = {}
        self._order: list[int] = []  # packet numbers of ``_lost``, sorted
        self._persist = 0
        self._round_start: float | None = None
        self._grew_this_round = False
        self._reordered_this_round = False

    def on_lost(self, packet_number: int, largest_acked: int, size: int) -> None:
        """A packet was declared lost (a congestion event, not a PTO's early retransmit)."""
        if packet_number in self._lost:
            return
        if len(self._order) >= self._max_tracked:
            del self._lost[self._order.pop(0)]
        self._lost[packet_number] = Lost(size, max(largest_acked - packet_number, 0))
        insort(self._order, packet_number)

    def on_ack(self, ranges: Iterable[range], now: float, srtt: float) -> list[Lost]:
        """Acknowledged ``ranges`` arrived: return the packets among them we had declared lost
        (spurious losses), adapting the thresholds; also ages the window by rounds."""
        self._tick(now, srtt)
        found: list[Lost] = []
        if self._order:
            for r in ranges:
                lo, hi = bisect_left(self._order, r.start), bisect_left(self._order, r.stop)
                found.extend(self._lost.pop(pn) for pn in self._order[lo:hi])
                del self._order[lo:hi]
        if found:
            self.spurious += len(found)
            self._widen(max(lost.distance for lost in found))
        return found

    def on_reordered(self) -> None:
        """A packet arrived behind later ones and the window kept it from being declared
        lost: the reordering goes on, so keep the window (no growth)."""
        if self.mult or self.packet_threshold > K_PACKET_THRESHOLD:
            self._persist = PERSIST_ROUNDS
            self._reordered_this_round = True

    def was_lost(self, packet_number: int) -> bool:
        return packet_number in self._lost

    def loss_delay(self, srtt: float, latest_rtt: float, min_rtt: float) -> float:
        """How long after its sending a packet with later ones acknowledged is lost."""
        rtt = max(srtt, latest_rtt)
        if self.mult == 0:
            return K_TIME_THRESHOLD * rtt
        return rtt + max(rtt / 8, min(self.mult * min_rtt / 4, srtt))

    def _widen(self, distance: int) -> None:
        self.packet_threshold = max(self.packet_threshold, min(2 * distance, MAX_PACKET_THRESHOLD))
        if not self._grew_this_round:  # RACK: at most one step per round
            self.mult = min(self.mult + 1, MAX_MULT)
            self._grew_this_round = True
        self._persist = PERSIST_ROUNDS

    def _tick(self, now: float, srtt: float) -> None:
        if self._round_start is None:
            self._round_start = now
            return
        if srtt <= 0 or now - self._round_start < srtt:
            return
        self._round_start = now
        clean = not (self._grew_this_round or self._reordered_this_round)
        self._grew_this_round = self._reordered_this_round = False
        if clean and self._persist > 0:
            self._persist -= 1
            if self._persist == 0:
                self.packet_threshold = K_PACKET_THRESHOLD
                self.mult = 0
