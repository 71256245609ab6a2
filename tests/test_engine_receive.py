"""The compiled common receive case (quictund/quic/_aioquic_receive.pyx) does what aioquic does.

Each test runs twice on an in-memory aioquic pair: with the compiled ``receive_short`` in front
of aioquic's ``receive_datagram`` (as the daemon runs) and without it (aioquic's own path, the
control), and asserts the same outcome: data intact and acknowledged, a replayed datagram
dropped as a duplicate, a corrupted one dropped without harm, reserved bits closing the
connection, a key update by the peer, a datagram from a new address left to aioquic's
migration rules.  With the compiled path it also asserts that steady-state datagrams really
took it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from aioquic import tls as aioquic_tls
from aioquic.quic.connection import QuicConnectionState

from quictund.quic import engine_aioquic_build as build
from quictund.quic.engine import EngineSettings, events
from tests.engine_pair import CLIENT_ADDR, KIB, SERVER_ADDR, Certs, Pair, make_certs, make_pair

COMPILED = build.fast_receive is not None
if os.environ.get("CI") == "true" and not os.environ.get(build.PURE_ENV):
    assert COMPILED, f"CI builds the compiled receive path: {build.BUILDER}"

SETTINGS = EngineSettings(
    stream_window=256 * KIB,
    connection_window=1024 * KIB,
    initial_stream_window=256 * KIB,
    receive_budget=1024 * KIB,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("receive-certs"))


class Counted:
    """``build.fast_receive`` that counts the datagrams it took and declined."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.took = 0
        self.declined = 0

    def __call__(self, conn: Any, data: bytes, addr: Any, now: float) -> bool:
        taken = bool(self.inner(conn, data, addr, now))
        if taken:
            self.took += 1
        else:
            self.declined += 1
        return taken


@pytest.fixture(params=["compiled", "aioquic"])
def path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Counted | None]:
    if request.param == "compiled":
        if not COMPILED:
            pytest.skip(f"not built: {build.BUILDER}")
        counted = Counted(build.fast_receive)
        monkeypatch.setattr(build, "fast_receive", counted)
        yield counted
    else:
        monkeypatch.setattr(build, "fast_receive", None)
        yield None


def _pair(certs: Certs) -> Pair:
    pair = make_pair(certs, SETTINGS)
    pair.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
    return pair


def _server_bytes(pair: Pair, stream_id: int) -> bytes:
    return b"".join(
        e.data
        for e in pair.server_events
        if isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id
    )


def _one_datagram(pair: Pair, payload: bytes) -> tuple[int, bytes]:
    """A client datagram carrying ``payload`` on a new stream, not yet delivered."""
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, payload)
    datagrams = pair.client.datagrams_to_send(now=pair.now)
    assert len(datagrams) == 1
    return stream_id, datagrams[0][0]


def test_a_bulk_transfer_arrives_intact_and_acknowledged(
    certs: Certs, path: Counted | None
) -> None:
    pair = _pair(certs)
    stream_id = pair.client.open_stream()
    data = os.urandom(600 * KIB)
    pair.client.send_stream_data(stream_id, data, end_stream=True)
    pair.run_until(lambda: len(_server_bytes(pair, stream_id)) == len(data))
    pair.pump()
    assert _server_bytes(pair, stream_id) == data
    assert pair.client.bytes_in_flight == 0  # every packet acknowledged
    assert pair.server._spaces[aioquic_tls.Epoch.ONE_RTT].ack_at is None
    if path is not None:  # nearly every datagram after the handshake took the compiled path
        assert path.took > 400 and path.declined <= 4, (path.took, path.declined)


def test_a_replayed_datagram_is_dropped_as_a_duplicate(certs: Certs, path: Counted | None) -> None:
    pair = _pair(certs)
    stream_id, datagram = _one_datagram(pair, b"once")
    took = path.took if path is not None else 0
    for _ in range(2):
        pair.server.receive_datagram(datagram, CLIENT_ADDR, now=pair.now)
        pair.drain()
    assert _server_bytes(pair, stream_id) == b"once"
    assert sum(isinstance(e, events.StreamDataReceived) for e in pair.server_events) == 1
    if path is not None:
        assert path.took == took + 2  # the replay too: dropped by the compiled path itself


