"""This host's own addresses, current at the moment a destination is checked (Linux netlink).

The policy denies the host's own addresses unless a rule names them (``policy.py``).  A
snapshot taken at start-up goes stale as soon as an address is added (a Docker bridge, a VPN,
DHCP), and every service bound to ``0.0.0.0`` becomes reachable through a broad rule.  So:

1. At first use we subscribe to the kernel's address events (an ``AF_NETLINK`` /
   ``NETLINK_ROUTE`` socket bound to ``RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR``) and *then*
   take one ``RTM_GETADDR`` dump.  Replaying every event queued since the subscription over the
   dump gives the current set: for each address the last event wins, and addresses with no
   event keep their dumped state.
2. Every membership test (``addr in host_addresses()``) first drains the subscription socket
   without blocking.  The kernel queues ``RTM_NEWADDR`` before ``ip addr add`` returns, so an
   address added before the check is always seen: the check cannot be outrun, whatever the
   event loop is doing.  Draining costs one ``recv`` that answers ``EAGAIN`` when nothing
   changed.  Why not a reader on the event loop: it could be outrun (a tunnel's handshake may
   be handled in the same loop turn the event arrives in), and it would tie this object to one
   loop; why not a fresh dump per check: its cost grows with the number of addresses (a
   container host has thousands), the drain's does not.
3. If the socket overflowed (``ENOBUFS``: events were lost) we drain it and dump again.
4. Without netlink (not Linux, or a sandbox that forbids it) every check re-reads ``/proc``
   (slower, still current) and a warning says so once.
5. Addresses the host *name* resolves to (``/etc/hosts``) are added; they are resolved again
   by ``refresh_names`` at start-up and at every reload, with everything else derived from
   the host.

Point-to-point interfaces report the peer as ``IFA_ADDRESS`` and the own address as
``IFA_LOCAL``; only the own one counts.  Not covered: ``local`` routes for whole prefixes
(``ip route add local 10.0.0.0/8 dev lo``, "AnyIP"); name such ranges in no broad rule.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Collection
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RTM_NEWADDR: Final = 20
_RTM_DELADDR: Final = 21
_RTM_GETADDR: Final = 22
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_NLM_F_REQUEST: Final = 0x1
_NLM_F_DUMP: Final = 0x300
_IFA_ADDRESS: Final = 1
_IFA_LOCAL: Final = 2
_GROUPS: Final = 0x10 | 0x100  # RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
_NLMSGHDR: Final = struct.Struct("=IHHII")
_IFADDRMSG: Final = struct.Struct("=BBBBI")
_RTATTR: Final = struct.Struct("=HH")
_RCVBUF: Final = 1 << 20


def parse_messages(data: bytes) -> list[tuple[int, int, IPAddress]]:
    """Netlink datagram -> ``(type, ifindex, address)`` for each address message (pure).

    ``type`` is ``RTM_NEWADDR``/``RTM_DELADDR``, or ``NLMSG_DONE``/``NLMSG_ERROR`` with a
    placeholder address (the end of a dump).  Truncated or foreign records are skipped.
    """
    out: list[tuple[int, int, IPAddress]] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3
        if kind in (_NLMSG_DONE, _NLMSG_ERROR):
            out.append((kind, 0, ipaddress.IPv4Address(0)))
        elif kind in (_RTM_NEWADDR, _RTM_DELADDR) and len(body) >= _IFADDRMSG.size:
            family, _plen, _fl, _scope, index = _IFADDRMSG.unpack_from(body)
            addr = _address_of(family, body[_IFADDRMSG.size :])
            if addr is not None:
                out.append((kind, index, addr))
    return out


def _address_of(family: int, attrs: bytes) -> IPAddress | None:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(attrs):
        length, kind = _RTATTR.unpack_from(attrs, offset)
        if length < _RTATTR.size:
            break
        found[kind] = attrs[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    raw = found.get(_IFA_LOCAL, found.get(_IFA_ADDRESS))  # LOCAL: the own end of a p-t-p link
    size = {int(socket.AF_INET): 4, int(socket.AF_INET6): 16}.get(family)
    if raw is None or len(raw) != size:
        return None
    return ipaddress.ip_address(raw)


class HostAddresses:
    """A set-like view of this host's addresses that is current whenever it is asked."""

    def __init__(self) -> None:
        self._pid = -1
        self._events: socket.socket | None = None
        self._by_index: dict[IPAddress, set[int]] = {}
        self._names: frozenset[IPAddress] = frozenset()
        self._fallback = False

    def __contains__(self, addr: object) -> bool:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr in self._names or addr in self._interfaces()

    def current(self) -> frozenset[IPAddress]:
        """Every own address now (interfaces and host name)."""
        return frozenset(self._interfaces()) | self._names

    def _interfaces(self) -> Collection[IPAddress]:
        """The interfaces' addresses as of now (possibly a live view: read, never keep)."""
        if self._pid != os.getpid():  # first use, or a forked child: its own subscription
            self._open()
        if self._fallback:
            return proc_addresses()
        self._drain()
        return self._by_index.keys()

    def refresh_names(self) -> None:
        """Resolve the host name again (start-up and reload: it may have changed)."""
        found: set[IPAddress] = set()
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        except (OSError, UnicodeError):
            pass
        self._names = frozenset(found)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
        self._events, self._pid = None, -1

    def _open(self) -> None:
        self.close()
        self._pid = os.getpid()
        try:
            sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                socket.NETLINK_ROUTE,
            )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, _GROUPS))
        except (OSError, AttributeError) as exc:  # AttributeError: no AF_NETLINK (not Linux)
            logger.warning(
                "cannot follow this host's address changes over netlink (%s); re-reading "
                "/proc at every destination check instead",
                exc,
            )
            self._fallback = True
            return
        self._events, self._fallback = sock, False
        self._by_index = dump()

    def _drain(self) -> None:
        assert self._events is not None
        while True:
            try:
                data = self._events.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._resync()
                return
            for kind, index, addr in parse_messages(data):
                self._apply(kind, index, addr)

    def _apply(self, kind: int, index: int, addr: IPAddress) -> None:
        if kind == _RTM_NEWADDR:
            self._by_index.setdefault(addr, set()).add(index)
        elif kind == _RTM_DELADDR:
            indexes = self._by_index.get(addr, set())
            indexes.discard(index)
            if not indexes:
                self._by_index.pop(addr, None)

    def _resync(self) -> None:
        """Events were lost: empty the queue, then take a fresh dump (see rule 3)."""
        assert self._events is not None
        while True:
            try:
                self._events.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
        logger.info("netlink address events overflowed; re-reading this host's addresses")
        self._by_index = dump()


