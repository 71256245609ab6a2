"""aioquic engine internals on an in-memory pair (tests/engine_pair.py).

These reach into aioquic's private state to show each gap closure at its source; the same
behaviours are checked through the engine API on both engines in tests/test_engines.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.connection import QuicConnection
from cryptography.x509.oid import NameOID

from quictund.quic import engine
from quictund.quic import engine_aioquic_build as build
from quictund.quic.engine import EngineSettings, events
from quictund.quic.engine_aioquic import AioquicConnection
from tests.engine_pair import (
    CLIENT_ADDR,
    KIB,
    SERVER_ADDR,
    Certs,
    Pair,
    make_certs,
    make_pair,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("engine-certs"))


SMALL = EngineSettings(
    stream_window=64 * KIB,
    connection_window=1024 * KIB,
    max_streams=2000,
    initial_stream_window=64 * KIB,
    receive_budget=1024 * KIB,
)


# ------------------------------------------------------------------------------ basics


def test_handshake_negotiates_quic_tun_alpn(certs: Certs) -> None:
    pair = make_pair(certs, SMALL)
    done = [e for e in pair.server_events if isinstance(e, events.HandshakeCompleted)]
    # Two quictund ends pick quictund/1 (UDP flows, issue 16); a quic-tun peer gets quic-tun
    # (tests/e2e/test_wire_compat.py, test_udp_flows.py).
    assert done[0].alpn_protocol == "quictund/1" and engine.ALPN == "quic-tun"
    assert pair.server.is_client is False
    assert pair.engine_client.is_client is True
    assert not pair.server.is_closed and not pair.engine_client.is_closed
    assert pair.server.peer_certificate is None  # no client authentication asked for
    stats = pair.server.stats()
    assert set(stats) == {"rtt_s", "cwnd_bytes", "bytes_in_flight", "streams", "packets_lost"}
    assert stats["packets_lost"] == 0  # a lossless in-memory pair


def test_make_configuration_applies_settings(certs: Certs) -> None:
    settings = EngineSettings(
        idle_timeout_s=12.0,
        max_datagram_size=1300,
        congestion_control="reno",
        stream_window=123_456,
        connection_window=654_321,
        initial_stream_window=123_456,
        receive_budget=654_321,
    )
    config = engine.make_configuration(is_client=True, settings=settings, verify=True)
    assert config.alpn_protocols == ["quictund/1", "quic-tun"]
    assert config.max_datagram_frame_size == 65535  # RFC 9221, for UDP flows
    assert (config.idle_timeout, config.max_datagram_size) == (12.0, 1300)
    assert config.congestion_control_algorithm == "reno"
    assert (config.max_stream_data, config.max_data) == (123_456, 654_321)
    assert config.verify_mode is not None and config.verify_mode != 0
    assert (
        engine.make_configuration(is_client=True, settings=settings, verify=False).verify_mode == 0
    )


# ------------------------------------------------------------------------------ a. stream count


def test_peer_may_open_more_than_128_concurrent_streams(certs: Certs) -> None:
    pair = make_pair(certs, SMALL)
    client = pair.engine_client
    sids = []
    for _ in range(1000):
        # open_stream() only names the next free id: it is taken once data is queued on it
        sid = client.open_stream()
        client.send_stream_data(sid, b"hello")  # no FIN: every stream stays open
        sids.append(sid)
    assert len(set(sids)) == 1000
    pair.pump()
    assert not client._streams_blocked_bidi
    got = {e.stream_id for e in pair.server_events if isinstance(e, events.StreamDataReceived)}
    assert got == set(sids)
    assert all(pair.received[sid] == 5 for sid in sids)
    assert len(pair.server._streams) == 1000


def test_max_streams_setting_is_what_the_peer_sees(certs: Certs) -> None:
    """The same 1000 streams against a 130-stream limit: the rest wait, as aioquic does."""
    settings = EngineSettings(
        stream_window=64 * KIB,
        connection_window=1024 * KIB,
        max_streams=130,
        initial_stream_window=64 * KIB,
        receive_budget=1024 * KIB,
    )
    pair = make_pair(certs, settings)
    client = pair.engine_client
    for _ in range(1000):
        client.send_stream_data(client.open_stream(), b"x")
    pair.pump()
    assert len(pair.received) == 130
    assert client._streams_blocked_bidi


def test_server_refuses_unidirectional_streams(certs: Certs) -> None:
    pair = make_pair(certs, SMALL)
    assert pair.server._local_max_streams_uni.value == 0
    assert pair.client._remote_max_streams_uni == 0


# ------------------------------------------------------------------------------ b. stream credit


def _credit_invariant(window: int) -> Callable[[Pair], None]:
    def check(pair: Pair) -> None:
        for sid, got in pair.received.items():
            assert got <= pair.consumed[sid] + window, (sid, got, pair.consumed[sid])
            stream = pair.server._streams.get(sid)
            if stream is not None:
                assert stream.max_stream_data_local <= pair.consumed[sid] + window

    return check


def test_stream_credit_follows_consumption(certs: Certs) -> None:
    window = SMALL.stream_window
    pair = make_pair(certs, SMALL)
    pair.invariant = _credit_invariant(window)
    client = pair.engine_client
    sid = client.open_stream()
    client.send_stream_data(sid, b"a" * (4 * window))
    pair.pump()
    # The server drained every event but consumed nothing: exactly one window arrived.
    assert pair.received[sid] == window
    assert client.unsent(sid) == 3 * window
    assert pair.server.held_bytes == window
    pair.pump()  # nothing more happens while nobody consumes
    assert pair.received[sid] == window

    pair.consume(sid, window // 2)
    pair.pump()
    assert pair.received[sid] == window + window // 2
    assert client.unsent(sid) == 3 * window - window // 2
    assert pair.server.held_bytes == window

    # Consuming the rest step by step delivers everything, never more than allowed.
    while pair.received[sid] < 4 * window:
        before = pair.received[sid]
        pair.consume(sid, pair.received[sid] - pair.consumed[sid])
        pair.pump()
        assert pair.received[sid] > before
    assert client.unsent(sid) == 0
    assert pair.received[sid] == 4 * window


def test_consuming_more_than_held_is_clamped(certs: Certs) -> None:
    window = SMALL.stream_window
    pair = make_pair(certs, SMALL)
    client = pair.engine_client
    sid = client.open_stream()
    client.send_stream_data(sid, b"a" * (4 * window))
    pair.pump()
    pair.server.consume(sid, 100 * window)  # more than was ever delivered
    pair.server.consume(12345, 10)  # unknown stream: ignored
    pair.pump()
    assert pair.received[sid] == 2 * window  # one window consumed, one more granted
    assert pair.server.held_bytes == window


# ---------------------------------------------------------------------------- c. connection credit


CONN = EngineSettings(
    stream_window=64 * KIB,
    connection_window=128 * KIB,
    max_streams=100,
    initial_stream_window=64 * KIB,
    receive_budget=128 * KIB,
)


def test_connection_credit_follows_consumption(certs: Certs) -> None:
    conn_window = CONN.connection_window
    pair = make_pair(certs, CONN)

    def check(p: Pair) -> None:
        total = sum(p.received.values())
        assert total <= sum(p.consumed.values()) + conn_window
        assert p.server._local_max_data.value <= sum(p.consumed.values()) + conn_window

    pair.invariant = check
    client = pair.engine_client
    sids = []
    for _ in range(4):
        sids.append(sid := client.open_stream())
        client.send_stream_data(sid, b"b" * (48 * KIB))  # each under its 64 KiB window
    pair.pump()
    assert sum(pair.received.values()) == conn_window  # 192 KiB sent, 128 KiB allowed
    assert sum(client.unsent(s) for s in sids) == 4 * 48 * KIB - conn_window

    # Consume everything delivered so far, one stream at a time: the rest follows.
    for _ in range(10):
        for sid in sids:
            pair.consume(sid, pair.received[sid] - pair.consumed[sid])
        pair.pump()
    assert all(pair.received[s] == 48 * KIB for s in sids)
    assert sum(client.unsent(s) for s in sids) == 0


def test_connection_credit_ignores_bytes_never_delivered(certs: Certs) -> None:
    """A peer that leaves a gap at the start of each stream must not get extra MAX_DATA.

    The stream never delivers (offset 0 is missing), so nothing is ever held or consumed:
    those bytes sit in the receive buffer all the same and must count against the
    connection window, or a peer can make the server buffer ``stream_window`` per stream on
    thousands of streams, whatever ``connection_window`` says.
    """
    conn_window = CONN.connection_window
    pair = make_pair(certs, CONN)
    client = pair.engine_client
    sids = []
    for _ in range(4):
        sids.append(sid := client.open_stream())
        client.send_stream_data(sid, b"c" * (48 * KIB))
        client._streams[sid].sender._pending.subtract(0, 1)  # never send byte 0
    pair.pump()
    assert sum(pair.received.values()) == 0  # nothing delivered in order
    assert pair.server.held_bytes == 0
    buffered = pair.server._local_max_data.used
    assert buffered <= conn_window, f"server buffers {buffered} bytes, window is {conn_window}"
    assert pair.server._local_max_data.value == conn_window


# ------------------------------------------------------------------------------ d. release


def test_release_returns_held_bytes_to_the_connection(certs: Certs) -> None:
    settings = EngineSettings(
        stream_window=64 * KIB,
        connection_window=96 * KIB,
        max_streams=100,
        initial_stream_window=64 * KIB,
        receive_budget=96 * KIB,
    )
    pair = make_pair(certs, settings)
    client = pair.engine_client
    a = client.open_stream()
    client.send_stream_data(a, b"a" * (64 * KIB))
    pair.pump()
    assert pair.received[a] == 64 * KIB
    b = client.open_stream()
    client.send_stream_data(b, b"b" * (64 * KIB))
    pair.pump()
    assert pair.received[b] == 32 * KIB  # the connection window is full
    assert pair.server.held_bytes == 96 * KIB

    pair.server.release(a)  # stream a's tunnel is gone: its 64 KiB no longer count
    assert pair.server.is_released(a)
    assert pair.server.held_bytes == 32 * KIB
    pair.pump()
    assert pair.received[b] == 64 * KIB  # b completes without any consume()
    assert client.unsent(b) == 0


def test_released_stream_data_is_not_held(certs: Certs) -> None:
    pair = make_pair(certs, SMALL)
    client = pair.engine_client
    sid = client.open_stream()
    client.send_stream_data(sid, b"x" * 1000)
    pair.pump()
    assert pair.server.held_bytes == 1000
    pair.server.release(sid)
    pair.server.release(sid)  # twice is harmless
    pair.server.consume(sid, 10)  # and consuming a released stream is ignored
    assert pair.server.held_bytes == 0
    client.send_stream_data(sid, b"y" * 1000)
    pair.pump()
    assert pair.received[sid] == 1000  # late data is discarded, not delivered (issue 13)
    assert pair.server.held_bytes == 0
    assert pair.server.receive_buffered == 0


# ------------------------------------------------------------------------------ e. no doubling


def test_stream_limit_never_doubles(certs: Certs) -> None:
    """aioquic doubles MAX_STREAM_DATA once the peer passes half the window; we must not."""
    window = SMALL.stream_window
    pair = make_pair(certs, SMALL)
    pair.invariant = _credit_invariant(window)
    client = pair.engine_client
    sid = client.open_stream()
    client.send_stream_data(sid, b"d" * (window // 2 + 1000))  # more than half a window
    pair.pump()
    stream = pair.server._streams[sid]
    assert pair.received[sid] == window // 2 + 1000
    assert stream.max_stream_data_local == window
    assert stream.max_stream_data_local_sent == window
    assert pair.server._local_max_data.value == SMALL.connection_window


def test_stream_limit_tracks_a_reader_that_keeps_up(certs: Certs) -> None:
    window = SMALL.stream_window

    def consume_all(p: Pair, sid: int, data: bytes) -> None:
        p.consume(sid, len(data))

    pair = make_pair(certs, SMALL)
    pair.invariant = _credit_invariant(window)
    pair.on_server_data = consume_all
    client = pair.engine_client
    sid = client.open_stream()
    client.send_stream_data(sid, b"e" * (10 * window), end_stream=True)
    pair.pump()
    assert pair.received[sid] == 10 * window
    assert pair.server.held_bytes == 0
    # the connection limit grew with consumption only, never by doubling
    assert pair.server._local_max_data.value <= 10 * window + SMALL.connection_window


def test_a_frame_beyond_the_window_is_a_flow_control_error(certs: Certs) -> None:
    window = SMALL.stream_window
    pair = make_pair(certs, SMALL)
    client = pair.engine_client
    sid = client.open_stream()
    client.send_stream_data(sid, b"f" * (2 * window))
    # A peer that ignores our limit: pretend the server allowed twice the window.
    client._streams[sid].max_stream_data_remote = 2 * window
    pair.run_until(lambda: pair.client_got(events.ConnectionTerminated))
    closed = [e for e in pair.client_events if isinstance(e, events.ConnectionTerminated)]
    assert closed[0].error_code == 0x3  # FLOW_CONTROL_ERROR
    assert pair.received[sid] <= window


# ------------------------------------------------------------------------------ f. unsent


def test_unsent_counts_bytes_never_sent(certs: Certs) -> None:
    pair = make_pair(certs, SMALL)
    client = pair.engine_client
    assert client.unsent(4 * 999) == 0  # unknown stream
    assert client.unsent(1) == 0  # a server-side stream id nobody opened
    sid = client.open_stream()
    assert client.unsent(sid) == 0
    client.send_stream_data(sid, b"g" * (40 * KIB))
    assert client.unsent(sid) == 40 * KIB
    sent = client.datagrams_to_send(now=pair.now)
    assert sent
    left = client.unsent(sid)
    assert left < 40 * KIB
    # every STREAM byte that left is no longer unsent (datagrams carry some overhead)
    assert 40 * KIB - left <= sum(len(d) for d, _ in sent)
    for data, _addr in sent:
        pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
    pair.pump()
    assert client.unsent(sid) == 0
    assert pair.received[sid] == 40 * KIB
    # unsent is about first transmission: bytes sent but not yet acknowledged do not count
    client.send_stream_data(sid, b"h" * 1000)
    client.datagrams_to_send(now=pair.now)  # sent, then lost
    assert client.unsent(sid) == 0


def test_unsent_is_zero_for_a_discarded_stream(certs: Certs) -> None:
    pair = make_pair(certs, SMALL)
    client = pair.engine_client
    sid = client.open_stream()
    client.send_stream_data(sid, b"done", end_stream=True)
    pair.pump()
    pair.server.send_stream_data(sid, b"", end_stream=True)
    pair.pump()
    assert sid not in client._streams
    assert client.unsent(sid) == 0


# ------------------------------------------------------------------------------ g. no pacer


@pytest.mark.parametrize("client_class", [AioquicConnection, QuicConnection])
def test_no_pacer_one_call_sends_a_whole_window(
    certs: Certs, client_class: type[QuicConnection]
) -> None:
    settings = EngineSettings(
        stream_window=8 * 1024 * KIB,
        connection_window=32 * 1024 * KIB,
        initial_stream_window=8 * 1024 * KIB,
        receive_budget=32 * 1024 * KIB,
    )
    pair = make_pair(certs, settings, client_class=client_class)
    client = pair.client
    # A large congestion window, and a pacer whose rate reflects it (as after a transfer).
    client._loss._cc.congestion_window = 4 * 1024 * KIB
    client._loss._pacer.update_rate(congestion_window=4 * 1024 * KIB, smoothed_rtt=0.020)
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"p" * (2 * 1024 * KIB))
    count = len(client.datagrams_to_send(now=pair.now))  # the same instant, once
    if client_class is AioquicConnection:
        assert count > 1000  # ~2 MiB / 1350 B: only the congestion window limits the burst
    else:
        assert count <= 20  # control: aioquic's pacer stops after its 16-packet bucket


# ------------------------------------------------------------------------------ h. mutual TLS


def _fails(pair: Pair) -> list[events.ConnectionTerminated]:
    pair.run_until(
        lambda: (
            pair.client_got(events.ConnectionTerminated)
            or pair.server_got(events.ConnectionTerminated)
        )
    )
    assert not pair.server_got(events.HandshakeCompleted)
    assert not any(isinstance(e, events.StreamDataReceived) for e in pair.server_events)
    assert pair.received == {}
    return [
        e
        for e in pair.client_events + pair.server_events
        if isinstance(e, events.ConnectionTerminated)
    ]


@pytest.fixture
def mtls(certs: Certs) -> Callable[[tuple[Path, Path] | None], Pair]:
    def make(client_cert: tuple[Path, Path] | None) -> Pair:
        pair = make_pair(
            certs, SMALL, client_cafile=certs.ca, client_cert=client_cert, handshake=False
        )
        # The client may try to use the connection before the server refuses it.
        sid = pair.client.get_next_available_stream_id()
        pair.client.send_stream_data(sid, b"token")
        return pair

    return make


def test_mtls_accepts_a_certificate_issued_by_the_ca(
    certs: Certs, mtls: Callable[[tuple[Path, Path] | None], Pair]
) -> None:
    pair = mtls((certs.client_cert, certs.client_key))
    pair.run_until(lambda: pair.server_got(events.HandshakeCompleted))
    pair.pump()
    assert pair.client_got(events.HandshakeCompleted)
    assert not pair.client_got(events.ConnectionTerminated)
    assert not pair.server_got(events.ConnectionTerminated)
    assert pair.received[0] == len(b"token")
    peer = pair.server.peer_certificate
    assert peer is not None
    cn = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "client-1"


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
    certs: Certs,
    mtls: Callable[[tuple[Path, Path] | None], Pair],
    which: str,
    alert: int,
    reason: str,
) -> None:
    """No certificate, self-signed, another CA's, expired, or a chain through a non-CA."""
    client_cert = {
        "none": None,
        "rogue": (certs.rogue_cert, certs.rogue_key),
        "other_ca": (certs.other_ca_cert, certs.other_ca_key),
        "expired": (certs.expired_cert, certs.expired_key),
        "sub": (certs.sub_cert, certs.sub_key),
    }[which]
    closed = _fails(mtls(client_cert))
    assert closed
    assert closed[0].error_code == CRYPTO_ERROR + alert
    assert reason in closed[0].reason_phrase


