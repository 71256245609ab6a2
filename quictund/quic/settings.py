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
    max_streams: int = 16384
    engine: EngineName = "aioquic"
    send_budget: int = 16 * 1024 * 1024  # per connection, enforced by the session
