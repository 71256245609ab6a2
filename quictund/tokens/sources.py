"""Built-in token sources (client side): ``Fixed``, ``File`` and ``Http``.

They keep quic-tun's plugin names and arguments, so existing command lines and configs still
work, but each closes a gap documented in reference/quic-tun-behaviour.md section 3:

* **Fixed** refuses an empty token at startup.  quic-tun sends it, and the server then fails
  every tunnel (and, being quic-tun, wedges that client's connection).
* **File** matches the app's IP *exactly* or by the most specific CIDR.  quic-tun's
  ``strings.HasPrefix`` lets client 10.0.0.1 pick up the line meant for 10.0.0.12, breaks on
  IPv6, needs exactly one space between the columns and panics on a line without a token.
  Here any whitespace separates the columns, ``#`` starts a comment, and a bad line is logged
  once (``path:line: problem``) and skipped.  The file is still re-read when it changes, with no
  restart needed, but it is parsed only when its (mtime, size, inode) changes rather than on
  every connection.  ``parse_token_file`` is pure, so the format can be fuzzed.
* **Http** sends ``GET url?addr=ip:port`` (the configured query is kept, not replaced),
  with a total timeout, no redirects, no proxy variables and a 64 KiB body cap, and it treats a
  non-2xx status, bad JSON or an empty token as errors.  quic-tun turns all of those into an
  empty token.

Every run-time failure is a one-line :class:`TokenError` that fails one tunnel.  No message
contains a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Final, Literal, TypeAlias
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from quictund import __version__
from quictund.errors import ConfigError, TokenError
from quictund.tokens.base import TokenSource, register_source

__all__ = ["File", "Fixed", "Http", "TokenTable", "parse_token_file"]

logger = logging.getLogger("quictund.tokens")

_IP: TypeAlias = IPv4Address | IPv6Address
_Net: TypeAlias = IPv4Network | IPv6Network
_Unix: TypeAlias = Literal["@"]
_Key: TypeAlias = _IP | _Net | _Unix
_Version: TypeAlias = tuple[int, int, int]

UNIX_KEY: Final = "@"
MAX_TOKEN_FILE_BYTES: Final = 16 * 1024 * 1024
MAX_HTTP_BODY_BYTES: Final = 64 * 1024
_MAPPED_V4: Final = IPv6Network("::ffff:0:0/96")


@register_source
class Fixed(TokenSource):
    """Sends the same token for every app connection (quic-tun's default plugin)."""

    name = "Fixed"

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError(
                "token source Fixed: the token is empty (the server would refuse every tunnel)"
            )
        self._token = token

    @classmethod
    def from_config(
        cls, arg: str | None, mapping: dict[str, str] | None, timeout_s: float
    ) -> Fixed:
        if mapping is not None:
            raise ConfigError("token source Fixed: takes one token, not a mapping")
        return cls(arg or "")

    async def fetch(self, app_addr: str) -> str:
        return self._token


# ---------------------------------------------------------------------------------------- File


@dataclass(frozen=True, slots=True)
class TokenTable:
    """A parsed token file: exact IPs, CIDRs (most specific first) and the UNIX (``@``) entry."""

    exact: Mapping[_IP, str] = field(default_factory=dict)
    networks: tuple[tuple[_Net, str], ...] = ()
    unix: str | None = None

    def __len__(self) -> int:
        return len(self.exact) + len(self.networks) + (self.unix is not None)

    def __repr__(self) -> str:  # the default repr would print the tokens
        return f"TokenTable({len(self)} entries)"

    def lookup(self, host: _IP | _Unix) -> str | None:
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
        exact: dict[_IP, str] = {}
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


def _unmap(ip: _IP) -> _IP:
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
        return _unmap(ip_address(text))
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


def parse_token_file(text: str, origin: str) -> tuple[TokenTable, list[str]]:
    """Parse quic-tun's ``IP token`` file format; never raises.

    Returns the table and one ``"<origin>:<line>: <problem>"`` message per skipped line.
    """
    builder = _TableBuilder()
    problems: list[str] = []
    # split("\n") rather than splitlines(): line numbers must agree with the operator's editor.
    for lineno, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        try:
            entry = _parse_line(line)
        except ValueError as exc:
            problems.append(f"{origin}:{lineno}: {exc}")
            continue
        if entry is not None:
            first = builder.add(entry[0], entry[1], f"line {lineno}")
            if first is not None:
                problems.append(f"{origin}:{lineno}: duplicate entry for {entry[0]}; {first} wins")
    return builder.build(), problems


def _table_from_mapping(mapping: Mapping[str, str]) -> TokenTable:
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


def _app_host(app_addr: str) -> _IP | _Unix:
    """The part of quic-tun's app address a token file is keyed by."""
    if app_addr in ("", UNIX_KEY) or app_addr.startswith(("/", UNIX_KEY)):
        return UNIX_KEY  # unnamed UNIX client ("@"), a named one (a path), or abstract ("@x")
    host = app_addr
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return _unmap(ip_address(host))
    except ValueError:
        raise TokenError(f"app address {app_addr!r} is neither ip:port nor a UNIX socket") from None


def _read_token_file(path: str) -> tuple[_Version, str]:
    """Read the file and the version it had when opened (runs in a worker thread)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"larger than {MAX_TOKEN_FILE_BYTES} bytes")
    # surrogateescape: a non-UTF-8 line becomes one reported problem, not a failed file.
    return (st.st_mtime_ns, st.st_size, st.st_ino), data.decode("utf-8", "surrogateescape")


@register_source
class File(TokenSource):
    """Looks the app's IP up in a token file (re-read when it changes) or an inline mapping."""

    name = "File"

    def __init__(self, path: str | None = None, mapping: Mapping[str, str] | None = None) -> None:
        if (path is None) == (mapping is None):
            raise ConfigError("token source File: give either a token file path or a mapping")
        if mapping is not None and not mapping:
            raise ConfigError("token source File: the mapping is empty")
        self._path = os.path.abspath(path) if path is not None else None
        self._origin = self._path or "the inline token mapping"
        self._table = _table_from_mapping(mapping) if mapping is not None else None
        self._version: _Version | None = None
        self._problems: list[str] = []
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, arg: str | None, mapping: dict[str, str] | None, timeout_s: float) -> File:
        if arg and mapping is not None:
            raise ConfigError("token source File: give a token file path or a mapping, not both")
        if not arg and mapping is None:
            raise ConfigError("token source File: needs a token file path or a mapping")
        return cls(arg or None, mapping)

    async def fetch(self, app_addr: str) -> str:
        host = _app_host(app_addr)
        table = await self._current_table()
        token = table.lookup(host)
        if token is None:
            raise TokenError(f"no token for app address {host} in {self._origin}")
        return token

    def problems(self) -> list[str]:
        """The ``path:line: problem`` messages of the lines skipped in the current file."""
        return list(self._problems)

    async def _current_table(self) -> TokenTable:
        if self._path is None:
            assert self._table is not None
            return self._table
        version = self._stat(self._path)
        if self._table is not None and version == self._version:
            return self._table
        async with self._lock:  # concurrent fetches after an edit parse (and warn) once
            if self._table is not None and version == self._version:
                return self._table
            try:
                version, text = await asyncio.to_thread(_read_token_file, self._path)
            except (OSError, ValueError) as exc:
                raise TokenError(f"cannot read token file {self._path}: {_reason(exc)}") from None
            table, problems = parse_token_file(text, self._path)
            for problem in problems:
                logger.warning("%s (line skipped)", problem)
            logger.info("token file %s loaded: %d entries", self._path, len(table))
            self._table, self._problems, self._version = table, problems, version
            return table

    @staticmethod
    def _stat(path: str) -> _Version:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TokenError(f"cannot read token file {path}: {_reason(exc)}") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader thread for ever
            raise TokenError(f"cannot read token file {path}: not a regular file")
        return st.st_mtime_ns, st.st_size, st.st_ino


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------------------- Http