def test_a_corrupted_datagram_is_dropped_and_the_connection_lives(
    certs: Certs, path: Counted | None
) -> None:
    pair = _pair(certs)
    stream_id, datagram = _one_datagram(pair, b"spoiled")
    bad = bytearray(datagram)
    bad[-1] ^= 0xFF  # the AEAD tag
    pair.server.receive_datagram(bytes(bad), CLIENT_ADDR, now=pair.now)
    pair.drain()
    assert _server_bytes(pair, stream_id) == b""
    assert pair.server._state is QuicConnectionState.CONNECTED
    pair.server.receive_datagram(datagram, CLIENT_ADDR, now=pair.now)  # the genuine one
    pair.drain()
    assert _server_bytes(pair, stream_id) == b"spoiled"


def test_reserved_bits_set_close_the_connection(certs: Certs, path: Counted | None) -> None:
    pair = _pair(certs)
    client, server = pair.client, pair.server
    crypto = client._cryptos[aioquic_tls.Epoch.ONE_RTT]
    number = client._packet_number
    first = 0x40 | 0x18 | (crypto.key_phase << 2) | 0x01  # fixed bit, reserved bits, 2-byte pn
    header = bytes([first]) + client._peer_cid.cid + (number & 0xFFFF).to_bytes(2, "big")
    packet = crypto.encrypt_packet(header, b"\x01" + bytes(20), number)  # PING + PADDING
    server.receive_datagram(packet, CLIENT_ADDR, now=pair.now)
    pair.run_until(lambda: pair.client_got(events.ConnectionTerminated))
    closed = [e for e in pair.client_events if isinstance(e, events.ConnectionTerminated)]
    assert closed[0].reason_phrase == "Reserved bits must be zero"
    assert closed[0].error_code == 0x0A  # PROTOCOL_VIOLATION


def test_a_key_update_by_the_peer_is_followed(certs: Certs, path: Counted | None) -> None:
    pair = _pair(certs)
    phase = pair.server._cryptos[aioquic_tls.Epoch.ONE_RTT].recv.key_phase
    pair.client.request_key_update()
    stream_id, datagram = _one_datagram(pair, b"new keys")
    pair.server.receive_datagram(datagram, CLIENT_ADDR, now=pair.now)
    pair.drain()
    assert _server_bytes(pair, stream_id) == b"new keys"
    assert pair.server._cryptos[aioquic_tls.Epoch.ONE_RTT].recv.key_phase != phase
    more = pair.client.open_stream()
    pair.client.send_stream_data(more, b"and after")
    pair.pump()
    assert _server_bytes(pair, more) == b"and after"


def test_a_datagram_from_a_new_address_is_left_to_aioquic(
    certs: Certs, path: Counted | None
) -> None:
    pair = _pair(certs)
    stream_id, datagram = _one_datagram(pair, b"moved")
    if path is not None:
        before = path.declined
    pair.server.receive_datagram(datagram, ("9.9.9.9", 9999), now=pair.now)
    pair.drain()
    assert _server_bytes(pair, stream_id) == b"moved"
    assert ("9.9.9.9", 9999) in [p.addr for p in pair.server._network_paths]
    if path is not None:
        assert path.declined == before + 1


def test_a_packet_300_numbers_late_is_acknowledged_not_dropped(
    certs: Certs, path: Counted | None
) -> None:
    # aioquic took any packet more than 128 packet numbers late for a duplicate (received.py)
    pair = _pair(certs)
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, os.urandom(900 * KIB))
    space = pair.server._spaces[aioquic_tls.Epoch.ONE_RTT]
    held: tuple[bytes, int] | None = None
    delivered = 0
    for _ in range(2000):
        for data, _addr in pair.client.datagrams_to_send(now=pair.now):
            if held is None and delivered == 20:
                held = (data, space.largest_received_packet + 1)  # the next packet number
            else:
                pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
            delivered += 1
        pair.drain()
        for data, _addr in pair.server.datagrams_to_send(now=pair.now):
            pair.client.receive_datagram(data, SERVER_ADDR, now=pair.now)
        pair.drain()
        pair.now += 0.001
        if delivered > 20 + 300:
            break
    assert held is not None and space.largest_received_packet > held[1] + 300
    pair.server.receive_datagram(held[0], CLIENT_ADDR, now=pair.now)
    assert any(held[1] in r for r in space.ack_queue)  # will be acknowledged


