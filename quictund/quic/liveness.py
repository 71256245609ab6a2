"""Keep-alive and liveness of one QUIC connection (sans-IO: the caller passes ``now``).

Rules:

1. PING when nothing was heard for ``keepalive_s`` (x 0.9, so a PING leaves before the peer's
   own check), or when data of ours is in flight and the peer acknowledged nothing of ours
   for that long.  An idle connection whose peer keeps talking sends no PINGs of its own.
2. The peer is dead after ``dead_after_s`` of silence, or once a PING of ours has waited that
   long for its ACK, counted from the last proof that the peer hears us (its ACK of a PING or
   of anything else of ours) or from when the PING fell due, whichever is later.  Hearing the
   peer is not proof: when only our direction fails (a firewall rejecting our datagrams, our
   route to it gone) the peer's retransmissions keep arriving, and the connection used to
   live on until the *peer* gave up (30 s on a server).  Counting from anything earlier (an
   old PING's ACK, a full keep-alive back) declared a peer that acknowledged our last data
   and then went silent dead up to one keep-alive before ``dead_after_s``.
3. Checked exactly when the peer would be dead or a PING falls due, not up to one
   keep-alive later.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Verdict:
    dead: str | None  # why the peer is declared dead, or None
    ping: bool  # send a PING now
    next_s: float  # when to check again


class Liveness:
    def __init__(self, now: float, *, keepalive_s: float, dead_after_s: float) -> None:
        self.keepalive_s = keepalive_s
        self.dead_after_s = dead_after_s
        self.last_rx = now
        self.last_ack = now  # the peer acknowledged a packet of ours (or we started)
        self._unproven_since: float | None = None  # while a PING of ours awaits its ACK

    def heard(self, now: float) -> None:
        self.last_rx = now

    def acknowledged(self, now: float) -> None:
        """The peer acknowledged a packet of ours: proof that it hears us."""
        self.last_ack = now
        self._unproven_since = None

    def check(self, now: float, *, in_flight: bool) -> Verdict:
        heard = now - self.last_rx
        unanswered = 0.0 if self._unproven_since is None else now - self._unproven_since
        silent = max(heard, unanswered)
        if silent >= self.dead_after_s:
            what = "silent" if heard >= unanswered else "not acknowledging our PINGs"
            return Verdict(f"{what} for {silent:.1f} s", False, 0.0)
        due = self.keepalive_s * 0.9
        ping = heard >= due or (
            self._unproven_since is None and now - self.last_ack >= due and in_flight
        )
        if ping and self._unproven_since is None:
            # counted from the last proof, or from when this PING fell due if that is later:
            # never from before the last packet heard, or a silent peer dies early
            self._unproven_since = max(self.last_ack, now - due)
        # check again when the peer would be dead, or when the next PING falls due: a check
        # one keep-alive later would count the unanswered PING from too late
        waits = [self.keepalive_s, self.dead_after_s - silent]
        if heard < due:
            waits.append(due - heard)
        if self._unproven_since is None and now - self.last_ack < due:
            waits.append(due - (now - self.last_ack))
        return Verdict(None, ping, min(waits))
