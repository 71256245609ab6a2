"""qh3 events as aioquic's classes, and a stand-in core for handing qh3 one event at a time.

Part of the qh3 engine adapter (``engine_qh3.py``): the session handles both engines alike
because the adapter hands out aioquic's event classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aioquic.quic import events
from qh3._hazmat import QuicConnectionCore
from qh3.quic import events as qevents

__all__ = ["FROM_QH3", "OneEvent"]


class OneEvent:
    """Stands in for the core while qh3 handles one event we already took from it."""

    def __init__(self, core: QuicConnectionCore, native: tuple[Any, ...]) -> None:
        self._core = core
        self._native: tuple[Any, ...] | None = native

    def next_event(self) -> tuple[Any, ...] | None:
        native, self._native = self._native, None
        return native

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


def _as_aioquic(cls: type[events.QuicEvent]) -> Any:
    def convert(event: Any) -> events.QuicEvent:
        return cls(**{f.name: getattr(event, f.name) for f in dataclasses.fields(event)})

    return convert


FROM_QH3: dict[type, Any] = {
    getattr(qevents, cls.__name__): _as_aioquic(cls)
    for cls in (
        events.ConnectionIdIssued,
        events.ConnectionIdRetired,
        events.ConnectionTerminated,
        events.DatagramFrameReceived,
        events.HandshakeCompleted,
        events.PingAcknowledged,
        events.ProtocolNegotiated,
        events.StreamDataReceived,
        events.StreamReset,
        events.StopSendingReceived,
    )
}
