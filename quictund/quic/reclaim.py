"""Reclaiming a stalled tunnel's memory: the one step both engine adapters share.

Credit once granted cannot be taken back (RFC 9000 section 4.1), so under pressure the only
way to free what a stalled tunnel holds is to end it (docs/design.md, "Reclaiming stalled
tunnels' memory").  Each adapter decides when there is pressure; this resets the stream stalled
longest, frees it, and tells the session with a ``StreamReclaimed`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from quictund.quic.credit import ReceiveLedger
from quictund.quic.engine import StreamReclaimed
from quictund.wire import ErrorCode


class _Resettable(Protocol):
    def reset_stream(self, stream_id: int, error_code: int) -> None: ...
    def stop_stream(self, stream_id: int, error_code: int) -> None: ...
    def release(self, stream_id: int) -> None: ...


def reclaim_longest_stalled(
    conn: _Resettable,
    ledger: ReceiveLedger,
    after: float,
    emit: Callable[[Any], None],  # an engine's event queue (qh3's holds its own types)
) -> bool:
    """Reset the stream whose tunnel drained nothing for longest, if for ``after`` seconds.

    The event is emitted before the stream is released: releasing may let an engine deliver
    events it withheld (qh3), and the tunnel must have ended before late data for it arrives.
    """
    found = ledger.longest_stalled(after)
    if found is None:
        return False
    stream_id, stalled_s = found
    return _reclaim(conn, ledger, stream_id, stalled_s, emit)


def reclaim_if_stalled(
    conn: _Resettable,
    ledger: ReceiveLedger,
    stream_id: int,
    after: float,
    emit: Callable[[Any], None],
) -> bool:
    """Reset ``stream_id`` if its tunnel drained nothing for ``after`` seconds (qh3: the
    stream over its own window that closed the gate)."""
    since = ledger.quiet_since.get(stream_id)
    if since is None or ledger.now - since < after:
        return False
    return _reclaim(conn, ledger, stream_id, ledger.now - since, emit)


def _reclaim(
    conn: _Resettable,
    ledger: ReceiveLedger,
    stream_id: int,
    stalled_s: float,
    emit: Callable[[Any], None],  # an engine's event queue (qh3's holds its own types)
) -> bool:
    held = ledger.held.get(stream_id, 0)
    emit(
        StreamReclaimed(
            error_code=ErrorCode.RECLAIMED, stream_id=stream_id, held=held, stalled_s=stalled_s
        )
    )
    for op in (conn.reset_stream, conn.stop_stream):
        try:
            op(stream_id, ErrorCode.RECLAIMED)
        except (ValueError, AssertionError):
            pass  # that half was already finished
    conn.release(stream_id)
    return True


def reclaimed_message(event: StreamReclaimed, peer: tuple[str, int]) -> str:
    """The WARNING the reclaiming side logs: which tunnel, why, and what to raise."""
    return (
        f"tunnel on stream {event.stream_id} with {peer[0]}:{peer[1]} reset: its app read "
        f"nothing for {event.stalled_s:.1f} s while other tunnels of the connection needed "
        f"the {event.held // 1024} KiB it held (raise connection-receive-budget or "
        "reclaim-stalled-after to keep stalled tunnels longer)"
    )
