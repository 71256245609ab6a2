"""The netlink address-message parser (pure): own address of a point-to-point link, never the
peer; truncated or foreign records skipped, never an exception."""

from __future__ import annotations

import ipaddress
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from quictund.policy.hostaddrs import parse_messages


def _attr(kind: int, value: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def _msg(kind: int, family: int, index: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBBBI", family, 24, 0, 0, index) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_point_to_point_reports_the_local_end_not_the_peer() -> None:
    peer, mine = socket.inet_aton("10.0.0.2"), socket.inet_aton("10.0.0.1")
    data = _msg(20, socket.AF_INET, 7, _attr(1, peer), _attr(2, mine))
    data += _msg(21, socket.AF_INET6, 3, _attr(1, ipaddress.IPv6Address("fd00::1").packed))
    assert parse_messages(data) == [
        (20, 7, ipaddress.IPv4Address("10.0.0.1")),
        (21, 3, ipaddress.IPv6Address("fd00::1")),
    ]


def test_an_address_of_the_wrong_length_is_skipped() -> None:
    assert parse_messages(_msg(20, socket.AF_INET6, 1, _attr(1, b"\1\2\3\4"))) == []


@given(st.binary(max_size=256))
def test_any_bytes_parse_without_raising(data: bytes) -> None:
    parse_messages(data)