def _display_url(url: str) -> str:
    """The URL for messages: without user info (a password) or query (often an API key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _with_addr(url: str, app_addr: str) -> str:
    """Append ``addr=<app_addr>`` to the URL's own query (quic-tun drops that query)."""
    parts = urlsplit(url)
    kept = [p for p in parts.query.split("&") if p and p.partition("=")[0] != "addr"]
    kept.append(urlencode({"addr": app_addr}))  # 1.2.3.4%3A5678, as Go's QueryEscape does
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "&".join(kept), ""))


@register_source
class Http(TokenSource):
    """Asks an HTTP service: ``GET url?addr=ip:port`` answering ``{"token": "..."}``."""

    name = "Http"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
            httpx.URL(url)
        except (ValueError, httpx.InvalidURL) as exc:
            raise ConfigError(f"token source Http: invalid URL ({_reason(exc)})") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise ConfigError(
                f"token source Http: the URL scheme must be http or https (got {parts.scheme!r})"
            )
        if not parts.hostname:
            raise ConfigError("token source Http: the URL has no host")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"token source Http: timeout must be > 0 seconds (got {timeout_s})")
        self._url = url
        self._display = _display_url(url)
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, arg: str | None, mapping: dict[str, str] | None, timeout_s: float) -> Http:
        if mapping is not None:
            raise ConfigError("token source Http: takes a URL, not a mapping")
        if not arg:
            raise ConfigError("token source Http: needs a URL (http:// or https://)")
        return cls(arg, timeout_s=timeout_s)

    async def fetch(self, app_addr: str) -> str:
        url = _with_addr(self._url, app_addr)
        try:
            async with asyncio.timeout(self._timeout_s):
                status, body = await self._get(url)
        except (TimeoutError, httpx.TimeoutException):
            raise self._error(f"no answer within {self._timeout_s:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._error(f"request failed: {type(exc).__name__}: {_reason(exc)}") from None
        return self._token_from(status, body)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http_client(self) -> httpx.AsyncClient:
        # Created on first use: construction may happen before an event loop runs.
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout_s),
                follow_redirects=False,
                trust_env=False,  # no HTTP(S)_PROXY/ALL_PROXY, no .netrc
                headers={
                    "User-Agent": f"quictund/{__version__}",
                    "Accept": "application/json",
                    "Accept-Encoding": "identity",  # keeps the 64 KiB cap meaningful
                },
            )
        return self._client

    async def _get(self, url: str) -> tuple[int, bytes]:
        async with self._http_client().stream("GET", url) as resp:
            status = resp.status_code
            if not 200 <= status < 300:
                hint = " (redirects are not followed)" if 300 <= status < 400 else ""
                raise self._error(f"answered HTTP {status}{hint}")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_HTTP_BODY_BYTES:
                raise self._error(f"HTTP {status} body of {declared} bytes exceeds 64 KiB")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_HTTP_BODY_BYTES:
                    raise self._error(f"HTTP {status} body exceeds 64 KiB")
        return status, bytes(body)

    def _token_from(self, status: int, body: bytes) -> str:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise self._error(f"answered HTTP {status} with a body that is not JSON") from None
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str):
            raise self._error(f"answered HTTP {status} without a string 'token' in its JSON")
        if not token:
            raise self._error(f"answered HTTP {status} with an empty token")
        return token

    def _error(self, reason: str) -> TokenError:
        return TokenError(f"token source Http: {self._display}: {reason}")
