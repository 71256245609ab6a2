"""Prometheus metrics of one daemon (its own registry, so tests can run several daemons).

Counters are incremented where the event happens (tunnel table, connector, daemon reload);
gauges that merely reflect state (active tunnels per listener, whether a client listener has
its QUIC connection) are computed at scrape time, so nothing on the data path pays for them.
The shipped alert rules and Grafana dashboard (packaging/share/, installed in
/usr/share/quictund/) query these names: tests/e2e/test_prometheus.py runs them against a real
Prometheus, so renaming a metric here fails there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.before_render: list[Callable[[], None]] = []  # state to publish before a scrape
        r = self.registry
        self.opened = Counter(
            "quictund_tunnels_opened", "Tunnels established", ["listener"], registry=r
        )
        self.closed = Counter(
            "quictund_tunnels_closed",
            "Tunnels that ended after being established",
            ["listener"],
            registry=r,
        )
        self.failed = Counter(
            "quictund_tunnels_failed",
            "Tunnels that failed before being established, by reason",
            ["listener", "reason"],
            registry=r,
        )
        self.reclaimed = Counter(
            "quictund_tunnels_reclaimed",
            "Established tunnels reset because their app read nothing while the other tunnels "
            "of their QUIC connection needed the memory they held (either side reclaimed)",
            ["listener"],
            registry=r,
        )
        self.bytes = Counter(
            "quictund_bytes",
            "Bytes carried, by the application that sent them",
            ["listener", "direction"],
            registry=r,
        )
        self.handshake = Histogram(
            "quictund_tunnel_setup_seconds",
            "From accepting a tunnel to its ack",
            ["listener"],
            registry=r,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
        )
        # UDP flows (quictund/udpflow): open flows are brought up to date before each scrape
        # (``before_render``), an ending flow adds its rest.
        self.udp_datagrams = Counter(
            "quictund_udp_datagrams",
            "UDP flow datagrams carried, by direction (to or from the tunnel)",
            ["listener", "direction"],
            registry=r,
        )
        self.udp_drops = Counter(
            "quictund_udp_drops",
            "UDP flow datagrams dropped, by reason (too_big, congestion, not_open, unreachable)",
            ["listener", "reason"],
            registry=r,
        )
        self.reloads = Counter(
            "quictund_reloads", "Configuration reloads, by result", ["result"], registry=r
        )
        for result in ("ok", "failed"):  # exported at 0 from the start, so rates exist
            self.reloads.labels(result)
        self.last_reload_ok = Gauge(
            "quictund_last_reload_successful",
            "1 unless the most recent reload was rejected (the old configuration still runs)",
            registry=r,
        )
        self.last_reload_ok.set(1)

    def reload_finished(self, ok: bool) -> None:
        """Count a reload and remember whether it was accepted (the ReloadFailed alert)."""
        self.reloads.labels("ok" if ok else "failed").inc()
        self.last_reload_ok.set(1 if ok else 0)

    def add_state(
        self,
        active: Callable[[], dict[str, int]],
        reconnects: Callable[[], dict[str, int]],
        limits: Callable[[], dict[tuple[str, str], int]] = dict,
        connected: Callable[[], dict[str, bool]] = dict,
    ) -> None:
        """Report state read at scrape time: open tunnels and client reconnects per listener,
        refusals by flood limit per server listener, and whether each client listener has
        its QUIC connection to the server."""
        self.registry.register(_State(active, reconnects, limits, connected))

    def render(self) -> tuple[bytes, str]:
        for hook in self.before_render:
            hook()
        return generate_latest(self.registry), CONTENT_TYPE


class _State(Collector):
    def __init__(
        self,
        active: Callable[[], dict[str, int]],
        reconnects: Callable[[], dict[str, int]],
        limits: Callable[[], dict[tuple[str, str], int]],
        connected: Callable[[], dict[str, bool]],
    ) -> None:
        self._active = active
        self._reconnects = reconnects
        self._limits = limits
        self._connected = connected

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "quictund_tunnels_active", "Tunnels open now", labels=["listener"]
        )
        for listener, count in sorted(self._active().items()):
            gauge.add_metric([listener], count)
        yield gauge
        counter = CounterMetricFamily(
            "quictund_reconnects",
            "QUIC connections of a client listener lost (each is followed by a reconnect)",
            labels=["listener"],
        )
        for listener, count in sorted(self._reconnects().items()):
            counter.add_metric([listener], count)
        yield counter
        hits = CounterMetricFamily(
            "quictund_limit_hits",
            "Connections, handshakes and tunnels refused by a flood limit (docs/security.md); "
            "limit=retry counts Retry packets sent",
            labels=["listener", "limit"],
        )
        for (listener, limit), count in sorted(self._limits().items()):
            hits.add_metric([listener, limit], count)
        yield hits
        up = GaugeMetricFamily(
            "quictund_server_connected",
            "1 while a client listener has its QUIC connection to the server, else 0",
            labels=["listener"],
        )
        for listener, connected in sorted(self._connected().items()):
            up.add_metric([listener], 1 if connected else 0)
        yield up

    def describe(self) -> Iterator[Metric]:
        return iter(())
