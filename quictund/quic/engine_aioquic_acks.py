"""aioquic adapter, part: when a lone packet's ACK goes out (``LoneAck``).

aioquic acknowledges every ack-eliciting 1-RTT packet 1 ms after it arrives, whatever else
happens.  A tunnel's traffic is mostly one packet each way: a request and its answer, a
stream's token and its ack, a FIN and the other side's FIN.  The adapter already lets a
pending ACK ride with the next STREAM data (``AioquicConnection.send_stream_data``), but when
the answer takes longer than 1 ms -- a new tunnel's connect to its destination, the next tunnel
of a client that opens them one after another, an app that thinks -- the ACK leaves alone: one
more datagram built, sent, received and processed on each side (~40 µs of CPU apiece), and on
a server that opens and closes tunnels back to back, two such timers per tunnel
(docs/performance.md, "Lone ACKs").

RFC 9000 section 13.2.1 asks for 1-RTT packets to be acknowledged within the ``max_ack_delay``
we announce (25 ms, aioquic's default), and section 13.2.2 for an ACK after at least two
ack-eliciting packets, which is what keeps a sender's window moving.  So: the ACK of a packet
that arrives alone waits up to ``LONE_ACK_S`` for something to ride with; a second packet
before it goes out brings aioquic's own deadline back (1 ms after the first), so a bulk
transfer is acknowledged exactly as before.  Initial and Handshake packets are untouched
(acknowledged at once, as section 13.2.1 requires).

Only ``engine_*`` modules touch engine internals; this one reads and sets a packet space's
``ack_at`` around ``AioquicConnection.receive_datagram``.
"""

from __future__ import annotations

from typing import Any

# Inside the 25 ms max_ack_delay we announce, with room for a late timer (the peer subtracts
# at most max_ack_delay from its RTT sample, and adds it to its probe timeout).
LONE_ACK_S = 0.020


class LoneAck:
    """Per connection: stretches the ACK deadline of a packet that arrived alone."""

    __slots__ = ("_ack_delay", "_stretched")

    def __init__(self, ack_delay: float) -> None:
        self._ack_delay = ack_delay  # aioquic's own (1 ms)
        self._stretched: float | None = None  # the deadline set for a lone packet, if pending

    def before(self, space: Any) -> tuple[float | None, int]:
        """What to compare after the receive: the pending deadline and packets taken so far."""
        return space.ack_at, space.received_packets.count

    def after(self, space: Any, seen: tuple[float | None, int], now: float) -> None:
        """Adjust ``space.ack_at`` once a datagram was processed (see the module docstring)."""
        at = space.ack_at
        if at is None:
            self._stretched = None  # nothing to acknowledge (or it just went out)
            return
        waiting, count = seen
        if waiting is None:  # the first ack-eliciting packet since our last ACK
            if 0.0 < at <= now + self._ack_delay:  # aioquic's deadline, not "at once"
                at = space.ack_at = now + LONE_ACK_S
                self._stretched = at
        elif at == self._stretched and space.received_packets.count > count:
            # a second packet: acknowledge as aioquic would have, 1 ms after the first
            space.ack_at = at - LONE_ACK_S + self._ack_delay
            self._stretched = None
