"""Http token source replies: any body gives a token or a one-line TokenError (http_source.py)."""

from __future__ import annotations

import json

from _common import instrument_imports, main, one_line

with instrument_imports():
    from quictund.errors import TokenError
    from quictund.tokens.sources import Http

SOURCE = Http("http://127.0.0.1:9/token")


def test_one(data: bytes) -> None:
    try:
        token = SOURCE._token_from(200, data)
    except TokenError as exc:
        one_line(str(exc))
        return
    assert isinstance(token, str) and token
    assert json.loads(data)["token"] == token


if __name__ == "__main__":
    main(test_one)