def test_without_client_cafile_no_certificate_is_asked_for(certs: Certs) -> None:
    pair = make_pair(certs, SMALL, client_cert=(certs.rogue_cert, certs.rogue_key))
    assert pair.server.peer_certificate is None


# ------------------------------------------------------------------------------ idle streams


def _thousand_greeted_streams(certs: Certs) -> tuple[Pair, list[int]]:
    """A pair whose client opened 1,000 streams, each carrying "hello" the server consumed."""
    pair = make_pair(certs, SMALL)
    sids = []
    for _ in range(1000):
        sid = pair.engine_client.open_stream()
        pair.engine_client.send_stream_data(sid, b"hello")
        sids.append(sid)
    pair.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
    pair.pump()
    return pair, sids


def test_idle_streams_leave_the_send_queue_and_come_back(certs: Certs) -> None:
    """aioquic walks every stream per packet; idle ones must not be walked (10k tunnels)."""
    pair, sids = _thousand_greeted_streams(certs)
    client = pair.engine_client
    # everything sent was acked and every credit update announced: nothing left to walk
    assert len(client._streams_queue) == 0
    assert len(pair.server._streams_queue) == 0
    assert len(client._streams) == 1000 and len(pair.server._streams) == 1000
    # an idle stream that gets work again is served: both directions, and its FIN
    pair.server.send_stream_data(sids[500], b"reply", end_stream=True)
    client.send_stream_data(sids[500], b"more", end_stream=True)
    pair.pump()
    assert pair.received[sids[500]] == 9
    replies = [
        e
        for e in pair.client_events
        if isinstance(e, events.StreamDataReceived) and e.stream_id == sids[500]
    ]
    assert b"".join(e.data for e in replies) == b"reply" and replies[-1].end_stream
    # both directions finished: aioquic discards the stream on both sides
    assert sids[500] not in client._streams
    assert sids[500] not in pair.server._streams
    assert len(client._streams) == 999


