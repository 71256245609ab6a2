"""Listener definitions as pydantic models (the TOML format and the quic-tun flags share them).

Field aliases are quic-tun's flag names (``listen-on``, ``token-source``, …) so a quic-tun user
recognises them; unknown keys are refused (``extra="forbid"``) so typos fail loudly.  Durations
end in ``_s`` and are written in seconds.  Every model is frozen: a reload builds new ones and
compares them to decide which listeners changed.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from quictund.config.quic_lb import QuicLbKnobs
from quictund.policy.addresses import HostPort, StreamAddress, parse_host_port, parse_stream_address
from quictund.quic.settings import ENGINES, EngineName, EngineSettings

_AS_STR = PlainSerializer(str, return_type=str, when_used="json")

KiB = 1024
MiB = 1024 * KiB


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class QuicKnobs(_Model):
    """QUIC settings shared by both roles; the defaults are documented in docs/configuration.md."""

    idle_timeout_s: Annotated[float, Field(alias="idle-timeout", gt=0, le=600)] = 30.0
    keep_alive_s: Annotated[float, Field(alias="keep-alive", ge=0, le=300)] = 5.0
    dead_after_s: Annotated[float, Field(alias="dead-after", gt=0, le=600)] = 15.0
    handshake_timeout_s: Annotated[float, Field(alias="handshake-timeout", gt=0, le=120)] = 10.0
    congestion_control: Annotated[
        Literal["bbr", "cubic", "reno"], Field(alias="congestion-control")
    ] = "bbr"
    max_datagram_size: Annotated[int, Field(alias="max-datagram-size", ge=1200, le=1452)] = 1452
    stream_window: Annotated[int, Field(alias="stream-window", ge=64 * KiB, le=64 * MiB)] = 2 * MiB
    connection_window: Annotated[
        int, Field(alias="connection-window", ge=256 * KiB, le=1024 * MiB)
    ] = 16 * MiB
    connection_receive_budget: Annotated[
        int, Field(alias="connection-receive-budget", ge=1 * MiB, le=4096 * MiB)
    ] = 32 * MiB
    max_tunnels: Annotated[int, Field(alias="max-tunnels", ge=1, le=1_000_000)] = 16384
    # A tunnel whose app drained nothing for this long is reset when other tunnels of its
    # connection need the memory it holds (docs/design.md, "Reclaiming stalled tunnels'
    # memory"); 0: never (a WARNING).
    reclaim_stalled_after_s: Annotated[
        float, Field(alias="reclaim-stalled-after", ge=0, le=3600)
    ] = 1.0
    # What one connection's tunnels may queue unsent in total (quic/send_budget.py); at least
    # one tunnel's own 1 MiB mark, so a lone bulk tunnel is never slowed by it.
    connection_send_budget: Annotated[
        int, Field(alias="connection-send-budget", ge=1 * MiB, le=1024 * MiB)
    ] = 16 * MiB
    socket_buffer: Annotated[int, Field(alias="socket-buffer", ge=64 * KiB, le=256 * MiB)] = 4 * MiB
    quic_engine: Annotated[EngineName, Field(alias="quic-engine")] = "aioquic"
    # UDP flows (quictund/udpflow): a flow that carried nothing for this long is closed.
    udp_idle_timeout_s: Annotated[float, Field(alias="udp-idle-timeout", gt=0, le=86400)] = 60.0

    @field_validator("quic_engine")
    @classmethod
    def _engine_installed(cls, name: EngineName) -> EngineName:
        from quictund.quic.engine import engine_available

        if not engine_available(name):
            raise ValueError(
                f"the {name} package is not installed: pip install 'quictund[{name}]' "
                f"(known engines: {', '.join(ENGINES)})"
            )
        return name

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            idle_timeout_s=self.idle_timeout_s,
            max_datagram_size=self.max_datagram_size,
            congestion_control=self.congestion_control,
            stream_window=self.stream_window,
            connection_window=self.connection_window,
            receive_budget=self.connection_receive_budget,
            max_streams=self.max_tunnels,
            reclaim_stalled_after_s=self.reclaim_stalled_after_s,
            engine=self.quic_engine,
            send_budget=self.connection_send_budget,
        )


def _stream_address(value: object) -> object:
    if isinstance(value, StreamAddress):
        return value
    if isinstance(value, str):
        return parse_stream_address(value, allow_port_zero=True)
    raise ValueError(f"not a tcp:/unix: address (got {value!r})")


def _host_port(value: object, *, allow_port_zero: bool = False) -> object:
    if isinstance(value, HostPort):
        return value
    if isinstance(value, str):
        return parse_host_port(value, allow_port_zero=allow_port_zero)
    raise ValueError(f"not a host:port address (got {value!r})")


def _host_ports(value: object) -> object:
    """``server-endpoint``: one ``host:port`` string (quic-tun's form) or a list of them."""
    if isinstance(value, str | HostPort):
        return (_host_port(value),)
    if isinstance(value, list | tuple):
        return tuple(_host_port(v) for v in value)
    raise ValueError(f"not a host:port address or a list of them (got {value!r})")


def _endpoints_out(value: tuple[HostPort, ...]) -> str | list[str]:
    return str(value[0]) if len(value) == 1 else [str(v) for v in value]


_ENDPOINTS_OUT = PlainSerializer(_endpoints_out, when_used="json")
_ENDPOINTS_SCHEMA: dict[str, object] = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 64},
    ]
}


