"""Every engine gap closure, through the engine API only, on both engines (in-memory pairs).

Each test runs once per engine (``engine`` is the server's, and the client's unless a test
pairs them differently).  Where the qh3 adapter leans on what qh3 already does, the test is the
evidence cited in quictund/quic/engine_qh3.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aioquic.quic.connection import QuicConnection
from cryptography.x509.oid import NameOID

from quictund.errors import ConfigError
from quictund.policy import tls
from quictund.policy.identity import Identity
from quictund.quic import engine, tls_advice
from quictund.quic.engine import EngineSettings, events
from quictund.quic.engine_aioquic import AioquicConnection
from tests.engine_pair import (
    CLIENT_ADDR,
    ENGINES,
    KIB,
    SERVER_ADDR,
    Certs,
    Pair,
    make_certs,
    make_pair,
)

pytestmark = pytest.mark.parametrize("eng", ENGINES)

SLACK = 1500  # the qh3 adapter may hand out one more packet's worth before it stops


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("engines-certs"))


def small(eng: str, **kw: int) -> EngineSettings:
    base = EngineSettings(
        stream_window=64 * KIB,
        connection_window=1024 * KIB,
        max_streams=2000,
        engine=eng,  # type: ignore[arg-type]
    )
    # a fixed window per stream and a budget of one connection window: the credit rules alone
    kw.setdefault("receive_budget", kw.get("connection_window", base.connection_window))
    kw.setdefault("initial_stream_window", kw.get("stream_window", base.stream_window))
    return replace(base, **kw)


def test_handshake_alpn_and_stats(certs: Certs, eng: str) -> None:
    pair = make_pair(certs, small(eng))
    done = [e for e in pair.server_events if isinstance(e, events.HandshakeCompleted)]
    assert done[0].alpn_protocol == engine.ALPN_QUICTUND == "quictund/1"  # UDP flows (issue 16)
    assert (pair.server.is_client, pair.client.is_client) == (False, True)
    assert not pair.server.is_closed and not pair.client.is_closed
    assert pair.server.peer_certificate is None  # no client authentication asked for
    stats = pair.server.stats()
    assert set(stats) == {"rtt_s", "cwnd_bytes", "bytes_in_flight", "streams", "packets_lost"}
    assert stats["packets_lost"] == 0 and stats["cwnd_bytes"] > 0 and stats["rtt_s"] > 0
    pair.client.close(error_code=0, reason_phrase="bye")
    pair.run_until(lambda: pair.server_got(events.ConnectionTerminated))
    assert pair.client.is_closed


# ---------------------------------------------------------------------------- stream count


def test_peer_may_open_1000_concurrent_streams(certs: Certs, eng: str) -> None:
    pair = make_pair(certs, small(eng))
    client = pair.client
    sids = []
    for _ in range(1000):
        sid = client.open_stream()
        client.send_stream_data(sid, b"hello")  # no FIN: every stream stays open
        sids.append(sid)
    pair.pump()
    assert set(pair.received) == set(sids)
    assert all(pair.received[sid] == 5 for sid in sids)
    assert pair.server.stats()["streams"] == 1000


def test_100_busy_streams_share_the_connection(certs: Certs, eng: str) -> None:
    """Every stream of 100 sending at once makes progress, and all of them complete.

    The aioquic adapter shows aioquic a slice of the busy streams per packet-building pass
    (its per-packet work grows with the streams it sees); this is the test that the slicing
    keeps aioquic's round-robin fairness across passes instead of serving one slice first.
    """
    total = 200 * KIB
    pair = make_pair(certs, small(eng, stream_window=1024 * KIB, connection_window=16384 * KIB))
    pair.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
    client = pair.client
    sids = [client.open_stream() for _ in range(100)]
    for sid in sids:
        client.send_stream_data(sid, b"x" * total)
    pair.run_until(lambda: sum(pair.received.values()) >= 100 * total // 2, max_rounds=20000)
    moved = [pair.received[sid] for sid in sids]
    assert min(moved) >= 0.25 * sum(moved) / len(moved), sorted(moved)[:5]
    pair.run_until(lambda: all(pair.received[sid] == total for sid in sids), max_rounds=20000)


def test_small_writes_on_many_streams_share_packets(certs: Certs, eng: str) -> None:
    """50 request/response tunnels with a few bytes each fill one packet, not one per slice."""
    if eng == "qh3":
        pytest.skip("qh3's core sends ~12 small stream frames per packet (4 datagrams here)")
    pair = make_pair(certs, small(eng))
    client = pair.client
    sids = [client.open_stream() for _ in range(50)]
    for sid in sids:
        client.send_stream_data(sid, b"open")
    pair.pump()
    for sid in sids:
        client.send_stream_data(sid, b"GET k:%d\r\n" % (sid % 10))  # 9 bytes each
    datagrams = client.datagrams_to_send(now=pair.now)
    assert sum(len(d) for d, _ in datagrams) < 2 * 1452
    assert len(datagrams) <= 2, [len(d) for d, _ in datagrams]


def test_max_streams_is_what_the_peer_sees(certs: Certs, eng: str) -> None:
    pair = make_pair(certs, small(eng, max_streams=130))
    client = pair.client
    opened = 0
    for _ in range(300):
        try:
            sid = client.open_stream()
        except ConnectionRefusedError:  # qh3 refuses; aioquic queues the stream (blocked)
            assert eng == "qh3"
            break
        client.send_stream_data(sid, b"x")
        opened += 1
    pair.pump()
    assert len(pair.received) == 130
    assert opened == (130 if eng == "qh3" else 300)


# ---------------------------------------------------------------------------- receive credit


def _sent(pair: Pair, sid: int, total: int) -> int:
    """Bytes of ``sid`` the client has sent at least once (so the server granted them)."""
    return total - int(pair.client.unsent(sid))


def test_stream_credit_follows_consumption(certs: Certs, eng: str) -> None:
    window = 64 * KIB
    total = 4 * window
    pair = make_pair(certs, small(eng))
    client = pair.client
    sid = client.open_stream()
    client.send_stream_data(sid, b"a" * total)

    def bounded(p: Pair) -> None:
        assert _sent(p, sid, total) <= p.consumed[sid] + window + SLACK
        assert p.received[sid] <= p.consumed[sid] + window + SLACK

    pair.invariant = bounded
    pair.pump()
    # Nothing consumed: the peer got at most one window of credit, and it stays that way.
    first = _sent(pair, sid, total)
    assert window // 2 <= first <= window + SLACK
    held = pair.server.held_bytes
    assert held == pair.received[sid] > 0
    pair.pump()
    assert _sent(pair, sid, total) == first

    # Consuming step by step delivers everything, never more than allowed.
    while pair.received[sid] < total:
        before = pair.received[sid]
        pair.consume(sid, pair.received[sid] - pair.consumed[sid])
        pair.pump()
        assert pair.received[sid] > before
    assert client.unsent(sid) == 0
    pair.consume(sid, 10 * total)  # more than was delivered: clamped
    pair.consume(12345, 10)  # an unknown stream: ignored
    assert pair.server.held_bytes == 0


def test_connection_credit_follows_consumption(certs: Certs, eng: str) -> None:
    conn_window = 128 * KIB
    pair = make_pair(certs, small(eng, connection_window=conn_window, max_streams=100))
    client = pair.client
    sids = []
    for _ in range(4):
        sids.append(sid := client.open_stream())
        client.send_stream_data(sid, b"b" * (48 * KIB))  # each under its 64 KiB window

    def bounded(p: Pair) -> None:
        sent = sum(_sent(p, s, 48 * KIB) for s in sids)
        assert sent <= sum(p.consumed.values()) + conn_window + SLACK

    pair.invariant = bounded
    pair.pump()
    assert 0 < sum(pair.received.values()) <= conn_window + SLACK
    for _ in range(20):
        for sid in sids:
            pair.consume(sid, pair.received[sid] - pair.consumed[sid])
        pair.pump()
    assert all(pair.received[s] == 48 * KIB for s in sids)


def test_gaps_do_not_earn_connection_credit(certs: Certs, eng: str) -> None:
    """A peer that never sends byte 0 of its streams: nothing is delivered, so no new credit."""
    conn_window = 128 * KIB
    pair = make_pair(
        certs,
        small(eng, connection_window=conn_window, max_streams=100),
        client_class=QuicConnection,  # a raw aioquic peer that we can make misbehave
    )
    client = pair.client
    sids = []
    for _ in range(8):
        sids.append(sid := client.get_next_available_stream_id())
        client.send_stream_data(sid, b"c" * (48 * KIB))
        client._streams[sid].sender._pending.subtract(0, 1)  # never send byte 0
    pair.pump()
    assert sum(pair.received.values()) == 0 and pair.server.held_bytes == 0
    # every byte sent was within the credit the server granted: no error, no extra credit
    assert not pair.client_got(events.ConnectionTerminated)
    sent = sum(client._streams[s].sender.highest_offset for s in sids)
    assert conn_window // 2 <= sent <= conn_window


def test_a_frame_beyond_the_window_is_a_flow_control_error(certs: Certs, eng: str) -> None:
    window = 64 * KIB
    pair = make_pair(certs, small(eng), client_class=QuicConnection)
    client = pair.client
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"f" * (2 * window))
    client._streams[sid].max_stream_data_remote = 2 * window  # ignore the server's limit
    pair.run_until(lambda: pair.client_got(events.ConnectionTerminated))
    closed = [e for e in pair.client_events if isinstance(e, events.ConnectionTerminated)]
    assert closed[0].error_code == 0x3  # FLOW_CONTROL_ERROR
    assert pair.received[sid] <= window


def test_release_returns_held_bytes_to_the_connection(certs: Certs, eng: str) -> None:
    pair = make_pair(certs, small(eng, connection_window=96 * KIB, max_streams=100))
    client = pair.client
    a = client.open_stream()
    client.send_stream_data(a, b"a" * (64 * KIB))
    b = client.open_stream()
    client.send_stream_data(b, b"b" * (64 * KIB))
    pair.pump()
    assert pair.received[b] < 64 * KIB  # stalled by the connection window (or a's budget)
    pair.server.release(a)  # stream a's tunnel is gone: its bytes no longer count
    pair.server.release(a)  # twice is harmless
    assert pair.server.is_released(a)
    pair.pump()
    for _ in range(10):
        pair.consume(b, pair.received[b] - pair.consumed[b])
        pair.pump()
    assert pair.received[b] == 64 * KIB
    assert client.unsent(b) == 0
    client.send_stream_data(a, b"late")  # data for a released stream is not held
    pair.pump()
    assert pair.server.held_bytes == 0


# ---------------------------------------------------------------------------- send backlog


def test_unsent_counts_bytes_never_sent(certs: Certs, eng: str) -> None:
    pair = make_pair(certs, small(eng))
    client = pair.client
    assert client.unsent(4 * 999) == 0  # unknown stream
    sid = client.open_stream()
    client.send_stream_data(sid, b"g" * (40 * KIB))
    assert client.unsent(sid) == 40 * KIB
    sent = client.datagrams_to_send(now=pair.now)
    assert 0 < 40 * KIB - client.unsent(sid) <= sum(len(d) for d, _ in sent)
    for data, _addr in sent:
        pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
    pair.on_server_data = lambda p, s, data: p.consume(s, len(data))
    pair.pump()
    assert client.unsent(sid) == 0
    assert pair.received[sid] == 40 * KIB


# ---------------------------------------------------------------------------- pacing


def test_bulk_on_a_1ms_clock_is_not_paced_to_a_crawl(certs: Certs, eng: str) -> None:
    """The pair's clock moves 1 ms per round, like uvloop's: 16 MiB must take few rounds.

    aioquic's own pacer sends 16 packets per 1 ms tick here (~2,000 rounds, ~20 MB/s); the
    aioquic adapter has no pacer, and qh3's token bucket holds a whole congestion window.
    """
    size = 16 * 1024 * KIB
    settings = EngineSettings(
        stream_window=8 * 1024 * KIB,
        connection_window=32 * 1024 * KIB,
        engine=eng,  # type: ignore[arg-type]
    )
    pair = make_pair(certs, settings)
    pair.on_server_data = lambda p, s, data: p.consume(s, len(data))
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, b"p" * size)
    start = pair.rounds
    pair.run_until(lambda: pair.received[sid] == size, max_rounds=5000)
    assert pair.rounds - start <= 200


# ---------------------------------------------------------------------------- mutual TLS


def _fails(pair: Pair) -> events.ConnectionTerminated:
    pair.run_until(
        lambda: (
            pair.client_got(events.ConnectionTerminated)
            or pair.server_got(events.ConnectionTerminated)
        )
    )
    assert not pair.server_got(events.HandshakeCompleted)
    assert pair.received == {}
    return [
        e
        for e in pair.client_events + pair.server_events
        if isinstance(e, events.ConnectionTerminated)
    ][0]


def _mtls(
    certs: Certs, eng: str, client_engine: str, cert: tuple[Path, Path] | None, **kw: object
) -> Pair:
    pair = make_pair(
        certs,
        small(eng),
        client_engine=client_engine,
        client_cert=cert,
        handshake=False,
        **kw,  # type: ignore[arg-type]
    )
    sid = pair.client.open_stream()  # the client may try to use the connection early
    pair.client.send_stream_data(sid, b"token")
    return pair


@pytest.mark.parametrize("client_engine", ENGINES)
def test_mtls_accepts_a_certificate_issued_by_the_ca(
    certs: Certs, eng: str, client_engine: str
) -> None:
    pair = _mtls(
        certs, eng, client_engine, (certs.client_cert, certs.client_key), client_cafile=certs.ca
    )
    pair.run_until(lambda: pair.server_got(events.HandshakeCompleted))
    pair.pump()
    assert pair.client_got(events.HandshakeCompleted)
    assert not pair.client_got(events.ConnectionTerminated)
    assert not pair.server_got(events.ConnectionTerminated)
    assert pair.received[0] == len(b"token")
    peer = pair.server.peer_certificate
    assert peer is not None
    assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "client-1"
    assert pair.server.peer_identity.matches("CN=client-1")  # the CA vouched for it
    assert pair.server.peer_identity.key == tls.fingerprint(peer)
    assert pair.server.tls.new_session_ticket_cb is None  # no tickets: resumption skips auth


CRYPTO_ERROR = 0x100  # + the TLS alert number


@pytest.mark.parametrize(
    ("which", "alert", "reason"),
    [
        ("none", 40, "client certificate required"),  # handshake_failure
        ("rogue", 42, "self-signed"),  # bad_certificate
        ("other_ca", 42, "signature failure"),
        ("expired", 45, "no longer valid"),  # certificate_expired
        ("sub", 42, "invalid CA"),
    ],
)
def test_mtls_refuses_clients_without_a_certificate_from_the_ca(
    certs: Certs, eng: str, which: str, alert: int, reason: str
) -> None:
    cert = {
        "none": None,
        "rogue": (certs.rogue_cert, certs.rogue_key),
        "other_ca": (certs.other_ca_cert, certs.other_ca_key),
        "expired": (certs.expired_cert, certs.expired_key),
        "sub": (certs.sub_cert, certs.sub_key),
    }[which]
    closed = _fails(_mtls(certs, eng, eng, cert, client_cafile=certs.ca))
    assert closed.error_code == CRYPTO_ERROR + alert
    assert reason in closed.reason_phrase


def test_mtls_by_client_pin_alone(certs: Certs, eng: str) -> None:
    pin = tls.fingerprint_file(certs.rogue_cert)
    ok = _mtls(certs, eng, eng, (certs.rogue_cert, certs.rogue_key), client_pins=frozenset([pin]))
    ok.run_until(lambda: ok.server_got(events.HandshakeCompleted))
    # the rogue certificate says CN=client-1; a pin vouches for the key only (issue 13 §3)
    assert ok.server.peer_identity == Identity(key=pin)
    assert not ok.server.peer_identity.matches("CN=client-1")
    closed = _fails(
        _mtls(certs, eng, eng, (certs.client_cert, certs.client_key), client_pins=frozenset([pin]))
    )
    assert closed.error_code == CRYPTO_ERROR + 42
    assert "client-fingerprints" in closed.reason_phrase


def test_without_client_cafile_no_certificate_is_asked_for(certs: Certs, eng: str) -> None:
    pair = make_pair(certs, small(eng), client_cert=(certs.rogue_cert, certs.rogue_key))
    assert pair.server.peer_certificate is None


@pytest.mark.parametrize("trusted", [True, False])
def test_client_verifies_the_server_certificate(certs: Certs, eng: str, trusted: bool) -> None:
    """Against ca-file = the server's own self-signed certificate, as quictund deploys it."""
    cafile = certs.server_cert if trusted else certs.ca
    pair = make_pair(certs, small(eng), server_cafile=cafile, handshake=False)
    if trusted:
        pair.run_until(lambda: pair.client_got(events.HandshakeCompleted))
        return
    closed = _fails(pair)
    assert closed.error_code == CRYPTO_ERROR + 42
    # the same words on both engines, and the client's log line says the fix (issue 14 §3)
    key = tls.fingerprint_file(certs.server_cert)
    assert closed.reason_phrase.startswith(f"client refused the server certificate (key {key}): ")
    line = tls_advice.explain(
        closed.reason_phrase, endpoint="10.0.0.1:7500", cafile=str(cafile), server_name=None
    )
    assert line.startswith("this client refused the server's certificate: it is not signed by")
    assert f'server-fingerprint = "{key}"' in line and "quictund fingerprint" in line


