"""The Cleartext token parser, plain and base64 (quictund/tokens/parsers.py)."""

from __future__ import annotations

import base64

from _common import instrument_imports, main, one_line

with instrument_imports():
    from quictund.errors import TokenRejected
    from quictund.policy.addresses import StreamAddress
    from quictund.tokens.parsers import Cleartext

PLAIN, BASE64 = Cleartext(""), Cleartext("base64")


def test_one(data: bytes) -> None:
    # first byte: mode; the rest: the token as the wire decoder hands it over (valid UTF-8)
    mode = data[0] % 3 if data else 0
    text = data[1:].decode("utf-8", "replace")
    if mode == 2:  # base64 of arbitrary text, so the decoded side gets fuzzed too
        text = base64.b64encode(text.encode()).decode()
    parser = PLAIN if mode == 0 else BASE64
    try:
        address = parser.parse(text)
    except TokenRejected as exc:
        one_line(str(exc))
        return
    assert isinstance(address, StreamAddress)
    assert address.is_unix or 1 <= address.port <= 65535
    assert PLAIN.parse(str(address)) == address


if __name__ == "__main__":
    main(test_one)
