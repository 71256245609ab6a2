"""Every token plugin carries a udp: destination (issue 16); parsers hand back a UDP address."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quictund.errors import TokenRejected
from quictund.policy.addresses import parse_stream_address
from quictund.tokens.parsers import Cleartext
from quictund.tokens.signed import Signed, SignedSource


def test_cleartext_parses_udp_tokens() -> None:
    assert Cleartext().parse("udp:10.0.0.53:53") == parse_stream_address("udp:10.0.0.53:53")
    assert Cleartext().parse("udp6:[2001:db8::1]:53").is_udp
    assert Cleartext("base64").parse("dWRwOjEwLjAuMC41Mzo1Mw==").is_udp  # udp:10.0.0.53:53
    with pytest.raises(TokenRejected):
        Cleartext().parse("udp:10.0.0.53:0")  # port 0 is never a destination


async def test_signed_tokens_carry_udp(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(48).hex().encode())
    secret.chmod(0o600)
    source = SignedSource("udp:10.0.0.53:53", secret.read_bytes().strip(), "edge", 60)
    token = await source.fetch("127.0.0.1:40000")
    dest = Signed(str(secret), audience="edge").parse(token)
    assert dest.is_udp and (dest.host, dest.port) == ("10.0.0.53", 53)
