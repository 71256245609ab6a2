"""Certificates for the QUIC endpoints: load the operator's, or make and keep a self-signed one.

Why this module exists: a bad certificate otherwise shows up as a TLS alert deep inside aioquic
on the *first connection*, long after the daemon said it was ready.  Everything that can be
checked before binding the UDP socket is checked here and reported as one ``ConfigError`` line
that names the file and the problem.

Rules:

1. ``load_certificate_chain`` refuses anything aioquic would fail on later: a missing or
   unreadable file, a file without PEM blocks, an encrypted key (the daemon has nobody to ask
   for a passphrase), a key type aioquic cannot sign a TLS 1.3 handshake with, a key that does
   not belong to the leaf certificate, and a leaf outside its validity period.
2. ``ensure_self_signed`` generates a certificate *once* and keeps it in the state directory,
   so clients can pin it (``fingerprint``) or use it as their CA file across restarts.  It is
   its own trust anchor (``CA:TRUE, pathlen:0``) so a plain "verify against this CA file"
   works in aioquic (OpenSSL), Go and Python's ``ssl``; it is only regenerated when it no
   longer loads, no longer covers the requested names, or has less than 30 days left.
3. Files are replaced atomically (temp file + ``os.replace``), the key is never readable by
   others (0600), and concurrent daemons sharing a state directory serialise on ``flock``, so
   a crash or a race never leaves a key that does not match its certificate in place.

Nothing here reads the network; everything is synchronous and runs before the event loop.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quictund.errors import ConfigError

__all__ = [
    "CERT_FILE_NAME",
    "KEY_FILE_NAME",
    "default_state_dir",
    "ensure_self_signed",
    "fingerprint",
    "fingerprint_file",
    "load_certificate_chain",
]

logger = logging.getLogger(__name__)

CERT_FILE_NAME = "server.pem"
KEY_FILE_NAME = "server.key"

_BACKDATE = dt.timedelta(days=1)  # tolerate peers whose clock is a little behind
_VALIDITY = dt.timedelta(days=825)  # Apple platforms reject server certs valid for longer
_MIN_REMAINING = dt.timedelta(days=30)
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_DNS_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")  # lower-cased A-labels, one wildcard
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Sign the TLS handshake (leaf role) and itself (trust-anchor role); nothing else.
_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


# public API


def load_certificate_chain(
    cert_file: str, key_file: str
) -> tuple[x509.Certificate, list[x509.Certificate], PrivateKeyTypes]:
    """Read a PEM certificate chain (leaf first) and its PEM private key.

    Returns ``(leaf, chain, key)``, ready for ``QuicConfiguration.certificate``,
    ``.certificate_chain`` and ``.private_key``.  Raises ``ConfigError`` with one line such as
    ``"cert-file /x.pem: no such file"`` for every problem listed in the module docstring.
    """
    certs = _parse_certificates("cert-file", cert_file, _read("cert-file", cert_file))
    key = _parse_private_key(key_file, _read("key-file", key_file))
    leaf = certs[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(
            f"key-file {key_file}: the key does not match the certificate in {cert_file}"
        )
    _check_validity(cert_file, leaf, _now())
    return leaf, certs[1:], key


def ensure_self_signed(state_dir: Path, hostnames: list[str]) -> tuple[Path, Path]:
    """Return ``(cert_path, key_path)`` of a self-signed certificate kept in ``state_dir``.

    The certificate covers ``hostnames`` (DNS names and IP addresses; the first one is the
    subject CN) plus ``localhost``, ``127.0.0.1`` and ``::1``.  An existing pair is reused when
    it loads, covers all of those and is valid for 30 more days; otherwise a new ECDSA P-256
    certificate is written (and the reason logged at INFO).  A stored P-256 key that still loads
    is kept, so clients that pinned the ``fingerprint`` (of the public key) keep working.
    Raises ``ConfigError`` when the state directory cannot be created or written.
    """
    dns_names, ips = _subject_alt_names(hostnames)
    cert_path, key_path = state_dir / CERT_FILE_NAME, state_dir / KEY_FILE_NAME
    _make_state_dir(state_dir)
    try:
        with _locked(state_dir):
            reason = _why_not_reusable(cert_path, key_path, dns_names, ips)
            if reason is None:
                logger.debug("reusing self-signed certificate %s", cert_path)
                return cert_path, key_path
            key = _existing_key(key_path)
            if key is None:
                logger.info("generating a new self-signed certificate and key: %s", reason)
            else:
                logger.info("renewing the self-signed certificate with its key: %s", reason)
            cert_pem, key_pem = _generate(_common_name(hostnames), dns_names, ips, key)
            # Key first: if we die in between, the pair mismatches and the next start
            # regenerates instead of serving a certificate whose key is lost.
            _write_atomic(key_path, key_pem, 0o600)
            _write_atomic(cert_path, cert_pem, 0o644)
    except OSError as exc:
        raise ConfigError(f"state directory {state_dir}: {_os_problem(exc)}") from None
    logger.info(
        "self-signed certificate %s (fingerprint %s); give it to clients as their CA file",
        cert_path,
        fingerprint_file(cert_path),
    )
    return cert_path, key_path


def default_state_dir() -> Path:
    """Where to keep generated state when the config does not say.

    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``; the first entry if there are
    several), else ``/var/lib/quictund`` for root, else ``$XDG_STATE_HOME/quictund`` or
    ``~/.local/state/quictund``.
    """
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if os.geteuid() == 0:
        return Path("/var/lib/quictund")
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values must be ignored
        return Path(xdg) / "quictund"
    return Path.home() / ".local" / "state" / "quictund"


def fingerprint(cert: x509.Certificate) -> str:
    """``"sha256:" + base64(sha256(SubjectPublicKeyInfo DER))``, standard base64 with padding.

    Hashing the public key rather than the whole certificate keeps a pin valid when the same
    key is re-certified.
    """
    digest = hashlib.sha256(_spki(cert.public_key())).digest()
    return "sha256:" + base64.b64encode(digest).decode("ascii")


def fingerprint_file(path: str | os.PathLike[str]) -> str:
    """The ``fingerprint`` of the first (leaf) certificate in a PEM file; ``ConfigError`` if bad."""
    name = os.fspath(path)
    return fingerprint(_parse_certificates("cert-file", name, _read("cert-file", name))[0])


# private: loading


def _read(label: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{label} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(
            f"{label} {path}: cannot read: {_os_problem(exc, show_file=False)}"
        ) from None


def _parse_certificates(label: str, path: str, data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"{label} {path}: not a PEM certificate file{_format_hint(data)}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{label} {path}: a PEM certificate in it is corrupt") from None


def _parse_private_key(path: str, data: bytes) -> PrivateKeyTypes:
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


# private: generating


def _subject_alt_names(hostnames: list[str]) -> tuple[list[str], list[_IPAddress]]:
    dns_names: list[str] = []
    ips: list[_IPAddress] = []
    for raw in hostnames:
        name = _strip_host(raw)
        if not name:
            continue
        try:
            ips.append(ipaddress.ip_address(name))
        except ValueError:
            dns_names.append(_a_label(raw, name))
    dns_names.append("localhost")
    ips += [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    return list(dict.fromkeys(dns_names)), list(dict.fromkeys(ips))


def _strip_host(raw: str) -> str:
    name = raw.strip()
    if name.startswith("[") and name.endswith("]"):  # "[::1]" as written in host:port
        name = name[1:-1]
    return name


def _a_label(raw: str, name: str) -> str:
    name = name.rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ConfigError(f"hostname {raw!r}: not a valid DNS name") from None
    if not _DNS_NAME.match(name):
        raise ConfigError(f"hostname {raw!r}: not a valid DNS name or IP address")
    return name


def _common_name(hostnames: list[str]) -> str:
    first = next((n for n in map(_strip_host, hostnames) if n), "quictund")
    return first if len(first) <= 64 else "quictund"  # X.520 caps the CN at 64 characters


def _generate(
    common_name: str,
    dns_names: list[str],
    ips: list[_IPAddress],
    key: ec.EllipticCurvePrivateKey | None,
) -> tuple[bytes, bytes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    san += [x509.IPAddress(ip) for ip in ips]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _why_not_reusable(
    cert_path: Path, key_path: Path, dns_names: list[str], ips: list[_IPAddress]
) -> str | None:
    """None if the stored pair can be served as is, else why not (for the INFO log)."""
    if not cert_path.exists() and not key_path.exists():
        return f"{cert_path} does not exist yet"
    try:
        cert, _chain, _key = load_certificate_chain(str(cert_path), str(key_path))
    except ConfigError as exc:
        return str(exc)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return f"{cert_path} has no subjectAltName"
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    missing = [n for n in dns_names if n not in have_dns] + [
        str(ip) for ip in ips if ip not in have_ips
    ]
    if missing:
        return f"{cert_path} does not cover {', '.join(missing)}"
    end = cert.not_valid_after_utc
    if end - _now() < _MIN_REMAINING:
        return f"{cert_path} expires on {_date(end)}, in less than {_MIN_REMAINING.days} days"
    return None


def _existing_key(key_path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The stored P-256 key if it still loads: renewing with it keeps ``fingerprint`` pins valid."""
    try:
        key = _parse_private_key(str(key_path), _read("key-file", str(key_path)))
    except ConfigError:
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


# private: files


def _make_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not state_dir.is_dir():
            raise ConfigError(f"state directory {state_dir}: not a directory") from None
        return  # an existing directory keeps its mode (systemd's StateDirectoryMode= owns it)
    except OSError as exc:
        raise ConfigError(f"state directory {state_dir}: {_os_problem(exc)}") from None
    os.chmod(state_dir, 0o700)  # mkdir() applies the umask; we promise exactly 0700


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise check-and-generate between processes sharing ``directory``."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the lock


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # before any secret byte lands in the file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


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


def _os_problem(exc: OSError, *, show_file: bool = True) -> str:
    if not exc.strerror:
        return str(exc)
    detail = exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{detail} ({exc.filename})" if show_file and exc.filename else detail
