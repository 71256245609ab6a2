"""The UDP flow datagram codec (quictund/udpflow/codec.py): pure, fuzzed with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.udpflow import codec

flow_ids = st.integers(min_value=0, max_value=(1 << 62) - 1)


@given(flow_ids, st.binary(max_size=2000))
def test_round_trip(flow_id: int, payload: bytes) -> None:
    frame = codec.encode(flow_id, payload)
    assert len(frame) == codec.varint_size(flow_id) + len(payload)
    assert codec.decode(frame) == (flow_id, payload)


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_value_error(frame: bytes) -> None:
    try:
        flow_id, payload = codec.decode(frame)
    except ValueError:
        return
    prefix = 1 << (frame[0] >> 6)  # the varint's own length bits
    assert frame[prefix:] == payload
    assert flow_id < 1 << (8 * prefix - 2)


def test_rfc9000_varint_examples() -> None:
    assert codec.encode(37, b"") == bytes.fromhex("25")
    assert codec.encode(15293, b"x") == bytes.fromhex("7bbd") + b"x"
    assert codec.decode(bytes.fromhex("9d7f3e7d") + b"p") == (494878333, b"p")
    assert codec.decode(bytes.fromhex("4025")) == (37, b"")  # non-minimal is still valid


@pytest.mark.parametrize("frame", [b"", b"\x40", b"\x80\x00\x00", b"\xc0" + bytes(6)])
def test_truncated_flow_id(frame: bytes) -> None:
    with pytest.raises(ValueError):
        codec.decode(frame)


def test_flow_id_is_the_quarter_stream_id() -> None:
    assert [codec.flow_id_of(s) for s in (0, 4, 256)] == [0, 1, 64]
    with pytest.raises(ValueError):
        codec.flow_id_of(1)  # a server-opened stream carries no flow


def test_max_payload_leaves_room_for_the_flow_id() -> None:
    assert codec.max_payload(1400, 0) == 1399
    assert codec.max_payload(1400, 64) == 1398
    assert codec.max_payload(0, 0) == 0
