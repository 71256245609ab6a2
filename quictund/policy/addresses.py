"""Parsing of the address strings quic-tun users write.

Three shapes exist, all pure and synchronous (no DNS here):

* ``host:port`` -- a UDP endpoint (server ``listen-on``, client ``server-endpoint``); IPv6 in
  brackets (``[::1]:7500``).
* ``network:address`` -- a stream endpoint (client ``listen-on`` and the server's destination,
  i.e. the token): ``tcp:``, ``tcp4:``, ``tcp6:`` followed by ``host:port``, or ``unix:`` followed
  by a path; or a UDP flow endpoint, ``udp:``, ``udp4:``, ``udp6:`` and ``host:port``.
  The network is case-insensitive as in quic-tun (it lower-cases it).

Errors are ``ValueError`` with a message fit to follow "field: ".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

StreamNetwork = Literal["tcp", "tcp4", "tcp6", "unix", "udp", "udp4", "udp6"]
_NETWORKS: tuple[StreamNetwork, ...] = ("tcp", "tcp4", "tcp6", "unix", "udp", "udp4", "udp6")
UDP_NETWORKS = ("udp", "udp4", "udp6")


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class StreamAddress:
    """A TCP or UNIX endpoint: where a client listens, or where a server connects."""

    network: StreamNetwork
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return self.network == "unix"

    @property
    def is_udp(self) -> bool:
        """A UDP flow (quictund/udpflow), carried in DATAGRAM frames, not on the stream."""
        return self.network in UDP_NETWORKS

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix:{self.path}"
        return f"{self.network}:{format_host_port(self.host, self.port)}"


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, *, allow_port_zero: bool = False) -> HostPort:
    """Parse ``host:port`` / ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"not a host:port address (got {text!r})")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets (got {text!r})") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"not a host:port address (got {text!r})")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"port is not a number (got {text!r})")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError(f"port out of range (got {text!r})")
    return HostPort(host, port)


def parse_stream_address(text: str, *, allow_port_zero: bool = False) -> StreamAddress:
    """Parse ``tcp:host:port``, ``tcp4:…``, ``tcp6:…``, ``udp:…`` (4, 6) or ``unix:/path``."""
    network, sep, rest = text.strip().partition(":")
    network = network.lower()
    if not sep or network not in _NETWORKS:
        raise ValueError(f"not a tcp:/unix: address (got {text!r})")  # or udp:
    if network == "unix":
        if not rest or "\x00" in rest:
            raise ValueError(f"unix: needs a socket path (got {text!r})")
        if len(rest.encode()) > 107:
            raise ValueError(f"unix socket path longer than 107 bytes (got {text!r})")
        return StreamAddress("unix", path=rest)
    hp = parse_host_port(rest, allow_port_zero=allow_port_zero)
    return StreamAddress(network, hp.host, hp.port)
