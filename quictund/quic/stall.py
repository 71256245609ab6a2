"""When a client should probe because the data it was receiving stopped (sans-IO).

A NAT that rebinds the client's port (a new mapping after its table was flushed or its entry
expired) drops everything the server sends to the old mapping.  The server cannot find the
client's new port: only a packet *from* the client creates it.  During a download the client
sends only ACKs, which need something to acknowledge, so after a rebinding nothing moves either
way until the client's keep-alive notices the silence (4.5 to 9.5 s; measured 7.4-7.7 s of pause
in tests/e2e/test_roaming.py, 3 of 3 runs with two connections through the NAT).

Rule: when datagrams were arriving back to back (a gap under ``BUSY_GAP_S``) and then nothing
arrives for ``stall_after(rtt)``, send one PING.  Its packet creates the new mapping, the
server sees the new address and validates it (quic/engine_aioquic_paths.py), and the transfer
goes on.  One PING per silence: it is armed again only by datagrams arriving back to back, so
an idle connection (whose PING ACKs arrive alone) never pings faster than its keep-alive.  A
false alarm (a sender that paused by itself) costs one PING.
"""

from __future__ import annotations

BUSY_GAP_S = 0.05  # datagrams this close together: the peer was sending a stream of data
MIN_STALL_S = 0.25


def stall_after(rtt_s: float) -> float:
    """Silence after back-to-back datagrams that means a stall: 3 RTTs, at least 0.25 s."""
    return max(MIN_STALL_S, 3 * rtt_s)


class StallWatch:
    """Arms on back-to-back datagrams; ``due`` says when to look again or to PING now."""

    def __init__(self) -> None:
        self.armed = False

    def received(self, gap_s: float) -> bool:
        """A datagram arrived ``gap_s`` after the previous one; True: start watching (the
        caller schedules ``due`` unless it is already watching)."""
        if gap_s < BUSY_GAP_S and not self.armed:
            self.armed = True
            return True
        return False

    def due(self, silent_s: float, rtt_s: float) -> float | None:
        """``None``: PING now (and disarm); else check again in that many seconds."""
        wait = stall_after(rtt_s) - silent_s
        if wait > 0:
            return wait
        self.armed = False
        return None
