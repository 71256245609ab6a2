"""When the aioquic engine acknowledges a lone packet (quictund/quic/engine_aioquic_acks.py).

In-memory aioquic pairs (tests/engine_pair.py) with the clock moved by hand: a request whose
answer comes 5 ms later must leave as one datagram, answer and ACK together (aioquic alone
sends an ACK-only datagram 1 ms after the request, then the answer); a request nobody answers
is still acknowledged inside the 25 ms ``max_ack_delay`` we announce; two packets in a row are
acknowledged as aioquic does, 1 ms after the first.  Each on the compiled receive path and on
aioquic's Python one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aioquic.tls import Epoch

from quictund.quic import engine_aioquic_build as build
from quictund.quic.engine import events
from quictund.quic.engine_aioquic_acks import LONE_ACK_S
from tests.engine_pair import CLIENT_ADDR, SERVER_ADDR, Certs, Pair, make_certs, make_pair
from tests.test_engine_send import SETTINGS

MAX_ACK_DELAY = 0.025  # what an aioquic endpoint announces (its transport parameters)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("acks-certs"))


@pytest.fixture(params=["compiled", "python"])
def pair(
    request: pytest.FixtureRequest, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pair]:
    if request.param == "compiled":
        if build.fast_receive is None:
            pytest.skip(f"not built: {build.BUILDER}")
    else:
        monkeypatch.setattr(build, "fast_receive", None)
    pair = make_pair(certs, SETTINGS)
    pair.pump()
    # settle: the handshake's last ACKs are out, nothing is pending on either side
    pair.now += 0.1
    for conn in (pair.client, pair.server):
        conn.handle_timer(now=pair.now)
    pair.pump()
    yield pair


def _send(sender: Any, receiver: Any, source: tuple[str, int], now: float) -> int:
    """Deliver what ``sender`` has to send at ``now``; how many datagrams that was."""
    datagrams = sender.datagrams_to_send(now=now)
    for data, _addr in datagrams:
        receiver.receive_datagram(data, source, now=now)
    return len(datagrams)


def _request(pair: Pair, data: bytes) -> int:
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, data)
    assert _send(pair.client, pair.server, CLIENT_ADDR, pair.now) == 1
    pair.drain()
    return stream_id


def _one_rtt(conn: Any) -> Any:
    return conn._spaces[Epoch.ONE_RTT]


def test_an_answer_that_takes_5_ms_carries_the_ack(pair: Pair) -> None:
    stream_id = _request(pair, b"question")
    start = pair.now
    # nothing is due at once, nor 1 ms later (aioquic alone would send an ACK then)
    assert _send(pair.server, pair.client, SERVER_ADDR, start) == 0
    timer = pair.server.get_timer()
    assert timer is not None and timer >= start + LONE_ACK_S - 1e-9
    pair.now = start + 0.005
    assert _send(pair.server, pair.client, SERVER_ADDR, pair.now) == 0
    in_flight = pair.client.bytes_in_flight
    assert in_flight > 0
    pair.server.send_stream_data(stream_id, b"answer")
    assert _send(pair.server, pair.client, SERVER_ADDR, pair.now) == 1  # answer and ACK
    pair.drain()
    assert pair.client.bytes_in_flight == 0  # the request was acknowledged with its answer
    assert any(
        isinstance(e, events.StreamDataReceived) and e.data == b"answer"
        for e in pair.client_events
    )
    assert _one_rtt(pair.server).ack_at is None


def test_a_request_nobody_answers_is_acknowledged_within_max_ack_delay(pair: Pair) -> None:
    _request(pair, b"question")
    start = pair.now
    timer = pair.server.get_timer()
    assert timer is not None and start + LONE_ACK_S - 1e-9 <= timer < start + MAX_ACK_DELAY
    pair.now = timer
    pair.server.handle_timer(now=pair.now)
    assert _send(pair.server, pair.client, SERVER_ADDR, pair.now) == 1  # the ACK alone
    pair.drain()
    assert pair.client.bytes_in_flight == 0
    # the client's RTT estimate took the delay out, as the ACK frame reported it
    assert pair.client._loss._rtt_smoothed < 0.010


def test_two_packets_are_acknowledged_1_ms_after_the_first(pair: Pair) -> None:
    start = pair.now
    _request(pair, b"one")
    pair.now = start + 0.0002
    _request(pair, b"two")
    assert _one_rtt(pair.server).ack_at == pytest.approx(start + pair.server._ack_delay)
    pair.now = start + pair.server._ack_delay
    assert _send(pair.server, pair.client, SERVER_ADDR, pair.now) == 1
    pair.drain()
    assert pair.client.bytes_in_flight == 0


def test_a_bulk_transfer_is_acknowledged_as_often_as_before(pair: Pair) -> None:
    """Many packets per round: every ACK deadline is aioquic's 1 ms, never the lone one."""
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, bytes(200_000))
    deadlines = []
    for _ in range(20):
        if _send(pair.client, pair.server, CLIENT_ADDR, pair.now) > 1:
            at = _one_rtt(pair.server).ack_at
            if at is not None:
                deadlines.append(at - pair.now)
        pair.drain()
        pair.consume(stream_id, pair.received[stream_id] - pair.consumed[stream_id])
        pair.now += 0.001
        _send(pair.server, pair.client, SERVER_ADDR, pair.now)
        pair.drain()
    assert deadlines and max(deadlines) <= pair.server._ack_delay + 1e-9
