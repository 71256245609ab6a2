"""The compiled common send case (quictund/quic/_aioquic_send.pyx) builds what aioquic builds.

Each scenario runs on two in-memory aioquic pairs with the same fake clock and the same data:
one with the compiled ``write_application`` in front of aioquic's ``_write_application`` (as
the daemon runs) and one without it (aioquic's own loop, the control).  The receivers record
the plaintext of every 1-RTT packet they open after the handshake, and the two records must be
equal byte for byte: every frame, its order, offsets, FIN bits, ACK ranges and delays, credit
frames, retransmissions after loss.  (Several streams sending in one call are the exception
the module documents -- aioquic orders them by a ``set`` -- so those scenarios compare what
arrived instead.)  With the compiled path the tests also assert that it really built the
packets, and that it leaves the rare frames to aioquic.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from aioquic import tls as aioquic_tls

from quictund.quic import engine_aioquic_build as build
from quictund.quic.engine import EngineSettings, events
from tests.engine_pair import KIB, Certs, Pair, make_certs, make_pair

COMPILED = build.fast_write is not None
if os.environ.get("CI") == "true" and not os.environ.get(build.PURE_ENV):
    assert COMPILED, f"CI builds the compiled send path: {build.BUILDER}"

pytestmark = pytest.mark.skipif(not COMPILED, reason=f"not built: {build.BUILDER}")

SETTINGS = EngineSettings(
    stream_window=256 * KIB,
    connection_window=1024 * KIB,
    initial_stream_window=64 * KIB,
    receive_budget=1024 * KIB,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("send-certs"))


class Counted:
    """``build.fast_write`` that counts the calls it took and declined, and the packets it
    built (None: it always declines, so aioquic's own method runs: the control)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.took = 0
        self.declined = 0
        self.packets = 0

    def __call__(self, conn: Any, builder: Any, network_path: Any, now: float) -> bool:
        first = builder.packet_number
        try:
            taken = self.inner is not None and bool(self.inner(conn, builder, network_path, now))
        finally:
            if self.inner is not None:
                self.packets += builder.packet_number - first
        if taken:
            self.took += 1
        else:
            self.declined += 1
        return taken


class Recorded:
    """A pair whose receivers keep the plaintext of each 1-RTT packet they open (once the
    handshake is over: ``make_pair`` completes it)."""

    def __init__(self, certs: Certs, settings: EngineSettings = SETTINGS) -> None:
        self.pair = make_pair(certs, settings)
        self.pair.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
        self.packets: list[tuple[str, bytes]] = []
        for name in ("client", "server"):
            self._record(name, getattr(self.pair, name))

    def _record(self, name: str, conn: Any) -> None:
        # each 1-RTT packet is opened by this key pair's decrypt_packet (both receive paths)
        pair = conn._cryptos[aioquic_tls.Epoch.ONE_RTT]
        inner = pair.decrypt_packet

        def decrypt_packet(*args: Any, **kwargs: Any) -> Any:
            header, plain, number = inner(*args, **kwargs)
            self.packets.append((name, bytes(plain)))
            return header, plain, number

        pair.decrypt_packet = decrypt_packet


def _twice(
    certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Pair], None],
    settings: EngineSettings = SETTINGS,
) -> tuple[Recorded, Recorded, Counted]:
    """``scenario`` on a pair with the compiled path and on one without; the counter of the
    first.  The record starts once the handshake is over (its connection ids are random)."""
    runs = []
    counted = Counted(build.fast_write)
    for fast in (counted, Counted(None)):
        monkeypatch.setattr(build, "fast_write", fast)
        random.seed(7)
        rec = Recorded(certs, settings)
        rec.packets.clear()
        scenario(rec.pair)
        runs.append(rec)
    return runs[0], runs[1], counted


def _server_bytes(pair: Pair, stream_id: int) -> bytes:
    return b"".join(
        e.data
        for e in pair.server_events
        if isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id
    )