def test_streams_waiting_for_connection_credit_leave_the_queue_until_max_data(
    certs: Certs,
) -> None:
    """1,000 tunnels whose data waits only for the peer's MAX_DATA (a reader that grants none:
    hostile, or stalled) must not be walked per packet; MAX_DATA brings them all back."""
    pair, sids = _thousand_greeted_streams(certs)
    client = pair.engine_client
    for sid in sids:  # 2 MiB in all: twice the client's connection window, never consumed
        pair.server.send_stream_data(sid, b"x" * 2048)
    pair.pump()
    got = _client_bytes(pair)
    assert 0 < sum(got.values()) <= SMALL.connection_window
    assert pair.server._remote_max_data_used >= pair.server._remote_max_data
    assert len(pair.server._streams_queue) == 0  # all parked, none walked
    for _ in range(3):  # more data re-queues each stream; parked again, each is kept once
        for sid in sids:
            pair.server.send_stream_data(sid, b"y")
        pair.pump()
    assert len(pair.server._streams_queue) == 0
    assert 0 < len(pair.server._parked) <= len(sids)
    gone = next(iter(pair.server._parked))
    pair.server.release(gone)  # its tunnel ended: nothing keeps its stream for MAX_DATA
    assert gone not in pair.server._parked
    sids.remove(gone)
    # what the session's send budget re-reads: the streams sent from, once
    assert set(got) <= pair.server.sent_streams() <= set(sids)
    assert pair.server.sent_streams() == set()
    got.pop(gone, None)
    for sid, n in got.items():  # the client's app reads: MAX_DATA, and the rest comes
        client.consume(sid, n)
    for _ in range(4):
        pair.pump()
        for sid, n in _client_bytes(pair).items():
            if n > got.get(sid, 0):
                client.consume(sid, n - got.get(sid, 0))
        got = _client_bytes(pair)
        got.pop(gone, None)
    assert got == dict.fromkeys(sids, 2048 + 3)


