"""Stateless resets (quic/stateless_reset.py, RFC 9000 §10.3): the server's rules (never an
amplifier, never a loop, rate-limited, tokens from a persisted key) and both engines' clients
ending the connection on a reset computed by a server that never saw it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.quic import stateless_reset as sr
from quictund.quic.engine import EngineSettings, events
from tests.engine_pair import ENGINES, SERVER_ADDR, Certs, make_certs, make_pair

KEY = bytes(range(32))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("reset-certs"))


def short_packet(size: int, cid: bytes = b"12345678") -> bytes:
    return bytes([0x41]) + cid + os.urandom(size - 1 - len(cid))


@given(st.binary(max_size=1500))
def test_a_reset_is_always_shorter_than_its_trigger(data: bytes) -> None:
    reset = sr.Responder(KEY, cid_length=8, rate=1e9, burst=1e9).answer(data, 0.0)
    if reset is not None:
        assert sr.MIN_RESET <= len(reset) < len(data)  # so a loop of resets dies out
        assert reset[0] & 0xC0 == 0x40  # looks like a short header
        assert data[0] & 0xC0 == 0x40  # only short headers are answered


def test_reset_carries_the_token_of_the_trigger_id() -> None:
    cid = os.urandom(8)
    reset = sr.Responder(KEY, cid_length=8).answer(short_packet(1200, cid), 0.0)
    assert reset is not None and len(reset) == sr.MAX_RESET
    assert reset[-16:] == sr.token(KEY, cid)
    assert sr.is_reset(reset, sr.token(KEY, cid))
    assert not sr.is_reset(reset, sr.token(KEY, os.urandom(8)))


def test_small_packets_get_a_reset_one_octet_shorter_or_none() -> None:
    responder = sr.Responder(KEY, cid_length=8)
    assert responder.answer(short_packet(sr.MIN_TRIGGER - 1), 0.0) is None
    reset = responder.answer(short_packet(30), 0.0)
    assert reset is not None and len(reset) == 29


def test_resets_are_rate_limited() -> None:
    responder = sr.Responder(KEY, cid_length=8, rate=10, burst=5)
    sent = [responder.answer(short_packet(100), 0.0) for _ in range(20)]
    assert sum(r is not None for r in sent) == 5 and responder.dropped == 15
    assert responder.answer(short_packet(100), 0.05) is None  # half a token
    assert responder.answer(short_packet(100), 0.1) is not None  # one token later


def test_key_is_kept_private_and_survives_a_restart(tmp_path: Path) -> None:
    key = sr.load_key(tmp_path)
    path = tmp_path / sr.KEY_FILE_NAME
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sr.load_key(tmp_path) == key
    path.write_bytes(b"short")
    assert len(sr.load_key(tmp_path)) == 32
    assert [p.name for p in tmp_path.iterdir()] == [sr.KEY_FILE_NAME]  # no temp file left


@pytest.mark.parametrize("client_engine", ENGINES)
@pytest.mark.parametrize("server_engine", ENGINES)
def test_client_ends_on_a_reset_from_a_server_that_lost_it(
    certs: Certs, server_engine: str, client_engine: str
) -> None:
    pair = make_pair(
        certs, EngineSettings(engine=server_engine, reset_key=KEY), client_engine=client_engine
    )
    pair.client.send_ping(1)
    packet = pair.client.datagrams_to_send(now=pair.now)[-1][0]
    # A fresh responder (a restarted server) with the same key; a wrong key is ignored.
    wrong = sr.Responder(os.urandom(32), cid_length=8).answer(packet, pair.now)
    assert wrong is not None
    pair.client.receive_datagram(wrong, SERVER_ADDR, now=pair.now)
    pair.drain()
    assert not pair.client_got(events.ConnectionTerminated) and not pair.client.is_closed
    reset = sr.Responder(KEY, cid_length=8).answer(packet, pair.now)
    assert reset is not None
    pair.client.receive_datagram(reset, SERVER_ADDR, now=pair.now)
    pair.drain()
    assert pair.client_got(events.ConnectionTerminated) and pair.client.is_closed
    assert pair.client.datagrams_to_send(now=pair.now) == []  # draining: nothing more sent


def test_each_endpoint_derives_a_key_of_its_own() -> None:
    """Servers sharing a copied state directory, or workers sharing one, never share a key;
    the same endpoint restarted gets the same one."""
    scopes = ["10.0.0.1:7500 worker None", "10.0.0.2:7500 worker None",
              "10.0.0.1:7500 worker 0", "10.0.0.1:7500 worker 1"]  # fmt: skip
    keys = {sr.derive_key(KEY, scope) for scope in scopes}
    assert len(keys) == 4 and KEY not in keys
    assert sr.derive_key(KEY, scopes[0]) == sr.derive_key(KEY, scopes[0])