def _reordered_ranges(certs: Certs) -> list[list[range]]:
    """The server's ACK ranges after each datagram of a transfer whose client datagrams arrive
    in reverse order within each round, and every 9th a round late."""
    pair = _pair(certs)
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, bytes(400 * KIB))
    space = pair.server._spaces[aioquic_tls.Epoch.ONE_RTT]
    seen: list[list[range]] = []
    late: list[bytes] = []
    count = 0
    for _ in range(400):
        batch = [data for data, _addr in pair.client.datagrams_to_send(now=pair.now)]
        arriving, late = late, []
        for data in reversed(batch):
            count += 1
            (late if count % 9 == 0 else arriving).append(data)
        for data in arriving:
            pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
            seen.append(list(space.ack_queue))
        pair.drain()
        for data, _addr in pair.server.datagrams_to_send(now=pair.now):
            pair.client.receive_datagram(data, SERVER_ADDR, now=pair.now)
        pair.drain()
        pair.now += 0.001
        if pair.received[stream_id] == 400 * KIB and not late:
            break
    assert pair.received[stream_id] == 400 * KIB
    return seen


def test_reordered_packets_give_the_ack_ranges_aioquic_gives(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The compiled path extends the last ACK range in place (_ack_later); anything else is
    # RangeSet.add.  Both paths, same datagrams in the same order: the same ranges throughout.
    if not COMPILED:
        pytest.skip(f"not built: {build.BUILDER}")
    fast = _reordered_ranges(certs)
    monkeypatch.setattr(build, "fast_receive", None)
    control = _reordered_ranges(certs)
    assert len(fast) > 250
    assert max(len(r) for r in fast) >= 3  # the reordering left gaps to acknowledge around
    assert fast == control


def _varint(value: int) -> bytes:
    for size, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | prefix << (8 * size - 8)).to_bytes(size, "big")
    raise ValueError(value)


def _stream(stream_id: int, offset: int, data: bytes, fin: bool = False) -> bytes:
    kind = 0x08 | 0x04 | 0x02 | int(fin)  # STREAM with offset and length
    return bytes([kind]) + _varint(stream_id) + _varint(offset) + _varint(len(data)) + data


def _send_plain(pair: Pair, payload: bytes) -> None:
    """One 1-RTT packet from the client whose plaintext is ``payload``, straight to the
    server.  PADDING first (the header-protection sample needs 20 bytes): padding after a
    faulty frame would complete it."""
    client = pair.client
    crypto = client._cryptos[aioquic_tls.Epoch.ONE_RTT]
    number = client._packet_number
    client._packet_number += 1
    first = 0x40 | (crypto.key_phase << 2) | 0x01  # fixed bit, 2-byte packet number
    header = bytes([first]) + client._peer_cid.cid + (number & 0xFFFF).to_bytes(2, "big")
    packet = crypto.encrypt_packet(header, bytes(max(0, 24 - len(payload))) + payload, number)
    pair.server.receive_datagram(packet, CLIENT_ADDR, now=pair.now)
    pair.drain()


