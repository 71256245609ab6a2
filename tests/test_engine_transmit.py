"""The compiled send pass and timer (quictund/quic/_aioquic_transmit.pyx) do what aioquic does.

Each scenario of tests/test_engine_send.py runs on two in-memory aioquic pairs with the same
fake clock and data: one with the compiled ``datagrams_to_send`` and ``get_timer`` in front of
aioquic's (as the daemon runs) and one without them (aioquic's own methods, the control).  Both
have the compiled packet writer, so the packets must be equal byte for byte; so must every
timer either side asked for, in order, and the loss-recovery state each side ends with (what
was sent and is in flight, the RTT, the congestion window, the idle deadline).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from aioquic import tls as aioquic_tls

from quictund.quic import engine_aioquic_build as build
from quictund.quic.engine import EngineSettings
from tests.engine_pair import KIB, Certs, Pair, make_certs
from tests.test_engine_send import (
    CREDIT_BOUND,
    SETTINGS,
    Recorded,
    _bulk,
    _credit_bound,
    _lossy,
    _request_response,
)

COMPILED = build.fast_transmit is not None
if os.environ.get("CI") == "true" and not os.environ.get(build.PURE_ENV):
    assert COMPILED, f"CI builds the compiled send pass: {build.BUILDER}"

pytestmark = pytest.mark.skipif(not COMPILED, reason=f"not built: {build.BUILDER}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("transmit-certs"))


class Counted:
    """A compiled function that counts the calls it took and declined (None: it always
    declines, so aioquic's own method runs: the control)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.took = 0
        self.declined = 0

    def __call__(self, *args: Any) -> Any:
        result = None if self.inner is None else self.inner(*args)
        if result is None:
            self.declined += 1
        else:
            self.took += 1
        return result


class Timed(Recorded):
    """A recorded pair that also keeps every timer each side computed, in order."""

    def __init__(self, certs: Certs, settings: EngineSettings) -> None:
        super().__init__(certs, settings)
        self.timers: list[tuple[str, float | None]] = []
        self.sent_before: dict[str, int] = {}
        for name in ("client", "server"):
            conn = getattr(self.pair, name)
            self.sent_before[name] = conn._network_paths[0].bytes_sent
            inner = conn.get_timer

            def get_timer(name: str = name, inner: Callable[[], Any] = inner) -> Any:
                at = inner()
                self.timers.append((name, at))
                return at

            conn.get_timer = get_timer


def _state(rec: Timed, name: str) -> dict[str, Any]:
    """What the send passes and the timers left behind in a connection and its recovery.

    The server's handshake flight varies by a byte or two from run to run (an ECDSA
    signature is 70 to 72 bytes), and BBR's window grows by the bytes acknowledged: so bytes
    are counted from the end of the handshake, and the server's window (it sends little
    besides ACKs) is left out."""
    conn = getattr(rec.pair, name)
    loss = conn._loss
    space = conn._spaces[aioquic_tls.Epoch.ONE_RTT]
    return {
        "packet_number": conn._packet_number,
        "sent": sorted(space.sent_packets),
        "sent_times": [p.sent_time for p in space.sent_packets.values()],
        "ack_eliciting_in_flight": space.ack_eliciting_in_flight,
        "bytes_in_flight": loss._cc.bytes_in_flight,
        "cwnd": loss._cc.congestion_window if name == "client" else None,
        "srtt": loss._rtt_smoothed,
        "last_ack_eliciting": loss._time_of_last_sent_ack_eliciting_packet,
        "close_at": conn._close_at,
        "loss_at": conn._loss_at,
        "pacing_at": conn._pacing_at,
        "bytes_sent": conn._network_paths[0].bytes_sent - rec.sent_before[name],
    }


def _twice(
    certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Pair], None],
    settings: EngineSettings = SETTINGS,
) -> tuple[Timed, Timed, Counted, Counted]:
    runs = []
    transmit, timer = Counted(build.fast_transmit), Counted(build.fast_timer)
    for fast in ((transmit, timer), (Counted(None), Counted(None))):
        monkeypatch.setattr(build, "fast_transmit", fast[0])
        monkeypatch.setattr(build, "fast_timer", fast[1])
        random.seed(7)
        rec = Timed(certs, settings)
        rec.packets.clear()
        rec.timers.clear()
        scenario(rec.pair)
        runs.append(rec)
    return runs[0], runs[1], transmit, timer


