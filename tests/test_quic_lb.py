"""QUIC-LB plaintext connection ids (quictund/quic/quic_lb.py) and the ``quic-lb-*`` keys."""

from __future__ import annotations

import pytest
from aioquic.quic.connection import QuicConnection
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from quictund.config.settings import ServerSettings
from quictund.quic import quic_lb
from quictund.quic.quic_lb import CidCodec, QuicLbError
from quictund.quic.settings import EngineSettings
from tests.engine_pair import Certs, Pair, make_certs, make_pair

configs = st.integers(0, 6)
server_ids = st.binary(min_size=1, max_size=15)


@st.composite
def codec_and_nonce(draw: st.DrawFn) -> tuple[int, bytes, bytes]:
    sid = draw(server_ids)
    nonce = draw(st.binary(min_size=4, max_size=19 - len(sid)))
    return draw(configs), sid, nonce


@given(codec_and_nonce())
def test_decode_inverts_encode(case: tuple[int, bytes, bytes]) -> None:
    config_id, sid, nonce = case
    cid = quic_lb.encode(config_id, sid, nonce)
    assert len(cid) == 1 + len(sid) + len(nonce) <= 20
    got = quic_lb.decode(cid, len(sid))
    assert (got.config_id, got.server_id, got.nonce) == (config_id, sid, nonce)
    assert got.length_bits == len(cid) - 1  # length self-description
    assert cid[1 : 1 + len(sid)] == sid  # plaintext: the balancer reads octets 2.. as is


@given(st.binary(max_size=25), st.integers(-2, 17))
def test_decode_returns_or_raises_only_quic_lb_error(cid: bytes, sid_len: int) -> None:
    try:
        got = quic_lb.decode(cid, sid_len)
    except QuicLbError:
        return
    assert got.config_id != 0b111 and len(got.server_id) == sid_len and len(got.nonce) >= 4


def test_first_octet_layout() -> None:
    # config 5 (0b101), 2-octet server id, 5-octet nonce: 0b101_00111 (7 octets follow)
    cid = quic_lb.encode(5, b"\x0a\x01", b"\x00\x01\x02\x03\x04")
    assert cid.hex() == "a70a010001020304"


@pytest.mark.parametrize(
    ("config_id", "sid", "nonce_len", "needle"),
    [
        (7, b"\x01", 4, "0 to 6"),
        (-1, b"\x01", 4, "0 to 6"),
        (0, b"", 4, "1 to 15"),
        (0, bytes(16), 4, "1 to 15"),
        (0, b"\x01", 3, "at least 4"),
        (0, bytes(15), 5, "exceed 19"),
    ],
)
def test_bad_configurations_are_refused(
    config_id: int, sid: bytes, nonce_len: int, needle: str
) -> None:
    with pytest.raises(QuicLbError, match=needle):
        CidCodec(config_id, sid, nonce_len)


def test_unroutable_and_short_ids_are_not_decoded() -> None:
    with pytest.raises(QuicLbError, match="0b111"):
        quic_lb.decode(bytes([0xE7]) + bytes(7), 2)
    with pytest.raises(QuicLbError, match="not routable"):
        quic_lb.decode(b"\x00\x01\x02", 2)


@given(configs, st.binary(min_size=1, max_size=3), st.randoms())
def test_codec_ids_carry_the_server_id_and_differ(config_id: int, sid: bytes, rnd: object) -> None:
    codec = CidCodec(config_id, sid, 7 - len(sid))
    ids = {codec.new() for _ in range(50)}
    assert len(ids) == 50  # random nonces: 32+ bits each
    assert all(codec.owns(cid) and len(cid) == 8 for cid in ids)
    other = CidCodec(config_id, bytes(b ^ 1 for b in sid), 7 - len(sid))
    assert not any(other.owns(cid) for cid in ids)


