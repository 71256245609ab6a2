"""Destination policy: which addresses a server endpoint may connect to.

Pure but for two facts read live, because a snapshot of them goes stale: this host's own
addresses (``own``, see ``hostaddrs.py``) and where a ``unix:`` path's symlinks lead.

An entry is ``*`` (anything: quic-tun's open-proxy behaviour) or ``tcp:HOST:PORTS`` /
``udp:HOST:PORTS`` / ``unix:PATH`` (a ``udp:`` rule allows only UDP flows, a ``tcp:`` rule only
TCP tunnels; every other rule below applies to both alike):

* HOST is an IP, a CIDR (``10.0.0.0/8``), a host name (matched case-insensitively against the
  name in the token), or ``*``; IPv6 in brackets (``tcp:[2001:db8::/32]:443``).
* PORTS is a port, a range ``8000-8100``, or ``*``.
* PATH is an exact path or a glob (``/run/postgresql/*``), matched one path component at a
  time: ``*`` never matches ``/``, and a token path that is not normalised (``..``, ``//``)
  never matches anything.  The path with its symlinks resolved must match too
  (``unix_target``), so a link in an allowed directory cannot lead out of it.

The server resolves a name once, checks **every** address it resolved against IP/CIDR entries,
and connects to a checked address (so DNS cannot change the answer between check and
connect).  A host-name entry allows the name's addresses whatever they are.

Loopback, link-local (cloud metadata), unspecified and this host's own interface addresses are
denied unless a rule names them explicitly (an address or CIDR inside 127.0.0.0/8,
169.254.0.0/16, ::1, fe80::/10, …, the own address itself, or the host name):
``tcp:0.0.0.0/0:*`` or ``tcp:*:22`` never reach ``127.0.0.1``, however the token spells it
(``127.1``, ``0x7f.0.0.1``, ``[::ffff:127.0.0.1]``, a name resolving to it).  "Own" means as
the host is at the moment of the check (``hostaddrs.py``), not as it was at start-up.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import posixpath
from collections.abc import Container
from dataclasses import dataclass

from quictund.policy.addresses import StreamAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_BROAD = {4: 16, 6: 48}  # prefixes shorter than these count as "whole networks"


@dataclass(frozen=True, slots=True)
class Rule:
    network: str  # "tcp" | "udp" | "unix" | "*"
    net: IPNetwork | None = None
    name: str | None = None  # host name, or "*" for any host
    port_lo: int = 0
    port_hi: int = 65535
    path_glob: str = ""


def parse_rule(text: str) -> Rule:
    text = text.strip()
    if text == "*":
        return Rule("*")
    network, sep, rest = text.partition(":")
    network = network.lower()
    if network == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"unix: rule needs an absolute path or glob (got {text!r})")
        return Rule("unix", path_glob=rest)
    if network not in ("tcp", "tcp4", "tcp6", "udp", "udp4", "udp6") or not sep:
        raise ValueError(f"not a tcp:HOST:PORTS or unix:PATH rule (got {text!r})")  # or udp:
    kind = network[:3]
    if rest.startswith("["):
        end = rest.find("]")
        host, ports = rest[1:end], rest[end + 2 :]
        if end < 0 or rest[end + 1 : end + 2] != ":":
            raise ValueError(f"bad bracketed host in rule (got {text!r})")
    else:
        host, sep2, ports = rest.rpartition(":")
        if not sep2:
            raise ValueError(f"rule needs HOST:PORTS (got {text!r})")
    lo, hi = _ports(ports, text)
    if host == "*":
        return Rule(kind, name="*", port_lo=lo, port_hi=hi)
    try:
        return Rule(kind, net=ipaddress.ip_network(host, strict=False), port_lo=lo, port_hi=hi)
    except ValueError:
        pass
    if not host or any(c in host for c in "/ *?"):
        raise ValueError(f"not an IP, CIDR or host name: {host!r} (in {text!r})")
    return Rule(kind, name=host.lower().rstrip("."), port_lo=lo, port_hi=hi)


def _ports(text: str, rule: str) -> tuple[int, int]:
    if text == "*":
        return 0, 65535
    lo_s, dash, hi_s = text.partition("-")
    if not all(p.isascii() and p.isdigit() for p in ((lo_s, hi_s) if dash else (lo_s,))):
        raise ValueError(f"ports must be N, N-M or * (got {text!r} in {rule!r})")
    lo = int(lo_s)
    hi = int(hi_s) if dash else lo
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"port range out of order or bounds (got {text!r} in {rule!r})")
    return lo, hi


class Policy:
    def __init__(self, rules: list[str], own: Container[IPAddress] = frozenset()) -> None:
        """``own``: this host's addresses, reachable only through rules that name them.

        The daemon passes ``hostaddrs.host_addresses()``, a live view that is current whenever
        it is asked, so the policy never works from a stale snapshot of the host."""
        self.rules = [parse_rule(r) for r in rules]
        self.open = any(r.network == "*" for r in self.rules)
        # Rules that reach whole networks (any host, or more than a /16 or /48): with these an
        # unauthenticated server is close to an open proxy, so the daemon warns.
        self.broad = self.open or any(
            r.name == "*" or (r.net is not None and r.net.prefixlen < _BROAD[r.net.version])
            for r in self.rules
        )
        self.own = own

    def allows(self, dest: StreamAddress, addresses: list[IPAddress]) -> bool:
        """``addresses``: what ``dest.host`` resolved to (every one must be allowed)."""
        if self.open:
            return True
        if dest.is_unix:
            return self.unix_target(dest) is not None
        if not addresses:
            return False
        name = dest.host.lower().rstrip(".")
        kind = dest.network[:3]  # "tcp" or "udp": a rule of one never allows the other
        tcp = [r for r in self.rules if r.network == kind and r.port_lo <= dest.port <= r.port_hi]
        if any(r.name == name for r in tcp):
            return True  # the name itself is listed: whatever it resolves to was meant
        wildcard = any(r.name == "*" for r in tcp)
        return all(_address_allowed(a, tcp, wildcard, self.own) for a in addresses)

    def unix_target(self, dest: StreamAddress) -> str | None:
        """The path to connect to for ``dest`` (symlinks resolved), or None if it is denied.

        Both the path the token names and the path it resolves to must match a ``unix:`` rule,
        so a symlink inside an allowed directory cannot lead outside it.  A rule's directories
        are resolved too (``/var/run/*`` still allows ``/run/x.sock`` where ``/var/run`` links
        to ``/run``); its last component never is.  Connect to the returned path with
        ``unixdest.connect_unix``, which refuses it if it changed since (TOCTOU).
        """
        real = os.path.realpath(dest.path)
        if self.open:
            return real
        globs = [r.path_glob for r in self.rules if r.network == "unix"]
        if not any(_path_matches(dest.path, g) for g in globs):
            return None
        resolved = {_resolve_directories(g) for g in globs}
        return real if any(_path_matches(real, g) for g in resolved | set(globs)) else None


# Loopback, link-local (cloud metadata at 169.254.169.254) and "this host": reachable only
# through a rule that names them explicitly (an address or CIDR inside the block), never
# through a broader CIDR such as 0.0.0.0/0 or a ``*`` host.
_SENSITIVE = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "::1/128", "fe80::/10", "::/128")
)


def _address_allowed(
    addr: IPAddress, rules: list[Rule], wildcard: bool, own: Container[IPAddress] = frozenset()
) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    block = next((b for b in _SENSITIVE if addr.version == b.version and addr in b), None)
    if block is None and addr in own:
        block = ipaddress.ip_network(addr)  # only a rule for exactly this address
    if block is None:
        return wildcard or any(r.net is not None and _contains(r.net, addr) for r in rules)
    return any(
        r.net is not None
        and r.net.version == block.version
        and r.net.subnet_of(block)  # type: ignore[arg-type]
        and addr in r.net
        for r in rules
    )


def _resolve_directories(glob: str) -> str:
    """``glob`` with its literal leading directories resolved (never its last component)."""
    parts = glob.split("/")
    literal = 1
    while literal < len(parts) - 1 and not any(c in parts[literal] for c in "*?["):
        literal += 1
    if literal == 1:
        return glob
    head = os.path.realpath("/".join(parts[:literal]))
    return "/".join([head.rstrip("/"), *parts[literal:]])


def _path_matches(path: str, glob: str) -> bool:
    """Match component by component, so ``*`` never crosses ``/`` and ``..`` never escapes."""
    if not path.startswith("/") or posixpath.normpath(path) != path or "/../" in path + "/":
        return False
    parts, pattern = path.split("/"), glob.split("/")
    return len(parts) == len(pattern) and all(
        fnmatch.fnmatchcase(p, g) for p, g in zip(parts, pattern, strict=True)
    )


def _contains(net: IPNetwork, addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version == net.version and addr in net
