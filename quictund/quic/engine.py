"""The one seam between quictund and its QUIC engines: pick one per listener, same names for both.

``quic-engine = "aioquic"`` (the default, ``engine_aioquic.py``) or ``"qh3"`` (``engine_qh3.py``,
an optional extra: ``pip install 'quictund[qh3]'``).  Only those two modules reach into an
engine's internals; everything else sees ``EngineConnection`` below, aioquic's event classes
(the qh3 adapter hands out the same ones) and the engine-neutral wire helpers at the end.

Both adapters close the same gaps (docs/design.md, "Engine gaps"): consumption-based receive
credit, an observable send backlog (``unsent``), thousands of concurrent peer streams, idle
streams that cost nothing per packet, no pacer that breaks on uvloop's 1 ms clock, client
certificates verified in the handshake, key pinning, ``stats()``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Protocol

from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509

from quictund.errors import ConfigError
from quictund.policy.identity import Identity
from quictund.quic.settings import ALPN, ALPN_QUICTUND, ENGINES, EngineName, EngineSettings

__all__ = [
    "ALPN",
    "ALPN_QUICTUND",
    "ENGINES",
    "EngineConnection",
    "EngineName",
    "EngineSettings",
    "QuicConfiguration",
    "QuicHeader",
    "QuicPacketType",
    "StreamReclaimed",
    "engine_available",
    "events",
    "make_configuration",
    "new_connection",
    "parse_header",
    "retry",
    "with_datagram_size",
    "require_engine",
    "supported_versions",
    "version_negotiation",
]


@dataclasses.dataclass
class StreamReclaimed(events.StreamReset):
    """The engine reset a stalled tunnel's stream to take back the memory its parked bytes
    held (docs/design.md, "Reclaiming stalled tunnels' memory"): both halves are already
    reset and its buffers freed; the tunnel ends as for a peer's reset, and says why."""

    held: int = 0
    stalled_s: float = 0.0


class QuicConfiguration(Protocol):
    """What quictund reads from an engine's configuration object (built by make_configuration)."""

    supported_versions: list[int]
    max_datagram_size: int
    cafile: str | None
    server_name: str | None


class EngineConnection(Protocol):
    """One QUIC connection as the session drives it (aioquic's API shape plus the gap closers).

    ``next_event`` returns aioquic's event classes for either engine.  ``consume`` /
    ``release`` implement consumption-based credit; call ``session.transmit_soon()`` after
    them, and process events again when ``events_ready`` says a consume released some.
    """

    host_cid: bytes

    def connect(self, addr: Any, now: float) -> None: ...
    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> events.QuicEvent | None: ...
    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int) -> None: ...
    def stop_stream(self, stream_id: int, error_code: int) -> None: ...
    def send_ping(self, uid: int) -> None: ...
    def change_connection_id(self) -> None: ...
    def close(
        self, error_code: int = ..., frame_type: int | None = ..., reason_phrase: str = ...
    ) -> None: ...
    def open_stream(self) -> int: ...
    def unsent(self, stream_id: int) -> int: ...
    def sent_streams(self) -> set[int] | None: ...
    def consume(self, stream_id: int, count: int) -> None: ...
    def release(self, stream_id: int) -> None: ...
    def is_released(self, stream_id: int) -> bool: ...
    def stats(self) -> dict[str, float | int]: ...
    def send_datagram(self, data: bytes) -> bool: ...
    def datagram_room(self) -> int: ...
    @property
    def is_client(self) -> bool: ...
    @property
    def is_closed(self) -> bool: ...
    @property
    def held_bytes(self) -> int: ...
    @property
    def bytes_in_flight(self) -> int: ...
    @property
    def events_ready(self) -> bool: ...
    @property
    def peer_certificate(self) -> x509.Certificate | None: ...
    @property
    def peer_identity(self) -> Identity: ...


def engine_available(name: str) -> bool:
    """True if engine ``name`` can be imported here (aioquic always can)."""
    if name == "aioquic":
        return True
    return name == "qh3" and importlib.util.find_spec("qh3") is not None


