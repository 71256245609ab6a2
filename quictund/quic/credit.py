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
    """Held and consumed bytes per stream, and since when each holding stream drained nothing.

    Invariants: ``held_total == sum(held.values())``,
    ``holding == {sid for sid, n in held.items() if n} == set(quiet_since)``.  The clock is the
    engine's ``now``, set by the adapter as datagrams come and go (``now`` below).
    """

    __slots__ = ("consumed", "held", "held_total", "holding", "now", "quiet_since")

    def __init__(self) -> None:
        self.held: dict[int, int] = {}
        self.consumed: dict[int, int] = {}
        self.held_total = 0
        # the streams holding undrained bytes, kept as a set so that StreamWindows counts the
        # others with one C-level set intersection, not a Python loop over every stream
        self.holding: set[int] = set()
        # holding streams -> when they last drained (or began holding), oldest first: a
        # drain moves a stream to the end, so the longest stalled is always the first key
        self.quiet_since: dict[int, float] = {}
        self.now = 0.0

    def delivered(self, stream_id: int, count: int) -> None:
        """``count`` bytes of ``stream_id`` were handed to its tunnel."""
        self.held[stream_id] = self.held.get(stream_id, 0) + count
        self.held_total += count
        if count and stream_id not in self.holding:
            self.holding.add(stream_id)
            self.quiet_since[stream_id] = self.now

    def consume(self, stream_id: int, count: int) -> int:
        """The tunnel drained ``count`` bytes; returns how many were actually held (clamped)."""
        held = self.held.get(stream_id)
        if held is None:
            return 0
        count = min(count, held)
        self.held[stream_id] = held - count
        self.held_total -= count
        if count:
            del self.quiet_since[stream_id]
            if held == count:
                self.holding.discard(stream_id)
            else:
                self.quiet_since[stream_id] = self.now
        self.consumed[stream_id] = self.consumed.get(stream_id, 0) + count
        return count

    def forget(self, stream_id: int) -> tuple[int, int]:
        """Stop tracking ``stream_id``; returns its ``(held, consumed)`` bytes."""
        held = self.held.pop(stream_id, 0)
        self.held_total -= held
        self.holding.discard(stream_id)
        self.quiet_since.pop(stream_id, None)
        return held, self.consumed.pop(stream_id, 0)

    def longest_stalled(self, after: float) -> tuple[int, float] | None:
        """``(stream, seconds)`` of the stream that has held bytes and drained none for the
        longest, if that is at least ``after`` seconds."""
        for stream_id, since in self.quiet_since.items():
            quiet = self.now - since
            return (stream_id, quiet) if quiet >= after else None
        return None

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


# ---- per-connection receive budget (issue 13) -------------------------------------------------

INITIAL_STREAM_WINDOW = 32 * 1024
"""Every stream's first window (the transport parameter), before it shows it consumes."""


def initial_stream_window(stream_window: int, initial: int | None = None) -> int:
    return min(INITIAL_STREAM_WINDOW if initial is None else initial, stream_window)


BEHIND_HOLE_WINDOWS = 3
"""How many windows of extra credit a stream gets for bytes waiting behind a hole."""


def connection_limit(*, used: int, retired: int, window: int, budget: int) -> int:
    """The MAX_DATA a receiver may announce: ``window`` in flight, ``budget`` in memory.

    ``used`` is the peer's total (highest offsets, so a gap costs what it spans), ``retired``
    the bytes that left quictund's memory (consumed by a tunnel, or discarded with a released
    stream).  ``used - retired`` is what the connection holds: undrained tunnel data plus
    reassembly buffers with their gaps.  Bytes parked on a stalled stream do not eat the
    in-flight window (other tunnels keep flowing) until together with it they reach the budget.
    """
    return min(used + window, retired + budget)


