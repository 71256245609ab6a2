"""A client's server endpoints: one or several, each address a candidate (issue 17 §2).

``server-endpoint`` may list several ``host:port``; a name that resolves to several addresses
gives one candidate per address (resolved when the pool starts; a name with one address, or
none yet, stays one candidate, resolved again at each attempt).  Each candidate is a ``Connector``;
health is the QUIC connection's own (keep-alive pings, ``dead-after``), never a prober.

* ``failover`` (default): one connection, to the first candidate that answers.  When it dies
  the next candidate is tried at once (no backoff: the time to a working tunnel is
  ``dead-after`` plus one handshake); only after a whole round failed does the pool wait, with
  the connector's jittered backoff, cut short when an app connection waits.  With
  ``failback`` the pool tries the candidates before the active one every ``FAILBACK_S`` and
  moves new tunnels back to the first that answers; the old connection closes once its last
  tunnel ends.
* ``spread``: every candidate runs its own connector (its own reconnect and backoff); a new
  tunnel goes to the live connection carrying the fewest tunnels, preferring connections that
  answered a keep-alive recently over ones gone quiet (a server that just died is not chosen
  while another answers).

Tunnels on a connection that dies are reset by the session (the app sees a reset, never a
clean end); the pool only decides where new tunnels go.  One candidate in total: the
connector runs exactly as it does alone (``Connector.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Literal

from quictund._tasks import spawn
from quictund.policy.addresses import HostPort, format_host_port
from quictund.quic import engine
from quictund.quic.client import Connector, backoff
from quictund.quic.session import QuicSession
from quictund.wire import ErrorCode

logger = logging.getLogger(__name__)

Mode = Literal["failover", "spread"]
# Connector states as the API shows them for a member of a pool.
_SHOWN = {"reconnecting": "down", "down": "down", "connected": "connected"}


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """One address to try: ``host`` (an address, or a name that did not resolve) and the
    configured endpoint it came from (``origin``, whose host is the TLS server name)."""

    host: str
    port: int
    origin: HostPort

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)


async def resolve(endpoints: Sequence[HostPort]) -> list[Candidate]:
    """Every address of every endpoint, in order, without repeats."""
    loop = asyncio.get_running_loop()
    out: list[Candidate] = []
    for ep in endpoints:
        try:
            infos = await loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            logger.warning("cannot resolve %s (%s): trying it by name at each attempt", ep, exc)
            infos = []
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        # One address: keep the name, so each attempt resolves it again (as one connector
        # alone always did: a changed DNS record is followed on reconnect).
        hosts = addresses if len(addresses) > 1 else [ep.host]
        for host in hosts:
            cand = Candidate(host, ep.port, ep)
            if all(c.address != cand.address for c in out):
                out.append(cand)
    return out


def _named(config: engine.QuicConfiguration, name: str) -> engine.QuicConfiguration:
    """``config`` verifying ``name`` (both engines' configurations are dataclasses)."""
    copy: engine.QuicConfiguration = dataclasses.replace(config, server_name=name)  # type: ignore[type-var]
    return copy


class Pool:
    """What a client endpoint asks for a connection; the same face as one ``Connector``."""

    FAILBACK_S = 10.0  # how often a failed-over pool tries the candidates before its active one

    def __init__(
        self,
        *,
        name: str,
        endpoints: Sequence[HostPort],
        mode: Mode,
        failback: bool,
        server_name: str | None,
        configuration: Callable[[], engine.QuicConfiguration],
        make: Callable[[str, str, int, Callable[[], engine.QuicConfiguration]], Connector],
    ) -> None:
        """``make(label, host, port, configuration)`` builds a connector (the endpoint's knobs)."""
        self.name = name
        self.mode: Mode = mode
        self._endpoints = tuple(endpoints)
        self._failback = failback
        self._server_name = server_name
        self._configuration = configuration
        self._make = make
        self.members: list[Connector] = []
        self._candidates: list[Candidate] = []
        self._active: tuple[int, QuicSession] | None = None
        self._up = asyncio.Event()
        self._wanted = asyncio.Event()
        self._attempt_at = 0.0
        self._note_state = "connecting"
        self._note_error = ""
        self._stopped = False

    # ---- the face ClientEndpoint, the API and cafile.py use --------------------------------

    @property
    def state(self) -> str:
        if not self.members:
            return self._note_state
        if len(self.members) == 1:
            return self.members[0].state  # as a connector alone says it ("reconnecting")
        if any(m.state == "connected" for m in self.members):
            return "connected"
        return "connecting" if any(m.state == "connecting" for m in self.members) else "down"

    @state.setter
    def state(self, value: str) -> None:
        self._note_state = value

    @property
    def last_error(self) -> str:
        errors = [m.last_error for m in self.members if m.last_error]
        return "; ".join(errors) if errors else self._note_error

    @last_error.setter
    def last_error(self, value: str) -> None:
        self._note_error = value

    @property
    def reconnects(self) -> int:
        return sum(m.reconnects for m in self.members)

    @property
    def session(self) -> QuicSession | None:
        """The connection ``/listeners`` describes: failover's active one, else the first."""
        if self._active is not None and not self._active[1].closed.is_set():
            return self._active[1]
        live = self._live()
        return live[0].session if live else None

    def address_of(self, session: QuicSession) -> str:
        """The configured endpoint ``session`` goes to (the tunnel's ``remoteEndpointAddr``)."""
        for member, cand in zip(self.members, self._candidates, strict=True):
            if member.session is session:
                return str(cand.origin) if len(self._candidates) == 1 else cand.address
        return str(self._endpoints[0])

    def endpoints(self) -> list[dict[str, object]]:
        """Each candidate's state for ``/listeners`` (address, state, tunnels, last error)."""
        out: list[dict[str, object]] = []
        for member, cand in zip(self.members, self._candidates, strict=True):
            active = self.mode == "spread" or (
                self._active is not None and self.members[self._active[0]] is member
            )
            state = _SHOWN.get(member.state, member.state)
            out.append(
                {
                    "address": cand.address,
                    "endpoint": str(cand.origin),
                    "state": state,
                    "active": active and state == "connected",
                    "tunnels": member.tunnels,
                    "reconnects": member.reconnects,
                    "lastError": member.last_error,
                }
            )
        return out

    async def run(self) -> None:
        """Resolve the candidates and keep connections up until cancelled."""
        self._candidates = await resolve(self._endpoints)
        self.members = [self._member(c) for c in self._candidates]
        if len(self.members) > 1:
            for member in self.members:
                member.state = "standby" if self.mode == "failover" else "connecting"
        if len(self.members) == 1:
            await self.members[0].run()
        elif self.mode == "spread":
            async with asyncio.TaskGroup() as tg:
                for member in self.members:
                    tg.create_task(member.run(), name=f"connector-{member.name}")
        else:
            await self._failover()

    async def get_session(self, wait_s: float) -> QuicSession:
        """A live session (see the module docstring), waiting at most ``wait_s``."""
        if len(self.members) == 1:
            return await self.members[0].get_session(wait_s)
        deadline = time.monotonic() + wait_s
        while True:
            session = self._pick()
            if session is not None:
                return session
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            await self._wait_any(remaining)

    def close(self, error_code: int, reason: str) -> None:
        self._stopped = True
        for member in self.members:
            member.close(error_code, reason)

    # ---- choosing ----------------------------------------------------------------------------

    def _live(self) -> list[Connector]:
        return [m for m in self.members if m.session is not None and not m.session.closed.is_set()]

    def _pick(self) -> QuicSession | None:
        if self.mode == "failover" and len(self.members) > 1:
            active = self._active
            if active is not None and not active[1].closed.is_set():
                return active[1]
            return None
        live = self._live()
        if not live:
            return None
        now = time.monotonic()
        # A keep-alive is answered within keep-alive + RTT; a connection silent for twice
        # that is probably dead (dead-after will say so): prefer the ones that answer.
        fresh = [m for m in live if m.session is not None and now - m.session.last_rx < m.quiet_s]
        best = min(fresh or live, key=lambda m: m.tunnels)
        return best.session

    async def _wait_any(self, timeout_s: float) -> None:
        """Until a connection may be up (or ``timeout_s``); tells the connectors an app waits."""
        if self.mode == "failover" and len(self.members) > 1:
            self._wanted.set()
            if self._up.is_set():  # the active connection just ended; _failover catches up
                await asyncio.sleep(min(timeout_s, 0.05))
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._up.wait()
            return
        waits = [spawn(m.wait_up(), name=f"wait-{m.name}") for m in self.members]
        if not waits:  # not started yet (waiting for ca-file)
            await asyncio.sleep(min(timeout_s, 0.2))
            return
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # ---- failover ------------------------------------------------------------------------------

    def _member(self, cand: Candidate) -> Connector:
        server_name = self._server_name or cand.origin.host

        def configuration() -> engine.QuicConfiguration:
            return _named(self._configuration(), server_name)

        label = self.name if len(self._candidates) == 1 else f"{self.name} {cand.address}"
        return self._make(label, cand.host, cand.port, configuration)

    async def _failover(self) -> None:
        start = 0
        while True:
            active = self._active
            if active is None or active[1].closed.is_set():
                active = await self._connect_from(start)
            index, session = active
            if self._failback and index > 0:
                spawn(self._fail_back(active), name=f"failback-{self.name}")
            await self.members[index].hold(session)
            if self._stopped:
                return
            if self._active is active:  # died: move on to the next candidate at once
                self._active = None
                self._up.clear()
                start = (index + 1) % len(self.members)
                logger.warning(
                    "[%s] %s lost (%s): failing over",
                    self.name, self._candidates[index].address, self.members[index].last_error,
                )  # fmt: skip
            else:  # failed back: the old connection was drained and closed
                self.members[index].state = "standby"

    async def _connect_from(self, start: int) -> tuple[int, QuicSession]:
        """Try each candidate once from ``start``; after a failed round, back off."""
        rounds = 0
        while True:
            for step in range(len(self.members)):
                index = (start + step) % len(self.members)
                self._attempt_at = time.monotonic()
                self._wanted.clear()
                try:
                    session = await self.members[index].connect_once()
                except (OSError, ConnectionError, TimeoutError):
                    continue
                self._active = (index, session)
                self._up.set()
                return self._active
            rounds += 1
            delay = backoff(rounds)
            logger.warning(
                "[%s] no server endpoint answers (%s); next round in %.1f s",
                self.name, self.last_error, delay,
            )  # fmt: skip
            await self._pause(delay)

    async def _pause(self, delay_s: float) -> None:
        """As ``Connector._pause``: shorter when an app waits, never faster than 2 a second."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._wanted.wait()
                gap = self._attempt_at + Connector.DEMAND_GAP_S - time.monotonic()
                await asyncio.sleep(max(0.0, gap))

    async def _fail_back(self, active: tuple[int, QuicSession]) -> None:
        """Every ``FAILBACK_S`` while ``active`` is in use, try the preferred candidates and
        switch to the first that answers.  Not cancelled from outside: a cancelled attempt
        would leave a half-open connection behind; it ends itself when ``active`` is gone."""
        while True:
            await asyncio.sleep(self.FAILBACK_S)
            for better in range(active[0]):
                if self._stopped or self._active is not active:
                    return
                try:
                    session = await self.members[better].connect_once()
                except (OSError, ConnectionError, TimeoutError):
                    continue
                if self._stopped or self._active is not active:  # it died meanwhile
                    session.close(ErrorCode.NO_ERROR, "not needed")
                    self.members[better].state = "standby"
                    return
                self._active = (better, session)
                logger.info("[%s] failing back to %s", self.name, self._candidates[better].address)
                spawn(self._drain(active[1], session), name=f"drain-{self.name}")
                return

    @staticmethod
    async def _drain(session: QuicSession, successor: QuicSession) -> None:
        """Close a connection no new tunnel will use, once its last tunnel ended (or its
        successor died: then ``_failover`` must go on from here)."""
        while session.stream_count and not session.closed.is_set():
            if successor.closed.is_set():
                break
            await asyncio.sleep(1.0)
        session.close(ErrorCode.NO_ERROR, "failed back to a preferred server endpoint")
