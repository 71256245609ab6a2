"""Certificate checks made inside the TLS handshake, shared by every engine adapter.

Each engine calls these from its own TLS context subclass and turns ``PeerRejected`` into its
own TLS alert, so a rejected peer fails *in the handshake* (CRYPTO_ERROR + alert) before any
stream is accepted.  Certificates are ``cryptography`` objects; an engine with its own
certificate type converts through DER first.
"""

from __future__ import annotations

import datetime as dt

from aioquic import tls as _aioquic_tls
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from quictund.policy.certload import fingerprint, is_ca
from quictund.policy.identity import Identity, identity_of, pinned_identity

# TLS alert numbers (RFC 8446 section 6)
HANDSHAKE_FAILURE = 40
BAD_CERTIFICATE = 42
UNSUPPORTED_CERTIFICATE = 43
CERTIFICATE_EXPIRED = 45


class PeerRejected(Exception):
    """The peer's certificate is refused; ``alert`` is the TLS alert to send."""

    def __init__(self, alert: int, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert
        self.reason = reason


def check_client_certificate(
    cert: x509.Certificate | None,
    chain: list[x509.Certificate],
    *,
    cafile: str | None,
    pins: frozenset[str],
    now: dt.datetime | None = None,
) -> Identity:
    """Accept a client by a chain to ``cafile`` or by a pinned key; return what was verified.

    Checked: a certificate was sent at all, it is a leaf that may be used for client
    authentication (not ``CA:TRUE``; EKU and key usage, when stated), and then either its
    chain verifies (dates, signatures, CA flags) against ``cafile`` -- the identity is then
    its subject, names and key -- or its key is pinned and the certificate is within its
    validity period -- the identity is then the key alone (``identity.py`` says why).
    Raises ``PeerRejected`` with the TLS alert to send otherwise.
    """
    if cert is None:
        raise PeerRejected(HANDSHAKE_FAILURE, "client certificate required")
    check_client_usage(cert)
    refused: PeerRejected | None = None
    if cafile is not None:
        try:
            _aioquic_tls.verify_certificate(certificate=cert, chain=chain, cafile=cafile)
            return identity_of(cert)
        except _aioquic_tls.Alert as exc:
            refused = PeerRejected(int(exc.description), str(exc))
    if pins and fingerprint(cert) in pins:
        check_pinned_dates(cert, now or dt.datetime.now(dt.UTC))
        return pinned_identity(cert)
    if refused is not None:
        raise refused
    raise PeerRejected(BAD_CERTIFICATE, "client key is not one of client-fingerprints")


def check_pinned_dates(cert: x509.Certificate, now: dt.datetime) -> None:
    """A pinned certificate is refused outside its validity period, as a CA-verified one is.

    The pin proves the key; the dates are the owner's statement of how long it meant to use
    it, and a key that leaked with an old certificate should not outlive that statement.
    """
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise PeerRejected(
            CERTIFICATE_EXPIRED,
            f"pinned client certificate is not valid before {start:%Y-%m-%d %H:%M:%S} UTC",
        )
    if now > end:
        raise PeerRejected(
            CERTIFICATE_EXPIRED,
            f"pinned client certificate expired on {end:%Y-%m-%d %H:%M:%S} UTC",
        )


def check_client_usage(cert: x509.Certificate) -> None:
    """A client certificate is a leaf, and one that states its purposes allows client auth.

    A ``CA:TRUE`` certificate is a signing authority, not a party: accepting one as a client
    would let whoever holds a CA key (say, a quictund server's own generated certificate,
    which is its own CA) log in with it directly.
    """
    if is_ca(cert):
        raise PeerRejected(
            UNSUPPORTED_CERTIFICATE, "client certificate is a CA certificate (CA:TRUE), not a leaf"
        )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PeerRejected(
            UNSUPPORTED_CERTIFICATE, "client certificate is not for client authentication"
        )
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.digital_signature:
        raise PeerRejected(UNSUPPORTED_CERTIFICATE, "client certificate may not sign (key usage)")


def check_server_certificate(
    cert: x509.Certificate | None,
    chain: list[x509.Certificate],
    *,
    server_name: str | None,
    cafile: str | None,
) -> None:
    """The server's chain must verify against ``cafile`` (or the system CAs) for ``server_name``.

    aioquic's verifier (OpenSSL) for both engines: qh3's own (webpki) refuses a self-signed
    certificate used as its own CA, which is how a quictund server's generated certificate is
    distributed (``ca-file`` = the server's certificate).  The refusal is phrased by
    ``_server_refusal`` so the client's log (``tls_advice.py``) can say what to do.
    """
    if cert is None:
        raise PeerRejected(BAD_CERTIFICATE, "the server sent no certificate")
    try:
        _aioquic_tls.verify_certificate(
            certificate=cert, chain=chain, server_name=server_name, cafile=cafile
        )
    except _aioquic_tls.Alert as exc:
        raise _server_refusal(cert, int(exc.description), str(exc), server_name, cafile) from None


def check_server_pin(cert: x509.Certificate | None, pins: frozenset[str]) -> None:
    """Pinning replaces CA verification: the server's public key must be one of ``pins``."""
    if cert is None:
        raise PeerRejected(BAD_CERTIFICATE, "the server sent no certificate")
    if fingerprint(cert) not in pins:
        raise PeerRejected(
            BAD_CERTIFICATE,
            f"{SERVER_REFUSED} (key {fingerprint(cert)}): {KEY_NOT_PINNED}",
        )


# How a client's refusal of the server certificate reads, on the wire (the close reason the
# server logs) and in the client's own log, where tls_advice.py adds what to do.
SERVER_REFUSED = "client refused the server certificate"
NOT_NAMED = "it does not name"
NOT_TRUSTED = "it is not signed by"
OUT_OF_DATE = "it is valid only from"
KEY_NOT_PINNED = "its key does not match server-fingerprint"
_MAX_NAMES = 6  # of the certificate's names quoted in the reason (a close frame is small)


def _server_refusal(
    cert: x509.Certificate, alert: int, why: str, server_name: str | None, cafile: str | None
) -> PeerRejected:
    key = fingerprint(cert)
    if alert == CERTIFICATE_EXPIRED:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        detail = f"{OUT_OF_DATE} {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
    elif why.startswith("hostname") or "could not be parsed" in why:
        names = [str(n) for n in identity_of(cert).names]
        shown = ", ".join(names[:_MAX_NAMES]) + (", ..." if len(names) > _MAX_NAMES else "")
        detail = f"{NOT_NAMED} {server_name!r} (it names {shown or 'nothing'})"
    else:
        signer = f"ca-file {cafile}" if cafile else "a CA this host trusts (no ca-file set)"
        detail = f"{NOT_TRUSTED} {signer} ({why})"
    return PeerRejected(alert, f"{SERVER_REFUSED} (key {key}): {detail}")
