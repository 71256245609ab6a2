"""Destination policy: rule parsing and the allow/deny truth table (pure, no DNS)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.policy.addresses import StreamAddress, parse_stream_address
from quictund.policy.policy import IPAddress, Policy, Rule, parse_rule


def ips(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(t) for t in texts]


def allows(rules: list[str], dest: str, *addresses: str) -> bool:
    """``addresses`` default to the destination's own IP literal, as the server resolves it."""
    addr = parse_stream_address(dest)
    if not addresses and not addr.is_unix:
        addresses = (addr.host,)
    return Policy(rules).allows(addr, ips(*addresses))


# ------------------------------------------------------------------------------ parse_rule


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("*", Rule("*")),
        ("  *  ", Rule("*")),
        (
            "tcp:10.0.0.0/8:22",
            Rule("tcp", net=ipaddress.ip_network("10.0.0.0/8"), port_lo=22, port_hi=22),
        ),
        (
            "tcp:10.1.2.3/8:22",
            Rule("tcp", net=ipaddress.ip_network("10.0.0.0/8"), port_lo=22, port_hi=22),
        ),  # host bits are ignored
        (
            "tcp:192.0.2.7:443",
            Rule("tcp", net=ipaddress.ip_network("192.0.2.7/32"), port_lo=443, port_hi=443),
        ),
        (
            "TCP4:10.0.0.0/8:8000-8100",
            Rule("tcp", net=ipaddress.ip_network("10.0.0.0/8"), port_lo=8000, port_hi=8100),
        ),
        ("tcp6:[2001:db8::/32]:*", Rule("tcp", net=ipaddress.ip_network("2001:db8::/32"))),
        ("tcp:[::1]:1-65535", Rule("tcp", net=ipaddress.ip_network("::1/128"), port_lo=1)),
        ("tcp:*:443", Rule("tcp", name="*", port_lo=443, port_hi=443)),
        ("tcp:DB.Internal.:5432", Rule("tcp", name="db.internal", port_lo=5432, port_hi=5432)),
        ("unix:/run/app.sock", Rule("unix", path_glob="/run/app.sock")),
        ("UNIX:/run/postgresql/*", Rule("unix", path_glob="/run/postgresql/*")),
    ],
)
def test_parse_rule(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    "text",
    [
        "",
        "**",
        "tcp",
        "tcp:",
        "tcp:10.0.0.1",  # no ports
        "sctp:10.0.0.1:22",  # udp: is a rule since issue 16
        "tcp5:10.0.0.1:22",
        "10.0.0.1:22",  # no network
        "unix:",
        "unix:relative.sock",
        "unix:*.sock",
        "tcp:10.0.0.1:",
        "tcp:10.0.0.1:0",
        "tcp:10.0.0.1:65536",
        "tcp:10.0.0.1:0-80",
        "tcp:10.0.0.1:100-1",
        "tcp:10.0.0.1:1-",
        "tcp:10.0.0.1:-1",
        "tcp:10.0.0.1:a-b",
        "tcp:10.0.0.1:ssh",
        "tcp:10.0.0.1:1-2-3",
        "tcp::22",  # empty host
        "tcp:[]:22",
        "tcp:[::1:22",  # unclosed bracket
        "tcp:[::1]22",  # no colon after the bracket
        "tcp:[::1]",
        "tcp:10.0.0.0/33:22",  # not a CIDR, and "/" cannot be in a name
        "tcp:bad host:22",
        "tcp:*.example.com:22",  # no wildcard names
        "tcp:a?b:22",
    ],
)
def test_parse_rule_rejects_with_the_rule_in_the_message(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rule(text)
    assert repr(text.strip()) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "tcp:10.0.0.1:8_0",  # int() takes digit separators
        "tcp:10.0.0.1:+80",  # ... a sign
        "tcp:10.0.0.1: 80",  # ... surrounding whitespace
        "tcp:10.0.0.1:80 -90",
        "tcp:10.0.0.1:\u0668\u0660",  # ... and any script's digits (ARABIC-INDIC "80")
    ],
)
def test_parse_rule_ports_are_ascii_digits_only(text: str) -> None:
    """A port in a rule is written as in an address (``addresses.parse_host_port``)."""
    with pytest.raises(ValueError, match="ports must be"):
        parse_rule(text)