def _fingerprint(value: str) -> str:
    """``sha256:`` + standard base64 of a SHA-256 of the SubjectPublicKeyInfo (44 chars)."""
    algo, sep, digest = value.strip().partition(":")
    try:
        raw = base64.b64decode(digest, validate=True) if sep and algo == "sha256" else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            f"not a sha256:BASE64 public-key fingerprint as printed by "
            f"'quictund fingerprint FILE' (got {value!r})"
        )
    return f"sha256:{digest}"


class ClientSettings(QuicKnobs):
    name: str = "client"
    listen_on: Annotated[StreamAddress, Field(alias="listen-on"), _AS_STR] = StreamAddress(
        "tcp", "127.0.0.1", 6500
    )
    # One "host:port" or a list of them (issue 17 §2); a name resolving to several addresses
    # gives one candidate per address (quic/pool.py).  Written back as a string when single.
    server_endpoints: Annotated[
        tuple[HostPort, ...],
        Field(alias="server-endpoint", min_length=1, max_length=64),
        _ENDPOINTS_OUT,
        WithJsonSchema(_ENDPOINTS_SCHEMA),
    ]
    server_endpoint_mode: Annotated[
        Literal["failover", "spread"], Field(alias="server-endpoint-mode")
    ] = "failover"
    failback: bool = False
    server_name: Annotated[str | None, Field(alias="server-name")] = None
    token_source_plugin: Annotated[str, Field(alias="token-source-plugin")] = "Fixed"
    token_source: Annotated[str | None, Field(alias="token-source")] = None
    token_map: Annotated[dict[str, str] | None, Field(alias="token-map")] = None
    token_timeout_s: Annotated[float, Field(alias="token-timeout", gt=0, le=120)] = 5.0
    token_secret_file: Annotated[str | None, Field(alias="token-secret-file")] = None
    token_audience: Annotated[str | None, Field(alias="token-audience")] = None
    token_ttl_s: Annotated[float, Field(alias="token-ttl", gt=0, le=86400)] = 300.0
    cert_file: Annotated[str | None, Field(alias="cert-file")] = None
    key_file: Annotated[str | None, Field(alias="key-file")] = None
    ca_file: Annotated[str | None, Field(alias="ca-file")] = None
    verify_remote_endpoint: Annotated[bool, Field(alias="verify-remote-endpoint")] = True
    server_fingerprint: Annotated[str | None, Field(alias="server-fingerprint")] = None
    connect_wait_s: Annotated[float, Field(alias="connect-wait", ge=0, le=300)] = 10.0
    unix_socket_mode: Annotated[int, Field(alias="unix-socket-mode", ge=0, le=0o777)] = 0o660
    # group owner of a unix: listening socket (the daemon must be a member); None: its own
    unix_socket_group: Annotated[str | None, Field(alias="unix-socket-group", min_length=1)] = (
        None
    )

    _v_listen = field_validator("listen_on", mode="before")(_stream_address)
    _v_pin = field_validator("server_fingerprint")(lambda v: None if v is None else _fingerprint(v))
    _v_server = field_validator("server_endpoints", mode="before")(_host_ports)

    @property
    def server_endpoint(self) -> HostPort:
        """The first (in ``failover`` mode, preferred) server endpoint."""
        return self.server_endpoints[0]

    def server_endpoints_text(self) -> str:
        return ", ".join(str(e) for e in self.server_endpoints)