@pytest.mark.parametrize("sliced", ["compiled", "python"])
def test_a_full_congestion_window_ends_the_pass_at_once(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, sliced: str
) -> None:
    """1,000 tunnels with data queued and a full congestion window: a send pass (one per ACK
    or timer of that connection) asks one slice of streams, not all 125, and when the window
    opens the streams not asked are served in turn, none starved.  Before, each such pass
    asked every slice: 1.3 ms to send nothing (bench note in docs/security.md).  Both sliced
    passes: the compiled one (_aioquic_sched.pyx) and the Python method."""
    if sliced == "compiled" and build.fast_sliced is None:
        pytest.skip(f"not built: {build.BUILDER}")
    if sliced == "python":
        monkeypatch.setattr(build, "fast_sliced", None)
    pair, sids = _thousand_greeted_streams(certs)
    server = pair.server
    for sid in sids:
        server.send_stream_data(sid, b"z" * 1000)
    first = server.datagrams_to_send(now=pair.now)  # the pass that fills the window
    assert first
    asked = []  # one packet-writer call per slice asked
    writer = build.fast_write

    def counting(conn: Any, builder: Any, path: Any, now: float) -> bool:
        asked.append(len(conn._streams_queue))
        return writer is not None and writer(conn, builder, path, now)

    monkeypatch.setattr(build, "fast_write", counting)
    assert server.datagrams_to_send(now=pair.now) == []  # nothing fits: no ACK is due either
    assert len(asked) == 1 and len(server._streams_queue) >= 990
    assert asked[0] < 990  # a slice, not the queue
    monkeypatch.setattr(build, "fast_write", writer)
    for data, _ in first:
        pair.engine_client.receive_datagram(data, SERVER_ADDR, now=pair.now)
    pair.pump()  # the window opens as ACKs come back: every tunnel gets its 1,000 bytes
    assert _client_bytes(pair) == dict.fromkeys(sids, 1000)


def _client_bytes(pair: Pair) -> dict[int, int]:
    got: dict[int, int] = {}
    for e in pair.client_events:
        if isinstance(e, events.StreamDataReceived) and e.data:
            got[e.stream_id] = got.get(e.stream_id, 0) + len(e.data)
    return got