def test_policy_constructor_validates_every_rule() -> None:
    with pytest.raises(ValueError, match="tcp:10.0.0.1:0"):
        Policy(["*", "tcp:10.0.0.1:0"])
    assert Policy([]).rules == []
    assert Policy(["*"]).open
    assert not Policy(["tcp:*:*"]).open


# ------------------------------------------------------------------------------ allows: TCP


CIDR_V4 = ["tcp:10.0.0.0/8:22"]
CIDR_V6 = ["tcp:[2001:db8::/32]:443"]
RANGE = ["tcp:192.0.2.0/24:8000-8100"]


@pytest.mark.parametrize(
    ("rules", "dest", "addresses", "expected"),
    [
        # IPv4 CIDR
        (CIDR_V4, "tcp:10.1.2.3:22", (), True),
        (CIDR_V4, "tcp4:10.255.255.255:22", (), True),
        (CIDR_V4, "tcp:10.1.2.3:23", (), False),
        (CIDR_V4, "tcp:11.0.0.1:22", (), False),
        (CIDR_V4, "tcp:9.255.255.255:22", (), False),
        (CIDR_V4, "tcp6:[::1]:22", (), False),
        # IPv6 CIDR
        (CIDR_V6, "tcp:[2001:db8::1]:443", (), True),
        (CIDR_V6, "tcp6:[2001:db8:ffff::1]:443", (), True),
        (CIDR_V6, "tcp:[2001:db9::1]:443", (), False),
        (CIDR_V6, "tcp:[2001:db8::1]:80", (), False),
        (CIDR_V6, "tcp:192.0.2.1:443", (), False),
        # port ranges are inclusive
        (RANGE, "tcp:192.0.2.1:7999", (), False),
        (RANGE, "tcp:192.0.2.1:8000", (), True),
        (RANGE, "tcp:192.0.2.1:8050", (), True),
        (RANGE, "tcp:192.0.2.1:8100", (), True),
        (RANGE, "tcp:192.0.2.1:8101", (), False),
        (["tcp:192.0.2.1:*"], "tcp:192.0.2.1:1", (), True),
        (["tcp:192.0.2.1:*"], "tcp:192.0.2.1:65535", (), True),
        (["tcp:192.0.2.1:*"], "tcp:192.0.2.2:1", (), False),
        # host names: matched on the name in the token, whatever it resolves to
        (["tcp:db.internal:5432"], "tcp:db.internal:5432", ("203.0.113.9",), True),
        (["tcp:db.internal:5432"], "tcp:DB.INTERNAL.:5432", ("203.0.113.9",), True),
        (["tcp:db.internal:5432"], "tcp:db.internal:5433", ("203.0.113.9",), False),
        (["tcp:db.internal:5432"], "tcp:db.internal.evil:5432", ("203.0.113.9",), False),
        (["tcp:db.internal:5432"], "tcp:evil-db.internal:5432", ("203.0.113.9",), False),
        (["tcp:db.internal:5432"], "tcp:203.0.113.9:5432", (), False),
        # "*" as host: any host on those ports
        (["tcp:*:443"], "tcp:anything.example:443", ("198.51.100.1",), True),
        # ... but not loopback: sensitive addresses need a rule that names them (issue 5)
        (["tcp:*:443"], "tcp:[::1]:443", (), False),
        (["tcp:*:443"], "tcp:anything.example:80", ("198.51.100.1",), False),
        # a name resolving to nothing is never allowed (unless the policy is open)
        (["tcp:*:*"], "tcp:nowhere.example:80", None, False),
        (CIDR_V4, "tcp:nowhere.example:22", None, False),
        # several rules: any may allow
        ([*CIDR_V4, *CIDR_V6], "tcp:[2001:db8::1]:443", (), True),
        ([*CIDR_V4, *CIDR_V6], "tcp:10.0.0.1:22", (), True),
        ([*CIDR_V4, *CIDR_V6], "tcp:10.0.0.1:443", (), False),
        # no rules at all: nothing
        ([], "tcp:10.0.0.1:22", (), False),
        # unix rules do not allow TCP
        (["unix:/*"], "tcp:10.0.0.1:22", (), False),
    ],
)
def test_allows_tcp(
    rules: list[str], dest: str, addresses: tuple[str, ...] | None, expected: bool
) -> None:
    addr = parse_stream_address(dest)
    if addresses is None:
        resolved: list[IPAddress] = []
    else:
        resolved = ips(*(addresses or (addr.host,)))
    assert Policy(rules).allows(addr, resolved) is expected


