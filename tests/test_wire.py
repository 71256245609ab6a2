"""The per-stream handshake codec: quic-tun's 512-byte NUL-padded token, decoded from any split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.wire import (
    TOKEN_LENGTH,
    Ack,
    BadToken,
    ErrorCode,
    TokenDecoder,
    TokenTooLong,
    decode_token,
    encode_token,
)

TOKEN = "tcp:127.0.0.1:6500"
BLOCK = encode_token(TOKEN)

# NUL-free text whose UTF-8 form fits in one block (a NUL would be ambiguous with padding).
tokens = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
).filter(lambda t: len(t.encode("utf-8")) <= TOKEN_LENGTH)


# ------------------------------------------------------------------------------ constants


def test_ack_and_error_codes_are_quic_tun_compatible() -> None:
    assert TOKEN_LENGTH == 512
    assert (Ack.OK, Ack.BAD_TOKEN, Ack.UNREACHABLE) == (0x01, 0x02, 0x03)
    assert bytes([Ack.OK]) == b"\x01"
    assert int(ErrorCode.NO_ERROR) == 0
    # Application codes are distinct, so a peer can tell why a stream ended.
    assert len({int(c) for c in ErrorCode}) == len(ErrorCode)


# ------------------------------------------------------------------------------ encode_token


def test_encode_pads_with_nul_to_512_bytes() -> None:
    assert len(BLOCK) == TOKEN_LENGTH
    assert BLOCK.startswith(TOKEN.encode())
    assert BLOCK[len(TOKEN) :] == b"\x00" * (TOKEN_LENGTH - len(TOKEN))


def test_encode_exactly_512_bytes_has_no_padding() -> None:
    token = "a" * TOKEN_LENGTH
    assert encode_token(token) == token.encode()


def test_encode_multibyte_utf8_counts_bytes_not_characters() -> None:
    token = "é" * 256  # 256 characters, 512 bytes
    block = encode_token(token)
    assert block == token.encode("utf-8")
    assert decode_token(block) == token


@pytest.mark.parametrize(
    "token",
    [
        "a" * (TOKEN_LENGTH + 1),
        "a" * 10_000,
        "é" * 257,  # 257 characters, 514 bytes
        "a" * 511 + "é",  # 511 characters, 513 bytes: fits in characters, not in bytes
        "€" * 171,  # 171 characters of 3 bytes = 513 bytes
        "😀" * 129,  # 129 characters of 4 bytes = 516 bytes
    ],
)
def test_encode_refuses_tokens_longer_than_512_bytes(token: str) -> None:
    with pytest.raises(TokenTooLong, match=str(len(token.encode()))):
        encode_token(token)


def test_token_too_long_is_a_value_error() -> None:
    assert issubclass(TokenTooLong, ValueError)
    assert issubclass(BadToken, ValueError)


# ------------------------------------------------------------------------------ decode_token


def test_decode_strips_only_trailing_nul() -> None:
    assert decode_token(BLOCK) == TOKEN
    assert decode_token(b"x" + b"\x00" * 511) == "x"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x00" * TOKEN_LENGTH, "empty"),
        (b"ab\x00cd".ljust(TOKEN_LENGTH, b"\x00"), "NUL"),
        (b"\x00abc".ljust(TOKEN_LENGTH, b"\x00"), "NUL"),
        (b"\xff\xfe".ljust(TOKEN_LENGTH, b"\x00"), "UTF-8"),
        (b"abc\xc3".ljust(TOKEN_LENGTH, b"\x00"), "UTF-8"),  # truncated multi-byte char
        (b"\xed\xa0\x80".ljust(TOKEN_LENGTH, b"\x00"), "UTF-8"),  # encoded surrogate
        (b"a" * 511, "511 bytes"),
        (b"a" * 513, "513 bytes"),
        (b"", "0 bytes"),
    ],
)
def test_decode_rejects_bad_blocks(block: bytes, message: str) -> None:
    with pytest.raises(BadToken, match=message):
        decode_token(block)


# ------------------------------------------------------------------------------ TokenDecoder


def test_decoder_whole_block_at_once() -> None:
    dec = TokenDecoder()
    assert dec.received == 0
    assert dec.feed(BLOCK) == (TOKEN, b"")
    assert dec.received == TOKEN_LENGTH


def test_decoder_every_split_into_two_chunks() -> None:
    for cut in range(TOKEN_LENGTH + 1):
        dec = TokenDecoder()
        first = dec.feed(BLOCK[:cut])
        if cut == TOKEN_LENGTH:
            assert first == (TOKEN, b""), cut
            continue
        assert first is None, cut
        assert dec.received == cut
        assert dec.feed(BLOCK[cut:]) == (TOKEN, b""), cut


def test_decoder_every_split_with_payload_after_the_token() -> None:
    payload = b"GET / HTTP/1.1\r\n\r\n\x00\x00tail"
    data = BLOCK + payload
    for cut in range(len(data) + 1):
        dec = TokenDecoder()
        first = dec.feed(data[:cut])
        if cut >= TOKEN_LENGTH:
            assert first == (TOKEN, data[TOKEN_LENGTH:cut]), cut
            continue
        assert first is None, cut
        token, rest = dec.feed(data[cut:]) or ("", b"")
        assert token == TOKEN, cut
        assert rest == payload, cut


def test_decoder_one_byte_chunks() -> None:
    dec = TokenDecoder()
    for i in range(TOKEN_LENGTH - 1):
        assert dec.feed(BLOCK[i : i + 1]) is None
        assert dec.received == i + 1
    assert dec.feed(BLOCK[-1:]) == (TOKEN, b"")


def test_decoder_empty_chunks_need_more() -> None:
    dec = TokenDecoder()
    assert dec.feed(b"") is None
    assert dec.feed(BLOCK[:100]) is None
    assert dec.feed(b"") is None
    assert dec.feed(BLOCK[100:] + b"rest") == (TOKEN, b"rest")


def test_decoder_returns_bytes_after_the_512th_as_rest() -> None:
    dec = TokenDecoder()
    assert dec.feed(BLOCK[:500]) is None
    token, rest = dec.feed(BLOCK[500:] + b"\x00payload\x00") or ("", b"")
    assert token == TOKEN
    assert rest == b"\x00payload\x00"  # NULs after the block are payload, not padding
    assert isinstance(rest, bytes)


@pytest.mark.parametrize(
    "block",
    [
        b"\x00" * TOKEN_LENGTH,
        b"ab\x00cd".ljust(TOKEN_LENGTH, b"\x00"),
        b"\xc3\x28".ljust(TOKEN_LENGTH, b"\x00"),
    ],
)
def test_decoder_rejects_bad_tokens_split_anywhere(block: bytes) -> None:
    for cut in (0, 1, 3, 256, 511):
        dec = TokenDecoder()
        assert dec.feed(block[:cut]) is None
        with pytest.raises(BadToken):
            dec.feed(block[cut:] + b"more")


def test_decoder_rejects_a_full_bad_block() -> None:
    with pytest.raises(BadToken, match="empty"):
        TokenDecoder().feed(b"\x00" * TOKEN_LENGTH + b"payload")


def test_decoder_feeding_after_done_raises() -> None:
    dec = TokenDecoder()
    assert dec.feed(BLOCK) is not None
    with pytest.raises(RuntimeError):
        dec.feed(b"more")
    with pytest.raises(RuntimeError):
        dec.feed(b"")


def test_decoder_feeding_after_bad_token_raises() -> None:
    dec = TokenDecoder()
    with pytest.raises(BadToken):
        dec.feed(b"\x00" * TOKEN_LENGTH)
    with pytest.raises(RuntimeError):
        dec.feed(BLOCK)


# ------------------------------------------------------------------------------ properties


@given(tokens)
def test_round_trip(token: str) -> None:
    block = encode_token(token)
    assert len(block) == TOKEN_LENGTH
    assert decode_token(block) == token


@given(tokens, st.binary(max_size=64), st.lists(st.integers(0, 600), max_size=6))
def test_round_trip_through_decoder_with_any_chunking(
    token: str, payload: bytes, cuts: list[int]
) -> None:
    data = encode_token(token) + payload
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    dec = TokenDecoder()
    result: tuple[str, bytes] | None = None
    after: list[bytes] = []
    for chunk in chunks:
        if result is None:
            result = dec.feed(chunk)
        else:
            after.append(chunk)
    assert result is not None
    got, rest = result
    assert got == token
    assert rest + b"".join(after) == payload


@given(st.lists(st.binary(max_size=700), max_size=8))
def test_decoder_fuzz_returns_none_result_or_bad_token(chunks: list[bytes]) -> None:
    dec = TokenDecoder()
    fed = 0
    for chunk in chunks:
        try:
            out = dec.feed(chunk)
        except BadToken:
            assert fed + len(chunk) >= TOKEN_LENGTH
            return
        fed += len(chunk)
        if out is None:
            assert fed < TOKEN_LENGTH
            assert dec.received == fed
            continue
        token, rest = out
        assert isinstance(token, str) and token
        assert "\x00" not in token
        assert isinstance(rest, bytes)
        assert len(rest) == fed - TOKEN_LENGTH
        return


@given(st.binary())
def test_decode_token_fuzz_returns_text_or_bad_token(block: bytes) -> None:
    try:
        token = decode_token(block)
    except BadToken:
        return
    assert len(block) == TOKEN_LENGTH
    assert encode_token(token) == block
