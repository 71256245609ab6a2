"""Token plugins: sources (Fixed, File, Http), the Cleartext parser and the registries.

Http is tested against a real HTTP/1.1 server on 127.0.0.1 (port 0) that writes raw responses,
so timeouts, status handling, framing and the body cap are exercised through real sockets; the
file format and the parser are also fuzzed with hypothesis.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.errors import ConfigError, TokenError, TokenRejected
from quictund.policy.addresses import StreamAddress
from quictund.tokens import TokenParser, TokenSource, make_parser, make_source
from quictund.tokens.parsers import Cleartext
from quictund.tokens.sources import File, Fixed, Http, parse_token_file

# ------------------------------------------------------------------------------ registries


@pytest.mark.parametrize(
    ("name", "cls"),
    [("fixed", Fixed), ("FIXED", Fixed), ("Fixed", Fixed), ("file", File), ("FILE", File)],
)
def test_source_names_are_case_insensitive(
    name: str, cls: type[TokenSource], tmp_path: Path
) -> None:
    arg = "tcp:127.0.0.1:22" if cls is Fixed else str(tmp_path / "tokens")
    assert type(make_source(name, arg)) is cls


def test_http_name_is_case_insensitive() -> None:
    for name in ("Http", "http", "HTTP", " hTtP "):
        assert type(make_source(name, "http://127.0.0.1:1/t")) is Http


@pytest.mark.parametrize("name", ["cleartext", "CLEARTEXT", "Cleartext", "clearText"])
def test_parser_names_are_case_insensitive(name: str) -> None:
    parser = make_parser(name, None)
    assert isinstance(parser, Cleartext)
    assert isinstance(parser, TokenParser)
    assert parser.parse("tcp:127.0.0.1:22") == StreamAddress("tcp", "127.0.0.1", 22)


def test_unknown_source_plugin_message() -> None:
    with pytest.raises(ConfigError) as err:
        make_source("Foo", "x")
    assert str(err.value) == "unknown token source plugin 'Foo'; known: Fixed, File, Http, Signed"


def test_unknown_parser_plugin_message() -> None:
    with pytest.raises(ConfigError) as err:
        make_parser("Foo", None)
    assert str(err.value) == "unknown token parser plugin 'Foo'; known: Cleartext, Signed"


# ------------------------------------------------------------------------------ Fixed


async def test_fixed_returns_its_token_for_any_app() -> None:
    source = make_source("Fixed", "tcp:127.0.0.1:22")
    assert await source.fetch("127.0.0.1:5000") == "tcp:127.0.0.1:22"
    assert await source.fetch("@") == "tcp:127.0.0.1:22"
    await source.aclose()


@pytest.mark.parametrize("arg", ["", None])
def test_fixed_empty_token_is_a_config_error(arg: str | None) -> None:
    with pytest.raises(ConfigError, match="Fixed.*empty"):
        make_source("Fixed", arg)


def test_fixed_rejects_a_mapping() -> None:
    with pytest.raises(ConfigError, match="Fixed"):
        make_source("Fixed", "t", mapping={"127.0.0.1": "t"})


# ------------------------------------------------------------------------------ File


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


async def fetch_file(path: Path, app_addr: str) -> str:
    return await File(str(path)).fetch(app_addr)


async def test_file_exact_match_is_not_a_prefix_match(tmp_path: Path) -> None:
    # quic-tun's strings.HasPrefix would give 10.0.0.1 the first line's token.
    path = write(tmp_path / "t", "10.0.0.12 tok-12\n10.0.0.1 tok-1\n")
    source = File(str(path))
    assert await source.fetch("10.0.0.1:5000") == "tok-1"
    assert await source.fetch("10.0.0.12:5000") == "tok-12"
    only_12 = write(tmp_path / "only12", "10.0.0.12 tok-12\n")
    with pytest.raises(TokenError) as err:
        await fetch_file(only_12, "10.0.0.1:5000")
    assert str(err.value) == f"no token for app address 10.0.0.1 in {only_12}"


async def test_file_ipv6_and_ipv4_mapped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t", "2001:db8::1 tok-v6\n::1 tok-lo6\n10.0.0.1 tok-v4\n[fe80::2] tok-b\n"
    )
    source = File(str(path))
    assert await source.fetch("[2001:db8::1]:443") == "tok-v6"
    assert await source.fetch("[::1]:5678") == "tok-lo6"
    assert await source.fetch("[fe80::2]:1") == "tok-b"
    assert await source.fetch("[::ffff:10.0.0.1]:80") == "tok-v4"
    with pytest.raises(TokenError, match=r"no token for app address 2001:db8::2 in"):
        await source.fetch("[2001:db8::2]:443")


async def test_file_cidr_longest_prefix_and_exact_beats_cidr(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t",
        "10.0.0.0/8 tok-8\n10.1.2.0/24 tok-24\n10.1.2.3 tok-exact\n10.1.0.0/16 tok-16\n"
        "2001:db8::/32 tok-v6-32\n2001:db8:1::/48 tok-v6-48\n",
    )
    source = File(str(path))
    assert await source.fetch("10.9.9.9:1") == "tok-8"
    assert await source.fetch("10.1.9.9:1") == "tok-16"
    assert await source.fetch("10.1.2.9:1") == "tok-24"
    assert await source.fetch("10.1.2.3:1") == "tok-exact"
    assert await source.fetch("[::ffff:10.1.2.9]:1") == "tok-24"
    assert await source.fetch("[2001:db8:1::5]:1") == "tok-v6-48"
    assert await source.fetch("[2001:db8:2::5]:1") == "tok-v6-32"
    with pytest.raises(TokenError):
        await source.fetch("11.0.0.1:1")


async def test_file_comments_tabs_crlf_and_blank_lines(tmp_path: Path) -> None:
    text = (
        "\ufeff# token file\r\n"
        "10.0.0.1\t\ttok-a   # trailing comment\r\n"
        "\r\n"
        "   \t# indented comment\r\n"
        "  10.0.0.2 \t tok#b\r\n"  # '#' inside a column is part of the token
        "@ tok-unix\r\n"
    )
    source = File(str(write(tmp_path / "t", text)))
    assert await source.fetch("10.0.0.1:1") == "tok-a"
    assert await source.fetch("10.0.0.2:1") == "tok#b"
    assert await source.fetch("@") == "tok-unix"
    assert await source.fetch("/run/app.sock") == "tok-unix"
    assert source.problems() == []


async def test_file_broken_lines_are_reported_once_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="quictund.tokens")
    path = write(
        tmp_path / "t",
        "10.0.0.1\n10.0.0.300 tok-bad\n10.0.0.2 a b\n10.0.0.3 tok-good\n10.0.0.3 tok-dup\n",
    )
    source = File(str(path))
    assert await source.fetch("10.0.0.3:1") == "tok-good"
    assert await source.fetch("10.0.0.3:2") == "tok-good"  # unchanged file: not re-parsed
    problems = source.problems()
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (1, 2, 3, 5)]
    assert "no token column" in problems[0]
    assert "not an IP address" in problems[1]
    assert "3 columns" in problems[2]
    assert "duplicate" in problems[3]
    assert not any("tok-" in p for p in problems)  # tokens are never echoed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert all(w.startswith(f"{path}:") for w in warnings)
    with pytest.raises(TokenError):
        await source.fetch("10.0.0.1:1")


async def test_file_edits_take_effect_without_restart(tmp_path: Path) -> None:
    path = write(tmp_path / "t", "10.0.0.1 tok-old\n")
    source = File(str(path))
    assert await source.fetch("10.0.0.1:1") == "tok-old"
    write(path, "10.0.0.1 tok-newer\n10.0.0.2 tok-2\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert await source.fetch("10.0.0.1:1") == "tok-newer"
    assert await source.fetch("10.0.0.2:1") == "tok-2"
    # An atomic replace with the same size and mtime is still seen (the inode differs).
    st = path.stat()
    write(tmp_path / "t.new", "10.0.0.1 tok-NEWER\n10.0.0.2 tok-2\n")
    os.utime(tmp_path / "t.new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "t.new", path)
    assert await source.fetch("10.0.0.1:1") == "tok-NEWER"


async def test_file_missing_or_removed_is_a_token_error(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    source = make_source("File", str(path))
    with pytest.raises(TokenError) as err:
        await source.fetch("10.0.0.1:1")
    assert str(path) in str(err.value)
    write(path, "10.0.0.1 tok\n")
    assert await source.fetch("10.0.0.1:1") == "tok"
    path.unlink()
    with pytest.raises(TokenError, match="cannot read token file"):
        await source.fetch("10.0.0.1:1")
    with pytest.raises(TokenError, match="not a regular file"):
        await fetch_file(tmp_path, "10.0.0.1:1")


async def test_file_bad_app_address(tmp_path: Path) -> None:
    source = File(str(write(tmp_path / "t", "10.0.0.1 tok\n")))
    with pytest.raises(TokenError, match="neither ip:port nor a UNIX socket"):
        await source.fetch("not-an-address:80")


async def test_file_inline_mapping() -> None:
    source = make_source("file", None, mapping={"10.0.0.0/8": "tok-8", "10.0.0.1": "tok-1"})
    assert await source.fetch("10.0.0.1:1") == "tok-1"
    assert await source.fetch("10.0.0.2:1") == "tok-8"
    with pytest.raises(TokenError, match="no token for app address 11.0.0.1 in the inline"):
        await source.fetch("11.0.0.1:1")


@pytest.mark.parametrize(
    ("arg", "mapping", "match"),
    [
        (None, None, "needs a token file path or a mapping"),
        ("", None, "needs a token file path or a mapping"),
        ("/x", {"10.0.0.1": "t"}, "not both"),
        (None, {"10.0.0.256": "t"}, "mapping key '10.0.0.256' is not an IP"),
        (None, {"10.0.0.1": ""}, "empty token"),
        (None, {}, "mapping is empty"),
        (None, {"10.0.0.1": "a", "::ffff:10.0.0.1": "b"}, "overlap"),
    ],
)
def test_file_config_errors(arg: str | None, mapping: dict[str, str] | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_source("File", arg, mapping=mapping)


def test_parse_token_file_reports_undecodable_lines() -> None:
    text = b"10.0.0.1 tok-1\n10.0.0.2 \xff\xfe\n".decode("utf-8", "surrogateescape")
    table, problems = parse_token_file(text, "f")
    assert table.lookup(ip_address("10.0.0.1")) == "tok-1"
    assert problems == ["f:2: line is not valid UTF-8"]
    assert "tok-1" not in repr(table)


_separators = st.sampled_from([" ", "\t", "  ", " \t "])
_tokens = st.text(
    st.characters(categories=["L", "N", "P", "S"], exclude_characters="#"), min_size=1
)
_tokens = _tokens.filter(lambda t: not any(c.isspace() for c in t))


@given(st.text())
def test_parse_token_file_never_raises_on_text(text: str) -> None:
    _, problems = parse_token_file(text, "f")
    assert all(p.startswith("f:") and "\n" not in p for p in problems)


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.ip_addresses().map(str),
                st.ip_addresses(v=4).map(lambda ip: f"{ip}/{int(ip) % 33}"),
                st.just("@"),
                st.text(max_size=12),
            ),
            _separators,
            st.text(max_size=12),
            st.sampled_from(["", "\r", " # c", "\t#"]),
        ).map("".join)
    ).map("\n".join)
)
def test_parse_token_file_never_raises_on_token_like_lines(text: str) -> None:
    parse_token_file(text, "f")


@given(
    st.dictionaries(
        st.ip_addresses().filter(
            lambda ip: not (isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None)
        ),
        _tokens,
    ),
    _separators,
)
def test_parse_token_file_round_trip(entries: dict[object, str], sep: str) -> None:
    text = "".join(f"{ip}{sep}{token}\r\n" for ip, token in entries.items())
    table, problems = parse_token_file(text, "f")
    assert problems == []
    for ip, token in entries.items():
        assert table.lookup(ip_address(str(ip))) == token


# ------------------------------------------------------------------------------ Http


@dataclass
class TinyHttp:
    """A one-response-per-connection HTTP/1.1 server writing raw bytes."""

    status: int = 200
    body: bytes = b'{"token": "tcp:127.0.0.1:22"}'
    content_length: bool = True  # False: body delimited by closing the connection
    hang: bool = False  # read the request, never answer
    extra_headers: list[str] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path_and_query: str = "/token") -> str:
        return f"http://127.0.0.1:{self.port}{path_and_query}"

    @property
    def targets(self) -> list[str]:
        return [r.split(b" ")[1].decode() for r in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if self.hang:
                await reader.read()  # until the client gives up and closes
                return
            head = [f"HTTP/1.1 {self.status} Whatever", "Connection: close", *self.extra_headers]
            if self.content_length:
                head.append(f"Content-Length: {len(self.body)}")
            writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + self.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
            self._tasks.discard(task)

    async def wait_idle(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)


@pytest.fixture
async def http_server() -> AsyncIterator[TinyHttp]:
    tiny = TinyHttp()
    server = await asyncio.start_server(tiny.handle, "127.0.0.1", 0)
    tiny.port = server.sockets[0].getsockname()[1]
    async with server:
        yield tiny
        await tiny.wait_idle()


async def http_fetch(url: str, app_addr: str = "127.0.0.1:5678", timeout_s: float = 5.0) -> str:
    source = make_source("Http", url, timeout_s=timeout_s)
    try:
        return await source.fetch(app_addr)
    finally:
        await source.aclose()


async def test_http_success_keeps_the_configured_query(http_server: TinyHttp) -> None:
    assert await http_fetch(http_server.url("/token?x=1")) == "tcp:127.0.0.1:22"
    assert http_server.targets == ["/token?x=1&addr=127.0.0.1%3A5678"]
    request = http_server.requests[0].decode().lower()
    assert "user-agent: quictund/" in request


async def test_http_addr_is_replaced_and_ipv6_encoded(http_server: TinyHttp) -> None:
    source = make_source("HTTP", http_server.url("/t?addr=evil&x=1"))
    try:
        await source.fetch("[::1]:5678")
        await source.fetch("@")
    finally:
        await source.aclose()
    assert http_server.targets == ["/t?x=1&addr=%5B%3A%3A1%5D%3A5678", "/t?x=1&addr=%40"]


async def test_http_404_is_a_token_error_without_secrets(http_server: TinyHttp) -> None:
    http_server.status = 404
    url = f"http://user:pw@127.0.0.1:{http_server.port}/missing?apikey=hunter2"
    with pytest.raises(TokenError) as err:
        await http_fetch(url)
    message = str(err.value)
    assert f"http://127.0.0.1:{http_server.port}/missing" in message
    assert "404" in message
    assert "hunter2" not in message and "pw" not in message


async def test_http_redirect_is_not_followed(http_server: TinyHttp) -> None:
    http_server.status = 302
    http_server.extra_headers = [f"Location: {http_server.url('/elsewhere')}"]
    with pytest.raises(TokenError, match=r"HTTP 302 \(redirects are not followed\)"):
        await http_fetch(http_server.url())
    assert len(http_server.requests) == 1


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html>nope</html>", "not JSON"),
        (b"", "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "not JSON|without a string 'token'"),
        (b'{"tok": "x"}', "without a string 'token'"),
        (b'{"token": 42}', "without a string 'token'"),
        (b'["token"]', "without a string 'token'"),
        (b'{"token": ""}', "empty token"),
    ],
)
async def test_http_bad_bodies_are_token_errors(
    http_server: TinyHttp, body: bytes, match: str
) -> None:
    http_server.body = body
    with pytest.raises(TokenError, match=match) as err:
        await http_fetch(http_server.url())
    assert "HTTP 200" in str(err.value)
    assert "\n" not in str(err.value)


async def test_http_timeout(http_server: TinyHttp) -> None:
    http_server.hang = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TokenError, match=r"no answer within 0.3 s"):
        await http_fetch(http_server.url(), timeout_s=0.3)
    assert loop.time() - started < 3


@pytest.mark.parametrize("content_length", [True, False])
async def test_http_body_cap(http_server: TinyHttp, content_length: bool) -> None:
    http_server.content_length = content_length
    prefix = b'{"token": "tcp:127.0.0.1:22", "pad": "'
    exact = prefix + b"x" * (64 * 1024 - len(prefix) - 2) + b'"}'
    assert len(exact) == 64 * 1024
    http_server.body = exact
    assert await http_fetch(http_server.url()) == "tcp:127.0.0.1:22"
    http_server.body = exact[:-2] + b'x"}'
    with pytest.raises(TokenError, match="exceeds 64 KiB"):
        await http_fetch(http_server.url())


async def test_http_ignores_proxy_environment(
    http_server: TinyHttp, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    assert await http_fetch(http_server.url()) == "tcp:127.0.0.1:22"


async def test_http_connection_refused_is_a_token_error(http_server: TinyHttp) -> None:
    url = http_server.url()
    refused = url.replace(str(http_server.port), "1")  # nothing listens on 127.0.0.1:1
    with pytest.raises(TokenError, match="request failed"):
        await http_fetch(refused)


async def test_http_source_reuses_one_client_and_can_be_reclosed(http_server: TinyHttp) -> None:
    source = make_source("Http", http_server.url())
    assert await source.fetch("127.0.0.1:1") == "tcp:127.0.0.1:22"
    results = await asyncio.gather(*(source.fetch(f"127.0.0.1:{p}") for p in range(2, 6)))
    assert results == ["tcp:127.0.0.1:22"] * 4
    await source.aclose()
    await source.aclose()


@pytest.mark.parametrize(
    ("arg", "timeout_s", "match"),
    [
        (None, 5.0, "needs a URL"),
        ("ftp://127.0.0.1/t", 5.0, "scheme must be http or https"),
        ("127.0.0.1:8080/t", 5.0, "scheme must be http or https"),
        ("http:///t", 5.0, "no host"),
        ("http://127.0.0.1:99999/t", 5.0, "invalid URL"),
        ("http://[::1/t", 5.0, "invalid URL"),
        ("http://127.0.0.1/t", 0.0, "timeout"),
        ("http://127.0.0.1/t", float("nan"), "timeout"),
    ],
)
def test_http_config_errors(arg: str | None, timeout_s: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_source("Http", arg, timeout_s=timeout_s)


def test_http_rejects_a_mapping() -> None:
    with pytest.raises(ConfigError, match="Http"):
        make_source("Http", "http://127.0.0.1/t", mapping={})


# ------------------------------------------------------------------------------ Cleartext


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def test_cleartext_plain() -> None:
    parser = Cleartext("")
    assert parser.parse("tcp:127.0.0.1:22") == StreamAddress("tcp", "127.0.0.1", 22)
    assert parser.parse("TCP6:[::1]:80") == StreamAddress("tcp6", "::1", 80)
    assert parser.parse("unix:/run/app.sock") == StreamAddress("unix", path="/run/app.sock")


@pytest.mark.parametrize("key", ["base64", "BASE64", "Base64"])
def test_cleartext_base64(key: str) -> None:
    parser = make_parser("Cleartext", key)
    assert parser.parse(b64("tcp:127.0.0.1:22")) == StreamAddress("tcp", "127.0.0.1", 22)
    assert parser.parse(b64("unix:/run/a.sock")) == StreamAddress("unix", path="/run/a.sock")


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("dGNwOjEyNy4wLjAuMToyMg", "not valid base64"),  # padding missing
        ("dGNwOjEyNy4wLjAuMToy!g==", "not valid base64"),
        ("dGNw OjEyNy4wLjAuMToyMg==", "not valid base64"),
        ("dGNwOjEyNy4wLjAuMToyMg==é", "not valid base64"),
        (b64(b"\xff\xfe\x00"), "does not decode to UTF-8"),
        (b64("http://127.0.0.1:22"), "not a tcp:/unix: address"),
    ],
)
def test_cleartext_bad_base64(token: str, match: str) -> None:
    with pytest.raises(TokenRejected, match=match) as err:
        Cleartext("base64").parse(token)
    assert token not in str(err.value)
    assert f"({len(token.encode())} bytes)" in str(err.value)


@pytest.mark.parametrize("key", ["bas64", "hex", " base64"])
def test_cleartext_unknown_key(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_parser("Cleartext", key)
    assert str(err.value) == (
        f"unknown token-parser-key {key!r} for Cleartext; use 'base64' or leave it empty"
    )


@pytest.mark.parametrize(
    "token", ["tcp:127.0.0.1:0", "tcp:[::1]:0", "tcp:127.0.0.1:65536", "garbage", "", "tcp:a\tb:1"]
)
def test_cleartext_rejects_bad_addresses_and_port_zero(token: str) -> None:
    for parser, sent in ((Cleartext(""), token), (Cleartext("base64"), b64(token))):
        with pytest.raises(TokenRejected) as err:
            parser.parse(sent)
        message = str(err.value)
        assert f"({len(sent.encode())} bytes)" in message
        assert not sent or sent not in message


def _parse_or_reject(parser: Cleartext, token: str) -> None:
    try:
        result = parser.parse(token)
    except TokenRejected as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, StreamAddress)
        assert result.is_unix or 1 <= result.port <= 65535


_address_like = st.tuples(
    st.sampled_from(["tcp:", "TCP4:", "tcp6:", "unix:", "udp:", ""]), st.text()
).map("".join)


@given(st.one_of(st.text(), _address_like))
def test_cleartext_plain_fuzz(token: str) -> None:
    _parse_or_reject(Cleartext(""), token)


@given(st.one_of(st.text(), _address_like, _address_like.map(b64), st.binary().map(b64)))
def test_cleartext_base64_fuzz(token: str) -> None:
    _parse_or_reject(Cleartext("base64"), token)


# --------------------------------------------------------------- hostile files and answers


def test_token_file_problems_are_bounded_with_a_summary() -> None:
    _, problems = parse_token_file("x\n" * 1000 + "10.0.0.1 tok\n", "f", keep=5)
    assert problems[:5] == [
        f"f:{n}: no token column (expected 'IP-or-CIDR token')" for n in range(1, 6)
    ]
    assert problems[5:] == ["f: and 995 more bad lines"]


async def test_token_file_over_the_cap_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(b"#" * (16 * 1024 * 1024 + 1))
    with pytest.raises(TokenError, match=rf"^cannot read token file {path}: larger than 16 MiB"):
        await File(str(path)).fetch("10.0.0.1:1")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, gzip", "identity, gzip"])
async def test_http_refuses_content_codings_it_did_not_ask_for(
    http_server: TinyHttp, encoding: str
) -> None:
    http_server.extra_headers = [f"Content-Encoding: {encoding}"]
    with pytest.raises(TokenError, match="asked for identity"):
        await http_fetch(http_server.url())
    assert b"accept-encoding: identity" in http_server.requests[0].lower()


async def test_http_identity_coding_is_accepted(http_server: TinyHttp) -> None:
    http_server.extra_headers = ["Content-Encoding: identity"]
    assert await http_fetch(http_server.url()) == "tcp:127.0.0.1:22"