def test_open_policy_allows_everything() -> None:
    policy = Policy(["*"])
    assert policy.allows(parse_stream_address("tcp:10.0.0.1:1"), ips("10.0.0.1"))
    assert policy.allows(parse_stream_address("tcp:name.example:22"), [])
    assert policy.allows(parse_stream_address("unix:/etc/shadow"), [])
    # "*" anywhere in the list opens the policy
    assert Policy(["tcp:10.0.0.1:22", "*"]).allows(parse_stream_address("unix:/x"), [])


# ------------------------------------------------------------------------------ several addresses


def test_a_name_resolving_to_several_addresses_needs_every_one_allowed() -> None:
    rules = ["tcp:10.0.0.0/8:80"]
    assert allows(rules, "tcp:svc.example:80", "10.0.0.1", "10.0.0.2")
    assert not allows(rules, "tcp:svc.example:80", "10.0.0.1", "192.0.2.1")
    assert not allows(rules, "tcp:svc.example:80", "192.0.2.1", "10.0.0.1")
    assert not allows(rules, "tcp:svc.example:80", "10.0.0.1", "2001:db8::1")


def test_several_addresses_may_be_covered_by_different_rules() -> None:
    rules = ["tcp:10.0.0.0/8:80", "tcp:[2001:db8::/32]:80"]
    assert allows(rules, "tcp:svc.example:80", "10.0.0.1", "2001:db8::1")
    # ... but every rule used must cover the port
    rules = ["tcp:10.0.0.0/8:80", "tcp:[2001:db8::/32]:443"]
    assert not allows(rules, "tcp:svc.example:80", "10.0.0.1", "2001:db8::1")


# ------------------------------------------------------------------------------ IPv4-mapped IPv6


@pytest.mark.parametrize(
    ("rules", "address", "expected"),
    [
        (["tcp:127.0.0.0/8:80"], "::ffff:127.0.0.1", True),
        (["tcp:10.0.0.0/8:80"], "::ffff:10.9.8.7", True),
        (["tcp:10.0.0.0/8:80"], "::ffff:192.0.2.1", False),
        (["tcp:192.0.2.1:80"], "::ffff:192.0.2.1", True),
        (["tcp:192.0.2.1:80"], "::ffff:192.0.2.2", False),
        # an IPv6 rule does not accidentally cover IPv4 via the mapped prefix
        (["tcp:[::/0]:80"], "::ffff:192.0.2.1", False),
        (["tcp:[::/0]:80"], "2001:db8::1", True),
        (["tcp:0.0.0.0/0:80"], "2001:db8::1", False),
    ],
)
def test_ipv4_mapped_addresses_are_checked_as_ipv4(
    rules: list[str], address: str, expected: bool
) -> None:
    assert allows(rules, f"tcp:[{address}]:80") is expected
    assert allows(rules, "tcp:mapped.example:80", address) is expected


# ------------------------------------------------------------------------------ allows: UNIX


@pytest.mark.parametrize(
    ("rules", "path", "expected"),
    [
        (["unix:/run/app.sock"], "/run/app.sock", True),
        (["unix:/run/app.sock"], "/run/app.sock2", False),
        (["unix:/run/app.sock"], "/run/app", False),
        (["unix:/run/app.sock"], "/RUN/APP.SOCK", False),  # paths are case-sensitive
        (["unix:/run/app.sock"], "run/app.sock", False),
        (["unix:/run/postgresql/*"], "/run/postgresql/.s.PGSQL.5432", True),
        # not a normalised path (trailing slash): denied, like every non-normalised path
        (["unix:/run/postgresql/*"], "/run/postgresql/", False),
        (["unix:/run/postgresql/*"], "/run/postgres/.s.PGSQL.5432", False),
        (["unix:/run/postgresql/*"], "/run/postgresql", False),
        (["unix:/run/*.sock"], "/run/a.sock", True),
        (["unix:/run/*.sock"], "/run/a.socket", False),
        (["unix:/run/app-?.sock"], "/run/app-1.sock", True),
        (["unix:/run/app-?.sock"], "/run/app-12.sock", False),
        (["unix:/run/app-[12].sock"], "/run/app-2.sock", True),
        (["unix:/run/app-[12].sock"], "/run/app-3.sock", False),
        (["unix:/a.sock", "unix:/b.sock"], "/b.sock", True),
        (["tcp:*:*"], "/run/app.sock", False),  # TCP rules do not allow UNIX
        ([], "/run/app.sock", False),
    ],
)
def test_allows_unix(rules: list[str], path: str, expected: bool) -> None:
    dest = StreamAddress("unix", path=path)
    assert Policy(rules).allows(dest, []) is expected
    # resolved addresses are irrelevant for UNIX destinations
    assert Policy(rules).allows(dest, ips("10.0.0.1")) is expected


