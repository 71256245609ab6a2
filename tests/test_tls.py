"""Certificates: the self-signed one must really verify, and bad files must fail in one line."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import ssl
import stat
from pathlib import Path

import pytest
from aioquic.tls import AlertBadCertificate, verify_certificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quictund.errors import ConfigError
from quictund.policy import tls

NOW = dt.datetime.now(dt.UTC)
LOOPBACK: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
]


def make_cert(
    tmp_path: Path,
    name: str = "leaf",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    curve: ec.EllipticCurve | None = None,
) -> tuple[Path, Path]:
    """A minimal self-signed certificate and its key, written as ``name.pem``/``name.key``."""
    key = key or ec.generate_private_key(curve or ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName(LOOPBACK), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def load_leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


# ensure_self_signed: a certificate clients can really verify


@pytest.fixture
def generated(tmp_path: Path) -> tuple[Path, Path]:
    return tls.ensure_self_signed(tmp_path / "state", ["tun.example.com", "192.0.2.7"])


@pytest.mark.parametrize(
    "server_name", ["localhost", "127.0.0.1", "::1", "tun.example.com", "192.0.2.7"]
)
def test_generated_cert_verifies_with_aioquic(
    generated: tuple[Path, Path], server_name: str
) -> None:
    cert_path, _ = generated
    verify_certificate(
        certificate=load_leaf(cert_path), server_name=server_name, cafile=str(cert_path)
    )


@pytest.mark.parametrize("server_name", ["example.org", "192.0.2.8"])
def test_generated_cert_rejects_other_names(generated: tuple[Path, Path], server_name: str) -> None:
    cert_path, _ = generated
    with pytest.raises(AlertBadCertificate):
        verify_certificate(
            certificate=load_leaf(cert_path), server_name=server_name, cafile=str(cert_path)
        )


def test_generated_cert_passes_strict_openssl_handshake(generated: tuple[Path, Path]) -> None:
    # Python 3.13 turns VERIFY_X509_STRICT on by default; a real TLS handshake over memory
    # BIOs proves the cert works as its own trust anchor there too.
    cert_path, key_path = generated
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=cert_path)
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="localhost")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done: set[int] = set()
    for _ in range(10):
        for side, outgoing, incoming in ((client, bios[1], bios[2]), (server, bios[3], bios[0])):
            try:
                side.do_handshake()
                done.add(id(side))
            except ssl.SSLWantReadError:
                pass
            incoming.write(outgoing.read())
        if len(done) == 2:
            break
    assert len(done) == 2
    peer = client.getpeercert()
    assert peer is not None
    assert peer["subject"] == ((("commonName", "tun.example.com"),),)


def test_generated_cert_contents(generated: tuple[Path, Path]) -> None:
    now = dt.datetime.now(dt.UTC)  # the fixture just made it; NOW is import time (stale)
    cert = load_leaf(generated[0])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tun.example.com"
    assert cert.issuer == cert.subject
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert (basic.value.ca, basic.value.path_length) == (True, 0)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_cert_sign and not usage.key_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["tun.example.com", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "192.0.2.7",
        "127.0.0.1",
        "::1",
    ]
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert abs(before - (now - dt.timedelta(days=1))) < dt.timedelta(minutes=5)
    assert abs(after - (now + dt.timedelta(days=825))) < dt.timedelta(minutes=5)


def test_generated_files_and_modes(tmp_path: Path, generated: tuple[Path, Path]) -> None:
    state = tmp_path / "state"
    assert generated == (state / "server.pem", state / "server.key")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(generated[1].stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["server.key", "server.pem"]  # no temp files
    tls.load_certificate_chain(str(generated[0]), str(generated[1]))


def test_no_hostnames_uses_quictund_and_loopback(tmp_path: Path) -> None:
    cert_path, _ = tls.ensure_self_signed(tmp_path, [])
    cert = load_leaf(cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "quictund"
    verify_certificate(certificate=cert, server_name="::1", cafile=str(cert_path))


def test_second_call_reuses_files(
    tmp_path: Path, generated: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cert_path, key_path = generated
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in generated]
    with caplog.at_level(logging.INFO, logger="quictund.policy.selfsigned"):
        # a subset of the names (and a different order) is still covered
        again = tls.ensure_self_signed(tmp_path / "state", ["192.0.2.7", "localhost"])
    assert again == generated
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in generated] == before
    assert not caplog.records


def test_new_hostname_renews_cert_and_keeps_key(
    tmp_path: Path, generated: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cert_path, key_path = generated
    old_cert, old_fp = cert_path.read_bytes(), tls.fingerprint_file(cert_path)
    with caplog.at_level(logging.INFO, logger="quictund.policy.selfsigned"):
        tls.ensure_self_signed(tmp_path / "state", ["new.example.com"])
    assert cert_path.read_bytes() != old_cert
    assert "does not cover new.example.com" in caplog.text
    # the public key survives, so SPKI pins made from the old certificate still match
    assert tls.fingerprint_file(cert_path) == old_fp
    verify_certificate(
        certificate=load_leaf(cert_path), server_name="new.example.com", cafile=str(cert_path)
    )
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_expiring_cert_is_regenerated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert_path, key_path = make_cert(tmp_path, "server", not_after=NOW + dt.timedelta(days=29))
    with caplog.at_level(logging.INFO, logger="quictund.policy.selfsigned"):
        tls.ensure_self_signed(tmp_path, [])
    assert f"{cert_path} expires on" in caplog.text
    assert "in less than 30 days" in caplog.text
    assert load_leaf(cert_path).not_valid_after_utc > NOW + dt.timedelta(days=800)


def test_garbage_files_are_regenerated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "server.pem").write_text("garbage\n")
    (tmp_path / "server.key").write_text("garbage\n")
    with caplog.at_level(logging.INFO, logger="quictund.policy.selfsigned"):
        cert_path, key_path = tls.ensure_self_signed(tmp_path, ["h"])
    assert "not a PEM certificate file" in caplog.text
    assert "new self-signed certificate and key" in caplog.text
    tls.load_certificate_chain(str(cert_path), str(key_path))


def test_existing_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    tls.ensure_self_signed(tmp_path, [])
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750


def test_state_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"^state directory .*/f: not a directory$"):
        tls.ensure_self_signed(tmp_path / "f", [])


@pytest.mark.parametrize("name", ["bad host", "host:443", "a..b", "-x.example"])
def test_invalid_hostname(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid DNS name"):
        tls.ensure_self_signed(tmp_path, [name])


def test_hostname_normalisation(tmp_path: Path) -> None:
    cert_path, _ = tls.ensure_self_signed(tmp_path, ["[2001:db8::1]", "Bücher.Example.", ""])
    cert = load_leaf(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example", "localhost"]
    assert "2001:db8::1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


# load_certificate_chain: one line naming the file and the problem


def test_load_chain_returns_leaf_chain_key(tmp_path: Path) -> None:
    leaf_pem, leaf_key = make_cert(tmp_path, "leaf")
    ca_pem, _ = make_cert(tmp_path, "ca")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(leaf_pem.read_bytes() + ca_pem.read_bytes())
    leaf, chain, key = tls.load_certificate_chain(str(bundle), str(leaf_key))
    assert leaf == load_leaf(leaf_pem)
    assert chain == [load_leaf(ca_pem)]
    assert isinstance(key, ec.EllipticCurvePrivateKey)


def expect_error(cert: Path | str, key: Path | str, pattern: str) -> str:
    with pytest.raises(ConfigError) as info:
        tls.load_certificate_chain(str(cert), str(key))
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(pattern, message), message
    return message


def test_missing_cert_file(tmp_path: Path) -> None:
    _, key = make_cert(tmp_path)
    expect_error(tmp_path / "x.pem", key, rf"cert-file {tmp_path}/x\.pem: no such file")


def test_missing_key_file(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    expect_error(cert, tmp_path / "x.key", rf"key-file {tmp_path}/x\.key: no such file")


def test_unreadable_cert_file(tmp_path: Path) -> None:
    # a directory, because root (CI containers) ignores permission bits
    _, key = make_cert(tmp_path)
    expect_error(tmp_path, key, rf"cert-file {tmp_path}: cannot read: is a directory")


def test_garbage_cert_file(tmp_path: Path) -> None:
    _, key = make_cert(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    expect_error(garbage, key, rf"cert-file {garbage}: not a PEM certificate file \(no .*\)")


def test_corrupt_pem_block(tmp_path: Path) -> None:
    _, key = make_cert(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    expect_error(bad, key, rf"cert-file {bad}: a PEM certificate in it is corrupt")


def test_files_swapped(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    expect_error(
        key, cert, rf"cert-file {key}: not a PEM certificate file \(it holds a private key\)"
    )


def test_der_cert(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    der = tmp_path / "cert.der"
    der.write_bytes(load_leaf(cert).public_bytes(serialization.Encoding.DER))
    expect_error(der, key, rf"cert-file {der}: not a PEM certificate file \(it looks like DER.*")


def test_garbage_key_file(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    expect_error(cert, bad, rf"key-file {bad}: the private key is corrupt or unsupported")


def test_empty_key_file(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    empty = tmp_path / "empty.key"
    empty.write_text("")
    expect_error(cert, empty, rf"key-file {empty}: not a PEM private key file \(it is empty\)")


def test_encrypted_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert, _ = make_cert(tmp_path, key=key)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    expect_error(cert, encrypted, rf"key-file {encrypted}: the key is encrypted; .*")


def test_unsupported_key_type(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, curve=ec.SECP521R1())
    expect_error(cert, key, rf"key-file {key}: unsupported key type secp521r1 \(use .*\)")


def test_key_does_not_match(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "one")
    _, other_key = make_cert(tmp_path, "two")
    expect_error(
        cert, other_key, rf"key-file {other_key}: the key does not match the certificate in {cert}"
    )


def test_expired_cert(tmp_path: Path) -> None:
    start, end = NOW - dt.timedelta(days=20), NOW - dt.timedelta(days=2)
    cert, key = make_cert(tmp_path, not_before=start, not_after=end)
    message = expect_error(cert, key, rf"cert-file {cert}: the certificate expired on .*")
    assert f"valid from {start:%Y-%m-%d %H:%M:%S} UTC to {end:%Y-%m-%d %H:%M:%S} UTC" in message


def test_not_yet_valid_cert(tmp_path: Path) -> None:
    start, end = NOW + dt.timedelta(days=2), NOW + dt.timedelta(days=20)
    cert, key = make_cert(tmp_path, not_before=start, not_after=end)
    message = expect_error(cert, key, rf"cert-file {cert}: the certificate is not valid yet .*")
    assert f"valid from {start:%Y-%m-%d %H:%M:%S} UTC" in message


# fingerprints and the state directory


def test_fingerprint(tmp_path: Path) -> None:
    cert_path, _ = make_cert(tmp_path)
    cert = load_leaf(cert_path)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = "sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert tls.fingerprint(cert) == expected
    assert re.fullmatch(r"sha256:[A-Za-z0-9+/]{43}=", expected)
    assert tls.fingerprint_file(cert_path) == expected
    assert tls.fingerprint_file(str(cert_path)) == expected


def test_fingerprint_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        tls.fingerprint_file(tmp_path / "nope.pem")


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/one:/var/lib/two")
    assert tls.default_state_dir() == Path("/var/lib/one")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert tls.default_state_dir() == Path("/var/lib/quictund")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert tls.default_state_dir() == tmp_path / "xdg" / "quictund"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tls.default_state_dir() == tmp_path / ".local" / "state" / "quictund"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert tls.default_state_dir() == tmp_path / ".local" / "state" / "quictund"


# server_names: what the generated certificate covers (issue 14 §3)


def test_server_names_for_a_wildcard_listener_are_the_dialable_addresses() -> None:
    host = ipaddress.ip_address
    found = [host(a) for a in ("10.0.0.1", "127.0.0.1", "169.254.1.1", "2001:db8::7", "fe80::1")]
    found += [host("::1"), host("::ffff:10.0.0.9"), host("192.0.2.4")]
    v4 = tls.server_names("0.0.0.0", found)
    assert v4[1:] == ["10.0.0.1", "192.0.2.4"]  # no loopback, link-local, mapped or IPv6
    assert tls.server_names("::", found)[1:] == ["10.0.0.1", "192.0.2.4", "2001:db8::7"]
    assert tls.server_names("10.0.0.1", found)[0] == "10.0.0.1"
    assert tls.server_names("[2001:db8::7]", found)[0] == "2001:db8::7"
    many = [ipaddress.IPv4Address(0x0A000000 + i) for i in range(1, 200)]
    assert len(tls.server_names("0.0.0.0", many)) == 1 + 64


def test_new_address_renews_the_certificate_and_keeps_the_key(tmp_path: Path) -> None:
    first = tls.server_names("0.0.0.0", [ipaddress.ip_address("10.0.0.1")])
    cert_path, _ = tls.ensure_self_signed(tmp_path, first)
    pin = tls.fingerprint_file(cert_path)
    before = cert_path.read_bytes()
    tls.ensure_self_signed(tmp_path, first)
    assert cert_path.read_bytes() == before  # unchanged addresses: the certificate is kept
    grown = tls.server_names("0.0.0.0", [ipaddress.ip_address(a) for a in ("10.0.0.1", "10.9.9.9")])
    tls.ensure_self_signed(tmp_path, grown)
    assert cert_path.read_bytes() != before
    assert tls.fingerprint_file(cert_path) == pin  # pins survive
    san = (
        x509.load_pem_x509_certificate(cert_path.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert ipaddress.ip_address("10.9.9.9") in san.get_values_for_type(x509.IPAddress)


def test_tls_advice_names_the_side_and_the_fix() -> None:
    from quictund.quic.tls_advice import explain

    key = "sha256:" + "B" * 43 + "="
    ours = f"closed by peer or engine: client refused the server certificate (key {key}): "
    named = explain(
        ours + "it does not name '10.0.0.1' (it names DNS:vm, IP:127.0.0.1)",
        endpoint="10.0.0.1:7500",
        cafile="/etc/quictun/server.pem",
        server_name="10.0.0.1",
    )
    assert named.startswith("this client refused the server's certificate: it does not name")
    assert "set server-name = " in named and f'server-fingerprint = "{key}"' in named
    stale = explain(
        ours + "it is not signed by ca-file /x.pem (self-signed certificate)",
        endpoint="h:1",
        cafile="/x.pem",
        server_name=None,
    )
    assert "ca-file /x.pem is not the certificate (or CA) this server uses now" in stale
    theirs = explain(
        "closed by peer or engine: client key is not one of client-fingerprints",
        endpoint="h:1",
        cafile=None,
        server_name=None,
    )
    assert theirs.startswith("the server refused this client's certificate: client key")
    other = "closed by peer or engine: idle timeout"
    assert explain(other, endpoint="h:1", cafile=None, server_name=None) == other
