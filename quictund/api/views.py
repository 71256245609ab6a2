"""What one tunnel looks like on the API: quic-tun's JSON object, field for field.

``TunnelView`` is an immutable snapshot, so the HTTP layer never touches a live
``TunnelRecord`` that the data plane is mutating.  ``to_json`` is the single place that knows
quic-tun's field names and omission rules, and ``openapi.py`` is tested against it:

* keys in quic-tun's order (``uuid`` ... ``protocolProperties``) plus quictund's ``listener``;
* ``clientAppAddr`` appears on client-endpoint objects only and ``serverAppAddr`` on
  server-endpoint objects only (quic-tun uses ``omitempty``; we key it on the endpoint, so a
  client object always has ``clientAppAddr``, even when a UNIX peer has no name: ``""``);
* ``createdAt`` is RFC 3339 with microseconds and a numeric offset (quic-tun prints Go's
  ``time.String()`` with a monotonic suffix, which no parser accepts);
* send rates are strings ``"%.2f kB/s"`` of bytes per second / 1024, exactly as quic-tun.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from quictund.api.rates import format_rate
from quictund.tunnel.tunnels import TunnelRecord

# The JSON keys of a tunnel object, in output order.  openapi.py's schema must list exactly these.
TUNNEL_KEYS: tuple[str, ...] = (
    "uuid",
    "streamId",
    "endpoint",
    "clientAppAddr",
    "serverAppAddr",
    "remoteEndpointAddr",
    "createdAt",
    "serverTotalBytes",
    "clientTotalBytes",
    "serverSendRate",
    "clientSendRate",
    "protocol",
    "protocolProperties",
    "listener",
    "clientIdentity",
)


@dataclass(frozen=True, slots=True)
class TunnelView:
    """One tunnel as the API reports it (quic-tun's ``tunnel`` struct plus ``listener``)."""

    uuid: str
    stream_id: int
    endpoint: Literal["client", "server"]
    remote_endpoint_addr: str
    created_at: datetime
    listener: str
    client_app_addr: str = ""
    server_app_addr: str = ""
    # Cumulative bytes sent by the server application / the client application.
    server_total_bytes: int = 0
    client_total_bytes: int = 0
    # Bytes per second over the last second (see rates.RateMeter); rendered as "x.xx kB/s".
    server_send_rate: float = 0.0
    client_send_rate: float = 0.0
    protocol: str = ""
    protocol_properties: dict[str, object] | None = None
    client_identity: str = ""

    def to_json(self) -> dict[str, object]:
        """The JSON object, with quic-tun's key names and order."""
        out: dict[str, object] = {
            "uuid": self.uuid,
            "streamId": self.stream_id,
            "endpoint": self.endpoint,
        }
        if self.endpoint == "client":
            out["clientAppAddr"] = self.client_app_addr
        else:
            out["serverAppAddr"] = self.server_app_addr
        out.update(
            remoteEndpointAddr=self.remote_endpoint_addr,
            createdAt=rfc3339(self.created_at),
            serverTotalBytes=self.server_total_bytes,
            clientTotalBytes=self.client_total_bytes,
            serverSendRate=format_rate(self.server_send_rate),
            clientSendRate=format_rate(self.client_send_rate),
            protocol=self.protocol,
            protocolProperties=(
                None if self.protocol_properties is None else dict(self.protocol_properties)
            ),
            listener=self.listener,
            clientIdentity=self.client_identity,
        )
        return out


def view_of(
    record: TunnelRecord,
    *,
    protocol: str = "",
    properties: dict[str, object] | None = None,
    rates: tuple[float, float] = (0.0, 0.0),
) -> TunnelView:
    """Snapshot ``record``.

    ``protocol``/``properties`` come from the traffic classifier (``"spice"`` and its
    properties), ``rates`` is ``(client_bytes_per_s, server_bytes_per_s)`` from the tunnel's
    :class:`~quictund.api.rates.RateMeter` -- the same order as its samples.
    """
    client_rate, server_rate = rates
    return TunnelView(
        uuid=record.uuid,
        stream_id=record.stream_id,
        endpoint=record.endpoint,
        remote_endpoint_addr=record.remote_endpoint_addr,
        created_at=record.created_at,
        listener=record.listener,
        client_app_addr=record.client_app_addr,
        server_app_addr=record.server_app_addr,
        server_total_bytes=record.server_total_bytes,
        client_total_bytes=record.client_total_bytes,
        server_send_rate=server_rate,
        client_send_rate=client_rate,
        protocol=protocol,
        protocol_properties=None if properties is None else dict(properties),
        client_identity=record.identity,
    )


def rfc3339(moment: datetime) -> str:
    """``2026-11-25T11:58:10.100534+00:00``; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="microseconds")