class AllowFor(_Model):
    """A destination policy for clients whose certificate matches ``identity``."""

    identity: str
    allow: list[str]


class ServerSettings(QuicLbKnobs, QuicKnobs):  # quic-lb-* keys: config_quic_lb.py
    name: str = "server"
    listen_on: Annotated[HostPort, Field(alias="listen-on"), _AS_STR] = HostPort("0.0.0.0", 7500)
    token_parser_plugin: Annotated[str, Field(alias="token-parser-plugin")] = "Cleartext"
    token_parser_key: Annotated[str | None, Field(alias="token-parser-key")] = None
    token_audience: Annotated[str | None, Field(alias="token-audience")] = None
    cert_file: Annotated[str | None, Field(alias="cert-file")] = None
    key_file: Annotated[str | None, Field(alias="key-file")] = None
    ca_file: Annotated[str | None, Field(alias="ca-file")] = None
    verify_remote_endpoint: Annotated[bool, Field(alias="verify-remote-endpoint")] = False
    client_fingerprints: Annotated[list[str] | None, Field(alias="client-fingerprints")] = None
    allow: list[str] | None = None
    allow_for: Annotated[list[AllowFor] | None, Field(alias="allow-for")] = None
    connect_timeout_s: Annotated[float, Field(alias="connect-timeout", gt=0, le=300)] = 10.0
    token_timeout_s: Annotated[float, Field(alias="token-timeout", gt=0, le=300)] = 10.0
    max_connections: Annotated[int, Field(alias="max-connections", ge=1)] = 10000
    # Flood limits (docs/security.md): handshakes in progress, Retry past a threshold,
    # per-source rates of new connections and tunnels, concurrent tunnels per identity.
    max_half_open: Annotated[int, Field(alias="max-half-open", ge=1, le=1_000_000)] = 1000
    retry_threshold: Annotated[int, Field(alias="retry-threshold", ge=0, le=1_000_000)] = 100
    source_connection_rate: Annotated[
        float, Field(alias="source-connection-rate", gt=0, le=1_000_000)
    ] = 20.0
    source_connection_burst: Annotated[
        int, Field(alias="source-connection-burst", ge=1, le=1_000_000)
    ] = 100
    source_tunnel_rate: Annotated[float, Field(alias="source-tunnel-rate", gt=0, le=1_000_000)] = (
        1000.0
    )
    source_tunnel_burst: Annotated[int, Field(alias="source-tunnel-burst", ge=1, le=10_000_000)] = (
        5000
    )
    max_tunnels_per_identity: Annotated[
        int, Field(alias="max-tunnels-per-identity", ge=1, le=10_000_000)
    ] = 65536
    state_dir: Annotated[str | None, Field(alias="state-dir")] = None

    _v_listen = field_validator("listen_on", mode="before")(
        lambda v: _host_port(v, allow_port_zero=True)
    )
    _v_pins = field_validator("client_fingerprints")(
        lambda v: None if v is None else [_fingerprint(p) for p in v]
    )
