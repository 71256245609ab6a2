"""UDP flow counters reach /metrics while the flow is open, each datagram exactly once."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from quictund.metrics import Metrics
from quictund.tunnel.reasons import client_reason
from quictund.tunnel.splice import RECLAIMED_HERE
from quictund.tunnel.tunnels import TunnelRecord, TunnelTable
from quictund.udpflow.flow import CONGESTION, FlowCounters


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_open_flows_are_counted_at_every_scrape_and_never_twice() -> None:
    metrics = Metrics()
    table = TunnelTable(metrics)
    record = TunnelRecord(
        endpoint="client", listener="dns", remote_endpoint_addr="", udp=FlowCounters()
    )
    table.add(record)
    assert record.udp is not None
    record.udp.to_tunnel = 3
    record.udp.drops[CONGESTION] = 2
    sent = ("quictund_udp_datagrams_total", (("direction", "to_tunnel"), ("listener", "dns")))
    dropped = ("quictund_udp_drops_total", (("listener", "dns"), ("reason", "congestion")))
    assert _samples(metrics)[sent] == 3 and _samples(metrics)[dropped] == 2  # live, scraped twice
    record.udp.to_tunnel = 5
    table.closed(record, "idle")
    assert _samples(metrics)[sent] == 5  # the flow's end adds only what no scrape saw


def test_reclaimed_tunnels_are_counted_apart() -> None:
    """A tunnel reset to reclaim its memory (either side) is closed *and* reclaimed."""
    metrics = Metrics()
    table = TunnelTable(metrics)
    for reason in (
        RECLAIMED_HERE,  # this side reclaimed it
        "peer reset the stream (reclaimed)",  # the peer did (a server's words)
        client_reason("peer reset the stream (reclaimed)", "tcp:10.0.0.5:22"),  # a client's
        client_reason("peer reset the stream (app_reset)", "tcp:10.0.0.5:22"),
        "app closed",
    ):
        record = TunnelRecord(endpoint="client", listener="ssh", remote_endpoint_addr="")
        table.add(record)
        table.opened(record)
        table.closed(record, reason)
    samples = _samples(metrics)
    assert samples[("quictund_tunnels_closed_total", (("listener", "ssh"),))] == 5
    assert samples[("quictund_tunnels_reclaimed_total", (("listener", "ssh"),))] == 3
