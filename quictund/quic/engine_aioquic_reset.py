"""aioquic glue for stateless resets (quic/stateless_reset.py), both roles.

aioquic 1.7 draws every stateless reset token from ``os.urandom`` (``_host_cids[0]`` in
``QuicConnection.__init__``, the others in ``_replenish_connection_ids``) and never notices a
reset it receives: the datagram's "connection id" is random, so it is dropped as
``unknown_connection_id`` and the client keeps sending until ``dead-after``.

* ``derive_tokens`` (server): every id's token becomes ``token(key, cid)``, so a restarted
  server with the same key can reset connections it no longer knows.  Applied after the
  QUIC-LB glue, which replaces the ids themselves.
* ``received_reset`` (client): a datagram whose destination id is none of ours and whose last
  16 octets equal the token of the id we send to (constant time) ends the connection at once:
  draining, nothing more sent (RFC 9000 §10.3.1), ``ConnectionTerminated("stateless reset")``.

Touches aioquic internals, hence an ``engine_*`` module.
"""

from __future__ import annotations

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicErrorCode

from quictund.quic.stateless_reset import is_reset, token


def derive_tokens(conn: QuicConnection, key: bytes) -> None:
    """Make server connection ``conn`` (not yet used) announce tokens derived from ``key``."""
    replenish = conn._replenish_connection_ids

    def fix() -> None:
        for cid in conn._host_cids:
            cid.stateless_reset_token = token(key, cid.cid)

    def replenish_derived() -> None:
        replenish()
        fix()

    fix()
    conn._replenish_connection_ids = replenish_derived  # type: ignore[method-assign]


def received_reset(conn: QuicConnection, data: bytes) -> bool:
    """Client: if ``data`` is a stateless reset for ``conn``, terminate it and return True."""
    if not conn._is_client or conn._state is not QuicConnectionState.CONNECTED:
        return False
    if data[0] & 0x80 == 0:  # a short header: is its destination id one of ours?
        dcid = data[1 : 1 + conn._configuration.connection_id_length]
        if dcid == conn.host_cid or any(c.cid == dcid for c in conn._host_cids):
            return False
    if not is_reset(data, conn._peer_cid.stateless_reset_token):
        return False
    conn._close_event = events.ConnectionTerminated(
        error_code=QuicErrorCode.NO_ERROR, frame_type=None, reason_phrase="stateless reset"
    )
    conn._close_end()
    return True
