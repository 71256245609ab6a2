"""A session's keep-alive and stall probes on asyncio (``PeerWatch``); their rules are sans-IO.

* **Keep-alive and liveness** (``quic/liveness.py``): PING while silent or while our data goes
  unacknowledged; the peer is dead after ``dead_after_s`` of either.  aioquic neither pings
  nor declares a silent peer dead before its idle timeout.
* **Stalls** (``quic/stall.py``): a client also PINGs when the datagrams it was receiving
  stop (a NAT rebinding), and answers that PING's ACK with one more PING.

``QuicSession`` (quic/session.py) tells the watch what arrived and what was acknowledged, and
gives it two actions: queue a PING, and declare the peer dead.  Split out of the session so
that each has one job: the session moves datagrams and events, this decides when to probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from quictund.quic.liveness import Liveness
from quictund.quic.stall import StallWatch

logger = logging.getLogger("quictund.quic.session")  # its lines read as the session's


class PeerWatch:
    """Keep-alive, liveness and stall probes of one QUIC connection."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        peer: tuple[str, int],
        is_client: bool,
        keepalive_s: float,
        dead_after_s: float,
        rtt: Callable[[], float],
        in_flight: Callable[[], bool],
        ping: Callable[[], int],
        dead: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._peer = peer
        self._rtt = rtt  # the connection's smoothed RTT, seconds
        self._in_flight = in_flight  # whether our data waits for an ACK
        self._ping = ping  # queue a PING; its uid comes back with PingAcknowledged
        self._dead = dead  # close the connection: the peer is gone
        # client: PING when a stream of datagrams stops (a NAT rebinding; quic/stall.py)
        self._stall = StallWatch(keepalive_s) if is_client and keepalive_s > 0 else None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_ping = 0  # its ACK is answered by one more PING (quic/stall.py)
        self.created_at = time.monotonic()
        self._live = Liveness(self.created_at, keepalive_s=keepalive_s, dead_after_s=dead_after_s)
        self._keepalive: asyncio.TimerHandle | None = None
        if keepalive_s > 0:
            first = min(keepalive_s, dead_after_s)
            self._keepalive = loop.call_later(first, self._on_keepalive)

    @property
    def last_rx(self) -> float:
        """When the last datagram from the peer arrived (``time.monotonic``)."""
        return self._live.last_rx

    def heard(self, now: float) -> None:
        """A datagram from the peer arrived at ``now``."""
        if self._stall is not None and self._stall.received(now - self._live.last_rx):
            self._stall_timer = self._loop.call_later(0, self._on_stall_check)
        self._live.heard(now)

    def acknowledged(self, now: float) -> None:
        """The peer acknowledged something of ours."""
        self._live.acknowledged(now)

    def ping_acknowledged(self, uid: int) -> None:
        self._live.acknowledged(time.monotonic())
        if uid == self._stall_ping:  # acknowledge the peer's ACK (quic/stall.py)
            self._stall_ping = 0
            self._ping()

    def stop(self) -> None:
        """The session is over: no more probes (a cancelled handle never runs)."""
        for handle in (self._keepalive, self._stall_timer):
            if handle is not None:
                handle.cancel()

    def _on_keepalive(self) -> None:
        verdict = self._live.check(time.monotonic(), in_flight=self._in_flight())
        if verdict.dead is not None:
            logger.warning(
                "QUIC peer %s:%d %s; connection declared lost", *self._peer, verdict.dead
            )
            self._dead()
            return
        if verdict.ping:
            self._ping()
        self._keepalive = self._loop.call_later(verdict.next_s, self._on_keepalive)

    def _on_stall_check(self) -> None:
        self._stall_timer = None
        if self._stall is None:
            return
        silent = time.monotonic() - self.last_rx
        ping, wait = self._stall.due(silent, self._rtt())
        if wait is not None:
            self._stall_timer = self._loop.call_later(wait, self._on_stall_check)
        if ping:
            logger.debug("%.2f s without a datagram from %s:%d after a stream: PING", silent,
                         *self._peer)  # fmt: skip
            self._stall_ping = self._ping()
