"""aioquic glue for a client that moved: the server challenges the new path at once.

When a client's address or port changes (a NAT rebinding, a client migrating,
quic/migrate.py) aioquic promotes the new path on the first non-probing packet from it and
must send PATH_CHALLENGE there (RFC 9000 §9.3).  During a download the congestion window is
full of packets sent to the old address, which nobody acknowledges: aioquic then writes
nothing, not even the challenge, and with the anti-amplification limit leaving no room for a
probe it does not arm its probe timer either.  The connection sat still until the client's
next keep-alive (measured: 4.8 s, then 12.8 s of pause in tests/e2e/test_roaming.py).

``after_receive`` marks one probe as pending when the server's active path changed: a probe
may exceed the congestion window (RFC 9002 §7.5), and it carries the PATH_CHALLENGE; the
anti-amplification limit (3x the bytes received on the new path until it is validated) still
applies to it.  The client's acknowledgement of it, one RTT later, lets loss detection declare
the old path's packets lost and the transfer goes on.  Touches aioquic internals, hence an
``engine_*`` module.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import QuicConnection


def active_path(conn: QuicConnection) -> Any:
    return conn._network_paths[0] if conn._network_paths else None


def after_receive(conn: QuicConnection, before: Any) -> None:
    """Call with ``active_path(conn)`` taken before ``receive_datagram``."""
    path = active_path(conn)
    if before is None or path is before or conn._is_client or path.is_validated:
        return
    conn._probe_pending = True
