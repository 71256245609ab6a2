"""The ``Http`` token source: ``GET url?addr=ip:port`` answering ``{"token": "..."}``.

The configured query is kept, not replaced (quic-tun drops it); the request has a total
timeout, follows no redirects, reads no proxy variables and caps the body; a non-2xx status,
bad JSON or an empty token is an error (quic-tun turns all of those into an empty token).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from quictund import __version__
from quictund.errors import ConfigError, TokenError
from quictund.tokens.base import TokenSource, describe, register_source

__all__ = ["MAX_HTTP_BODY_BYTES", "Http"]

MAX_HTTP_BODY_BYTES: Final = 64 * 1024


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
            raise ConfigError(f"token source Http: invalid URL ({describe(exc)})") from None
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
        self._creating = asyncio.Lock()

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
            raise self._error(f"request failed: {type(exc).__name__}: {describe(exc)}") from None
        return self._token_from(status, body)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _http_client(self) -> httpx.AsyncClient:
        # Created on first use (construction may happen before an event loop runs), in a
        # thread: building its SSL context loads the CA bundle, 200 ms the loop cannot spare.
        async with self._creating:
            if self._client is None:
                self._client = await asyncio.to_thread(self._new_client)
        return self._client

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout_s),
            follow_redirects=False,
            trust_env=False,  # no HTTP(S)_PROXY/ALL_PROXY, no .netrc
            headers={
                "User-Agent": f"quictund/{__version__}",
                "Accept": "application/json",
                "Accept-Encoding": "identity",  # anything else is refused: see _get
            },
        )

    async def _get(self, url: str) -> tuple[int, bytes]:
        client = await self._http_client()
        async with client.stream("GET", url) as resp:
            status = resp.status_code
            if not 200 <= status < 300:
                hint = " (redirects are not followed)" if 300 <= status < 400 else ""
                raise self._error(f"answered HTTP {status}{hint}")
            self._refuse_encoding(status, resp.headers.get_list("content-encoding"))
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_HTTP_BODY_BYTES:
                raise self._error(f"HTTP {status} body of {declared} bytes exceeds 64 KiB")
            body = bytearray()
            # aiter_raw: the bytes as they came (after chunked framing), never decompressed,
            # so the cap counts what is really held.  aiter_bytes would inflate a whole
            # compressed chunk in one call: 2.6 KB of gzip became 3.1 GiB before a check ran.
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > MAX_HTTP_BODY_BYTES:
                    raise self._error(f"HTTP {status} body exceeds 64 KiB")
        return status, bytes(body)

    def _refuse_encoding(self, status: int, encodings: list[str]) -> None:
        """We asked for ``identity``: any other content coding is refused, not decoded."""
        codings = [c.strip().lower() for value in encodings for c in value.split(",")]
        unasked = [c for c in codings if c and c != "identity"]
        if unasked:
            raise self._error(
                f"answered HTTP {status} with Content-Encoding {', '.join(unasked)} although "
                "quictund asked for identity (uncompressed); turn compression off for this "
                "endpoint in the token service"
            )

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
