"""Fair sharing of the API's connection slots between local users (sans-IO).

Anyone allowed on the API socket could otherwise hold every slot (by sending request heads
slowly, or just by connecting), and everyone else -- including ``quictund reload``, which
waits on ``/healthz`` -- would be refused for as long as that went on.  So slots are counted
per *peer*:

1. A peer is a UID wherever the kernel can tell which user connected (``peers.py``: the other
   end of a UNIX socket, and of a TCP connection from this host), else the source address of
   a TCP connection from another host.
2. An unprivileged peer may hold at most ``per_peer`` connections at once, and all
   unprivileged peers together at most ``total - reserved``.
3. Privileged peers -- root and the daemon's own UID, i.e. the admin and ``quictund reload``
   run by systemd's ``ExecReload`` -- may use every slot, so the last ``reserved`` slots are
   theirs even when other users have taken all they may.
4. A connection refused by these rules gets 503 at once and is closed without being read; a
   slot is given back when its connection ends, whatever the reason.

So one local user can delay nobody but itself, and only ``(total - reserved) / per_peer`` UIDs
acting together can starve other unprivileged users -- never root or the daemon's own UID.
How long a connection may hold its slot is bounded by ``http.py`` (the request head within
``head_timeout_s``, the whole request/response cycle within ``request_timeout_s``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from quictund.api.peers import Peer


@dataclass(frozen=True, slots=True)
class SlotPolicy:
    """The numbers behind the module rules (documented in docs/security.md)."""

    total: int = 64
    per_peer: int = 8
    reserved: int = 4


def privileged_uids() -> frozenset[int]:
    """Root and the UID this daemon runs as."""
    return frozenset({0, os.geteuid()})


class Slots:
    """Counts connections per peer and decides who gets the next slot."""

    def __init__(self, policy: SlotPolicy, privileged: frozenset[int] | None = None) -> None:
        self.policy = policy
        self._privileged = privileged_uids() if privileged is None else privileged
        self._by_peer: Counter[Peer] = Counter()
        self._unprivileged = 0

    # public API

    @property
    def in_use(self) -> int:
        return sum(self._by_peer.values())

    def is_privileged(self, peer: Peer) -> bool:
        return peer[0] == "uid" and peer[1] in self._privileged

    def acquire(self, peer: Peer) -> str | None:
        """Take a slot for ``peer``: ``None`` if granted, else why not (for the 503)."""
        policy = self.policy
        if self.in_use >= policy.total:
            return "too many API connections"
        if not self.is_privileged(peer):
            if self._by_peer[peer] >= policy.per_peer:
                return (
                    f"too many API connections from {_describe(peer)} "
                    f"(at most {policy.per_peer} at once)"
                )
            if self._unprivileged >= policy.total - policy.reserved:
                return "too many API connections (the remaining ones are reserved for root)"
            self._unprivileged += 1
        self._by_peer[peer] += 1
        return None

    def release(self, peer: Peer) -> None:
        """Give back a slot taken by :meth:`acquire` (rule 4)."""
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]
        if not self.is_privileged(peer):
            self._unprivileged -= 1


def _describe(peer: Peer) -> str:
    kind, value = peer
    if kind == "uid":
        return f"uid {value}"
    if kind == "ip":
        return f"{value}"
    return "this peer"
