"""``quic/migrate.py``'s route lookup: the source address the kernel picks, without a packet.

The full behaviour (a client moving to a new socket when its address changes) is tested in
network namespaces by tests/e2e/test_roaming.py; this checks the lookup on loopback.
"""

from __future__ import annotations

import socket

import pytest

from quictund.quic.migrate import preferred_source


def test_preferred_source_is_the_routes_source() -> None:
    assert preferred_source(("127.0.0.1", 9), socket.AF_INET) == "127.0.0.1"
    assert preferred_source(("127.3.4.5", 9), socket.AF_INET) == "127.0.0.1"


def test_no_route_is_none() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    # an IPv4-only lookup of an IPv6 destination fails: no route, no exception
    assert preferred_source(("::1", 9), socket.AF_INET) is None
