"""Engine-neutral QUIC settings: what a listener asks of whichever engine runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ALPN = "quic-tun"

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
    engine: EngineName = "aioquic"
    send_budget: int = 16 * 1024 * 1024  # per connection, enforced by the session