@pytest.mark.parametrize(
    "path",
    [
        "/run/postgresql/../../var/run/docker.sock",
        "/run/postgresql/./../../etc/shadow",
        "/run/postgresql/../postgresql-other/.s.PGSQL.5432",
        "/run/postgresql/..",
    ],
)
def test_unix_glob_does_not_let_dot_dot_escape_the_directory(path: str) -> None:
    """The server connects to the token's path as given, so ``..`` must not pass a glob.

    ``fnmatch``'s ``*`` matches ``/`` and ``..``: ``/run/postgresql/*`` would let a client
    reach any socket on the host (the Docker socket, say).
    """
    assert not Policy(["unix:/run/postgresql/*"]).allows(StreamAddress("unix", path=path), [])


# ------------------------------------------------------------------------------ properties


@given(st.text())
def test_parse_rule_fuzz_raises_only_value_error(text: str) -> None:
    try:
        rule = parse_rule(text)
    except ValueError:
        return
    assert rule.network in ("*", "tcp", "unix")
    assert 0 <= rule.port_lo <= rule.port_hi <= 65535


@given(
    st.sampled_from(["tcp", "TCP", "tcp4", "tcp6", "unix", "udp", "*", ""]),
    st.text(max_size=30),
    st.one_of(st.integers(-3, 70000).map(str), st.text(max_size=8)),
)
def test_parse_rule_fuzz_structured(network: str, host: str, ports: str) -> None:
    for text in (f"{network}:{host}:{ports}", f"{network}:[{host}]:{ports}", f"{network}:{host}"):
        try:
            rule = parse_rule(text)
        except ValueError as exc:
            assert repr(text.strip()) in str(exc) or text.strip() in str(exc)
            continue
        assert rule.network in ("*", "tcp", "udp", "unix")


@given(
    st.lists(
        st.sampled_from(
            [
                "tcp:10.0.0.0/8:1-1024",
                "tcp:[2001:db8::/32]:*",
                "tcp:svc.example:443",
                "unix:/run/*",
                "tcp:127.0.0.1:22",
            ]
        ),
        max_size=4,
    ),
    st.lists(st.ip_addresses(), min_size=1, max_size=4),
    st.integers(1, 65535),
)
def test_allows_is_monotonic_in_addresses(
    rules: list[str], addresses: list[IPAddress], port: int
) -> None:
    """Adding an address can only turn allow into deny; each allowed alone if all are."""
    policy = Policy(rules)
    dest = StreamAddress("tcp", "other.example", port)
    if policy.allows(dest, addresses):
        assert all(policy.allows(dest, [a]) for a in addresses)


# ------------------------------------------------------------------------------ sensitive


LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "0177.0.0.1",
    "127.255.255.254",
    "127.0.0.2",
    "0",
    "0.0.0.0",
    "::1",
    "0:0:0:0:0:0:0:1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "localhost",
]
METADATA_SPELLINGS = [
    "169.254.169.254",
    "169.254.43518",
    "0xa9.0xfe.0xa9.0xfe",
    "2852039166",
    "::ffff:169.254.169.254",
    "fe80::1",
]


def resolve(host: str) -> list[IPAddress]:
    """What the server does: getaddrinfo (numeric forms and /etc/hosts only, no network)."""
    infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV)
    return [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS + METADATA_SPELLINGS)
@pytest.mark.parametrize(
    "rules",
    [["tcp:0.0.0.0/0:*", "tcp:[::/0]:*"], ["tcp:*:*"], ["tcp:0.0.0.0/1:*", "tcp:128.0.0.0/1:*"]],
)
def test_broad_rules_never_reach_loopback_or_metadata(rules: list[str], spelling: str) -> None:
    host = f"[{spelling}]" if ":" in spelling else spelling
    dest = parse_stream_address(f"tcp:{host}:80")
    addresses = resolve(spelling)
    assert addresses, spelling
    assert Policy(rules).allows(dest, addresses) is False


