"""The Signed token parser: arbitrary text, and mutations of a valid token (tokens/signed.py).

Invariant beyond "only TokenRejected": a token that differs from the issued one in any way is
refused -- the MAC has exactly one spelling (a finding of this harness's hypothesis twin).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from _common import FuzzedDataProvider, instrument_imports, main, one_line

with instrument_imports():
    from quictund.errors import TokenRejected
    from quictund.policy.addresses import parse_stream_address
    from quictund.tokens.signed import _b64, sign, verify

SECRET = b"fuzz-secret-" * 4
NOW = 1_800_000_000
VALID = [
    sign(d, secret=SECRET, audience="edge", expires_at=NOW + 60)
    for d in ("tcp:10.0.0.5:22", "unix:/run/app.sock", "tcp:[2001:db8::1]:443")
]


def test_one(data: bytes) -> None:
    mode = data[0] % 4 if data else 0
    fdp = FuzzedDataProvider(data[1:])
    if mode == 0:  # the token as text; lone surrogates included (the parser's contract is str)
        text = data[1:].decode("utf-8", "surrogateescape")
    elif mode == 3:  # any payload under a valid MAC: what a holder of the secret can send
        body = f"qt1.{_b64(data[1:])}"
        text = f"{body}.{_b64(hmac.new(SECRET, body.encode(), hashlib.sha256).digest())}"
        try:
            destination = verify(text, secret=SECRET, audience="edge", now=NOW)
        except TokenRejected as exc:
            one_line(str(exc))
            return
        claims = json.loads(data[1:])
        assert claims["d"] == destination and claims["a"] == "edge" and claims["e"] > NOW
        try:
            parse_stream_address(destination)
        except ValueError:
            pass  # Signed.parse turns this into TokenRejected
        return
    else:
        base = VALID[fdp.ConsumeIntInRange(0, len(VALID) - 1)].encode()
        raw = bytearray(base)
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            op, at = fdp.ConsumeIntInRange(0, 2), fdp.ConsumeIntInRange(0, len(raw))
            byte = fdp.ConsumeIntInRange(0, 255)
            if op == 0 and at < len(raw):
                raw[at] ^= byte or 1
            elif op == 1:
                raw.insert(at, byte)
            elif raw and at < len(raw):
                del raw[at]
        text = raw.decode("utf-8", "surrogateescape")
    try:
        destination = verify(text, secret=SECRET, audience="edge", now=NOW)
    except TokenRejected as exc:
        one_line(str(exc))
        return
    assert text in VALID, f"a token nobody issued was accepted: {text!r}"
    assert destination


if __name__ == "__main__":
    main(test_one)
