"""Which packet numbers arrived: duplicate detection that reordering cannot outrun (sans-IO).

Why: aioquic remembers the last 128 packet numbers (``QuicPacketNumberWindow``) and takes
anything older for a duplicate.  At 100 Mbit/s a packet that arrives 20 ms late has ~180 later
ones ahead of it, so it is dropped as a "duplicate": its data is resent, it is never
acknowledged, and the sender never sees the spurious loss that would widen its reordering
window (quictund/quic/reorder.py).  That capped reordered links (issue 15's "1 % 20 ms late":
0.44-0.72x Linux BBR), and in tests/test_engine_reorder.py, once the compiled packet path let
the sender go faster, the 8 ms late packets fell out of the window too.

:class:`ReceivedWindow` keeps the packet numbers received as ranges over a window of
``WINDOW`` packet numbers -- a quarter of what a 2-byte packet number on the wire can
address, so decoding stays unambiguous -- and at most ``MAX_RANGES`` ranges (the oldest
dropped first).  Anything below the window, or below a dropped range, counts as received,
as in aioquic.  Memory is bounded by ``MAX_RANGES``; in order arrival costs O(1).
"""

from __future__ import annotations

from bisect import bisect_right

WINDOW = 16_384  # packet numbers; a 2-byte packet number decodes within +-32,768
MAX_RANGES = 256


class ReceivedWindow:
    """``add`` and ``in`` as aioquic's ``QuicPacketNumberWindow``, over a wider window."""

    __slots__ = ("_lower", "_max_ranges", "_starts", "_stops", "_window", "count")

    def __init__(self, window: int = WINDOW, max_ranges: int = MAX_RANGES) -> None:
        self._lower = 0  # every packet number below this counts as received
        self._starts: list[int] = []  # disjoint, sorted ranges [start, stop)
        self._stops: list[int] = []
        self._window = window
        self._max_ranges = max_ranges
        self.count = 0  # calls of ``add``: packets taken (engine_aioquic_acks.py reads it)

    def __contains__(self, packet_number: int) -> bool:
        if packet_number < self._lower:
            return True
        i = bisect_right(self._starts, packet_number) - 1
        return i >= 0 and packet_number < self._stops[i]

    def add(self, packet_number: int) -> None:
        self.count += 1
        starts, stops = self._starts, self._stops
        if packet_number < self._lower:
            return
        if stops and stops[-1] == packet_number:  # the next one in order: the common case
            stops[-1] = packet_number + 1
        elif not starts or packet_number > stops[-1]:
            starts.append(packet_number)
            stops.append(packet_number + 1)
        else:
            self._insert(packet_number)
        lower = packet_number - self._window + 1
        if lower > self._lower:
            self._raise_lower(lower)
        if len(starts) > self._max_ranges:
            self._raise_lower(stops[0])

    def _insert(self, pn: int) -> None:
        starts, stops = self._starts, self._stops
        i = bisect_right(starts, pn) - 1
        if i >= 0 and pn < stops[i]:
            return  # already there
        joins_left = i >= 0 and stops[i] == pn
        joins_right = i + 1 < len(starts) and starts[i + 1] == pn + 1
        if joins_left and joins_right:
            stops[i] = stops[i + 1]
            del starts[i + 1], stops[i + 1]
        elif joins_left:
            stops[i] = pn + 1
        elif joins_right:
            starts[i + 1] = pn
        else:
            starts.insert(i + 1, pn)
            stops.insert(i + 1, pn + 1)

    def _raise_lower(self, lower: int) -> None:
        """Forget ranges below ``lower``: all of it counts as received from now on."""
        self._lower = lower
        starts, stops = self._starts, self._stops
        drop = 0
        while drop < len(starts) and stops[drop] <= lower:
            drop += 1
        if drop:
            del starts[:drop], stops[:drop]
        if starts and starts[0] < lower:
            starts[0] = lower