@pytest.mark.parametrize(
    ("rule", "spelling"),
    [
        ("tcp:127.0.0.1:80", "127.1"),
        ("tcp:127.0.0.0/8:80", "0x7f.0.0.1"),
        ("tcp:169.254.169.254:80", "2852039166"),
        ("tcp:[::1]:80", "::1"),
        ("tcp:127.0.0.1:80", "::ffff:127.0.0.1"),
    ],
)
def test_explicit_rules_do_reach_them(rule: str, spelling: str) -> None:
    host = f"[{spelling}]" if ":" in spelling else spelling
    assert Policy([rule]).allows(parse_stream_address(f"tcp:{host}:80"), resolve(spelling))


def test_open_policy_still_reaches_loopback() -> None:
    """``allow = ["*"]`` is quic-tun's open proxy, loopback included (logged as a WARNING)."""
    assert Policy(["*"]).allows(parse_stream_address("tcp:127.0.0.1:22"), resolve("127.0.0.1"))


def test_own_addresses_need_a_rule_that_names_them() -> None:
    own = frozenset(ips("192.0.2.2", "fd00::2"))
    dest = parse_stream_address("tcp:192.0.2.2:22")
    assert Policy(["tcp:192.0.2.0/24:22"], own=own).allows(dest, ips("192.0.2.2")) is False
    assert Policy(["tcp:*:22"], own=own).allows(dest, ips("192.0.2.2")) is False
    assert Policy(["tcp:192.0.2.2:22"], own=own).allows(dest, ips("192.0.2.2")) is True
    # a neighbour in the same subnet is not this host: the broad rule reaches it
    other = parse_stream_address("tcp:192.0.2.3:22")
    assert Policy(["tcp:192.0.2.0/24:22"], own=own).allows(other, ips("192.0.2.3")) is True


def test_local_addresses_include_loopback() -> None:
    from quictund.policy.hostaddrs import host_addresses, proc_addresses

    # netlink and the /proc fallback must both work, also under systemd's sandbox (make
    # e2e-systemd runs this test inside the unit: RestrictAddressFamilies must allow
    # AF_NETLINK, and ProcSubset=pid hides /proc/net)
    for found in (host_addresses().current(), proc_addresses()):
        assert ipaddress.ip_address("127.0.0.1") in found
        if "00000000000000000000000000000001" in Path("/proc/self/net/if_inet6").read_text():
            assert ipaddress.ip_address("::1") in found
    assert host_addresses()._fallback is False  # netlink, not the slower /proc fallback


@pytest.mark.parametrize(
    ("rules", "broad"),
    [
        (["tcp:10.0.0.5:22", "unix:/run/app.sock", "tcp:db.internal:5432"], False),
        (["tcp:10.1.0.0/16:*"], False),
        (["tcp:10.0.0.0/8:22"], True),
        (["tcp:*:443"], True),
        (["tcp:[2001:db8::/32]:22"], True),
        (["tcp:[2001:db8:0:1::/64]:22"], False),
        (["*"], True),
    ],
)
def test_broad_rules_are_recognised(rules: list[str], broad: bool) -> None:
    assert Policy(rules).broad is broad


def test_udp_rules_allow_only_udp_and_keep_the_loopback_rule() -> None:
    policy = Policy(["udp:10.0.0.53:53", "udp:0.0.0.0/0:5353", "tcp:10.0.0.5:22"])
    ip = ipaddress.ip_address
    assert policy.allows(parse_stream_address("udp:10.0.0.53:53"), [ip("10.0.0.53")])
    assert not policy.allows(parse_stream_address("tcp:10.0.0.53:53"), [ip("10.0.0.53")])
    assert not policy.allows(parse_stream_address("udp:10.0.0.5:22"), [ip("10.0.0.5")])
    assert policy.allows(parse_stream_address("udp:8.8.8.8:5353"), [ip("8.8.8.8")])
    assert not policy.allows(parse_stream_address("udp:127.0.0.1:5353"), [ip("127.0.0.1")])
    assert not policy.allows(parse_stream_address("udp4:x:5353"), [ip("169.254.169.254")])
