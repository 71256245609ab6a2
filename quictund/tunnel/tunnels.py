"""Live tunnel records: what the API lists and what the close log line reports.

A record is created when a tunnel's handshake starts, counts bytes as they pass, and is
removed when the tunnel ends, with one log line when it opens and one when it ends.  A server
logs the lines of tunnels that failed within a per-peer budget (``LineThrottle``), so that a
peer refused thousands of times cannot flood the journal; the metrics see every tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from quictund.classify import Classifier
from quictund.policy.limits import SourceBuckets
from quictund.wire import ErrorCode

if TYPE_CHECKING:
    from quictund.metrics import Metrics
    from quictund.udpflow.flow import FlowCounters

logger = logging.getLogger("quictund.tunnel")

# "tunnel failed" lines one QUIC peer may make a server log (docs/security.md, threat model):
# a hostile peer refused 12,000 tunnels in 20 s, a line each, enough to make journald drop
# every service's lines (its default: 10,000 per 30 s).  Beyond LINES_BURST, LINES_PER_S per
# peer connection; what was held back is reported in one summary line every SUMMARY_EVERY_S.
LINES_PER_S = 20.0
LINES_BURST = 200
SUMMARY_EVERY_S = 10.0


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


# in every reason of a reclaimed tunnel: splice.py's "reclaimed here: ..." and "peer reset the
# stream (reclaimed)", reasons.py's "the server reclaimed the tunnel to ..."
RECLAIMED_REASON = ErrorCode.RECLAIMED.name.lower()

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


class LineThrottle:
    """Per-peer budget of tunnel log lines, and a summary of what it held back.  Pure: the
    caller passes ``now``."""

    def __init__(
        self,
        rate: float = LINES_PER_S,
        burst: int = LINES_BURST,
        every_s: float = SUMMARY_EVERY_S,
        max_peers: int = 4096,
    ) -> None:
        self.every_s = every_s
        self._buckets = SourceBuckets(rate, burst, max_peers)  # least recently heard go first
        self._held: dict[str, Counter[str]] = {}  # peer -> held-back lines by message
        self._since: dict[str, float] = {}  # peer -> when its first held-back line came
        self.held_total = 0

    @property
    def pending(self) -> bool:
        return bool(self._since)

    def admit(self, peer: str, message: str, now: float) -> bool:
        if self._buckets.take(peer, now):
            return True
        self._held.setdefault(peer, Counter())[message] += 1
        self._since.setdefault(peer, now)
        self.held_total += 1
        return False

    def summaries(self, now: float, *, every: bool = False) -> list[str]:
        """One line per peer whose held-back lines are due for a report (all with ``every``)."""
        due = [p for p, t in self._since.items() if every or now - t >= self.every_s]
        lines = []
        for peer in due:
            held = self._held.pop(peer)
            since = self._since.pop(peer)
            what = ", ".join(f"{n} {msg}" for msg, n in held.most_common())
            rate, burst = self._buckets.rate, self._buckets.burst
            lines.append(
                f"peer {peer}: {sum(held.values())} tunnel log lines held back in the last "
                f"{max(now - since, 0):.0f} s ({what}); past {burst:g}, at most {rate:g} a "
                f"second per peer are logged; the metrics count every tunnel"
            )
        return lines


class TunnelTable:
    """The tunnels of one daemon, keyed by uuid."""

    def __init__(
        self, metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._records: dict[str, TunnelRecord] = {}
        self._empty: asyncio.Event | None = None
        self.metrics = metrics
        self.throttle = LineThrottle()
        self._clock = clock  # the log throttle's clock (a test's own, to not race the refill)
        self._summary_timer: asyncio.TimerHandle | None = None
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
        msg = "tunnel closed" if record.established else "tunnel failed"
        if record.established or self._admit(record, msg):
            fields = record.fields()
            fields.update(
                client_bytes=record.client_total_bytes,
                server_bytes=record.server_total_bytes,
                duration_s=round(time.monotonic() - record.started, 3),
                reason=reason,
            )
            if record.udp is not None:
                fields.update(record.udp.as_dict())
            level = logging.INFO if record.established else logging.WARNING
            logger.log(level, msg, extra={"fields": fields})
        m = self.metrics
        if m is not None:
            if record.established:
                m.closed.labels(record.listener).inc()
                if RECLAIMED_REASON in reason:
                    m.reclaimed.labels(record.listener).inc()
                m.bytes.labels(record.listener, "client").inc(record.client_total_bytes)
                m.bytes.labels(record.listener, "server").inc(record.server_total_bytes)
            else:
                m.failed.labels(record.listener, failure_category(reason)).inc()
            if record.udp is not None:
                record.udp.count(m, record.listener)

    def _admit(self, record: TunnelRecord, message: str) -> bool:
        """Whether this failure line is logged: a server's are throttled per peer (a client's
        peer is its own server, and its apps are local).  Tunnels that opened are always
        logged, open and closed: they are what the policy let through, the audit trail."""
        if record.endpoint != "server":
            return True
        if self.throttle.admit(record.remote_endpoint_addr, message, self._clock()):
            return True
        if self._summary_timer is None:
            self._summarise_in(SUMMARY_EVERY_S)
        return False

    def summarise(self) -> None:
        """Log the held-back lines' summaries that are due."""
        self._summary_timer = None
        for line in self.throttle.summaries(self._clock()):
            logger.warning(line)
        if self.throttle.pending:  # peers whose first held-back line is not 10 s old yet
            self._summarise_in(1.0)

    def _summarise_in(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a table used outside the daemon (tests): nothing scheduled
            return
        self._summary_timer = loop.call_later(delay, self.summarise)

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
