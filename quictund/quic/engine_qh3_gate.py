"""qh3 adapter, part: events leave the core only while the tunnels keep up (the *gate*).

qh3's core grants the peer credit as data *leaves* it (``consumed + window``; qh3
``src/quic/path.rs`` ``FlowLimit::consume``), and its Python facade takes every event out at
once.  Here ``_drain_core`` stops once a stream holds ``stream_window - core window``
undrained bytes (or the connection ``connection_window - core window``), until ``consume`` /
``release`` bring it below.  So a peer may send at most ``consumed + stream_window``.  The
price: while one stream is over its budget, later events of the *whole connection* wait in
the core (head-of-line) -- qh3 2.1 has no per-stream credit hook.

Reclaiming (docs/design.md, "Reclaiming stalled tunnels' memory"): a closed gate is the
pressure when another tunnel is live on the connection.  A tunnel opened while the gate is
closed is not seen (its first bytes are withheld too); taking events out of the core to look
would grant the peer credit beyond ``consumed + stream_window``.  Only ``engine_qh3*`` modules
touch qh3's internals.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic import events
from qh3.quic.connection import QuicConnection

from quictund.quic.credit import ReceiveLedger
from quictund.quic.engine_qh3_events import OneEvent
from quictund.quic.reclaim import reclaim_if_stalled, reclaim_longest_stalled
from quictund.quic.settings import EngineSettings

LIVE_STATES = ("first_flight", "connected")


class GatedEvents(QuicConnection):
    """The receive half of the qh3 adapter (see the module docstring)."""

    def _init_gate(self, settings: EngineSettings, max_data: int, max_stream_data: int) -> None:
        self._stream_gate = max(1, settings.stream_window - max_stream_data)
        self._conn_gate = max(1, settings.connection_window - max_data)
        self._ledger = ReceiveLedger()
        self._reclaim_after = settings.reclaim_stalled_after_s
        self._released: dict[int, None] = {}  # insertion-ordered set
        self._live: set[int] = set()
        self._gate: int | None = None  # the stream whose backlog stopped event delivery

    @property
    def held_bytes(self) -> int:
        return self._ledger.held_total

    @property
    def events_ready(self) -> bool:
        return bool(self._events)

    def consume(self, stream_id: int, count: int) -> None:
        """``count`` bytes of ``stream_id`` have been drained: the peer may send that many more."""
        if self._ledger.consume(stream_id, count):
            self._maybe_ungate()

    def release(self, stream_id: int) -> None:
        """Stop tracking ``stream_id``: what it holds no longer counts, its data is discarded."""
        if stream_id in self._released:
            return
        self._ledger.forget(stream_id)
        self._live.discard(stream_id)
        self._released[stream_id] = None
        if len(self._released) > 65536:
            del self._released[next(iter(self._released))]
        self._maybe_ungate()

    def is_released(self, stream_id: int) -> bool:
        return stream_id in self._released

    def _reclaim_if_gated(self, now: float) -> None:
        """Before each send pass: reset the tunnel that holds the gate once it is stalled, if
        another tunnel is live (a lone tunnel is kept, however long it stalls)."""
        self._ledger.now = now
        gate, ledger, after = self._gate, self._ledger, self._reclaim_after
        if gate is None or not after or len(self._live) < 2:
            return
        if ledger.held.get(gate, 0) >= self._stream_gate:
            reclaim_if_stalled(self, ledger, gate, after, self._events.append)
        else:
            # the connection's total closed it, and the stream that crossed the mark may be
            # one still reading: any stalled tunnel frees some, the longest stalled goes
            reclaim_longest_stalled(self, ledger, after, self._events.append)

    def _drain_core(self) -> None:
        core = self._core
        if core is None or (self._gate is not None and core.state in LIVE_STATES):
            return  # withheld: the core grants the peer credit as events leave it
        ledger, released = self._ledger, self._released
        out: Any = self._events  # holds aioquic events too (next_event converts the rest)
        while (native := core.next_event()) is not None:
            kind = native[0]
            if kind == "stream_data":
                sid, data = native[1], native[2]
                if core.state not in LIVE_STATES:
                    # The connection is closing (e.g. the peer broke flow control): what the
                    # gate withheld must not now flood in beyond the window.  Its tunnels are
                    # reset when the session sees the close, so nothing would write it.
                    continue
                out.append(events.StreamDataReceived(data, native[3], sid))
                if data and sid not in released:
                    self._live.add(sid)
                    ledger.delivered(sid, len(data))
                    if (
                        ledger.held[sid] >= self._stream_gate
                        or ledger.held_total >= self._conn_gate
                    ) and core.state in LIVE_STATES:
                        self._gate = sid
                        return
            elif kind == "stream_reset":
                out.append(events.StreamReset(error_code=native[2], stream_id=native[1]))
            elif kind == "stop_sending":
                out.append(events.StopSendingReceived(error_code=native[2], stream_id=native[1]))
            else:
                if kind == "stream_finished":
                    self._live.discard(native[1])
                    released.pop(native[1], None)  # the core drops its late frames itself
                self._drain_one(native)
                core = self._core
                if core is None:
                    return

    def _drain_one(self, native: tuple[Any, ...]) -> None:
        """Let qh3's own ``_drain_core`` handle one event (TLS, CIDs, close...)."""
        real = self._core
        assert real is not None
        self._core = OneEvent(real, native)  # type: ignore[assignment]
        try:
            super()._drain_core()
        finally:
            if isinstance(self._core, OneEvent):
                self._core = real

    def _maybe_ungate(self) -> None:
        gate = self._gate
        if gate is None:
            return
        ledger = self._ledger
        if ledger.held.get(gate, 0) < self._stream_gate and ledger.held_total < self._conn_gate:
            self._gate = None
            self._drain_core()