def dump() -> dict[IPAddress, set[int]]:
    """One ``RTM_GETADDR`` dump: every interface address with the interfaces holding it."""
    found: dict[IPAddress, set[int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + _IFADDRMSG.size, _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        )
        sock.send(header + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        while True:
            for kind, index, addr in parse_messages(sock.recv(1 << 16)):
                if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                    return found
                if kind == _RTM_NEWADDR:
                    found.setdefault(addr, set()).add(index)


def proc_addresses() -> frozenset[IPAddress]:
    """Interface addresses from ``/proc/self/net`` (fallback without netlink).

    ``/proc/self/net`` rather than ``/proc/net``: the latter is a symlink outside the
    per-process part of procfs, hidden by systemd's ``ProcSubset=pid`` (the packaged units set
    it).
    """
    found: set[IPAddress] = set()
    try:
        for line in Path("/proc/self/net/if_inet6").read_text().splitlines():
            found.add(ipaddress.IPv6Address(int(line.split()[0], 16)))
    except (OSError, ValueError, IndexError):
        pass
    try:
        lines = Path("/proc/self/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line:
            try:
                found.add(ipaddress.IPv4Address(previous.split()[-1]))
            except (ValueError, IndexError):
                continue
    return frozenset(found)


_HOST = HostAddresses()


def host_addresses() -> HostAddresses:
    """The process-wide live set, its host-name part resolved again (start-up and reload)."""
    _HOST.refresh_names()
    return _HOST
