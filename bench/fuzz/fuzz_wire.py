"""The 512-byte token block and its decoder, fed in arbitrary chunks (quictund/wire.py)."""

from __future__ import annotations

from _common import FuzzedDataProvider, instrument_imports, main

with instrument_imports():
    from quictund.wire import TOKEN_LENGTH, BadToken, TokenDecoder, encode_token


def test_one(data: bytes) -> None:
    fdp = FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntInRange(0, 700) for _ in range(fdp.ConsumeIntInRange(0, 5)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    if fdp.remaining_bytes() == 0 and len(stream) < TOKEN_LENGTH and cuts and cuts[0] % 2:
        stream = stream.ljust(TOKEN_LENGTH, b"\x00")  # often a full block, padded like quic-tun
    bounds = [0, *(c for c in cuts if c <= len(stream)), len(stream)]
    decoder = TokenDecoder()
    fed = 0
    for a, b in zip(bounds, bounds[1:], strict=False):
        try:
            out = decoder.feed(stream[a:b])
        except BadToken as exc:
            assert fed + (b - a) >= TOKEN_LENGTH and "\n" not in str(exc)
            return
        fed += b - a
        if out is not None:
            token, rest = out
            assert token and "\x00" not in token
            assert encode_token(token) == stream[:TOKEN_LENGTH]
            assert rest == stream[TOKEN_LENGTH:b]
            return
        assert fed < TOKEN_LENGTH


if __name__ == "__main__":
    main(test_one)
