"""Built-in token sources (client side): ``Fixed``, ``File`` and ``Http``.

They keep quic-tun's plugin names and arguments, so existing command lines and configs still
work, but each closes a gap documented in reference/quic-tun-behaviour.md section 3:

* **Fixed** (here) refuses an empty token at startup.  quic-tun sends it, and the server then
  fails every tunnel (and, being quic-tun, wedges that client's connection).
* **File** (``file_source.py``, format in ``token_file.py``) matches the app's IP exactly or
  by the most specific CIDR, and cannot stall the event loop whatever the file holds.
* **Http** (``http_source.py``) caps the answer on the wire and refuses compressed answers.

Every run-time failure is a one-line :class:`TokenError` that fails one tunnel.  No message
contains a token.  This module also re-exports the others' public names.
"""

from __future__ import annotations

from quictund.errors import ConfigError
from quictund.tokens.base import TokenSource, register_source

__all__ = ["File", "Fixed", "Http", "TokenTable", "parse_token_file"]


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


# Registered after Fixed: registration order is the order ``--help`` lists the plugins in.
from quictund.tokens.file_source import File  # noqa: E402
from quictund.tokens.http_source import Http  # noqa: E402
from quictund.tokens.token_file import TokenTable, parse_token_file  # noqa: E402
