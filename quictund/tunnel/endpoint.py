"""What client and server endpoints share: their live splices, idleness, a swappable TLS config.

The daemon treats both roles alike on reload: an unchanged endpoint gets the freshly loaded
QUIC/TLS configuration (new connections use it, open ones keep theirs); a removed or replaced
one stops accepting and is closed once ``wait_idle`` returns or the grace period ends.
"""

from __future__ import annotations

import asyncio

from quictund.quic import engine
from quictund.tunnel.splice import Splice


class EndpointBase:
    def __init__(self, quic_config: engine.QuicConfiguration) -> None:
        self.quic_config = quic_config
        self.reuse_port = False  # set by the daemon when it runs as one of several workers
        self.worker: int | None = None  # ... and which one (its stateless reset key is its own)
        self.splices: set[Splice] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def configuration(self) -> engine.QuicConfiguration:
        """The configuration for the next QUIC connection (swapped on reload)."""
        return self.quic_config

    def track(self, splice: Splice) -> None:
        self.splices.add(splice)
        self._idle.clear()

    def untrack(self, splice: Splice) -> None:
        self.splices.discard(splice)
        if not self.splices:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
