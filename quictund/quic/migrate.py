"""The client's side of roaming: move a live QUIC connection to a new socket when the host's
address or route changes (active connection migration, RFC 9000 §9).

A connected UDP socket keeps the source address the kernel chose at ``connect()``.  When that
address disappears (a DHCP lease renewed to a new address, Wi-Fi replaced by LTE) the socket
goes on sending from an address nobody routes back to, and the connection only dies at
``dead-after``: every open tunnel is lost.  ``ClientPath`` owns the client's current socket and:

1. listens to the kernel's address and route events (a ``NETLINK_ROUTE`` socket on the event
   loop) and to the socket's own ``ENETUNREACH`` / ``EHOSTUNREACH`` errors;
2. after each burst of events (``SETTLE_S``) asks the routing table which source address it
   would use for the server now (``preferred_source``: a throwaway ``connect()``, no packet);
3. if that differs from the socket's, opens a new connected socket (the new source address, a
   new port), moves to the peer's next connection id (so the new path cannot be linked to the
   old one by an observer), sends a PING from it at once and closes the old socket.  The
   server sees a non-probing packet from a new address, validates the path (PATH_CHALLENGE /
   PATH_RESPONSE, handled by the engine) and, limited to 3x what it received there until the
   path is validated, sends to the new address.

A change of port by a NAT needs nothing here: the server follows on its own (the engine's path
handling; ``server.py`` routes by connection id, never by address).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from quictund._tasks import spawn
from quictund.quic.session import Address, QuicSession
from quictund.quic.udp import UdpSocket, open_udp

logger = logging.getLogger(__name__)

_GROUPS = 0x10 | 0x100 | 0x40 | 0x400  # RTMGRP_IPV{4,6}_IFADDR | RTMGRP_IPV{4,6}_ROUTE
_ROUTE_ERRORS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


def preferred_source(peer: Address, family: int) -> str | None:
    """The source address the routing table picks for ``peer`` now, or ``None`` without a
    route.  ``connect()`` on a UDP socket only looks the route up; nothing is sent."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.connect(peer)
        return str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()


def route_watch(on_change: Callable[[], None]) -> socket.socket | None:
    """Subscribe to address and route events; ``None`` (roaming by socket errors only) where
    netlink is not available."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except (OSError, AttributeError):
        return None
    try:
        sock.bind((0, _GROUPS))
        sock.setblocking(False)
    except OSError:
        sock.close()
        return None

    def readable() -> None:
        changed = False
        with contextlib.suppress(BlockingIOError, InterruptedError):
            for _ in range(64):
                try:
                    sock.recv(65536)
                except OSError as exc:  # ENOBUFS: events lost; a check covers them all
                    if exc.errno != errno.ENOBUFS:
                        raise
                changed = True
        if changed:
            on_change()

    asyncio.get_running_loop().add_reader(sock.fileno(), readable)
    return sock


class ClientPath:
    """The client connection's current socket, replaced when the host's address changes."""

    SETTLE_S = 0.05  # one `ip addr del` emits several events: check once after them

    def __init__(
        self,
        *,
        name: str,
        peer: Address,
        family: int,
        buffer: int,
        on_datagram: Callable[[bytes, tuple[Any, ...]], None],
        on_error: Callable[[OSError], None],
    ) -> None:
        self.name = name
        self.peer = peer
        self.family = family
        self._buffer = buffer
        self._on_datagram = on_datagram
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self.udp: UdpSocket | None = None
        self.session: QuicSession | None = None
        self.migrations = 0
        self.last_move_s = 0.0  # time to open the new socket and send from it
        self._watch: socket.socket | None = None
        self._check: asyncio.TimerHandle | None = None
        self._moving = False
        self._closed = False

    async def open(self) -> UdpSocket:
        """The first socket; ``attach`` starts watching once the session exists."""
        self.udp = await self._new_socket()
        return self.udp

    def attach(self, session: QuicSession) -> None:
        self.session = session
        self._watch = route_watch(self.changed)

    def send_many(self, datagrams: list[tuple[bytes, Address]]) -> None:
        if self.udp is not None:
            self.udp.send_many(datagrams)

    def close(self) -> None:
        self._closed = True
        if self._check is not None:
            self._check.cancel()
        if self._watch is not None:
            self._loop.remove_reader(self._watch.fileno())
            self._watch.close()
            self._watch = None
        if self.udp is not None:
            self.udp.close()

    def changed(self) -> None:
        """An address or route changed (or a send failed): check once things settle."""
        if self._check is None and not self._closed:
            self._check = self._loop.call_later(self.SETTLE_S, self._checked)

    # ---- private -------------------------------------------------------------------------

    async def _new_socket(self) -> UdpSocket:
        return await open_udp(
            self._on_datagram, remote=self.peer, family=self.family, buffer=self._buffer,
            on_error=self._socket_error,
        )  # fmt: skip

    def _socket_error(self, exc: OSError) -> None:
        if exc.errno in _ROUTE_ERRORS:
            self.changed()
        self._on_error(exc)

    def _checked(self) -> None:
        self._check = None
        session = self.session
        if self._closed or self._moving or self.udp is None or session is None:
            return
        if not session.handshake_done.done():  # RFC 9000 §9: no migration before that
            self.changed()
            return
        now = preferred_source(self.peer, self.family)
        old = str(self.udp.sockname[0])
        if now is None or now == old:
            return
        self._moving = True
        spawn(self._move(old, now), name=f"migrate-{self.name}")

    async def _move(self, old: str, new: str) -> None:
        """Active migration: new socket, next connection id, a PING from the new path."""
        session, started = self.session, time.monotonic()
        try:
            udp = await self._new_socket()
        except OSError as exc:
            logger.warning("[%s] cannot open a socket from %s: %s", self.name, new, exc)
            self._moving = False
            return
        if self._closed or session is None or session.closed.is_set():
            udp.close()
            return
        previous, self.udp = self.udp, udp
        if previous is not None:
            previous.close()
        self.migrations += 1
        # Engine calls: the next connection id (none spare: keep the current one) and a PING,
        # so the server hears the new path now, not at the next write or keep-alive.
        session.conn.change_connection_id()
        session.conn.send_ping(0x6D696772)
        session.transmit_soon()
        self._moving = False
        logger.warning(
            "[%s] local address %s gone or no longer routed to %s:%d; connection moved to %s:%d",
            self.name, old, *self.peer, *udp.sockname[:2],
        )  # fmt: skip
        self.last_move_s = time.monotonic() - started
        self.changed()  # the address may have changed again meanwhile
