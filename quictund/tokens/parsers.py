"""Built-in token parsers (server side): ``Cleartext``.

A quic-tun token *is* the destination: ``tcp:10.20.30.5:2256`` or ``unix:/run/app.sock``,
optionally base64-encoded (``--token-parser-key base64``).  This parser keeps that contract with
two deliberate differences from quic-tun:

* An unknown key is a :class:`ConfigError` at startup.  quic-tun treats every value other than
  ``base64``, typos included, as "pass through", so ``bas64`` silently disables decoding.
* A token that does not decode or is not a valid ``tcp:``/``unix:`` address (port 0 included)
  is a :class:`TokenRejected` here, before any dial.  quic-tun finds out when ``net.Dial`` fails.

``parse`` is pure and synchronous (no I/O, no clock), and rejection messages carry only the
token's length, never its contents.
"""

from __future__ import annotations

import base64
import binascii

from quictund.errors import ConfigError, TokenRejected
from quictund.policy.addresses import StreamAddress, parse_stream_address
from quictund.tokens.base import TokenParser, register_parser

__all__ = ["Cleartext"]


def _size(token: str) -> str:
    return f"{len(token.encode('utf-8', 'surrogatepass'))} bytes"


@register_parser
class Cleartext(TokenParser):
    """The token is ``network:address`` in clear, or base64 of it when ``key`` is ``base64``."""

    name = "Cleartext"

    def __init__(self, key: str | None = "") -> None:
        key = key or ""
        if key.lower() not in ("", "base64"):
            raise ConfigError(
                f"unknown token-parser-key {key!r} for Cleartext; use 'base64' or leave it empty"
            )
        super().__init__(key)
        self._base64 = bool(key)

    def parse(self, token: str) -> StreamAddress:
        text = self._decode(token) if self._base64 else token
        try:
            address = parse_stream_address(text)
        except ValueError:
            raise TokenRejected(f"token is not a tcp:/unix: address ({_size(token)})") from None
        if not address.is_unix and not address.host.isprintable():
            # A control character would only fail later, inside the resolver.
            raise TokenRejected(f"token host contains control characters ({_size(token)})")
        return address

    @staticmethod
    def _decode(token: str) -> str:
        # Go's base64.StdEncoding: standard alphabet, padding required, nothing else allowed.
        try:
            raw = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            raise TokenRejected(f"token is not valid base64 ({_size(token)})") from None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenRejected(f"base64 token does not decode to UTF-8 ({_size(token)})") from None
