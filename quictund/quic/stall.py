"""When a client should probe because the data it was receiving stopped (sans-IO).

A NAT that rebinds the client's port (a new mapping after its table was flushed or its entry
expired) drops everything the server sends to the old mapping.  The server cannot find the
client's new port: only a packet *from* the client creates it.  During a download the client
sends only ACKs, which need something to acknowledge, so after a rebinding nothing moves either
way until the client's keep-alive notices the silence (4.5 to 9.5 s; measured 7.4-7.7 s of pause
in tests/e2e/test_roaming.py, 3 of 3 runs with two connections through the NAT).

Rule: when datagrams were arriving back to back (a gap under ``BUSY_GAP_S``) and then nothing
arrives for ``stall_after(rtt)``, send a PING.  Its packet creates the new mapping, the server
sees the new address and validates it (quic/engine_aioquic_paths.py), and the transfer goes on.
While the stream of datagrams does not resume, PING again after twice the silence each time
(the server may itself be waiting out a backed-off probe timer; each PING's ACK, acknowledged
by the next PING, lets it declare the packets it sent to the old address lost), until the
keep-alive takes over.  Armed again only by datagrams arriving back to back, so an idle
connection (whose PING ACKs arrive alone) never pings faster than its keep-alive; a false alarm
(a sender that paused by itself) costs a few PINGs.
"""

from __future__ import annotations

BUSY_GAP_S = 0.05  # datagrams this close together: the peer was sending a stream of data
MIN_STALL_S = 0.25


def stall_after(rtt_s: float) -> float:
    """Silence after back-to-back datagrams that means a stall: 3 RTTs, at least 0.25 s."""
    return max(MIN_STALL_S, 3 * rtt_s)


class StallWatch:
    """Arms on back-to-back datagrams; ``due`` says whether to PING and when to look again."""

    def __init__(self, give_up_s: float) -> None:
        self.give_up_s = give_up_s  # the keep-alive: silences this long are its business
        self.armed = False
        self._threshold: float | None = None  # after a stall: the next silence to PING at

    def received(self, gap_s: float) -> bool:
        """A datagram arrived ``gap_s`` after the previous one; True: start watching (the
        caller schedules ``due`` unless it is already watching)."""
        if gap_s >= BUSY_GAP_S:
            return False
        self._threshold = None  # the stream of datagrams goes on (or resumed)
        if self.armed:
            return False
        self.armed = True
        return True

    def due(self, silent_s: float, rtt_s: float) -> tuple[bool, float | None]:
        """(PING now?, seconds until the next look, or None: stop watching)."""
        threshold = stall_after(rtt_s) if self._threshold is None else self._threshold
        if silent_s < threshold:
            return False, threshold - silent_s
        if threshold >= self.give_up_s:
            self.armed, self._threshold = False, None
            return False, None
        self._threshold = 2 * threshold
        return True, self._threshold
