"""Signed tokens: a destination, an audience and an expiry, authenticated with HMAC-SHA256.

Format (ASCII, at most 512 bytes so it fits quic-tun's token field)::

    qt1.<base64url(JSON {"a": audience, "d": destination, "e": expiry})>.<base64url(MAC)>

(expiry in unix seconds)

MAC = HMAC-SHA256(secret, "qt1." + payload part).  The secret is read from a file (never from a
command line), at least 32 bytes, not readable by others.  Verification compares MACs in
constant time, then checks audience and expiry; a signed token only *names* a destination, the
server's ``allow`` policy still decides whether it may be reached.

``sign``/``verify`` are pure (``now`` is passed in); the plugins around them hold the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from collections.abc import Callable

from quictund.errors import ConfigError, TokenError, TokenRejected, os_reason
from quictund.policy.addresses import StreamAddress, parse_stream_address
from quictund.tokens.base import TokenParser, TokenSource, register_parser, register_source

PREFIX = "qt1"
MAX_TOKEN = 512
MIN_SECRET = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(destination: str, *, secret: bytes, audience: str, expires_at: int) -> str:
    payload = json.dumps(
        {"a": audience, "d": destination, "e": int(expires_at)},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    body = f"{PREFIX}.{_b64(payload)}"
    token = f"{body}.{_b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())}"
    if len(token) > MAX_TOKEN:
        raise ValueError(f"signed token is {len(token)} bytes; at most {MAX_TOKEN} fit")
    return token


def verify(token: str, *, secret: bytes, audience: str, now: float) -> str:
    """Return the destination; raise ``TokenRejected`` (never echoing the token)."""
    if len(token) > MAX_TOKEN:
        raise TokenRejected(f"signed token too long ({len(token)} bytes)")
    prefix, _, rest = token.partition(".")
    payload_part, _, mac_part = rest.partition(".")
    if prefix != PREFIX or not payload_part or not mac_part:
        raise TokenRejected("not a signed token (qt1.PAYLOAD.MAC)")
    signed_part = f"{PREFIX}.{payload_part}".encode("utf-8", "surrogatepass")
    expected = hmac.new(secret, signed_part, hashlib.sha256).digest()
    # Compare the MAC's *text* with the canonical encoding of the expected MAC: decoding first
    # would accept other spellings of the same bytes (the unused low bits of the last base64
    # character, "+" for "-", ignored junk), so one issued token would have several valid forms.
    given = mac_part.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, _b64(expected).encode()):
        raise TokenRejected("signed token: bad MAC")
    try:
        claims = json.loads(_unb64(payload_part))
        destination, aud, expiry = claims["d"], claims["a"], claims["e"]
    except (ValueError, KeyError, TypeError):
        raise TokenRejected("signed token: malformed payload") from None
    if not isinstance(destination, str) or not isinstance(aud, str) or not isinstance(expiry, int):
        raise TokenRejected("signed token: malformed payload")
    if aud != audience:
        raise TokenRejected("signed token: wrong audience")
    if expiry <= now:
        raise TokenRejected("signed token: expired")
    return destination


def read_secret(path: str | None) -> bytes:
    if not path:
        raise ConfigError("signed tokens need token-secret-file (a file, never a flag value)")
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"token-secret-file {path}: {os_reason(exc)}") from None
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"token-secret-file {path}: readable by others; chmod 600 it")
    if len(secret) < MIN_SECRET:
        raise ConfigError(
            f"token-secret-file {path}: at least {MIN_SECRET} bytes of secret "
            "needed (e.g. `head -c 48 /dev/urandom | base64 > FILE`)"
        )
    return secret


@register_parser
class Signed(TokenParser):
    """Server side: ``token-parser-key`` is the secret file; ``token-audience`` must match."""

    name = "Signed"

    def __init__(
        self, key: str | None = "", *, audience: str = "", clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(key or "")
        self._secret = read_secret(key)
        self.audience = audience
        self._clock = clock

    def parse(self, token: str) -> StreamAddress:
        if not self.audience:
            raise TokenRejected("server has no token-audience")
        dest = verify(token, secret=self._secret, audience=self.audience, now=self._clock())
        try:
            return parse_stream_address(dest)
        except ValueError:
            raise TokenRejected("signed token: destination is not a tcp:/unix: address") from None


@register_source
class SignedSource(TokenSource):
    """Client side: signs ``token-source`` (the destination) for every app connection."""

    name = "Signed"

    def __init__(self, destination: str, secret: bytes, audience: str, ttl_s: float) -> None:
        try:
            parse_stream_address(destination)
        except ValueError as exc:
            raise ConfigError(f"token source Signed: {exc}") from None
        if not audience:
            raise ConfigError("token source Signed: needs token-audience (the server's)")
        self._destination = destination
        self._secret = secret
        self._audience = audience
        self._ttl_s = ttl_s
        try:  # a destination that can never fit would fail every tunnel: say so at startup
            sign(destination, secret=secret, audience=audience, expires_at=int(time.time() + ttl_s))
        except ValueError as exc:
            raise ConfigError(f"token source Signed: {exc} (shorten the destination)") from None

    @classmethod
    def from_config(
        cls, arg: str | None, mapping: dict[str, str] | None, timeout_s: float
    ) -> SignedSource:
        raise ConfigError("token source Signed: needs token-secret-file and token-audience")

    @classmethod
    def from_signing(
        cls, arg: str | None, secret_file: str | None, audience: str, ttl_s: float
    ) -> SignedSource:
        return cls(arg or "", read_secret(secret_file), audience, ttl_s)

    async def fetch(self, app_addr: str) -> str:
        try:
            return sign(
                self._destination,
                secret=self._secret,
                audience=self._audience,
                expires_at=int(time.time() + self._ttl_s),
            )
        except ValueError as exc:
            raise TokenError(str(exc)) from None