class StreamWindows:
    """Per-stream receive windows that grow while a tunnel consumes and shrink when it stalls.

    A stream starts at ``initial`` (the transport parameter).  When its tunnel has drained a
    whole window since the window last changed, the window doubles, up to ``maximum``; when
    half a window sits undrained (the tunnel's socket is full), it halves, down to ``initial``.
    A window grows only while the credit all streams may still use (``limit - consumed``: what
    each could park if its tunnel stalled now) stays within ``pool``.  Credit once granted
    cannot be taken back (RFC 9000 section 4.1), so this is what bounds the bytes stalled
    tunnels park together, and what leaves the rest of the connection's budget to the others.
    A tunnel that consumes always gets at least ``initial`` back, so none is ever frozen.  And
    no window grows past half the pool shared by the streams still draining (those holding no
    undrained bytes): while 500 tunnels fill their sockets at once each may take a 500th,
    so when most of them then stall, half the pool is still there for the one that did not.
    Pure: the engine adapter feeds it consumed/held counts and announces the limits it returns.
    """

    __slots__ = (
        "_held", "_holding", "_open", "_since", "_window", "initial", "maximum", "open_total",
        "pool", "refused",
    )  # fmt: skip

    def __init__(self, *, initial: int, maximum: int, pool: int, ledger: ReceiveLedger) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.pool = pool
        self._held = ledger.held  # the ledger's undrained bytes per stream (read only)
        self._holding = ledger.holding
        self._window: dict[int, int] = {}
        self._since: dict[int, int] = {}  # consumed when the window last changed
        self._open: dict[int, int] = {}  # limit - consumed at the last update
        self.open_total = 0
        # set when a draining stream's window could not grow because the others' credit fills
        # the pool: the adapter's cue to reclaim a stalled tunnel (docs/design.md); it clears it
        self.refused = False

    def window(self, stream_id: int) -> int:
        return self._window.get(stream_id, self.initial)

    def limit(self, stream_id: int, *, consumed: int, advertised: int, behind: int = 0) -> int:
        """The stream's new limit (never below ``advertised``) after its tunnel consumed.

        ``behind`` is the extent received past a hole (a lost packet not yet resent): those
        bytes wait in reassembly, not in a stalled tunnel, so they are credited as if
        consumed, up to ``BEHIND_HOLE_WINDOWS`` windows.  Without it the sender stops one
        window past the hole until the retransmission lands -- on a 5 %-loss path, where a
        retransmission is itself lost now and then, for several round trips (docs/
        performance.md).  The connection's budget still bounds what all streams hold.
        """
        window = self._tune(stream_id, consumed, max(0, advertised - consumed))
        target = consumed + window + min(behind, BEHIND_HOLE_WINDOWS * window)
        limit = advertised
        if target - advertised >= max(window // 4, 1) or advertised <= consumed:
            limit = max(advertised, target)
        self._note(stream_id, limit - consumed)
        return limit

    def forget(self, stream_id: int) -> None:
        self._note(stream_id, 0)
        del self._open[stream_id]
        self._window.pop(stream_id, None)
        self._since.pop(stream_id, None)

    def _tune(self, stream_id: int, consumed: int, still_open: int) -> int:
        window = self._window.get(stream_id, self.initial)
        since = self._since.get(stream_id, 0)
        if self._held.get(stream_id, 0) >= window // 2 and window > self.initial:
            window = max(self.initial, window // 2)
            self._since[stream_id] = consumed
        elif consumed - since >= window and window < self.maximum:
            others = self.open_total - self._open.get(stream_id, 0)
            if others + max(window + 1, still_open) > self.pool:
                # no growth fits the pool: skip the O(streams) fair share (the same answer)
                self._window[stream_id] = window
                self.refused = True
                return window
            wanted = min(self.maximum, 2 * window, max(window, self._fair_share()))
            if wanted > window:
                if others + max(wanted, still_open) <= self.pool:
                    window = wanted
                    self._since[stream_id] = consumed
                else:
                    self.refused = True
        self._window[stream_id] = window
        return window

    def _fair_share(self) -> int:
        """Half the pool over the streams still draining (those with a window holding
        nothing).  Asked at every consume of a stream whose window the share caps: with 100
        busy tunnels a Python loop over them here was 4 % of a receiving server's CPU."""
        draining = len(self._open) - len(self._holding.intersection(self._open))
        return self.pool // (2 * max(1, draining))

    def _note(self, stream_id: int, still_open: int) -> None:
        self.open_total += still_open - self._open.get(stream_id, 0)
        self._open[stream_id] = still_open
