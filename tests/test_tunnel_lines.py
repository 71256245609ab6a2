"""Per-peer budget of a server's tunnel log lines (quictund/tunnel/tunnels.py, ``LineThrottle``)."""

from __future__ import annotations

import logging

import pytest

from quictund.tunnel.tunnels import LINES_BURST, LineThrottle, TunnelRecord, TunnelTable


def test_a_peer_gets_its_burst_then_its_rate() -> None:
    throttle = LineThrottle(rate=10, burst=50)
    admitted = sum(throttle.admit("198.51.100.7:4433", "tunnel failed", 0.0) for _ in range(500))
    assert admitted == 50
    assert throttle.held_total == 450
    # one second later: ten more
    admitted = sum(throttle.admit("198.51.100.7:4433", "tunnel failed", 1.0) for _ in range(100))
    assert admitted == 10


def test_peers_have_their_own_budgets() -> None:
    throttle = LineThrottle(rate=1, burst=5)
    for _ in range(100):
        throttle.admit("hostile:1", "tunnel failed", 0.0)
    assert throttle.admit("honest:2", "tunnel open", 0.0)


def test_held_back_lines_are_summarised_per_peer_when_due() -> None:
    throttle = LineThrottle(rate=1, burst=2, every_s=10)
    for i in range(12):
        throttle.admit("203.0.113.9:500", "tunnel failed" if i % 3 else "tunnel open", 0.0)
    assert throttle.pending
    assert throttle.summaries(9.9) == []  # not due yet
    (line,) = throttle.summaries(10.0)
    assert line.startswith("peer 203.0.113.9:500: 10 tunnel log lines held back in the last 10 s")
    assert "7 tunnel failed, 3 tunnel open" in line
    assert not throttle.pending
    assert throttle.summaries(100.0) == []  # reported once


def test_every_flushes_what_is_not_due_yet() -> None:
    throttle = LineThrottle(rate=1, burst=1)
    throttle.admit("p:1", "tunnel failed", 0.0)
    throttle.admit("p:1", "tunnel failed", 0.0)
    assert len(throttle.summaries(0.5, every=True)) == 1


def _lines(caplog: pytest.LogCaptureFixture, msg: str, endpoint: str) -> int:
    return sum(
        r.getMessage() == msg and r.fields["endpoint"] == endpoint  # type: ignore[attr-defined]
        for r in caplog.records
    )


def test_only_a_servers_failures_are_held_back(caplog: pytest.LogCaptureFixture) -> None:
    """A client's peer is its own server, and its apps are local: nothing to hold back there.
    Tunnels that opened are the audit trail: each is logged, open and closed.  The clock
    stands still: on the wall clock a loop slower than 0.1 s (a busy CI machine) let the
    20-a-second refill admit 2 more lines than the burst (202 == 200, 2026-12-05)."""
    table = TunnelTable(clock=lambda: 1000.0)
    caplog.set_level(logging.INFO, logger="quictund.tunnel")
    extra = 100
    for endpoint in ("server", "client"):
        for i in range(2 * (LINES_BURST + extra)):
            record = TunnelRecord(endpoint=endpoint, listener="l", remote_endpoint_addr="x:1")
            table.add(record)
            if i % 2:
                table.opened(record)
                table.closed(record, "closed")
            else:
                table.closed(record, "bad token: token is not valid UTF-8")
    assert _lines(caplog, "tunnel failed", "server") == LINES_BURST
    assert table.throttle.held_total == extra
    assert _lines(caplog, "tunnel failed", "client") == LINES_BURST + extra
    for endpoint in ("server", "client"):
        assert _lines(caplog, "tunnel open", endpoint) == LINES_BURST + extra
        assert _lines(caplog, "tunnel closed", endpoint) == LINES_BURST + extra
    assert len(table) == 0  # held back from the log, not from the table
