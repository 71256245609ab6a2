"""Make and keep a self-signed server certificate that clients can verify or pin.

Rules:

1. ``ensure_self_signed`` generates a certificate *once* and keeps it in the state directory,
   so clients can pin it (``fingerprint``) or use it as their CA file across restarts.  It is
   its own trust anchor (``CA:TRUE, pathlen:0``) so a plain "verify against this CA file"
   works in aioquic (OpenSSL), Go and Python's ``ssl``; it is only regenerated when it no
   longer loads, no longer covers the requested names, or has less than 30 days left, and a
   renewal keeps the key (pins stay valid).
2. ``server_names`` says what it must cover: the hostname, the listen address, and for a
   wildcard listener (``0.0.0.0`` / ``::``) every address of the host that a client could
   dial (not loopback or link-local, which ``localhost``, ``127.0.0.1`` and ``::1`` stand
   for), so a client that reaches the server by IP with it as ``ca-file`` verifies.  A new
   address regenerates it at the next start; an address that went away is left in.
3. Files are replaced atomically (temp file + ``os.replace``), the key is never readable by
   others (0600), and concurrent daemons sharing a state directory serialise on ``flock``, so
   a crash or a race never leaves a key that does not match its certificate in place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quictund.errors import ConfigError
from quictund.policy.certload import (
    fingerprint_file,
    load_certificate_chain,
    os_problem,
    parse_private_key,
    read_file,
)

__all__ = [
    "CERT_FILE_NAME",
    "KEY_FILE_NAME",
    "default_state_dir",
    "ensure_self_signed",
    "server_names",
]

logger = logging.getLogger(__name__)

CERT_FILE_NAME = "server.pem"
KEY_FILE_NAME = "server.key"

_BACKDATE = dt.timedelta(days=1)  # tolerate peers whose clock is a little behind
_VALIDITY = dt.timedelta(days=825)  # Apple platforms reject server certs valid for longer
_MIN_REMAINING = dt.timedelta(days=30)
_MAX_ADDRESSES = 64  # a host with hundreds of addresses should not get a 10 KB certificate
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
        raise ConfigError(f"state directory {state_dir}: {os_problem(exc)}") from None
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


def server_names(listen_host: str, addresses: Iterable[_IPAddress]) -> list[str]:
    """The names a server listening on ``listen_host`` should have in its certificate.

    The hostname, and the listen address itself; for a wildcard listener (``0.0.0.0``: the
    host's IPv4 addresses; ``::`` or empty: all of them) every address a client could dial,
    from ``addresses`` (the host's, as the builder has them).  Loopback and link-local are
    left to ``localhost``/``127.0.0.1``/``::1``; at most ``_MAX_ADDRESSES`` are named.
    """
    host = _strip_host(listen_host)
    names = [socket.gethostname()]
    if host not in ("", "0.0.0.0", "::"):
        return [host, *names]
    usable = sorted(
        (a for a in set(addresses) if _dialable(a) and (host != "0.0.0.0" or a.version == 4)),
        key=lambda a: (a.version, int(a)),
    )
    if len(usable) > _MAX_ADDRESSES:
        logger.info(
            "the self-signed certificate names %d of this host's %d addresses; clients that "
            "dial another one need server-name or server-fingerprint",
            _MAX_ADDRESSES,
            len(usable),
        )
    return names + [str(a) for a in usable[:_MAX_ADDRESSES]]


def _dialable(address: _IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return False
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
    )


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
        key = parse_private_key(str(key_path), read_file("key-file", str(key_path)))
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
        raise ConfigError(f"state directory {state_dir}: {os_problem(exc)}") from None
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _date(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
