"""What one QUIC connection's tunnels have queued in the engine, and which of them may read.

Sans-IO (no clock, no asyncio): ``QuicSession`` feeds it what tunnels send and what the engine
still holds unsent, and asks it how much a tunnel may read and whom to wake.

Rules (issue 13: a peer that never grants credit must not make the server read without bound):

1. **Per tunnel**: a tunnel stops reading its socket once it has its *share* queued and not yet
   sent, and may read again below a quarter of it.  The share is the budget divided among the
   tunnels that have something queued (plus one), between ``MIN_SHARE`` (16 KiB) and
   ``STREAM_HIGH`` (1 MiB): one bulk tunnel keeps a 1 MiB backlog (resuming below 256 KiB), while
   300 tunnels that never drain hold ~54 KiB each, and leave room for the others.  (An engine's
   per-stream buffer keeps the size of its largest backlog; shares keep the sum of those near
   the budget too.)
2. **Per connection**: all tunnels of the connection together hold at most ``budget`` bytes
   queued (``connection-send-budget``), plus at most ``MIN_READ`` per tunnel.  Reads are *sized*
   (the splice is an ``asyncio.BufferedProtocol``): a read never takes more than the tunnel's
   own room and the connection's room, so nothing overshoots by a socket read (256 KiB).
   When the connection has no room, the next read of each tunnel is ``MIN_READ`` bytes and then
   the tunnel waits; there is no pass over every tunnel.
3. **Fairly**: waiting tunnels are woken oldest first, as many as the connection has room for a
   full read each; a tunnel that has to wait again goes to the back.  A waiting tunnel with
   nothing queued of its own is woken even when tunnels that never drain (a peer that grants no
   credit) hold the whole budget: it gets one ``MIN_READ`` read per drain, never starves, and
   holds at most ``MIN_READ`` of the overdraft (rule 2).

Counts are exact when a tunnel sends and refreshed from the engine (``refresh``) after data went
out; between refreshes they overestimate, which only makes tunnels wait a little longer.

``ready`` looks only at tunnels that may read: waiting tunnels are indexed by their queued
bytes (a heap, oldest first among equals), so the ones above the low-water mark -- a thousand
tunnels a peer never drains -- are not visited at all.  Scanning them all on every re-read
took a quarter of a millisecond a time, dozens of times a second, under one flooding peer
(issue 13).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

STREAM_HIGH = 1024 * 1024
STREAM_LOW = STREAM_HIGH // 4
MIN_SHARE = 16 * 1024
READ_CHUNK = 256 * 1024  # the largest read (asyncio's and uvloop's own read size)
MIN_READ = 4 * 1024  # the smallest read: what a tunnel may take when the connection is full
DEFAULT_BUDGET = 16 * 1024 * 1024

H = TypeVar("H")


class SendBudget(Generic[H]):
    """Per-connection accounting of unsent bytes; ``H`` is whatever gets woken (a handler)."""

    def __init__(self, budget: int, unsent: Callable[[int], int]) -> None:
        if budget < STREAM_HIGH:
            raise ValueError(f"a connection send budget below {STREAM_HIGH} bytes")
        self.budget = budget
        self._unsent = unsent
        self._queued: dict[int, int] = {}  # stream id -> unsent bytes (non-zero entries only)
        self.total = 0
        self._waiting: dict[int, tuple[int, H]] = {}  # stream id -> (wait order, handler)
        self._order = 0
        # Waiting tunnels indexed for ``ready``: (queued bytes when pushed, wait order, stream id)
        # -- an entry is stale once the tunnel woke, waited again or its count changed (a newer
        # entry stands for it); those found at or below the low-water mark, by wait order; and
        # those with nothing queued, which wake even when there is no room.
        self._heap: list[tuple[int, int, int]] = []
        self._by_order: list[tuple[int, int]] = []
        self._zeros: set[int] = set()
        self.examined = 0  # heap entries the last ``ready`` looked at (tests; O(woken + stale))

    # ---- what tunnels do -----------------------------------------------------------------

    @property
    def share(self) -> int:
        """What one tunnel may have queued now (rule 1)."""
        return max(MIN_SHARE, min(STREAM_HIGH, self.budget // (len(self._queued) + 1)))

    def allowance(self, stream_id: int) -> int:
        """How many bytes ``stream_id``'s next socket read may take (at least ``MIN_READ``)."""
        own = self.share - self._queued.get(stream_id, 0)
        return max(MIN_READ, min(READ_CHUNK, own, self.budget - self.total))

    def sent(self, stream_id: int, count: int) -> bool:
        """``count`` bytes were queued on ``stream_id``; True if the tunnel must now wait."""
        queued = self._queued.get(stream_id, 0) + count
        if count:
            self._queued[stream_id] = queued
            self.total += count
            if stream_id in self._waiting:
                self._index(stream_id)
        return queued >= self.share or self.total >= self.budget

    def wait(self, stream_id: int, handler: H) -> None:
        """``handler`` stopped reading; it is woken by ``ready`` (at the back of the queue)."""
        self._order += 1
        self._waiting[stream_id] = (self._order, handler)
        self._index(stream_id)

    def clear(self) -> None:
        """The connection is gone: drop every count and every waiting handler."""
        self._queued.clear()
        self._waiting.clear()
        self._heap.clear()
        self._by_order.clear()
        self._zeros.clear()
        self.total = 0

    def forget(self, stream_id: int) -> None:
        self.total -= self._queued.pop(stream_id, 0)
        self._waiting.pop(stream_id, None)  # its heap entries are stale now
        self._zeros.discard(stream_id)

    # ---- what the session does after sending -----------------------------------------------

    @property
    def tracked(self) -> int:
        """Streams with bytes queued: what ``refresh`` costs."""
        return len(self._queued)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def refresh(self, moved: set[int] | None = None) -> None:
        """Re-read tracked streams' unsent counts from the engine: those in ``moved`` (the
        only ones whose count can have changed), or every one when ``moved`` is None."""
        unsent = self._unsent
        queued = self._queued
        for sid in list(queued) if moved is None else moved:
            was = queued.get(sid)
            if was is None:
                continue  # moved, but not tracked (nothing queued)
            now = unsent(sid)
            if now == was:
                continue
            if now:
                queued[sid] = now
            else:
                del queued[sid]
            self.total += now - was
            if sid in self._waiting:
                self._index(sid)

    def ready(self) -> list[H]:
        """Waiting handlers to wake now, oldest first (rule 3); they leave the queue.

        Tunnels at or below the low-water mark leave the count-ordered heap for the wait-ordered
        one; while there is room for a full read, the oldest of those wake, each taking a read's
        room; once there is none, only those with nothing queued do.  Tunnels above the mark
        are never visited.
        """
        room = self.budget - self.total
        low = self.share // 4
        waiting, queued, by_order = self._waiting, self._queued, self._by_order
        examined = 0
        heap = self._heap
        while heap and heap[0][0] <= low:
            count, order, sid = heapq.heappop(heap)
            examined += 1
            entry = waiting.get(sid)
            if entry is not None and entry[0] == order and queued.get(sid, 0) == count:
                heapq.heappush(by_order, (order, sid))
        woken: list[tuple[int, H]] = []
        while room >= READ_CHUNK and by_order:
            order, sid = heapq.heappop(by_order)
            examined += 1
            entry = waiting.get(sid)
            if entry is None or entry[0] != order:
                continue  # woke or waited again since
            count = queued.get(sid, 0)
            if count > low:  # the mark fell below it (more tunnels queue): back to waiting
                heapq.heappush(heap, (count, order, sid))
                continue
            room -= READ_CHUNK
            woken.append(waiting.pop(sid))
            self._zeros.discard(sid)
        for sid in self._zeros:  # no room left: those with nothing queued still wake
            examined += 1
            woken.append(waiting.pop(sid))
        self._zeros.clear()
        self.examined = examined
        woken.sort(key=lambda entry: entry[0])
        return [handler for _, handler in woken]

    # ---- private -------------------------------------------------------------------------

    def _index(self, stream_id: int) -> None:
        """Index a waiting tunnel under its current count (older entries of it go stale);
        rebuild the heaps once stale entries outnumber the live ones."""
        order = self._waiting[stream_id][0]
        count = self._queued.get(stream_id, 0)
        if count:
            self._zeros.discard(stream_id)
        else:
            self._zeros.add(stream_id)
        heapq.heappush(self._heap, (count, order, stream_id))
        if len(self._heap) + len(self._by_order) > 2 * len(self._waiting) + 64:
            queued = self._queued
            self._heap = [
                (queued.get(sid, 0), order, sid) for sid, (order, _) in self._waiting.items()
            ]
            heapq.heapify(self._heap)
            self._by_order = []