@pytest.mark.parametrize(
    ("text", "raw"), [("0x0a01", b"\x0a\x01"), ("0A01", b"\x0a\x01"), (" 0xff ", b"\xff")]
)
def test_server_id_spellings(text: str, raw: bytes) -> None:
    assert quic_lb.parse_server_id(text) == raw


@pytest.mark.parametrize("text", ["", "0x", "0xabc", "zz", "0x" + "00" * 16, "-1"])
def test_bad_server_id_spellings(text: str) -> None:
    with pytest.raises(QuicLbError):
        quic_lb.parse_server_id(text)


# ---- the quic-lb-* keys ------------------------------------------------------------------


def _server(**keys: object) -> ServerSettings:
    return ServerSettings.model_validate({"listen-on": "127.0.0.1:0", **keys})


def test_settings_make_an_eight_octet_codec() -> None:
    s = _server(**{"quic-lb-server-id": "0x0a01", "quic-lb-config-id": 2})
    assert s.quic_lb_codec() == CidCodec(2, b"\x0a\x01", 5)
    assert s.engine_settings().quic_lb == CidCodec(2, b"\x0a\x01", 5)
    assert _server().engine_settings().quic_lb is None


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ({"quic-lb-config-id": 1}, "need quic-lb-server-id"),
        ({"quic-lb-nonce-length": 5}, "need quic-lb-server-id"),
        ({"quic-lb-server-id": "0x0a0102ff"}, "1 to 3 octets"),
        ({"quic-lb-server-id": "0xabc"}, "whole octets"),
        ({"quic-lb-server-id": "0x0a01", "quic-lb-nonce-length": 6}, "use 5 .*got 6"),
        ({"quic-lb-server-id": "0x0a", "quic-lb-config-id": 7}, "less than or equal to 6"),
        ({"quic-lb-server-id": "0x0a", "quic-engine": "qh3"}, "needs quic-engine"),
    ],
)
def test_bad_settings_say_which_key(keys: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        _server(**keys)


# ---- the aioquic glue, in memory (tests/engine_pair.py) ------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("quic-lb-certs"))


def _ids_seen_by_client(pair: Pair, rotations: int) -> set[bytes]:
    """The server's connection ids the (plain aioquic) client holds, while it uses them up."""
    client = pair.client
    seen = {client._peer_cid.cid} | {c.cid for c in client._peer_cid_available}
    for _ in range(rotations):
        client.change_connection_id()
        client.send_ping(0)
        pair.pump()
        seen |= {client._peer_cid.cid} | {c.cid for c in client._peer_cid_available}
    return seen


@pytest.mark.parametrize("sid", [b"\x07", b"\x0a\x01", b"\xff\x00\x01"])
def test_aioquic_server_issues_only_codec_ids(certs: Certs, sid: bytes) -> None:
    codec = CidCodec(5, sid, 7 - len(sid))
    pair = make_pair(certs, EngineSettings(quic_lb=codec), client_class=QuicConnection)
    seen = _ids_seen_by_client(pair, 12)
    assert len(seen) >= 12  # the handshake's id and NEW_CONNECTION_ID ones
    assert all(codec.owns(cid) for cid in seen), sorted(c.hex() for c in seen)
    assert codec.owns(pair.server._local_initial_source_connection_id)  # transport parameter
    assert not codec.owns(pair.client.host_cid)  # the client's own ids stay random


def test_without_quic_lb_ids_stay_random(certs: Certs) -> None:
    codec = CidCodec(5, b"\x0a\x01", 5)
    pair = make_pair(certs, EngineSettings(), client_class=QuicConnection)
    seen = _ids_seen_by_client(pair, 4)
    assert not any(codec.owns(cid) for cid in seen)


def test_glue_refuses_a_length_the_engine_does_not_parse(certs: Certs) -> None:
    with pytest.raises(ValueError, match="expects 8"):
        make_pair(certs, EngineSettings(quic_lb=CidCodec(0, b"\x01", 9)), handshake=False)
