"""DATAGRAM frames on both engines (issue 16), in-memory pairs: the room one packet has, and
the bound on what waits for congestion window (never more than ``DATAGRAM_QUEUE``)."""

from __future__ import annotations

import pytest
from aioquic.quic import events

from quictund.quic.settings import DATAGRAM_QUEUE
from tests.engine_pair import CLIENT_ADDR, ENGINES, Certs, Pair, make_certs, make_pair
from tests.test_engines import small


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("udpflow-certs"))


def _datagrams(pair: Pair) -> list[bytes]:
    return [e.data for e in pair.server_events if isinstance(e, events.DatagramFrameReceived)]


@pytest.mark.parametrize("eng", ENGINES)
def test_a_frame_of_exactly_the_room_fits_one_packet(certs: Certs, eng: str) -> None:
    pair = make_pair(certs, small(eng))
    room = pair.client.datagram_room()
    assert 1452 - 60 <= room <= 1452 - 30
    assert pair.client.send_datagram(b"r" * room)
    sent = pair.client.datagrams_to_send(now=pair.now)
    assert max(len(d) for d, _ in sent) <= 1452
    for data, _ in sent:
        pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
    pair.drain()
    assert _datagrams(pair) == [b"r" * room]


@pytest.mark.parametrize("eng", ENGINES)
def test_datagrams_waiting_for_congestion_window_are_bounded(certs: Certs, eng: str) -> None:
    """The server never acknowledges (its packets are lost): however many datagrams the
    tunnel offers, at most DATAGRAM_QUEUE of them wait in the engine."""
    pair = make_pair(certs, small(eng))
    client, server = pair.client, pair.server
    offered = refused = 0
    for _ in range(300):
        for _ in range(100):
            offered += 1
            refused += not client.send_datagram(b"d" * 1000)
        for data, _ in client.datagrams_to_send(now=pair.now):
            server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
        server.datagrams_to_send(now=pair.now)  # lost: no acknowledgement reaches the client
        pair.now += 0.002
        for conn in (client, server):
            timer = conn.get_timer()
            if timer is not None and timer <= pair.now:
                conn.handle_timer(now=pair.now)
        pair.drain()
    delivered = len(_datagrams(pair))
    kept = offered - delivered - refused  # neither delivered nor refused: still queued
    print(f"{eng}: offered {offered}, delivered {delivered}, refused {refused}, kept {kept}")
    assert 0 <= kept <= DATAGRAM_QUEUE
    # The window closes for DATAGRAM frames too: the oldest are dropped.  (qh3 2.1's own core
    # would send all 30,000 unacknowledged; its adapter feeds it only what the window allows.)
    assert delivered < offered // 4 and refused > offered // 2
