"""aioquic glue for issued connection ids: the server's come from a ``CidSource`` -- a QUIC-LB
``CidCodec``, or a worker's ``steering.WorkerCids`` (which may wrap one).

aioquic draws every connection id it issues from ``os.urandom`` in two places: the first one
(``_host_cids[0]``, also the Initial/Handshake source connection id and the
``initial_source_connection_id`` transport parameter) in ``QuicConnection.__init__``, and the
ones it announces in NEW_CONNECTION_ID frames in ``_replenish_connection_ids``.  ``install``
replaces both right after construction, before the connection has sent anything, so no id
without the server id ever leaves the server (the Retry's id comes from the same codec, in
``quic/server.py``).  Touches aioquic internals, hence an ``engine_*`` module (pinned aioquic
1.7; tests/test_quic_lb.py fails loudly if they move).
"""

from __future__ import annotations

import os

from aioquic.quic.connection import QuicConnection, QuicConnectionId

from quictund.quic.quic_lb import CidSource


def install(conn: QuicConnection, codec: CidSource) -> None:
    """Make ``conn`` (a server connection not yet used) issue only ``codec``'s ids."""
    if codec.cid_length != conn._configuration.connection_id_length:
        raise ValueError(
            f"QUIC-LB ids have {codec.cid_length} octets, the engine expects "
            f"{conn._configuration.connection_id_length}"
        )
    first = codec.new()
    conn._host_cids[0].cid = first
    conn.host_cid = first
    conn._local_initial_source_connection_id = first

    def replenish() -> None:
        # aioquic's own loop, with the codec instead of os.urandom for the id.
        while len(conn._host_cids) < min(8, conn._remote_active_connection_id_limit):
            conn._host_cids.append(
                QuicConnectionId(
                    cid=codec.new(),
                    sequence_number=conn._host_cid_seq,
                    stateless_reset_token=os.urandom(16),
                )
            )
            conn._host_cid_seq += 1

    conn._replenish_connection_ids = replenish  # type: ignore[method-assign]
