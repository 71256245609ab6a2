"""The UDP flow datagram format, as pure functions (sans-IO).

Each UDP datagram of a flow travels in one QUIC DATAGRAM frame (RFC 9221) whose payload is::

    flow id (QUIC variable-length integer, RFC 9000 §16)  ||  the UDP payload, unchanged

The flow id is the flow's control stream id divided by 4 (client-opened bidirectional
streams are 0 mod 4), as MASQUE's quarter stream ids: both ends know it without any extra
message, and it is 1 byte for the first 64 flows of a connection, 2 bytes up to 16,383.

Rules:

* ``decode`` refuses a frame whose varint is truncated (``ValueError``); an empty payload is
  a valid (empty) UDP datagram.
* ``max_payload`` says how big a UDP payload can be and still fit in one QUIC packet; bigger
  datagrams are dropped and counted by the caller, never fragmented.
"""

from __future__ import annotations

__all__ = [
    "decode",
    "encode",
    "flow_id_of",
    "max_payload",
    "varint_size",
]

_VARINT_MAX = (1 << 62) - 1


def varint_size(value: int) -> int:
    if value < 0 or value > _VARINT_MAX:
        raise ValueError(f"{value} does not fit in a QUIC varint")
    if value < 1 << 6:
        return 1
    if value < 1 << 14:
        return 2
    if value < 1 << 30:
        return 4
    return 8


def encode(flow_id: int, payload: bytes) -> bytes:
    """The DATAGRAM frame payload for one UDP datagram of flow ``flow_id``."""
    size = varint_size(flow_id)
    prefix = (flow_id | ({1: 0, 2: 1, 4: 2, 8: 3}[size] << (8 * size - 2))).to_bytes(size, "big")
    return prefix + payload


def decode(frame: bytes) -> tuple[int, bytes]:
    """``(flow id, UDP payload)`` of one DATAGRAM frame payload; ``ValueError`` if truncated."""
    if not frame:
        raise ValueError("empty DATAGRAM frame (no flow id)")
    size = 1 << (frame[0] >> 6)
    if len(frame) < size:
        raise ValueError(f"DATAGRAM frame of {len(frame)} bytes, flow id needs {size}")
    value = int.from_bytes(frame[:size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, frame[size:]


def flow_id_of(stream_id: int) -> int:
    """The flow id of the flow whose control stream is ``stream_id``."""
    if stream_id < 0 or stream_id % 4:
        raise ValueError(f"stream {stream_id} is not a client-opened bidirectional stream")
    return stream_id // 4


def max_payload(room: int, flow_id: int) -> int:
    """The largest UDP payload of flow ``flow_id`` when a DATAGRAM frame payload may be
    ``room`` bytes (``QuicSession.datagram_room``; 0 when the peer takes no DATAGRAM frames)."""
    return max(0, room - varint_size(flow_id))
