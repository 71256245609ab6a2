"""Load the operator's certificate and key, and name keys by fingerprint.

Why this module exists: a bad certificate otherwise shows up as a TLS alert deep inside aioquic
on the *first connection*, long after the daemon said it was ready.  Everything that can be
checked before binding the UDP socket is checked here and reported as one ``ConfigError`` line
that names the file and the problem.

Rules:

1. ``load_certificate_chain`` refuses anything aioquic would fail on later: a missing or
   unreadable file, a file without PEM blocks, an encrypted key (the daemon has nobody to ask
   for a passphrase), a key type aioquic cannot sign a TLS 1.3 handshake with, a key that does
   not belong to the leaf certificate, and a leaf outside its validity period.
2. ``fingerprint`` names a *public key* (``sha256:`` + base64 of its SubjectPublicKeyInfo), so
   a pin survives re-certification of the same key; ``quictund fingerprint FILE`` prints it.

Nothing here reads the network; everything is synchronous and runs before the event loop.
Generating certificates is ``selfsigned.py``'s job.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from quictund.errors import ConfigError

__all__ = [
    "fingerprint",
    "fingerprint_file",
    "is_ca",
    "load_certificate_chain",
    "os_problem",
    "parse_private_key",
    "read_file",
]


def load_certificate_chain(
    cert_file: str, key_file: str
) -> tuple[x509.Certificate, list[x509.Certificate], PrivateKeyTypes]:
    """Read a PEM certificate chain (leaf first) and its PEM private key.

    Returns ``(leaf, chain, key)``, ready for ``QuicConfiguration.certificate``,
    ``.certificate_chain`` and ``.private_key``.  Raises ``ConfigError`` with one line such as
    ``"cert-file /x.pem: no such file"`` for every problem listed in the module docstring.
    """
    certs = _parse_certificates("cert-file", cert_file, read_file("cert-file", cert_file))
    key = parse_private_key(key_file, read_file("key-file", key_file))
    leaf = certs[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(
            f"key-file {key_file}: the key does not match the certificate in {cert_file}"
        )
    _check_validity(cert_file, leaf, _now())
    return leaf, certs[1:], key


def fingerprint(cert: x509.Certificate) -> str:
    """``"sha256:" + base64(sha256(SubjectPublicKeyInfo DER))``, standard base64 with padding.

    Hashing the public key rather than the whole certificate keeps a pin valid when the same
    key is re-certified.
    """
    digest = hashlib.sha256(_spki(cert.public_key())).digest()
    return "sha256:" + base64.b64encode(digest).decode("ascii")


def is_ca(cert: x509.Certificate) -> bool:
    """True for a ``CA:TRUE`` certificate: a signing authority, refused as a client's own."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def fingerprint_file(path: str | os.PathLike[str]) -> str:
    """The ``fingerprint`` of the first (leaf) certificate in a PEM file; ``ConfigError`` if bad."""
    name = os.fspath(path)
    return fingerprint(_parse_certificates("cert-file", name, read_file("cert-file", name))[0])


# private: loading


def read_file(label: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{label} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(
            f"{label} {path}: cannot read: {os_problem(exc, show_file=False)}"
        ) from None


def _parse_certificates(label: str, path: str, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{label} {path}: not a PEM certificate file{_format_hint(data)}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{label} {path}: a PEM certificate in it is corrupt") from None


def parse_private_key(path: str, data: bytes) -> PrivateKeyTypes:
    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"key-file {path}: not a PEM private key file{_format_hint(data)}")
    encrypted = f"key-file {path}: the key is encrypted; quictund needs an unencrypted key"
    if b"ENCRYPTED" in data:  # PKCS#8 "ENCRYPTED PRIVATE KEY" and OpenSSL "Proc-Type: 4,ENCRYPTED"
        raise ConfigError(encrypted)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(encrypted) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"key-file {path}: the private key is corrupt or unsupported") from None
    # aioquic (tls.py, _signature_algorithms_for_private_key) can only sign with these; any
    # other key fails the handshake at the first connection with no useful message.
    usable = isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        usable = isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1)
    if not usable:
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        raise ConfigError(
            f"key-file {path}: unsupported key type {kind}"
            " (use RSA, ECDSA P-256/P-384, Ed25519 or Ed448)"
        )
    return key


def _format_hint(data: bytes) -> str:
    if not data.strip():
        return " (it is empty)"
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        return " (it looks like DER; convert it with 'openssl x509 -inform der' or 'openssl pkey')"
    if b"PRIVATE KEY-----" in data:
        return " (it holds a private key)"
    if b"CERTIFICATE-----" in data:
        return " (it holds a certificate)"
    return " (no '-----BEGIN' block)"


def _check_validity(path: str, cert: x509.Certificate, now: dt.datetime) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    period = f"(valid from {_date(start)} to {_date(end)})"
    if now < start:
        raise ConfigError(f"cert-file {path}: the certificate is not valid yet {period}")
    if now > end:
        raise ConfigError(f"cert-file {path}: the certificate expired on {_date(end)} {period}")


# private: helpers


class _PublicKey(Protocol):
    # What a private key's public half and a certificate's public key have in common; their
    # union types differ (DH/X25519 keys exist on one side only).
    def public_bytes(
        self, encoding: serialization.Encoding, format: serialization.PublicFormat, /
    ) -> bytes: ...


def _spki(public_key: _PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _date(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def os_problem(exc: OSError, *, show_file: bool = True) -> str:
    if not exc.strerror:
        return str(exc)
    detail = exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{detail} ({exc.filename})" if show_file and exc.filename else detail