@pytest.mark.parametrize("matches", [True, False])
def test_server_pinning(certs: Certs, eng: str, matches: bool) -> None:
    pin = tls.fingerprint_file(certs.server_cert if matches else certs.client_cert)
    pair = make_pair(certs, small(eng), server_pins=frozenset([pin]), handshake=False)
    if matches:
        pair.run_until(lambda: pair.client_got(events.HandshakeCompleted))
        return
    closed = _fails(pair)
    assert closed.error_code == CRYPTO_ERROR + 42
    assert "server-fingerprint" in closed.reason_phrase


# ---------------------------------------------------------------------------- the facade


def test_configuration_errors(eng: str) -> None:
    engine.require_engine(eng)
    with pytest.raises(ConfigError, match="unknown quic-engine 'msquic'; known: aioquic, qh3"):
        engine.require_engine("msquic")


def test_aioquic_connection_is_the_aioquic_adapter(eng: str, certs: Certs) -> None:
    pair = make_pair(certs, small(eng), client_engine="aioquic")
    assert isinstance(pair.client, AioquicConnection)
    assert callable(getattr(pair.server, "consume", None))


def test_an_answer_carries_the_ack_of_its_request(
    certs: Certs, eng: str, request: pytest.FixtureRequest
) -> None:
    """Request/response (issue 15): the answer acknowledges the request, no ACK datagram alone.

    Each side's ACK used to wait for its delay timer even when data left first, so every
    round trip cost both sides a separate ACK datagram: built, sent, received, processed.
    """
    if eng == "qh3":
        reason = "qh3 2.1's Rust core times its ACKs itself; the adapter cannot reach them"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    pair = make_pair(certs, small(eng))
    pair.run_until(lambda: pair.client.stats()["bytes_in_flight"] == 0)  # handshake settled
    sid = pair.client.open_stream()
    for _ in range(20):
        pair.client.send_stream_data(sid, b"ping")
        request = pair.client.datagrams_to_send(now=pair.now)
        assert len(request) == 1
        pair.server.receive_datagram(request[0][0], CLIENT_ADDR, now=pair.now)
        pair.drain()
        pair.server.send_stream_data(sid, b"pong")
        answer = pair.server.datagrams_to_send(now=pair.now)
        assert len(answer) == 1
        pair.client.receive_datagram(answer[0][0], SERVER_ADDR, now=pair.now)
        pair.drain()
        # the request is acknowledged by the answer itself
        assert pair.client.stats()["bytes_in_flight"] == 0
        pair.now += 0.0002  # a fast round trip: well inside the ACK delay
