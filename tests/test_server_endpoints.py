"""``server-endpoint`` as one string or a list, and the candidates a pool makes of it."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from quictund.config.settings import ClientSettings
from quictund.policy.addresses import HostPort
from quictund.quic.pool import resolve


def test_one_string_stays_one_string() -> None:
    c = ClientSettings.model_validate({"server-endpoint": "gw.example:7500"})
    assert c.server_endpoints == (HostPort("gw.example", 7500),)
    assert c.server_endpoint == HostPort("gw.example", 7500)
    assert c.server_endpoint_mode == "failover" and not c.failback
    assert c.model_dump(mode="json", by_alias=True)["server-endpoint"] == "gw.example:7500"


def test_a_list_keeps_its_order() -> None:
    c = ClientSettings.model_validate(
        {"server-endpoint": ["gw1.example:7500", "[::1]:7501"], "server-endpoint-mode": "spread"}
    )
    assert c.server_endpoints == (HostPort("gw1.example", 7500), HostPort("::1", 7501))
    assert c.model_dump(mode="json", by_alias=True)["server-endpoint"] == [
        "gw1.example:7500",
        "[::1]:7501",
    ]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (["gw1:7500", "gw2"], "not a host:port address (got 'gw2')"),
        ([], "at least 1 item"),
        (7500, "not a host:port address or a list of them"),
    ],
)
def test_bad_endpoints_are_named(value: object, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        ClientSettings.model_validate({"server-endpoint": value})
    assert says in str(info.value)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="failover"):
        ClientSettings.model_validate({"server-endpoint": "h:1", "server-endpoint-mode": "rr"})


async def test_each_address_is_a_candidate_once() -> None:
    """The real resolver: literals stay themselves, repeats collapse, order is kept."""
    cands = await resolve(
        [HostPort("127.0.0.2", 7500), HostPort("127.0.0.1", 7500), HostPort("127.0.0.2", 7500)]
    )
    assert [c.address for c in cands] == ["127.0.0.2:7500", "127.0.0.1:7500"]
    assert [str(c.origin) for c in cands] == ["127.0.0.2:7500", "127.0.0.1:7500"]
    (v6,) = await resolve([HostPort("::1", 7500)])
    assert v6.address == "[::1]:7500"


async def test_a_name_with_one_address_stays_a_name() -> None:
    """Resolved again at each attempt, so a changed DNS record is followed on reconnect; a
    name with several addresses gives one candidate each (whatever this host's files say)."""
    infos = socket.getaddrinfo("localhost", 7500, type=socket.SOCK_DGRAM)
    addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
    cands = await resolve([HostPort("localhost", 7500)])
    if len(addresses) == 1:
        assert [c.host for c in cands] == ["localhost"]
    else:
        assert [c.host for c in cands] == addresses
    assert all(str(c.origin) == "localhost:7500" for c in cands)