def _built_by_the_compiled_path(counted: Counted, rec: Recorded) -> None:
    """Every packet after the handshake but its last few (HANDSHAKE_DONE, NEW_CONNECTION_ID,
    which aioquic's method writes) came from the compiled path, on either side."""
    assert counted.packets >= len(rec.packets) - 6, (counted.packets, len(rec.packets))
    assert counted.declined <= 6, counted.declined


DATA = bytes(random.Random(1).randbytes(1600 * KIB))  # past the connection window


def _bulk(pair: Pair) -> None:
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, DATA, end_stream=True)
    pair.run_until(lambda: len(_server_bytes(pair, stream_id)) == len(DATA))
    pair.pump()
    assert _server_bytes(pair, stream_id) == DATA
    assert pair.client.bytes_in_flight == 0


def test_a_bulk_transfer_is_built_byte_for_byte_as_aioquic_builds_it(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, control, counted = _twice(certs, monkeypatch, _bulk)
    assert len(fast.packets) > 500
    assert fast.packets == control.packets
    _built_by_the_compiled_path(counted, fast)


# a stream window larger than the connection's, so the connection's credit binds
CREDIT_BOUND = EngineSettings(
    stream_window=512 * KIB,
    initial_stream_window=512 * KIB,
    connection_window=128 * KIB,
    receive_budget=128 * KIB,
)


def _credit_bound(pair: Pair) -> None:
    """The server reads nothing until the client ran out of connection credit, then all."""
    pair.on_server_data = None
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, DATA, end_stream=True)
    pair.pump()
    blocked_at = pair.received[stream_id]
    assert blocked_at < len(DATA)  # the server's window stopped the client
    pair.consume(stream_id, blocked_at)
    pair.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
    pair.run_until(lambda: pair.received[stream_id] == len(DATA))
    assert _server_bytes(pair, stream_id) == DATA


