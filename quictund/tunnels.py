"""Live tunnel records: what the API lists and what the close log line reports.

Pure data.  A record is created when a tunnel's handshake starts, counts bytes as they pass,
and is removed when the tunnel ends; ``close_line`` renders quic-tun-style facts in one line.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from quictund.classify import Classifier

if TYPE_CHECKING:
    from quictund.metrics import Metrics
    from quictund.udpflow.flow import FlowCounters

logger = logging.getLogger("quictund.tunnel")


@dataclass(slots=True)
class TunnelRecord:
    endpoint: Literal["client", "server"]
    listener: str
    remote_endpoint_addr: str
    client_app_addr: str = ""
    server_app_addr: str = ""
    stream_id: int = -1
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC).astimezone())
    started: float = field(default_factory=time.monotonic)
    # Bytes sent by the client application / by the server application (quic-tun's meaning,
    # identical on both endpoints).
    client_total_bytes: int = 0
    server_total_bytes: int = 0
    established: bool = False
    # The client certificate's subject and alternative names (server side, mTLS only).
    identity: str = ""
    setup_s: float = 0.0
    # What the first bytes say the tunnel carries (Spice, SSH, TLS); fed by the splice, which
    # never waits for it.
    classifier: Classifier = field(default_factory=Classifier)
    # How to reset this one tunnel (DELETE /tunnels/{uuid}); set by its splice.
    closer: Callable[[str], None] | None = None
    # A UDP flow's datagram counters and drops by reason (quictund/udpflow); None for TCP/UNIX.
    udp: FlowCounters | None = None

    @property
    def protocol(self) -> str:
        return "udp" if self.udp is not None else "stream"

    def fields(self) -> dict[str, object]:
        return {
            "tunnel": self.uuid[:8],
            "listener": self.listener,
            "endpoint": self.endpoint,
            "stream_id": self.stream_id,
            "client_app": self.client_app_addr,
            "server_app": self.server_app_addr,
            "peer": self.remote_endpoint_addr,
            **({"identity": self.identity} if self.identity else {}),
            **({"protocol": "udp"} if self.udp is not None else {}),
        }


_CATEGORIES = (
    ("no token", "no_token"),
    ("not allowed", "policy_denied"),
    ("timed out", "timeout"),
    ("within", "timeout"),
    ("bad token", "bad_token"),
    ("token rejected", "bad_token"),
    ("token not received", "bad_token"),
    ("could not parse", "bad_token"),
    ("cannot connect", "unreachable"),
    ("could not reach", "unreachable"),
    ("unreachable", "unreachable"),
    ("connection lost", "connection_lost"),
    ("reset", "reset"),
)


def failure_category(reason: str) -> str:
    """A small, fixed set of metric label values for the free-text failure reasons."""
    text = reason.lower()
    for needle, category in _CATEGORIES:
        if needle in text:
            return category
    return "other"


class TunnelTable:
    """The tunnels of one daemon, keyed by uuid."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._records: dict[str, TunnelRecord] = {}
        self._empty: asyncio.Event | None = None
        self.metrics = metrics
        if metrics is not None:
            metrics.before_render.append(self.publish_flows)

    def add(self, record: TunnelRecord) -> None:
        self._records[record.uuid] = record
        if self._empty is not None:
            self._empty.clear()

    async def wait_empty(self) -> None:
        if self._empty is None:
            self._empty = asyncio.Event()
        if not self._records:
            self._empty.set()
        await self._empty.wait()

    def opened(self, record: TunnelRecord) -> None:
        record.established = True
        record.setup_s = time.monotonic() - record.started
        logger.info("tunnel open", extra={"fields": record.fields()})
        if self.metrics is not None:
            self.metrics.opened.labels(record.listener).inc()
            self.metrics.handshake.labels(record.listener).observe(record.setup_s)

    def closed(self, record: TunnelRecord, reason: str) -> None:
        if self._records.pop(record.uuid, None) is None:
            return
        if not self._records and self._empty is not None:
            self._empty.set()
        level = logging.INFO if record.established else logging.WARNING
        fields = record.fields()
        fields.update(
            client_bytes=record.client_total_bytes,
            server_bytes=record.server_total_bytes,
            duration_s=round(time.monotonic() - record.started, 3),
            reason=reason,
        )
        if record.udp is not None:
            fields.update(record.udp.as_dict())
        msg = "tunnel closed" if record.established else "tunnel failed"
        logger.log(level, msg, extra={"fields": fields})
        m = self.metrics
        if m is not None:
            if record.established:
                m.closed.labels(record.listener).inc()
                m.bytes.labels(record.listener, "client").inc(record.client_total_bytes)
                m.bytes.labels(record.listener, "server").inc(record.server_total_bytes)
            else:
                m.failed.labels(record.listener, failure_category(reason)).inc()
            if record.udp is not None:
                record.udp.count(m, record.listener)

    def publish_flows(self) -> None:
        """Bring the UDP flow counters of open flows into the metrics (before a scrape)."""
        if self.metrics is None:
            return
        for record in self._records.values():
            if record.udp is not None:
                record.udp.count(self.metrics, record.listener)

    def get(self, uuid: str) -> TunnelRecord | None:
        return self._records.get(uuid)

    def active_by_listener(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self._records.values():
            if record.established:
                counts[record.listener] = counts.get(record.listener, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self._records)

    def snapshot(self) -> list[TunnelRecord]:
        return list(self._records.values())
