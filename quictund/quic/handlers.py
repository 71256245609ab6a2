"""What a QUIC session calls back: the interfaces its tunnels and its owner implement.

Kept apart from ``session.py`` so a tunnel (``splice.py``, ``udpflow/``, the handshakes) can
name what it must provide without the session's machinery.  Callbacks never await: the
session calls them from its datagram and timer handlers, one loop turn at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from quictund.quic.session import QuicSession


class StreamHandler(Protocol):
    """One per stream id.  An exception raised here resets that stream only."""

    def on_stream_data(self, data: bytes, end_stream: bool) -> None: ...
    def on_stream_reset(self, error_code: int) -> None: ...  # RESET_STREAM, or reclaimed here
    def on_stop_sending(self, error_code: int) -> None: ...
    def on_send_ready(self) -> None: ...  # the stream and the connection have room again
    def on_session_lost(self, reason: str) -> None: ...


class Flushable(Protocol):
    def flush(self) -> None: ...  # once, before this loop turn's transmit


class SessionOwner(Protocol):
    """The endpoint that made the session: it decides what a peer-opened stream becomes."""

    def stream_opened(self, session: QuicSession, stream_id: int) -> StreamHandler | None: ...
    def session_closed(self, session: QuicSession, reason: str) -> None: ...