def require_engine(name: str) -> None:
    """Raise a one-line ``ConfigError`` when engine ``name`` is unknown or not installed."""
    if name not in ENGINES:
        raise ConfigError(f"unknown quic-engine {name!r}; known: {', '.join(ENGINES)}")
    if not engine_available(name):
        raise ConfigError(
            f'quic-engine = "{name}" needs the {name} package: '
            f"pip install 'quictund[{name}]' (or {name}>=2.1,<3)"
        )


def make_configuration(
    *,
    is_client: bool,
    settings: EngineSettings,
    server_name: str | None = None,
    verify: bool = True,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> Any:
    """Build ``settings.engine``'s configuration for one endpoint (TLS 1.3; ALPN ``quictund/1``
    then ``quic-tun``, and DATAGRAM frames accepted, for UDP flows)."""
    kwargs: dict[str, Any] = {
        "is_client": is_client,
        "settings": settings,
        "server_name": server_name,
        "verify": verify,
        "cafile": cafile,
        "certfile": certfile,
        "keyfile": keyfile,
    }
    if settings.engine == "qh3":
        require_engine("qh3")
        from quictund.quic import engine_qh3

        return engine_qh3.make_configuration(**kwargs)
    from quictund.quic import engine_aioquic

    return engine_aioquic.make_configuration(**kwargs)


def with_datagram_size(config: QuicConfiguration, size: int) -> QuicConfiguration:
    """A copy of ``config`` sending datagrams of at most ``size`` bytes (both engines'
    configurations are dataclasses)."""
    copy: QuicConfiguration = dataclasses.replace(config, max_datagram_size=size)  # type: ignore[type-var]
    return copy


def new_connection(
    *,
    configuration: Any,
    settings: EngineSettings,
    client_cafile: str | None = None,
    client_pins: frozenset[str] = frozenset(),
    server_pins: frozenset[str] = frozenset(),
    original_destination_connection_id: bytes | None = None,
    retry_source_connection_id: bytes | None = None,
) -> EngineConnection:
    """A connection of ``settings.engine`` (a server passes the client's first DCID, and
    after a Retry the connection id it chose for the Retry)."""
    kwargs: dict[str, Any] = {
        "configuration": configuration,
        "settings": settings,
        "client_cafile": client_cafile,
        "client_pins": client_pins,
        "server_pins": server_pins,
    }
    if original_destination_connection_id is not None:
        kwargs["original_destination_connection_id"] = original_destination_connection_id
    if retry_source_connection_id is not None:
        kwargs["retry_source_connection_id"] = retry_source_connection_id
    if settings.engine == "qh3":
        from quictund.quic import engine_qh3

        return engine_qh3.Qh3Connection(**kwargs)
    from quictund.quic import engine_aioquic

    return engine_aioquic.AioquicConnection(**kwargs)


# ---- engine-neutral wire helpers (the server demux runs them before any engine is involved)


def supported_versions(config: QuicConfiguration) -> list[int]:
    return [int(v) for v in config.supported_versions]


def short_header_cid(data: bytes, cid_length: int) -> bytes | None:
    """The destination connection id of a 1-RTT (short header) packet, read without parsing
    the header; None for anything else.  Nearly every datagram of an established connection
    is one: ``parse_header`` for each cost a server ~6 % of its CPU under bulk receive."""
    if len(data) > cid_length and data[0] & 0xC0 == 0x40:  # short header, fixed bit set
        return data[1 : 1 + cid_length]
    return None


def parse_header(data: bytes, cid_length: int) -> QuicHeader:
    """Parse a datagram's first QUIC header; raises ``ValueError`` on garbage."""
    return pull_quic_header(Buffer(data=data), host_cid_length=cid_length)


def retry(header: QuicHeader, source_cid: bytes, token: bytes) -> bytes:
    """A Retry packet answering ``header``'s Initial (RFC 9000 §8.1)."""
    assert header.version is not None  # long header: the caller checked it is an Initial
    return encode_quic_retry(
        version=header.version,
        source_cid=source_cid,
        destination_cid=header.source_cid,
        original_destination_cid=header.destination_cid,
        retry_token=token,
    )


def version_negotiation(header: QuicHeader, versions: list[int]) -> bytes:
    return encode_quic_version_negotiation(
        source_cid=header.destination_cid,
        destination_cid=header.source_cid,
        supported_versions=versions,
    )