def test_sending_up_to_the_connection_credit_is_built_as_aioquic_builds_it(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, control, counted = _twice(certs, monkeypatch, _credit_bound, CREDIT_BOUND)
    assert fast.pair.received == control.pair.received
    assert fast.packets == control.packets
    _built_by_the_compiled_path(counted, fast)


def _arrived(pair: Pair, stream_id: int, tail: bytes) -> bool:
    return _server_bytes(pair, stream_id).endswith(tail)


def _request_response(pair: Pair) -> None:
    stream_id = pair.client.open_stream()
    for i in range(40):
        question = b"q%d" % i
        pair.client.send_stream_data(stream_id, question)
        pair.run_until(partial(_arrived, pair, stream_id, question))
        pair.server.send_stream_data(stream_id, b"a%d" % i, end_stream=i == 39)
        pair.pump()
    pair.client.send_stream_data(stream_id, b"", end_stream=True)  # a FIN without data
    pair.pump()
    assert any(
        isinstance(e, events.StreamDataReceived) and e.end_stream and e.stream_id == stream_id
        for e in pair.server_events
    )
    assert stream_id not in pair.client._streams  # both halves done: discarded


def test_request_response_and_a_bare_fin_are_built_as_aioquic_builds_them(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, control, counted = _twice(certs, monkeypatch, _request_response)
    assert fast.packets == control.packets
    _built_by_the_compiled_path(counted, fast)


def _lossy(pair: Pair) -> None:
    """Every 7th client datagram lost: retransmissions start inside the stream's ranges."""
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, DATA[: 300 * KIB], end_stream=True)
    sent = 0
    for _ in range(3000):
        if len(_server_bytes(pair, stream_id)) == 300 * KIB:
            break
        for data, _addr in pair.client.datagrams_to_send(now=pair.now):
            sent += 1
            if sent % 7:
                pair.server.receive_datagram(data, ("1.2.3.4", 1234), now=pair.now)
        pair.drain()
        for data, _addr in pair.server.datagrams_to_send(now=pair.now):
            pair.client.receive_datagram(data, ("2.3.4.5", 4433), now=pair.now)
        pair.drain()
        pair.now += 0.002
        for conn in (pair.client, pair.server):
            timer = conn.get_timer()
            if timer is not None and timer <= pair.now:
                conn.handle_timer(now=pair.now)
    assert _server_bytes(pair, stream_id) == DATA[: 300 * KIB]
    assert pair.client.packets_lost > 10


def test_retransmissions_after_loss_are_built_as_aioquic_builds_them(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, control, counted = _twice(certs, monkeypatch, _lossy)
    assert fast.packets == control.packets
    # more packets built than arrived (a seventh of the client's were lost), and only the
    # handshake's last calls declined
    assert counted.packets >= len(fast.packets)
    assert counted.declined <= 6, counted.declined


def test_many_streams_resets_and_stops_all_arrive(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several streams per packet: aioquic's order among them is a set's, so compare outcomes.
    def scenario(pair: Pair) -> None:
        ids = [pair.client.open_stream() for _ in range(30)]
        for n, sid in enumerate(ids):
            pair.client.send_stream_data(sid, bytes([n]) * (n * 997), end_stream=n % 3 != 2)
        pair.pump()
        for n, sid in enumerate(ids):
            if n % 3 == 2:  # aborted both ways, as a tunnel resets: the server resets too
                pair.client.reset_stream(sid, 5)
                pair.client.stop_stream(sid, 6)
            else:
                pair.server.send_stream_data(sid, b"done", end_stream=True)
        pair.pump()

    fast, control, counted = _twice(certs, monkeypatch, scenario)
    for rec in (fast, control):
        pair = rec.pair
        aborted = set(range(8, 120, 12))  # the n % 3 == 2 streams
        assert {e.stream_id for e in pair.server_events if isinstance(e, events.StreamReset)} == (
            aborted
        )
        assert {e.stream_id for e in pair.client_events if isinstance(e, events.StreamReset)} == (
            aborted
        )
        for n in range(30):
            if n % 3 != 2:
                assert _server_bytes(pair, 4 * n) == bytes([n]) * (n * 997)
        assert pair.client._streams == {}  # every stream finished both ways and discarded
        assert pair.server._streams == {}
    _built_by_the_compiled_path(counted, fast)


def test_the_rare_frames_are_left_to_aioquic(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = Counted(build.fast_write)
    monkeypatch.setattr(build, "fast_write", counted)
    rec = Recorded(certs)
    pair = rec.pair
    pair.pump()
    declined = counted.declined
    pair.client.send_ping(42)  # PING (user request): aioquic's writer
    pair.pump()
    assert counted.declined == declined + 1
    assert any(isinstance(e, events.PingAcknowledged) for e in pair.client_events)
    took = counted.took
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, b"after")
    pair.pump()
    assert counted.took > took
    assert _server_bytes(pair, stream_id) == b"after"


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "aioquic"])
def test_a_reset_behind_a_busy_stream_does_not_stop_every_pass_after_one_packet(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    # aioquic writes a stream's RESET_STREAM / STOP_SENDING where the stream comes in the send
    # queue; behind a stream whose data fills the packet there is no room, start_frame raises
    # QuicPacketBuilderStop, and that ends the whole datagrams_to_send: one packet per pass,
    # for as long as the busy stream has data (a tunnel reset after 100 busy ones stalled 8
    # new tunnels for seconds on loopback).  The frames to stop a stream go first now.
    if not compiled:
        monkeypatch.setattr(build, "fast_write", None)
    pair = Recorded(certs).pair
    busy, aborted = pair.client.open_stream(), pair.client.open_stream()
    pair.client.send_stream_data(aborted, b"some")
    pair.pump()
    pair.client.send_stream_data(busy, bytes(200 * KIB))
    pair.client.reset_stream(aborted, 9)  # re-queued behind the busy stream
    pair.client.stop_stream(aborted, 9)
    datagrams = pair.client.datagrams_to_send(now=pair.now)
    assert len(datagrams) >= 4  # the congestion window's worth, not one
    for data, _addr in datagrams:
        pair.server.receive_datagram(data, ("1.2.3.4", 1234), now=pair.now)
    pair.drain()
    assert any(
        isinstance(e, events.StreamReset) and e.stream_id == aborted for e in pair.server_events
    )
