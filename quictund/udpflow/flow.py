"""What both ends of a UDP flow share: counters, and one demultiplexer per QUIC connection.

A flow is a tunnel whose control stream carried the usual token handshake; its datagrams go
in DATAGRAM frames tagged with the flow id (``codec``).  ``FlowMux`` hands each received frame
to the flow with that id; frames for no (or no longer a) flow are dropped and counted, because
DATAGRAM frames may arrive before the flow's ack or after it closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from quictund.quic.session import QuicSession
from quictund.udpflow import codec

if TYPE_CHECKING:
    from quictund.metrics import Metrics
    from quictund.tunnel.tunnels import TunnelTable

logger = logging.getLogger(__name__)

# Drop reasons (``FlowCounters.drops`` keys and the metrics label).
TOO_BIG = "too_big"  # larger than one QUIC packet carries: never fragmented
CONGESTION = "congestion"  # the connection's DATAGRAM queue was full: its oldest dropped
NOT_OPEN = "not_open"  # the app sent more than the flow holds while it opens
UNREACHABLE = "unreachable"  # the destination answered with ICMP unreachable


@dataclass(slots=True)
class FlowCounters:
    """Per flow: datagrams and bytes each way, drops by reason."""

    to_tunnel: int = 0
    from_tunnel: int = 0
    bytes_to_tunnel: int = 0
    bytes_from_tunnel: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    # The largest UDP payload the flow could carry when it opened (the path's datagram size
    # less QUIC's overhead): what an app should keep to.
    max_payload: int = 0
    # What ``count`` already added to the metrics (it runs at every scrape and at the end).
    published: Counter[str] = field(default_factory=Counter)

    def count(self, metrics: Metrics, listener: str) -> None:
        """Add what this flow carried and dropped since the last call to
        ``quictund_udp_datagrams`` / ``quictund_udp_drops``: called for open flows at every
        scrape (the counters are live) and once more when the flow ends."""
        now = Counter({"to_tunnel": self.to_tunnel, "from_tunnel": self.from_tunnel})
        now.update({f"drop:{reason}": n for reason, n in self.drops.items()})
        for key, total in now.items():
            delta = total - self.published[key]
            if delta <= 0:
                continue
            self.published[key] = total
            if key.startswith("drop:"):
                metrics.udp_drops.labels(listener, key[5:]).inc(delta)
            else:
                metrics.udp_datagrams.labels(listener, key).inc(delta)

    def as_dict(self) -> dict[str, object]:
        return {
            "datagrams_to_tunnel": self.to_tunnel,
            "datagrams_from_tunnel": self.from_tunnel,
            "bytes_to_tunnel": self.bytes_to_tunnel,
            "bytes_from_tunnel": self.bytes_from_tunnel,
            "drops": dict(self.drops),
            "max_payload": self.max_payload,
        }


class FlowSink(Protocol):
    def from_tunnel(self, payload: bytes) -> None: ...


class FlowMux:
    """Routes a connection's DATAGRAM frames to its flows, by flow id."""

    def __init__(self, session: QuicSession) -> None:
        self.session = session
        self.flows: dict[int, FlowSink] = {}
        self.unknown = 0  # frames for no open flow (early, late or hostile)
        self.malformed = 0

    def on_datagram(self, frame: bytes) -> None:
        try:
            flow_id, payload = codec.decode(frame)
        except ValueError:
            self.malformed += 1
            return
        flow = self.flows.get(flow_id)
        if flow is None:
            self.unknown += 1
            return
        flow.from_tunnel(payload)


def close_flows(table: TunnelTable, listener: str, reason: str) -> int:
    """Close the server listener's open UDP flows (shutdown: unlike a TCP tunnel, a flow
    has nothing to drain, and would otherwise hold the grace period until it idles out)."""
    flows = [
        r
        for r in table.snapshot()
        if r.udp is not None and r.endpoint == "server" and r.listener == listener
    ]
    for record in flows:
        if record.closer is not None:
            record.closer(reason)
    return len(flows)


def stray_datagrams(session: QuicSession) -> str:
    """For the connection's close line: DATAGRAM frames that reached no flow, if any."""
    mux = getattr(session.datagram_handler, "__self__", None)
    if not isinstance(mux, FlowMux) or not (mux.unknown or mux.malformed):
        return ""
    return f" ({mux.unknown} DATAGRAM frames for no flow, {mux.malformed} malformed)"


def mux_for(session: QuicSession) -> FlowMux:
    """The session's demultiplexer, made (and installed as its datagram handler) on first use."""
    handler = session.datagram_handler
    mux = getattr(handler, "__self__", None)
    if isinstance(mux, FlowMux):
        return mux
    mux = FlowMux(session)
    session.datagram_handler = mux.on_datagram
    return mux


def send(session: QuicSession, flow_id: int, payload: bytes, counters: FlowCounters) -> bool:
    """Send one UDP payload of a flow; count it, or the reason it was dropped."""
    if len(payload) > codec.max_payload(session.datagram_room(), flow_id):
        counters.drops[TOO_BIG] += 1
        return False
    if not session.send_datagram(codec.encode(flow_id, payload)):
        counters.drops[CONGESTION] += 1
    counters.to_tunnel += 1
    counters.bytes_to_tunnel += len(payload)
    return True


class IdleTimer:
    """Calls ``fire`` once nothing touched it for ``timeout_s``; one timer handle, re-armed
    lazily (a busy flow costs a float store per datagram, not a timer)."""

    def __init__(self, timeout_s: float, fire: Callable[[], None]) -> None:
        self.timeout_s = timeout_s
        self._fire = fire
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout_s, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        left = self.last + self.timeout_s - self._loop.time()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self._handle = None
        self._fire()
