"""qh3 adapter, part: the Rust core and the transport parameters, with quictund's limits.

qh3 2.1 hard-codes 100 bidirectional and 103 unidirectional peer streams, both in the core it
creates and in the transport parameters its TLS context announces; tunnels need thousands, and
quic-tun uses no unidirectional streams.  ``new_core`` is qh3's own core construction with
``max_streams`` and 0; ``announce_transport_parameters`` rewrites what the handshake says to
match (and a server's stateless reset token).  Only ``engine_*`` modules touch engine
internals.
"""

from __future__ import annotations

from typing import Any

from qh3 import tls as qtls
from qh3._hazmat import Buffer as QBuffer
from qh3._hazmat import QuicConnectionCore
from qh3.quic.packet import pull_quic_transport_parameters, push_quic_transport_parameters


def new_core(
    conn: Any, max_streams: int, remote_addr: Any, initial_dcid: bytes, now: float
) -> QuicConnectionCore:
    """The core qh3's ``_create_core`` would make for ``conn``, with our stream limits."""
    c = conn._configuration
    frame_size = c.max_datagram_frame_size
    return QuicConnectionCore(
        is_client=conn._is_client,
        version=int(conn._version or 0),
        local_addr=("0.0.0.0", 0),
        remote_addr=remote_addr,
        source_cid=conn.host_cid,
        destination_cid=initial_dcid,
        peer_address_validated=(conn._is_client or conn._retry_source_connection_id is not None),
        active_connection_id_limit=(c.active_connection_id_limit or (2 if conn._is_client else 8)),
        max_datagram_size=c.max_datagram_size,
        probe_datagram_size=c.probe_datagram_size,
        idle_timeout=c.idle_timeout,
        ack_delay_exponent=3,
        max_datagram_frame_size=(
            frame_size if frame_size is not None else (65536 if conn._is_client else None)
        ),
        peer_max_datagram_frame_size=None,
        connection_receive_window=c.max_data,
        connection_send_limit=0,
        stream_receive_window=c.max_stream_data,
        stream_send_limit_bidi_local=0,
        stream_send_limit_bidi_remote=0,
        stream_send_limit_uni=0,
        max_stream_reassembly=c.max_stream_data,
        local_max_streams_bidi=max_streams,
        local_max_streams_uni=0,
        peer_max_streams_bidi=0,
        peer_max_streams_uni=0,
        initial_rtt=c.initial_rtt,
        max_ack_delay=0.025,
        initial_time=now,
    )


def announce_transport_parameters(
    context: qtls.Context, max_streams: int, reset_token: bytes | None
) -> None:
    """Rewrite our transport parameters: ``max_streams`` bidirectional, no unidirectional, and
    a server's stateless reset token derived from its key (``reset_token``, if given)."""
    rewritten = []
    for ext_type, data in context.handshake_extensions:
        if ext_type == qtls.ExtensionType.QUIC_TRANSPORT_PARAMETERS:
            params = pull_quic_transport_parameters(QBuffer(data=data))
            params.initial_max_streams_bidi = max_streams
            params.initial_max_streams_uni = 0
            if reset_token is not None:
                params.stateless_reset_token = reset_token
            buf = QBuffer(capacity=len(data) + 64)
            push_quic_transport_parameters(buf, params)
            data = buf.data
        rewritten.append((ext_type, data))
    context.handshake_extensions = rewritten
