"""Address strings as quic-tun users write them: ``host:port`` and ``tcp:``/``unix:`` endpoints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.policy.addresses import (
    HostPort,
    StreamAddress,
    format_host_port,
    parse_host_port,
    parse_stream_address,
)

# ------------------------------------------------------------------------------ parse_host_port


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:7500", "127.0.0.1", 7500),
        ("0.0.0.0:1", "0.0.0.0", 1),
        ("10.1.2.3:65535", "10.1.2.3", 65535),
        ("[::1]:7500", "::1", 7500),
        ("[::]:443", "::", 443),
        ("[2001:db8::1]:80", "2001:db8::1", 80),
        ("[::ffff:192.0.2.1]:80", "::ffff:192.0.2.1", 80),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("localhost:22", "localhost", 22),
        ("example.com:443", "example.com", 443),
        ("my-host.internal.:8080", "my-host.internal.", 8080),
        ("  example.com:443\n", "example.com", 443),  # surrounding whitespace is ignored
        ("host:080", "host", 80),
    ],
)
def test_parse_host_port_ok(text: str, host: str, port: int) -> None:
    assert parse_host_port(text) == HostPort(host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a host:port"),
        ("127.0.0.1", "not a host:port"),
        ("7500", "not a host:port"),
        (":7500", "not a host:port"),  # no host
        ("::1:7500", "not a host:port"),  # IPv6 needs brackets
        ("2001:db8::1:80", "not a host:port"),
        ("[::1]", "not a host:port"),
        ("[::1]7500", "not a host:port"),
        ("[::1:7500", "not a host:port"),
        ("[example.com]:80", "IPv6"),
        ("[127.0.0.1]:80", "IPv6"),
        ("[]:80", "IPv6"),
        ("host:", "not a number"),
        ("host:http", "not a number"),
        ("host:-1", "not a number"),
        ("host:+80", "not a number"),
        ("host: 80", "not a number"),
        ("host:8 0", "not a number"),
        ("host:1e3", "not a number"),
        ("host:65536", "out of range"),
        ("host:99999999999999999999", "out of range"),
        ("host:0", "out of range"),
        ("[::1]:0", "out of range"),
    ],
)
def test_parse_host_port_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_host_port(text)
    assert repr(text.strip()) in str(info.value)  # the message quotes what was given


@pytest.mark.parametrize(
    "text",
    [
        "host:\u0668\u0660",  # ARABIC-INDIC DIGITS "80"
        "host:\uff18\uff10",  # FULLWIDTH DIGITS "80"
        "[::1]:\u0966\u0968",  # DEVANAGARI "02"
        "host:\u00b2",  # SUPERSCRIPT TWO: isdigit() but int() fails with a foreign message
    ],
)
def test_parse_host_port_rejects_non_ascii_digits(text: str) -> None:
    """quic-tun (Go ``strconv``) takes ASCII digits only; ``str.isdigit`` takes any script."""
    with pytest.raises(ValueError, match="not a number"):
        parse_host_port(text)


def test_port_zero_only_when_allowed() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_host_port("127.0.0.1:0")
    assert parse_host_port("127.0.0.1:0", allow_port_zero=True) == HostPort("127.0.0.1", 0)
    assert parse_host_port("[::1]:0", allow_port_zero=True) == HostPort("::1", 0)
    with pytest.raises(ValueError, match="out of range"):
        parse_host_port("127.0.0.1:65536", allow_port_zero=True)


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("127.0.0.1", 80, "127.0.0.1:80"),
        ("::1", 80, "[::1]:80"),
        ("fe80::1%eth0", 1, "[fe80::1%eth0]:1"),
        ("example.com", 443, "example.com:443"),
    ],
)
def test_format_and_str(host: str, port: int, text: str) -> None:
    assert format_host_port(host, port) == text
    assert str(HostPort(host, port)) == text
    assert parse_host_port(text) == HostPort(host, port)


# ---------------------------------------------------------------------------- parse_stream_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:127.0.0.1:6500", StreamAddress("tcp", "127.0.0.1", 6500)),
        ("tcp4:127.0.0.1:6500", StreamAddress("tcp4", "127.0.0.1", 6500)),
        ("tcp6:[::1]:6500", StreamAddress("tcp6", "::1", 6500)),
        ("tcp:[2001:db8::5]:22", StreamAddress("tcp", "2001:db8::5", 22)),
        ("tcp:db.internal:5432", StreamAddress("tcp", "db.internal", 5432)),
        ("TCP:127.0.0.1:6500", StreamAddress("tcp", "127.0.0.1", 6500)),
        ("Tcp4:127.0.0.1:6500", StreamAddress("tcp4", "127.0.0.1", 6500)),
        ("TCP6:[::1]:1", StreamAddress("tcp6", "::1", 1)),
        ("unix:/run/app.sock", StreamAddress("unix", path="/run/app.sock")),
        ("UNIX:/run/app.sock", StreamAddress("unix", path="/run/app.sock")),
        ("Unix:relative.sock", StreamAddress("unix", path="relative.sock")),
        ("unix:/tmp/with:colon", StreamAddress("unix", path="/tmp/with:colon")),
        (" tcp:127.0.0.1:6500 ", StreamAddress("tcp", "127.0.0.1", 6500)),
    ],
)
def test_parse_stream_address_ok(text: str, expected: StreamAddress) -> None:
    assert parse_stream_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "6500",
        "127.0.0.1:6500",  # a bare host:port is not a stream address
        "localhost:6500",
        "[::1]:6500",
        "",
        "tcp",
        "unix",
        "sctp:127.0.0.1:6500",  # udp: is an address since issue 16
        "tcp5:127.0.0.1:6500",
        "http://127.0.0.1:6500",
        ":127.0.0.1:6500",
    ],
)
def test_parse_stream_address_needs_a_known_network(text: str) -> None:
    with pytest.raises(ValueError, match="not a tcp:/unix: address") as info:
        parse_stream_address(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp:", "not a host:port"),
        ("tcp:127.0.0.1", "not a host:port"),
        ("tcp:6500", "not a host:port"),
        ("tcp6:::1:6500", "not a host:port"),
        ("tcp:127.0.0.1:0", "out of range"),
        ("tcp:127.0.0.1:70000", "out of range"),
        ("tcp:127.0.0.1:ssh", "not a number"),
        ("unix:", "needs a socket path"),
        ("unix:/tmp/a\x00b", "needs a socket path"),
    ],
)
def test_parse_stream_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_stream_address(text)


def test_stream_address_port_zero_only_when_allowed() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_stream_address("tcp:127.0.0.1:0")
    assert parse_stream_address("tcp:127.0.0.1:0", allow_port_zero=True) == StreamAddress(
        "tcp", "127.0.0.1", 0
    )


def test_unix_path_length_limit_counts_bytes() -> None:
    ok = "/" + "a" * 106  # 107 bytes: the most sun_path holds with its NUL
    assert parse_stream_address("unix:" + ok).path == ok
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        parse_stream_address("unix:" + ok + "a")
    wide = "/" + "é" * 53  # 107 bytes
    assert parse_stream_address("unix:" + wide).path == wide
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        parse_stream_address("unix:/" + "é" * 54)  # 54 characters, 109 bytes


def test_stream_address_properties_and_str() -> None:
    unix = parse_stream_address("unix:/run/x.sock")
    assert unix.is_unix
    assert (unix.host, unix.port) == ("", 0)
    assert str(unix) == "unix:/run/x.sock"
    tcp = parse_stream_address("TCP6:[::1]:80")
    assert not tcp.is_unix
    assert str(tcp) == "tcp6:[::1]:80"
    assert str(parse_stream_address("tcp4:example.com:1")) == "tcp4:example.com:1"


@pytest.mark.parametrize(
    "text",
    [
        "tcp:127.0.0.1:6500",
        "tcp4:10.0.0.1:1",
        "tcp6:[2001:db8::1]:65535",
        "tcp:[::ffff:10.0.0.1]:80",
        "tcp:name.example:443",
        "unix:/run/quictun/app.sock",
        "unix:@abstract",
        "unix:/" + "p" * 106,
    ],
)
def test_str_round_trips(text: str) -> None:
    addr = parse_stream_address(text)
    assert str(addr) == text
    assert parse_stream_address(str(addr)) == addr


# ------------------------------------------------------------------------------ properties


@given(st.text())
def test_parse_host_port_fuzz(text: str) -> None:
    try:
        hp = parse_host_port(text, allow_port_zero=True)
    except ValueError:
        return
    assert 0 <= hp.port <= 65535
    assert parse_host_port(str(hp), allow_port_zero=True) == hp


@given(st.text())
def test_parse_stream_address_fuzz(text: str) -> None:
    try:
        addr = parse_stream_address(text)
    except ValueError:
        return
    assert addr.network in ("tcp", "tcp4", "tcp6", "unix")
    if addr.is_unix:
        assert addr.path and "\x00" not in addr.path
    else:
        assert 1 <= addr.port <= 65535
    assert parse_stream_address(str(addr)) == addr


networks = st.sampled_from(["tcp", "TCP", "tcp4", "Tcp6", "unix", "UNIX", "udp", ""])


@given(networks, st.text(max_size=40), st.integers(-5, 70000))
def test_parse_stream_address_fuzz_structured(network: str, host: str, port: int) -> None:
    for text in (f"{network}:{host}:{port}", f"{network}:[{host}]:{port}", f"{network}:{host}"):
        try:
            addr = parse_stream_address(text)
        except ValueError:
            continue
        assert addr.network == network.lower()
        assert parse_stream_address(str(addr)) == addr


def test_udp_addresses_are_udp_flows() -> None:
    for text in ("udp:127.0.0.1:5353", "UDP4:10.0.0.53:53", "udp6:[::1]:53"):
        address = parse_stream_address(text)
        assert address.is_udp and not address.is_unix
        assert str(address) == text.lower()
    assert not parse_stream_address("tcp:127.0.0.1:22").is_udp
