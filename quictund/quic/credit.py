"""Receive-credit bookkeeping shared by every engine adapter (pure: no engine, no clock).

The contract (docs/design.md, "Flow control"): a tunnel reports bytes it has *consumed* --
written to its socket and drained below the high-water mark -- and an engine may grant the peer
new credit only for those.  Bytes delivered to a tunnel but not consumed are *held*.

``ReceiveLedger`` counts both per stream and in total; each engine turns the counts into credit
its own way (aioquic: the MAX_STREAM_DATA / MAX_DATA values it writes; qh3: when it lets its
core hand out more data, since the core grants credit as data is taken from it).
"""

from __future__ import annotations


class ReceiveLedger:
    """Held and consumed bytes per stream.  Invariant: ``held_total == sum(held.values())``."""

    __slots__ = ("consumed", "held", "held_total")

    def __init__(self) -> None:
        self.held: dict[int, int] = {}
        self.consumed: dict[int, int] = {}
        self.held_total = 0

    def delivered(self, stream_id: int, count: int) -> None:
        """``count`` bytes of ``stream_id`` were handed to its tunnel."""
        self.held[stream_id] = self.held.get(stream_id, 0) + count
        self.held_total += count

    def consume(self, stream_id: int, count: int) -> int:
        """The tunnel drained ``count`` bytes; returns how many were actually held (clamped)."""
        held = self.held.get(stream_id)
        if held is None:
            return 0
        count = min(count, held)
        self.held[stream_id] = held - count
        self.held_total -= count
        self.consumed[stream_id] = self.consumed.get(stream_id, 0) + count
        return count

    def forget(self, stream_id: int) -> tuple[int, int]:
        """Stop tracking ``stream_id``; returns its ``(held, consumed)`` bytes."""
        held = self.held.pop(stream_id, 0)
        self.held_total -= held
        return held, self.consumed.pop(stream_id, 0)

    def tracks(self, stream_id: int) -> bool:
        return stream_id in self.held


def raised_limit(target: int, advertised: int, window: int) -> int | None:
    """The new credit limit to announce, or ``None`` while the gain is under a quarter window.

    Batching keeps MAX_DATA / MAX_STREAM_DATA frames rare for a reader that consumes in small
    pieces, and a limit never moves backwards.
    """
    if target - advertised >= window // 4:
        return target
    return None
