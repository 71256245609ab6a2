"""The compiled ACK path (quictund/quic/_aioquic_ack.pyx) does what the Python it replaces does.

Scenarios run on two in-memory aioquic pairs with the same fake clock and data: one with the
compiled ``handle_ack`` in front of aioquic's ``_handle_ack_frame`` (as the daemon runs) and
one without it (aioquic's handler, the adapter's ``ReorderingRecovery`` and BBR's wrapper: the
control).  Every packet, every timer and the recovery state must be equal (helpers of
tests/test_engine_transmit.py), and so must what the reordering window learnt: losses declared,
spurious ones found, its thresholds.  The scenarios make each branch happen: packets declared
lost by count and by time, late packets acknowledged after they were declared lost, holes
filled late, and a packet acknowledged far ahead of sixteen others (not an RTT sample).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from aioquic.buffer import Buffer, BufferReadError
from aioquic.quic.connection import QuicConnectionError, QuicReceiveContext
from aioquic.quic.packet import QuicFrameType
from aioquic.tls import Epoch

from quictund.quic import engine_aioquic_build as build
from tests.engine_pair import KIB, Certs, Pair, make_certs
from tests.test_engine_send import SETTINGS, Recorded, _bulk, _request_response
from tests.test_engine_transmit import Timed, _state

COMPILED = build.fast_ack is not None
if os.environ.get("CI") == "true" and not os.environ.get(build.PURE_ENV):
    assert COMPILED, f"CI builds the compiled ACK path: {build.BUILDER}"

pytestmark = pytest.mark.skipif(not COMPILED, reason=f"not built: {build.BUILDER}")

CLIENT = ("1.2.3.4", 1234)
SERVER = ("2.3.4.5", 4433)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("ack-certs"))


def _window(conn: Any) -> dict[str, Any]:
    """What loss recovery learnt.  BBR's delivered count includes the handshake, whose server
    flight varies by a byte or two between runs (see _state): the client's only."""
    loss = conn._loss
    win = loss.window(conn._spaces[Epoch.ONE_RTT])
    return {
        "lost": conn.packets_lost,
        "spurious": win.spurious,
        "packet_threshold": win.packet_threshold,
        "mult": win.mult,
        "persist": (win._persist, win._reordered_this_round, win._grew_this_round),
        "rtt": (loss._rtt_latest, loss._rtt_min, loss._rtt_variance),
        "pto_count": loss._pto_count,
        "bbr_delivered": loss._cc.model.delivered if conn.is_client else None,
        "bbr_rtt": (loss._cc.model.min_rtt, loss._cc.model._recent_rtt),
    }


class Counted:
    """``build.fast_ack`` that counts the frames it took and declined (None: it always
    declines, so aioquic's handler runs: the control)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.took = 0
        self.declined = 0

    def __call__(self, *args: Any) -> bool:
        taken = self.inner is not None and bool(self.inner(*args))
        if taken:
            self.took += 1
        else:
            self.declined += 1
        return taken


class Traced(Timed):
    """A timed pair that also keeps every RTT sample either side's BBR was given: a packet
    that jumped ahead must not be one, and BBR's own filter would hide it in its state."""

    def __init__(self, certs: Certs) -> None:
        super().__init__(certs, SETTINGS)
        self.samples: list[tuple[float, float]] = []
        for conn in (self.pair.client, self.pair.server):
            cc = conn._loss._cc
            cc.model = _Recording(cc.model, self.samples)


class _Recording:
    """A BBR model (Python or compiled) that records the RTT samples it is given."""

    def __init__(self, model: Any, samples: list[tuple[float, float]]) -> None:
        self._model = model
        self._samples = samples

    def on_rtt(self, now: float, rtt: float) -> None:
        self._samples.append((now, rtt))
        self._model.on_rtt(now, rtt)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _twice(
    certs: Certs, monkeypatch: pytest.MonkeyPatch, scenario: Callable[[Pair], None]
) -> tuple[Traced, Traced, Counted]:
    runs = []
    counted = Counted(build.fast_ack)
    for fast in (counted, Counted(None)):
        monkeypatch.setattr(build, "fast_ack", fast)
        random.seed(7)
        rec = Traced(certs)
        rec.packets.clear()
        rec.timers.clear()
        scenario(rec.pair)
        runs.append(rec)
    return runs[0], runs[1], counted


def _same(fast: Traced, control: Traced, counted: Counted) -> None:
    assert fast.packets == control.packets
    assert fast.timers == control.timers
    assert fast.samples == control.samples
    for name in ("client", "server"):
        assert _state(fast, name) == _state(control, name), name
        assert _window(getattr(fast.pair, name)) == _window(getattr(control.pair, name)), name
    # every ACK frame after the handshake's few (INITIAL and HANDSHAKE packets) was compiled
    assert counted.took >= 10 and counted.declined <= 4, (counted.took, counted.declined)


