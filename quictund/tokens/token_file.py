"""The token file format (pure): ``IP-or-CIDR token`` lines -> a :class:`TokenTable`.

quic-tun matches with ``strings.HasPrefix`` (client 10.0.0.1 picks up the line meant for
10.0.0.12), breaks on IPv6, needs exactly one space between the columns and panics on a line
without a token.  Here the app's IP matches *exactly* or by the most specific CIDR, any
whitespace separates the columns, ``#`` starts a comment, and a bad line is reported
(``path:line: problem``) and skipped.  Nothing here does I/O, so the format can be fuzzed
(``bench/fuzz/fuzz_token_file.py``) and parsed in a worker thread.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final, Literal, TypeAlias

from quictund.errors import ConfigError

__all__ = ["UNIX_KEY", "TokenTable", "parse_token_file", "table_from_mapping", "unmap"]

IP: TypeAlias = IPv4Address | IPv6Address
_Net: TypeAlias = IPv4Network | IPv6Network
Unix: TypeAlias = Literal["@"]
_Key: TypeAlias = IP | _Net | Unix

UNIX_KEY: Final = "@"
_MAPPED_V4: Final = IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True, slots=True)
class TokenTable:
    """A parsed token file: exact IPs, CIDRs (most specific first) and the UNIX (``@``) entry."""

    exact: Mapping[IP, str] = field(default_factory=dict)
    networks: tuple[tuple[_Net, str], ...] = ()
    unix: str | None = None

    def __len__(self) -> int:
        return len(self.exact) + len(self.networks) + (self.unix is not None)

    def __repr__(self) -> str:  # the default repr would print the tokens
        return f"TokenTable({len(self)} entries)"

    def lookup(self, host: IP | Unix) -> str | None:
        """Exact IP first, then the longest CIDR prefix containing ``host``; None if none."""
        if isinstance(host, str):
            return self.unix
        token = self.exact.get(host)
        if token is not None:
            return token
        for net, token in self.networks:
            if host.version == net.version and host in net:
                return token
        return None


class _TableBuilder:
    """Accumulates entries; the first entry for a key wins (like quic-tun's in-order scan)."""

    def __init__(self) -> None:
        self._entries: dict[_Key, str] = {}
        self._where: dict[_Key, str] = {}

    def add(self, key: _Key, token: str, where: str) -> str | None:
        """Add an entry; return where the earlier entry is if ``key`` is already present."""
        first = self._where.get(key)
        if first is not None:
            return first
        self._entries[key] = token
        self._where[key] = where
        return None

    def build(self) -> TokenTable:
        exact: dict[IP, str] = {}
        networks: list[tuple[_Net, str]] = []
        unix = None
        for key, token in self._entries.items():
            if isinstance(key, str):
                unix = token
            elif isinstance(key, IPv4Address | IPv6Address):
                exact[key] = token
            else:
                networks.append((key, token))
        networks.sort(key=lambda item: -item[0].prefixlen)  # stable: file order on ties
        return TokenTable(exact, tuple(networks), unix)


def unmap(ip: IP) -> IP:
    """``::ffff:1.2.3.4`` is how a dual-stack socket reports an IPv4 peer: treat it as IPv4."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _parse_key(text: str) -> _Key:
    """First column: ``@``, an IP (IPv6 optionally in brackets) or a CIDR.  ValueError if not."""
    if text == UNIX_KEY:
        return UNIX_KEY
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "/" not in text:
        return unmap(ip_address(text))
    net = ip_network(text, strict=False)
    if isinstance(net, IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_V4):
        return IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _parse_line(line: str) -> tuple[_Key, str] | None:
    """One file line -> (key, token), or None for blank/comment; ValueError names the problem."""
    fields = line.split()  # any whitespace; a trailing "\r" (CRLF files) goes with it
    for i, text in enumerate(fields):
        if text.startswith("#"):  # "#" at the start of a column starts a comment
            del fields[i:]
            break
    if not fields:
        return None
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("line is not valid UTF-8") from None
    if len(fields) == 1:
        raise ValueError("no token column (expected 'IP-or-CIDR token')")
    if len(fields) > 2:
        raise ValueError(f"{len(fields)} columns (expected 'IP-or-CIDR token')")
    try:
        key = _parse_key(fields[0])
    except ValueError:
        # The bad column is not echoed: if the columns were swapped it is the token.
        raise ValueError(
            f"first column ({len(fields[0])} chars) is not an IP address, a CIDR or '@'"
        ) from None
    return key, fields[1]


def parse_token_file(
    text: str, origin: str, *, keep: int | None = None
) -> tuple[TokenTable, list[str]]:
    """Parse quic-tun's ``IP token`` file format; never raises.

    Returns the table and one ``"<origin>:<line>: <problem>"`` message per skipped line, or,
    with ``keep``, the first ``keep`` of them and one ``"<origin>: and N more bad lines"``:
    a file of two million bad lines must not become two million strings, nor log lines.
    """
    builder = _TableBuilder()
    problems: list[str] = []
    more = 0
    # Lines end at "\n" only (not splitlines()): line numbers must agree with the operator's
    # editor.  StringIO yields them one at a time: no list of millions of lines in memory.
    lines = io.StringIO(text.removeprefix("\ufeff"), newline="\n")
    for lineno, line in enumerate(lines, start=1):
        try:
            entry = _parse_line(line)
        except ValueError as exc:
            problem = f"{exc}"
        else:
            if entry is None:
                continue
            first = builder.add(entry[0], entry[1], f"line {lineno}")
            if first is None:
                continue
            problem = f"duplicate entry for {entry[0]}; {first} wins"
        if keep is not None and len(problems) >= keep:
            more += 1
        else:
            problems.append(f"{origin}:{lineno}: {problem}")
    if more:
        problems.append(f"{origin}: and {more} more bad lines")
    return builder.build(), problems


def table_from_mapping(mapping: Mapping[str, str]) -> TokenTable:
    builder = _TableBuilder()
    for text, token in mapping.items():
        try:
            key = _parse_key(text.strip())
        except ValueError:
            raise ConfigError(
                f"token source File: mapping key {text!r} is not an IP address, a CIDR or '@'"
            ) from None
        if not isinstance(token, str) or not token:
            raise ConfigError(f"token source File: mapping key {text!r} has an empty token")
        first = builder.add(key, token, repr(text))
        if first is not None:
            raise ConfigError(f"token source File: mapping keys {first} and {text!r} overlap")
    return builder.build()
