"""aioquic glue for the engine-independent congestion pieces: BBR and the 1 ms-clock pacer.

``register_congestion_control("bbr", …)`` is aioquic's public hook; it calls the controller per
packet (sent, acked, lost, expired) and per RTT sample but has no "ACK frame done" call, which
BBR needs to take one delivery-rate sample per ACK.  :func:`install` adds it by wrapping the
recovery object's ``on_ack_received`` (private), and swaps aioquic's pacer (private, broken on
uvloop's clock) for :class:`quictund.quic.pacing.Pacer`, which paces only when the controller
publishes a ``pacing_rate`` -- BBR does, cubic and reno do not and stay unpaced (their cwnd
bounds bursts) as before.

Per-packet state for delivery-rate sampling rides on aioquic's ``QuicSentPacket`` as an extra
attribute, so it lives and dies with the packet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketRecovery

from quictund.quic import engine_aioquic_build as build
from quictund.quic.bbr import Bbr, SentState
from quictund.quic.pacing import Pacer

_STATE = "quictund_cc_state"


class BbrCongestionControl(QuicCongestionControl):
    """aioquic face of :class:`quictund.quic.bbr.Bbr`."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        model = build.bbr_model or Bbr  # the compiled one (_bbr.pyx) once installed
        self.model: Bbr = model(max_datagram_size=max_datagram_size)
        self.congestion_window = self.model.cwnd

    @property
    def pacing_rate(self) -> float | None:
        return self.model.pacing_rate

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        size = packet.sent_bytes
        state = self.model.on_sent(packet.sent_time or 0.0, self.bytes_in_flight, size)
        setattr(packet, _STATE, state)
        self.bytes_in_flight += size

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        state: SentState | None = getattr(packet, _STATE, None)
        if state is not None:
            self.model.on_acked(now, packet.sent_bytes, state)

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self.model.on_lost(packet.sent_bytes)

    def on_persistent_congestion(self) -> None:
        self.model.on_persistent_congestion()
        self.congestion_window = self.model.cwnd

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        self.model.on_rtt(now, rtt)

    def on_ack_done(self, now: float) -> None:
        self.model.on_ack_done(now, self.bytes_in_flight)
        self.congestion_window = self.model.cwnd

    def on_app_limited(self) -> None:
        self.model.on_app_limited(self.bytes_in_flight)

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data["bbr_mode"] = self.model.mode.value
        data["btl_bw"] = self.model.btl_bw
        return data


register_congestion_control("bbr", BbrCongestionControl)


class EnginePacer:
    """Stands in for aioquic's ``QuicPacketPacer`` (same three methods)."""

    __slots__ = ("_cc", "_mds", "pacer")

    def __init__(self, cc: QuicCongestionControl, max_datagram_size: int) -> None:
        self._cc = cc
        self._mds = max_datagram_size
        self.pacer = Pacer(max_datagram_size=max_datagram_size)

    def next_send_time(self, now: float) -> float | None:
        self.pacer.rate = getattr(self._cc, "pacing_rate", None)
        return self.pacer.next_send_time(now)

    def update_after_send(self, now: float) -> None:
        # aioquic does not say how big the packet was; count a full one (a slight under-pace
        # for small packets, never a burst)
        self.pacer.on_sent(self._mds)

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        return None  # the rate comes from the controller at each send


def install(loss: QuicPacketRecovery, max_datagram_size: int) -> None:
    """Replace aioquic's pacer (BBR's once-per-ACK call is made by
    ``aioquic_recovery.ReorderingRecovery.on_ack_received``)."""
    loss._pacer = EnginePacer(loss._cc, max_datagram_size)  # type: ignore[assignment]


def note_app_limited(loss: QuicPacketRecovery, max_datagram_size: int) -> None:
    """After a transmit that stopped with the window open: the sender is app-limited."""
    cc = loss._cc
    if isinstance(cc, BbrCongestionControl) and (
        cc.bytes_in_flight + max_datagram_size <= cc.congestion_window
    ):
        cc.on_app_limited()