FAULTS: dict[str, tuple[list[bytes], int, str]] = {
    # name: (packets, error code, reason) -- the server's verdict on aioquic's own path
    "unknown frame type": ([_varint(0x3F)], 0x07, "Unknown frame type"),
    "frame type cut short": ([bytes([0x01, 0x40])], 0x07, "Malformed frame type"),  # PING, half
    "STREAM shorter than its length": (
        [bytes([0x0A, 0x00, 0x05]) + b"ab"],
        0x07,
        "Failed to parse frame",
    ),
    "offset + length past 2^62": (
        [bytes([0x0E, 0x00]) + _varint(2**62 - 2) + _varint(4) + b"abcd"],
        0x07,
        "offset + length cannot exceed 2^62 - 1",
    ),
    "over the stream's credit": ([_stream(0, 512 * KIB, b"x")], 0x03, "Over stream data limit"),
    "on the server's own unidirectional stream": (
        [_stream(3, 0, b"x")],
        0x05,
        "Stream is send-only",
    ),
    "on a bidirectional stream the server never opened": (
        [_stream(1, 0, b"x")],
        0x05,
        "Wrong stream initiator",
    ),
    "a second FIN that moves the final size": (
        [_stream(0, 0, b"hello", fin=True), _stream(0, 0, b"hel", fin=True)],
        0x06,
        "Cannot change final size",
    ),
}


def _verdict(certs: Certs, packets: list[bytes]) -> tuple[int, str, bytes]:
    pair = _pair(certs)
    for payload in packets:
        _send_plain(pair, payload)
    pair.run_until(lambda: pair.client_got(events.ConnectionTerminated), max_rounds=200)
    closed = next(e for e in pair.client_events if isinstance(e, events.ConnectionTerminated))
    return closed.error_code, closed.reason_phrase, _server_bytes(pair, 0)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_faulty_frame_closes_the_connection_as_aioquic_does(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    packets, code, reason = FAULTS[fault]
    if not COMPILED:
        pytest.skip(f"not built: {build.BUILDER}")
    counted = Counted(build.fast_receive)
    monkeypatch.setattr(build, "fast_receive", counted)
    fast = _verdict(certs, packets)
    assert counted.took >= len(packets)  # the faulty packets went the compiled way
    monkeypatch.setattr(build, "fast_receive", None)
    control = _verdict(certs, packets)
    assert fast == control
    assert fast[:2] == (code, reason)


def test_stream_frames_out_of_order_and_repeated_arrive_once_in_order(
    certs: Certs, path: Counted | None
) -> None:
    pair = _pair(certs)
    chunks = [bytes([n]) * 100 for n in range(8)]
    order = [3, 0, 0, 5, 1, 2, 7, 4, 6, 2]  # gaps, a duplicate, a retransmission
    for n in order:
        last = n == 7
        _send_plain(pair, _stream(0, 100 * n, chunks[n], fin=last))
    assert _server_bytes(pair, 0) == b"".join(chunks)
    ends = [e for e in pair.server_events if isinstance(e, events.StreamDataReceived)]
    assert ends[-1].end_stream and not any(e.end_stream for e in ends[:-1])


def test_bytes_waiting_behind_a_hole_earn_credit_up_to_three_windows(
    certs: Certs, path: Counted | None
) -> None:
    """A lost packet leaves a hole the tunnel cannot read past: the bytes behind it are
    credited as if consumed (up to 3 windows), so the sender is not stopped one window past
    the hole for the round trips the retransmission takes (docs/performance.md)."""
    pair = _pair(certs)
    window, chunk = SETTINGS.stream_window, 1000
    pair.on_server_data = None  # stream 4 below: delivered, never consumed
    for offset in range(0, window - chunk + 1, chunk):
        _send_plain(pair, _stream(4, offset, b"y" * chunk))

    def limit(stream_id: int) -> int:
        pair.server.datagrams_to_send(now=pair.now)  # settles credit, as a send pass does
        return int(pair.server._streams[stream_id].max_stream_data_local)

    assert limit(4) == window  # held in order (a stalled reader): no more credit
    pair.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
    end = chunk
    while end + chunk <= min(limit(0), 3 * window):  # everything but the first chunk
        _send_plain(pair, _stream(0, end, b"x" * chunk))
        end += chunk
    assert end >= 3 * window - chunk  # far past the stream's own window
    assert limit(0) <= 4 * window
    assert _server_bytes(pair, 0) == b""
    _send_plain(pair, _stream(0, 0, b"x" * chunk))  # the retransmission fills the hole
    assert _server_bytes(pair, 0) == b"x" * end
    if path is not None:
        assert path.took >= end // chunk  # the stream frames went the compiled way
