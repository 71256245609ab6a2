"""Signed tokens: sign/verify (pure) and the plugins around them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quictund.errors import ConfigError, TokenRejected
from quictund.tokens import make_parser, make_source
from quictund.tokens.signed import MAX_TOKEN, read_secret, sign, verify

SECRET = b"s" * 48
NOW = 1_800_000_000


def token(dest: str = "tcp:10.0.0.5:22", aud: str = "edge", exp: int = NOW + 60) -> str:
    return sign(dest, secret=SECRET, audience=aud, expires_at=exp)


def test_valid_token_gives_its_destination() -> None:
    assert verify(token(), secret=SECRET, audience="edge", now=NOW) == "tcp:10.0.0.5:22"


@pytest.mark.parametrize(
    ("tok", "why"),
    [
        (token(exp=NOW), "expired"),
        (token(exp=NOW - 3600), "expired"),
        (token(aud="other"), "wrong audience"),
        (token()[:-2] + ("AA" if not token().endswith("AA") else "BB"), "bad MAC"),
        (token().replace("qt1.", "qt2.", 1), "not a signed token"),
        ("qt1." + "A" * MAX_TOKEN, "too long"),
        ("tcp:10.0.0.5:22", "not a signed token"),
        ("", "not a signed token"),
    ],
)
def test_refused(tok: str, why: str) -> None:
    with pytest.raises(TokenRejected, match=why):
        verify(tok, secret=SECRET, audience="edge", now=NOW)


def test_other_secret_is_a_bad_mac() -> None:
    with pytest.raises(TokenRejected, match="bad MAC"):
        verify(token(), secret=b"t" * 48, audience="edge", now=NOW)


def test_payload_tampering_is_a_bad_mac() -> None:
    good = token()
    forged = token(dest="tcp:10.0.0.6:22")
    head, _, mac = good.rpartition(".")
    swapped = forged.rpartition(".")[0] + "." + mac
    with pytest.raises(TokenRejected, match="bad MAC"):
        verify(swapped, secret=SECRET, audience="edge", now=NOW)
    assert head != forged.rpartition(".")[0]


@given(st.text(max_size=700))
def test_arbitrary_text_is_refused_cleanly(text: str) -> None:
    try:
        verify(text, secret=SECRET, audience="edge", now=NOW)
    except TokenRejected:
        pass


def test_tokens_fit_the_wire() -> None:
    assert len(token(dest="unix:/" + "x" * 100)) <= 512
    with pytest.raises(ValueError, match="at most 512"):
        token(dest="unix:/" + "x" * 400)


def test_secret_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    with pytest.raises(ConfigError, match="no such file|No such file"):
        read_secret(str(f))
    f.write_bytes(b"short")
    f.chmod(0o600)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        read_secret(str(f))
    f.write_bytes(SECRET)
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_secret(str(f))
    f.chmod(0o600)
    assert read_secret(str(f)) == SECRET
    with pytest.raises(ConfigError, match="never a flag value"):
        read_secret(None)


async def test_plugins_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_bytes(os.urandom(48).hex().encode())
    f.chmod(0o600)
    source = make_source("signed", "tcp:10.0.0.5:22", secret_file=str(f), audience="edge")
    parser = make_parser("SIGNED", str(f), audience="edge")
    tok = await source.fetch("127.0.0.1:5555")
    assert str(parser.parse(tok)) == "tcp:10.0.0.5:22"
    other = make_parser("Signed", str(f), audience="another-server")
    with pytest.raises(TokenRejected, match="wrong audience"):
        other.parse(tok)
    with pytest.raises(ConfigError, match="needs token-audience"):
        make_source("Signed", "tcp:10.0.0.5:22", secret_file=str(f))


def test_a_token_replayed_after_its_expiry_is_refused() -> None:
    tok = token(exp=NOW + 60)
    assert verify(tok, secret=SECRET, audience="edge", now=NOW) == "tcp:10.0.0.5:22"
    assert verify(tok, secret=SECRET, audience="edge", now=NOW + 59) == "tcp:10.0.0.5:22"
    with pytest.raises(TokenRejected, match="expired"):
        verify(tok, secret=SECRET, audience="edge", now=NOW + 60)


def test_mac_has_exactly_one_spelling() -> None:
    """Regression (found by fuzzing): the MAC was base64-decoded leniently before comparing.

    The last character's two unused bits, ``+`` for ``-`` and ignored junk gave one issued token
    several accepted spellings, e.g. a single flipped bit ``Q`` -> ``S`` at the end.
    """
    good = token(dest="tcp:10.0.0.5:1")
    head, _, mac = good.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    low_bits = alphabet[alphabet.index(mac[-1]) ^ 0b11]  # same 4 significant bits
    variants = [mac[:-1] + low_bits, mac.replace("-", "+"), mac + "=", mac + "!", mac[:10] + "\n"]
    for variant in (v for v in variants if v != mac):
        with pytest.raises(TokenRejected, match="bad MAC"):
            verify(f"{head}.{variant}", secret=SECRET, audience="edge", now=NOW)
    assert verify(good, secret=SECRET, audience="edge", now=NOW) == "tcp:10.0.0.5:1"


def test_lone_surrogates_are_a_bad_mac_not_a_crash() -> None:
    """Regression (found by fuzzing): ``"qt1.\\ud800.x"`` raised UnicodeEncodeError."""
    for text in ("qt1.\ud800.x", "qt1.e30.\udcff"):
        with pytest.raises(TokenRejected, match="bad MAC"):
            verify(text, secret=SECRET, audience="edge", now=NOW)


def test_a_destination_too_long_to_sign_is_a_config_error(tmp_path: Path) -> None:
    """Found by fuzzing: a valid 107-byte UNIX path of non-ASCII characters becomes a token of
    more than 512 bytes (JSON escapes each as \\uXXXX\\uXXXX); the source accepted it at startup
    and then failed every tunnel.  Now it is refused when the source is built."""
    f = tmp_path / "secret"
    f.write_bytes(SECRET)
    f.chmod(0o600)
    path = "unix:/" + "\U00010000" * 26  # 104 bytes of UTF-8: a valid socket path
    with pytest.raises(ConfigError, match="at most 512 fit"):
        make_source("Signed", path, secret_file=str(f), audience="edge")
    assert make_source("Signed", "unix:/" + "x" * 100, secret_file=str(f), audience="edge")
