"""Properties of every parser of outside input that its own test module does not already cover.

The audit (issue 5 item 6) found hypothesis properties already in place for the 512-byte token
(test_wire), Cleartext (test_tokens), File token lines (test_tokens), addresses
(test_addresses), policy rule parsing (test_policy), the classifiers (test_classify) and the API
over a real socket (test_api).  This module adds what was missing:

* Signed tokens: sign/verify round trip, and *every* single-bit flip of a valid token refused
  (this found that the MAC was compared after a lenient base64 decode, see test_signed);
* Http token source replies: any body gives a token or a one-line ``TokenError``;
* TOML configuration: any file gives a ``Config`` or ``ConfigProblems`` of one-line messages,
  never another exception, and whatever loads survives ``dump`` -> ``load`` unchanged;
* the API router on any request: a response with a known status, never an exception, never 500;
* the policy: loopback/link-local addresses are allowed only by a rule that names their block;
* Cleartext: the token of any valid address parses back to it (plain and base64).

Runtimes stay modest for CI (2 cores): every ``max_examples`` is scaled by
:func:`budget`, so ``HYPOTHESIS_PROFILE=fuzz`` (tests/conftest.py) turns this into a long run.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quictund.api.app import Request, Router
from quictund.config.files import ConfigProblems, dump, load
from quictund.errors import TokenError, TokenRejected
from quictund.policy.addresses import StreamAddress, parse_stream_address
from quictund.policy.policy import Policy
from quictund.tokens.parsers import Cleartext
from quictund.tokens.signed import sign, verify
from quictund.tokens.sources import Http
from tests.hypothesis_profiles import budget

SECRET = b"k" * 48
NOW = 1_800_000_000

# ------------------------------------------------------------------------------ Signed

_destinations = st.one_of(
    st.builds(
        lambda ip, port: f"tcp:[{ip}]:{port}" if ip.version == 6 else f"tcp:{ip}:{port}",
        st.ip_addresses(),
        st.integers(1, 65535),
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=60).map(
        lambda p: "unix:/" + p
    ),
)
_audiences = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=budget(100))
@given(_destinations, _audiences, st.integers(NOW + 1, NOW + 10**9))
def test_signed_round_trip(dest: str, audience: str, expires_at: int) -> None:
    try:
        token = sign(dest, secret=SECRET, audience=audience, expires_at=expires_at)
    except ValueError:
        return  # longer than the wire allows: refused at signing, never truncated
    assert token.isascii() and len(token) <= 512
    assert verify(token, secret=SECRET, audience=audience, now=NOW) == dest


@settings(max_examples=budget(40), deadline=None)
@given(_destinations, st.integers(NOW + 1, NOW + 10**6))
def test_signed_rejects_every_single_bit_flip(dest: str, expires_at: int) -> None:
    """No other string than the issued one verifies: a flipped bit anywhere is refused."""
    try:
        token = sign(dest, secret=SECRET, audience="edge", expires_at=expires_at)
    except ValueError:
        return  # too long for the wire (refused at signing, see test_signed_round_trip)
    raw = token.encode()
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            text = flipped.decode("utf-8", "surrogateescape")
            with pytest.raises(TokenRejected):
                verify(text, secret=SECRET, audience="edge", now=NOW)


@given(st.text(max_size=600), st.sampled_from(["", "qt1.", "qt1.e30."]))
def test_signed_arbitrary_text_including_surrogates(text: str, prefix: str) -> None:
    try:
        verify(prefix + text, secret=SECRET, audience="edge", now=NOW)
    except TokenRejected as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------------------------------ Cleartext


@given(_destinations)
def test_cleartext_parses_what_an_address_prints(dest: str) -> None:
    try:
        address = parse_stream_address(dest)
    except ValueError:
        return
    assume(address.is_unix or address.host.isprintable())
    assert Cleartext("").parse(str(address)) == address
    encoded = base64.b64encode(str(address).encode()).decode()
    assert Cleartext("base64").parse(encoded) == address


# ------------------------------------------------------------------------------ Http replies

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_bodies = st.one_of(
    st.binary(max_size=512),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["token", "Token", "x"]), _json_values).map(
        lambda d: json.dumps(d).encode()
    ),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.integers(1, 5000).map(lambda n: b'{"token":' + b"9" * n + b"}"),  # huge numbers
)


@given(st.integers(200, 299), _bodies)
def test_http_reply_body_gives_a_token_or_one_line_error(status: int, body: bytes) -> None:
    source = Http("http://127.0.0.1:9/t")
    try:
        token = source._token_from(status, body)
    except TokenError as exc:
        assert "\n" not in str(exc) and "Traceback" not in str(exc)
        return
    assert isinstance(token, str) and token
    assert json.loads(body)["token"] == token


# ------------------------------------------------------------------------------ TOML config

_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
# Values that are mostly valid, so generated files often load and reach the round trip.
_FIELDS: dict[str, Any] = {
    "idle-timeout": st.floats(-1, 700),
    "keep-alive": st.floats(0, 300),
    "dead-after": st.floats(0.1, 600),
    "handshake-timeout": st.floats(0.1, 120),
    "congestion-control": st.sampled_from(["reno", "cubic", "bbr"]),
    "max-datagram-size": st.integers(1100, 1500),
    "stream-window": st.integers(64 * 1024, 64 * 1024 * 1024),
    "max-tunnels": st.integers(0, 1_000_000),
    "token-timeout": st.floats(0.1, 120),
    "cert-file": st.text(max_size=20),
    "ca-file": st.text(max_size=20),
    "verify-remote-endpoint": st.booleans(),
    "token-audience": st.text(max_size=10),
}
_CLIENT: dict[str, Any] = {
    "listen-on": st.sampled_from(["tcp:127.0.0.1:0", "unix:/run/x.sock", "6500", "tcp:[::1]:1"]),
    "server-endpoint": st.sampled_from(["127.0.0.1:7500", "[::1]:7500", "h.example:1", "x"]),
    "token-source-plugin": st.sampled_from(["Fixed", "File", "Http", "Signed"]),
    "token-source": st.text(max_size=30),
    "token-map": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
    "server-fingerprint": st.sampled_from(["sha256:" + "A" * 43 + "=", "sha256:x"]),
    "unix-socket-mode": st.integers(-1, 0o1000),
    "connect-wait": st.floats(0, 300),
}
_SERVER: dict[str, Any] = {
    "listen-on": st.sampled_from(["127.0.0.1:0", "[::]:7500", "0.0.0.0:70000", "7500"]),
    "token-parser-plugin": st.sampled_from(["Cleartext", "Signed"]),
    "token-parser-key": st.sampled_from(["", "base64", "bas64"]),
    "allow": st.lists(st.sampled_from(["*", "tcp:10.0.0.0/8:22", "unix:/run/*", "x"]), max_size=3),
    "allow-for": st.lists(
        st.fixed_dictionaries({"identity": st.text(max_size=8), "allow": st.just(["*"])}),
        max_size=2,
    ),
    "client-fingerprints": st.lists(st.sampled_from(["sha256:" + "B" * 43 + "=", "md5:x"])),
    "max-connections": st.integers(0, 10**6),
    "connect-timeout": st.floats(0.1, 300),
}


@st.composite
def _listener(draw: st.DrawFn, specific: dict[str, Any], index: int) -> dict[str, Any]:
    table: dict[str, Any] = {"name": f"l{index}"}
    fields = {**_FIELDS, **specific}
    for key in draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=8)):
        table[key] = draw(fields[key])
    if draw(st.booleans()):
        table[draw(st.text(min_size=1, max_size=8))] = draw(_junk)  # a typo or hostile key
    if draw(st.integers(0, 9)) == 0:
        del table["name"]
    return table


@st.composite
def _config_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    n_clients, n_servers = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    if n_clients:
        doc["client"] = [draw(_listener(_CLIENT, i)) for i in range(n_clients)]
    if n_servers:
        doc["server"] = [draw(_listener(_SERVER, 10 + i)) for i in range(n_servers)]
    for section, values in (
        ("log", {"level": st.sampled_from(["debug", "info", "loud"]), "format": _scalars}),
        ("api", {"socket": st.text(max_size=10), "listen-on": st.text(max_size=12)}),
        ("daemon", {"shutdown-grace": st.floats(-1, 4000)}),
    ):
        if draw(st.booleans()):
            keys = draw(st.lists(st.sampled_from(sorted(values)), unique=True))
            doc[section] = {k: draw(values[k]) for k in keys}
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.text(min_size=1, max_size=8))] = draw(_junk)
    return doc


def _load_text(text: str | bytes) -> Any:
    """load() one file holding ``text``; return the Config or the ConfigProblems raised."""
    with tempfile.TemporaryDirectory(prefix="qt-") as d:
        path = Path(d) / "fuzz.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "replace"))
        try:
            return load([path])
        except ConfigProblems as exc:
            assert exc.lines, "ConfigProblems without a problem"
            for line in exc.lines:
                assert line.startswith("fuzz.toml: "), line
                assert "\n" not in line and "\r" not in line, repr(line)
                assert "Traceback" not in line
            return exc


@settings(max_examples=budget(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_config_arbitrary_bytes(text: str | bytes) -> None:
    _load_text(text)


@settings(max_examples=budget(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_config_documents())
def test_config_documents_load_or_explain_and_round_trip(doc: dict[str, Any]) -> None:
    result = _load_text(tomli_w.dumps(doc))
    if isinstance(result, ConfigProblems):
        return
    for minimal in (False, True):
        again = _load_text(dump(result, minimal=minimal))
        assert not isinstance(again, ConfigProblems), again.lines
        assert again.to_file() == result.to_file()


# ------------------------------------------------------------------------------ API router


class _Provider:
    def tunnels(self) -> list[Any]:
        return []

    def close_tunnel(self, uuid: str) -> bool:
        return uuid == "known"

    def listeners(self) -> list[dict[str, object]]:
        return []

    def health(self) -> dict[str, object]:
        return {"status": "ok"}

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


_ROUTER = Router(_Provider())
_PATHS = ["/tunnels", "/tunnels/", "/tunnels/known", "/listeners", "/healthz", "/metrics"]
_targets = st.one_of(
    st.sampled_from(["*", "", "http://h/tunnels", "HTTPS://h", "/%", "/%zz", "/%ff", "/%2F"]),
    st.tuples(st.sampled_from(_PATHS), st.text(max_size=12)).map("".join),
    # what http.py hands over: h11's target bytes decoded as ASCII with replacement
    st.binary(max_size=40).map(lambda b: b.decode("ascii", "replace")),
)


@given(st.sampled_from(["GET", "HEAD", "DELETE", "POST", "BREW", "get"]), _targets)
def test_router_answers_every_request(method: str, target: str) -> None:
    response = _ROUTER.handle(Request(method, target))
    assert response.status in (200, 204, 400, 404, 405)
    if response.content_type == "application/json":
        json.loads(response.body)


# ------------------------------------------------------------------------------ policy

_SENSITIVE = [
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "::1/128", "fe80::/10", "::/128")
]


def _in(net: str) -> st.SearchStrategy[Any]:
    network = ipaddress.ip_network(net)
    first, size = int(network.network_address), network.num_addresses
    return st.integers(0, size - 1).map(lambda i: ipaddress.ip_address(first + i))


_sensitive_addresses = st.one_of(
    *(_in(str(n)) for n in _SENSITIVE),
    _in("127.0.0.0/8").map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),
    _in("169.254.0.0/16").map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}")),
)
_cidrs = st.one_of(
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(v=4), st.integers(0, 32)),
    st.builds(lambda a, p: f"[{a}/{p}]", st.ip_addresses(v=6), st.integers(0, 128)),
    _sensitive_addresses.map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
    st.just("*"),
)
_rules = st.lists(
    st.builds(lambda host, ports: f"tcp:{host}:{ports}", _cidrs, st.sampled_from(["*", "80"])),
    max_size=4,
)


def _names_block(rule: str, addr: Any) -> bool:
    """Does ``rule`` name (a CIDR inside) the sensitive block ``addr`` is in?"""
    host = rule.split(":", 1)[1].rpartition(":")[0].strip("[]")
    if host == "*":
        return False
    net = ipaddress.ip_network(host, strict=False)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    block = next(b for b in _SENSITIVE if b.version == addr.version and addr in b)
    return net.version == block.version and net.subnet_of(block) and addr in net  # type: ignore[arg-type]


@given(_rules, _sensitive_addresses, st.lists(st.ip_addresses(), max_size=2))
def test_policy_never_allows_sensitive_addresses_unless_a_rule_names_them(
    rules: list[str], addr: Any, others: list[Any]
) -> None:
    dest = StreamAddress("tcp", "svc.example", 80)
    if Policy(rules).allows(dest, [addr, *others]):
        assert any(_names_block(r, addr) for r in rules), (rules, addr)
