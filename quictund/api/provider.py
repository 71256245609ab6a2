"""The daemon's side of the API: snapshots of tunnels and listeners, metrics, closing a tunnel.

Rates follow quic-tun: bytes in the last second, sampled on a 1 s tick (``tick``) and again
when someone asks, so a fresh tunnel shows a rate at its first query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from quictund.api.rates import RateMeter
from quictund.api.views import TunnelView, view_of
from quictund.metrics import Metrics
from quictund.tunnel.client_endpoint import ClientEndpoint
from quictund.tunnel.server_endpoint import ServerEndpoint
from quictund.tunnel.tunnels import TunnelTable

Endpoint = ClientEndpoint | ServerEndpoint


class DaemonApi:
    def __init__(
        self,
        table: TunnelTable,
        metrics: Metrics,
        endpoints: Callable[[], list[Endpoint]],
        status: Callable[[], str],
        reload: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self._table = table
        self._metrics = metrics
        self._endpoints = endpoints
        self._status = status
        self._reload = reload
        self._meters: dict[str, RateMeter] = {}

    def tick(self) -> None:
        """Sample every established tunnel's totals now (``tick_steps`` in one go)."""
        for _ in self.tick_steps():
            pass

    def tick_steps(self, batch: int = 256) -> Iterator[None]:
        """Sample the established tunnels' totals, yielding after each ``batch`` of them.

        The daemon awaits a loop turn at each yield: with thousands of tunnels (a hostile
        peer's, issue 13) one pass took 7-73 ms, a stall every honest tunnel's echo waited
        out.  Tunnels still in their handshake carry no bytes and get no meter yet.
        """
        now = time.monotonic()
        records = [r for r in self._table.snapshot() if r.established]
        live = {r.uuid for r in records}
        for uuid in [u for u in self._meters if u not in live]:
            del self._meters[uuid]
        for start in range(0, len(records), batch):
            if start:
                yield
                now = time.monotonic()
            for record in records[start : start + batch]:
                meter = self._meters.setdefault(record.uuid, RateMeter())
                meter.sample(now, record.client_total_bytes, record.server_total_bytes)

    # ---- ApiProvider ----------------------------------------------------------------------

    def tunnels(self) -> list[TunnelView]:
        now = time.monotonic()
        views = []
        for record in self._table.snapshot():
            if not record.established:
                continue
            meter = self._meters.setdefault(record.uuid, RateMeter())
            rates = meter.sample(now, record.client_total_bytes, record.server_total_bytes)
            classifier = record.classifier
            udp = record.udp  # a UDP flow: its datagram counters and drops (quictund/udpflow)
            views.append(
                view_of(
                    record,
                    protocol="udp" if udp else classifier.protocol,
                    properties=udp.as_dict() if udp else classifier.properties,  # type: ignore[arg-type]
                    rates=rates,
                )
            )
        return views

    def close_tunnel(self, uuid: str) -> bool:
        record = self._table.get(uuid)
        if record is None or record.closer is None:
            return False
        record.closer("closed through the API")
        return True

    def listeners(self) -> list[dict[str, object]]:
        return [_listener(e) for e in self._endpoints()]

    def health(self) -> dict[str, object]:
        health: dict[str, object] = {"status": "ok", "summary": self._status()}
        if self._reload is not None:
            health["reload"] = self._reload()  # what `quictund reload` waits for
        return health

    def metrics(self) -> tuple[bytes, str]:
        return self._metrics.render()


def _listener(endpoint: Endpoint) -> dict[str, object]:
    if isinstance(endpoint, ClientEndpoint):
        connector = endpoint.connector
        quic: dict[str, object] = {
            "state": connector.state,
            "reconnects": connector.reconnects,
            "lastError": connector.last_error,
        }
        session = connector.session
        if session is not None:
            stats = session.conn.stats()
            quic.update(
                rttMs=round(float(stats["rtt_s"]) * 1000, 3),
                congestionWindow=stats["cwnd_bytes"],
                bytesInFlight=stats["bytes_in_flight"],
                packetsSent=session.datagrams_out,
                packetsReceived=session.datagrams_in,
                bytesSent=session.bytes_out,
                bytesReceived=session.bytes_in,
                packetsLost=stats.get("packets_lost", 0),
                peer=f"{session.peer[0]}:{session.peer[1]}",
            )
        listener = endpoint.listener
        return {
            "name": endpoint.settings.name,
            "role": "client",
            "listenOn": listener.bound if listener else str(endpoint.settings.listen_on),
            "serverEndpoint": endpoint.settings.server_endpoints_text(),
            "serverEndpointMode": endpoint.settings.server_endpoint_mode,
            "serverEndpoints": endpoint.connector.endpoints(),
            "state": "listening" if listener else "stopped",
            "tunnels": len(endpoint.splices),
            "quic": quic,
        }
    bound = endpoint.bound
    return {
        "name": endpoint.settings.name,
        "role": "server",
        "listenOn": f"{bound[0]}:{bound[1]}" if bound else str(endpoint.settings.listen_on),
        "state": "listening" if bound else "stopped",
        "tunnels": len(endpoint.splices),
        "connections": len(endpoint.sessions),
    }