def _shuffled(pair: Pair, *, hold: Callable[[int], int | None], rounds: int = 3000) -> None:
    """The client sends 400 KiB; its n-th datagram reaches the server ``hold(n)`` rounds late
    (0: at once; None: never).  Runs until the data is in and nothing is held."""
    stream_id = pair.client.open_stream()
    data = bytes(random.Random(3).randbytes(400 * KIB))
    pair.client.send_stream_data(stream_id, data, end_stream=True)
    sent = 0
    held: list[tuple[int, bytes]] = []  # (round due, datagram)
    got = bytearray()

    def take() -> None:
        while (ev := pair.server.next_event()) is not None:
            if getattr(ev, "data", None):
                got.extend(ev.data)
                pair.server.consume(ev.stream_id, len(ev.data))

    for r in range(rounds):
        if len(got) == len(data) and not held:
            break
        for datagram, _addr in pair.client.datagrams_to_send(now=pair.now):
            sent += 1
            late = hold(sent)
            if late:
                held.append((r + late, datagram))
            elif late is None:
                pass  # lost
            else:
                pair.server.receive_datagram(datagram, CLIENT, now=pair.now)
        for _due, datagram in [h for h in held if h[0] <= r]:
            pair.server.receive_datagram(datagram, CLIENT, now=pair.now)
        held = [h for h in held if h[0] > r]
        take()
        for datagram, _addr in pair.server.datagrams_to_send(now=pair.now):
            pair.client.receive_datagram(datagram, SERVER, now=pair.now)
        while pair.client.next_event() is not None:
            pass
        pair.now += 0.001
        for conn in (pair.client, pair.server):
            timer = conn.get_timer()
            if timer is not None and timer <= pair.now:
                conn.handle_timer(now=pair.now)
    assert bytes(got) == data


def test_a_bulk_transfer_acks_as_aioquic_does(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, control, counted = _twice(certs, monkeypatch, _bulk)
    _same(fast, control, counted)


def test_request_response_acks_as_aioquic_does(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, control, counted = _twice(certs, monkeypatch, _request_response)
    _same(fast, control, counted)


def test_late_packets_found_spurious_as_aioquic_finds_them(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every 13th datagram 4 ms (4 RTTs) late: declared lost, then acknowledged after all:
    # spurious losses widen the window
    fast, control, counted = _twice(
        certs, monkeypatch, lambda p: _shuffled(p, hold=lambda n: 4 if n % 13 == 0 else 0)
    )
    _same(fast, control, counted)
    window = _window(fast.pair.client)
    assert window["lost"] > 0 and window["spurious"] > 0
    assert window["packet_threshold"] > 3 or window["mult"] > 0


def test_a_packet_far_ahead_is_no_rtt_sample_as_before(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runs of 20 datagrams held 2 ms while the 21st goes ahead: its ACK leaves 20 holes
    fast, control, counted = _twice(
        certs, monkeypatch, lambda p: _shuffled(p, hold=lambda n: 2 if 40 < n % 100 <= 60 else 0)
    )
    _same(fast, control, counted)


def test_real_loss_is_declared_as_aioquic_declares_it(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every 9th datagram never arrives (held for ever: past the end of the scenario)
    fast, control, counted = _twice(
        certs, monkeypatch, lambda p: _shuffled(p, hold=lambda n: None if n % 9 == 0 else 0)
    )
    _same(fast, control, counted)
    assert _window(fast.pair.client)["lost"] > 20


@pytest.mark.parametrize(
    "frame",
    [
        bytes([0x05, 0x00, 0x00, 0x07]),  # first range below packet number 0
        bytes([0x40, 0x20, 0x00, 0x01, 0x00]),  # a second range announced, not there
        bytes([0x05, 0x00]),  # cut short
        bytes([0x05, 0x00, 0x01, 0x01, 0x05, 0x00]),  # the second range below 0
    ],
)
def test_a_malformed_ack_is_left_to_aioquic_untouched(certs: Certs, frame: bytes) -> None:
    pair = Recorded(certs).pair
    pair.pump()
    conn = pair.client
    context = QuicReceiveContext(
        epoch=Epoch.ONE_RTT,
        host_cid=conn.host_cid,
        network_path=conn._network_paths[0],
        quic_logger_frames=None,
        time=pair.now,
        version=conn._version,
    )
    buf = Buffer(data=frame)
    assert build.fast_ack is not None
    assert build.fast_ack(conn, context, QuicFrameType.ACK, buf) is False
    assert buf.tell() == 0
    # and aioquic's own handler refuses it (the connection closes with its error)
    with pytest.raises((QuicConnectionError, BufferReadError)):
        conn._handle_ack_frame(context, QuicFrameType.ACK, buf)
