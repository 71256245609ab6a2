"""Engine-neutral QUIC settings: what a listener asks of whichever engine runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from quictund.quic.quic_lb import CidSource

ALPN = "quic-tun"
# Offered first by quictund (docs/design.md, "UDP flows"): a peer that selects it takes UDP
# flows in DATAGRAM frames; a quic-tun peer selects ALPN and still gets TCP tunnels.
ALPN_QUICTUND = "quictund/1"
ALPNS = [ALPN_QUICTUND, ALPN]
# Our max_datagram_frame_size transport parameter (RFC 9221): any frame a packet can carry.
MAX_DATAGRAM_FRAME = 65535
# DATAGRAM frames waiting for congestion window, per connection; beyond it the oldest is dropped.
DATAGRAM_QUEUE = 256

EngineName = Literal["aioquic", "qh3"]
ENGINES: tuple[EngineName, ...] = ("aioquic", "qh3")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The engine knobs a listener sets (validated upstream in config.py)."""

    idle_timeout_s: float = 30.0
    max_datagram_size: int = 1452
    congestion_control: str = "bbr"  # aioquic only: qh3's controller is built into its core
    stream_window: int = 2 * 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    # What one connection may hold in receive memory: undrained tunnel data plus reassembly
    # buffers, gaps counted as what they span (docs/security.md, "Receive memory").
    receive_budget: int = 32 * 1024 * 1024
    # A stream's first window; None: credit.INITIAL_STREAM_WINDOW (not a config key: tests set
    # it to stream_window for a fixed window per stream).
    initial_stream_window: int | None = None
    max_streams: int = 16384
    # reset a tunnel whose app drained nothing this long once others need its memory; 0: never
    reclaim_stalled_after_s: float = 1.0
    engine: EngineName = "aioquic"
    # server: where connection ids come from, when not random: QUIC-LB routable ids, and/or
    # ids that name a worker (quic/steering.py); aioquic only
    quic_lb: CidSource | None = None
    send_budget: int = 16 * 1024 * 1024  # per connection, enforced by the session
    # server: stateless reset tokens are HMAC(reset_key, cid) (quic/stateless_reset.py)
    reset_key: bytes | None = field(default=None, repr=False)