def _same(fast: Timed, control: Timed) -> None:
    assert fast.packets == control.packets
    assert fast.timers == control.timers
    for name in ("client", "server"):
        assert _state(fast, name) == _state(control, name), name


def _mostly_compiled(transmit: Counted, timer: Counted) -> None:
    """Every call after the handshake's last few was the compiled one's."""
    assert transmit.took > 10 * max(transmit.declined, 1), (transmit.took, transmit.declined)
    assert timer.took > 10 * max(timer.declined, 1), (timer.took, timer.declined)


@pytest.mark.parametrize(
    ("scenario", "settings"),
    [
        (_bulk, SETTINGS),
        (_request_response, SETTINGS),
        (_lossy, SETTINGS),  # retransmissions, loss timers
        (_credit_bound, CREDIT_BOUND),  # sending up to the connection's credit
    ],
    ids=["bulk", "request-response", "lossy", "credit-bound"],
)
def test_send_passes_and_timers_are_aioquics(
    certs: Certs,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[Pair], None],
    settings: EngineSettings,
) -> None:
    fast, control, transmit, timer = _twice(certs, monkeypatch, scenario, settings)
    assert len(fast.packets) > 50
    _same(fast, control)
    _mostly_compiled(transmit, timer)


def test_the_uncommon_cases_are_left_to_aioquic(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    transmit, timer = Counted(build.fast_transmit), Counted(build.fast_timer)
    monkeypatch.setattr(build, "fast_transmit", transmit)
    monkeypatch.setattr(build, "fast_timer", timer)
    pair = Recorded(certs).pair
    pair.pump()
    took = transmit.took
    assert took > 0  # established: compiled
    # a path being validated (the client moved): aioquic's methods, which probe it
    pair.server._network_paths[0].is_validated = False
    declined = transmit.declined, timer.declined
    pair.server.datagrams_to_send(now=pair.now)
    pair.server.get_timer()
    assert (transmit.declined, timer.declined) == (declined[0] + 1, declined[1] + 1)
    pair.server._network_paths[0].is_validated = True
    # closing: aioquic's method writes CONNECTION_CLOSE
    pair.client.close(error_code=0, reason_phrase="bye")
    declined = transmit.declined
    out = pair.client.datagrams_to_send(now=pair.now)
    assert transmit.declined == declined + 1
    assert out  # the close went out
    for data, _addr in out:
        pair.server.receive_datagram(data, ("1.2.3.4", 1234), now=pair.now)
    assert pair.server.is_closed  # it took the close: draining


def test_the_timer_is_aioquics_in_every_state_it_reads(certs: Certs) -> None:
    # The pair's scenarios rarely pace or lose by time; set each input of aioquic's get_timer
    # in turn on a live connection and ask both.
    from aioquic.quic.connection import QuicConnection

    pair = Recorded(certs).pair
    stream_id = pair.client.open_stream()
    pair.client.send_stream_data(stream_id, bytes(64 * KIB))
    pair.step()
    conn = pair.client
    space = conn._spaces[aioquic_tls.Epoch.ONE_RTT]
    loss = conn._loss
    assert build.fast_timer is not None

    def both() -> tuple[Any, Any]:
        fast = build.fast_timer(conn)
        fast_loss_at = conn._loss_at
        conn._loss_at = "unset"
        own = QuicConnection.get_timer(conn)
        return (fast, fast_loss_at), (own, conn._loss_at)

    checks = [
        ("as it is", space, "ack_at", space.ack_at),
        ("an ACK due", space, "ack_at", pair.now + 0.0003),
        ("paced", conn, "_pacing_at", pair.now + 0.0001),
        ("a loss time", space, "loss_time", pair.now + 0.0002),
        ("backed off", loss, "_pto_count", 3),
        ("nothing in flight", space, "ack_eliciting_in_flight", 0),
        ("no RTT yet", loss, "_rtt_initialized", False),
        ("idle soon", conn, "_close_at", pair.now + 0.00005),
    ]
    seen = set()
    for label, obj, attr, value in checks:  # each on its own, from the state as it is
        kept = getattr(obj, attr)
        setattr(obj, attr, value)
        fast, own = both()
        setattr(obj, attr, kept)
        assert fast == own, label
        seen.add(fast[0])
    assert len(seen) == len(checks)  # each input really moved the timer
