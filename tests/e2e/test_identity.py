"""Client identities: attached to tunnels, logged, and choosing the destination policy."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import ssl
from pathlib import Path

import pytest
from aioquic.asyncio import connect as quic_connect
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quictund.policy import tls
from quictund.policy.identity import Identity
from tests.e2e.harness import ENGINE_TOML, connect, echo
from tests.e2e.test_bad_input import _issue
from tests.e2e.test_daemon import Run, free_udp_port


def test_identity_matching() -> None:
    ident = Identity("CN=ops,O=Example\\, Inc", ("DNS:ops.example.com", "IP:10.0.0.7"))
    for pattern in (
        "CN=ops,O=Example\\, Inc",
        "CN=ops",
        "O=Example\\, Inc",
        "DNS:ops.example.com",
        "IP:10.0.0.7",
    ):
        assert ident.matches(pattern), pattern
    for pattern in ("CN=op", "cn=ops", "DNS:example.com", "", "O=Example"):
        assert not ident.matches(pattern), pattern
    assert not Identity().matches("CN=ops")
    # a CA-verified identity also matches its key; a pinned one matches only its key
    key = "sha256:" + "A" * 43 + "="
    assert Identity("CN=ops", (), key).matches(key)
    pinned = Identity(key=key)
    assert pinned.matches(key) and str(pinned) == key
    for pattern in ("CN=ops", "", "sha256:", key[:-1]):
        assert not pinned.matches(pattern), pattern


async def test_policy_per_identity(short_tmp: Path, tmp_path: Path, state_dir: Path) -> None:
    ops_app = await echo().tcp()
    dev_app = await echo().tcp()
    ca_path, _, ca_cert, ca_key = _issue(tmp_path, "ca", None, ca=True)
    certs = {name: _issue(tmp_path, name, (ca_cert, ca_key)) for name in ("ops", "dev")}
    port = free_udp_port()
    server_cert = state_dir / "server.pem"
    lines = [
        f'[api]\nsocket = "{short_tmp}/api.sock"\n',
        (
            f'[[server]]\nname = "edge"\n{ENGINE_TOML}listen-on = "127.0.0.1:{port}"\n'
            f'state-dir = "{state_dir}"\nverify-remote-endpoint = true\nca-file = "{ca_path}"\n'
            f'allow = ["{dev_app.address}"]\n'
            f'[[server.allow-for]]\nidentity = "CN=ops"\nallow = ["{ops_app.address}"]\n'
        ),
    ]
    for name, (cert, key, _, _) in certs.items():
        for target, app in (("ops", ops_app), ("dev", dev_app)):
            lines.append(
                f'[[client]]\nname = "{name}-to-{target}"\n{ENGINE_TOML}'
                f'listen-on = "unix:{short_tmp}/{name}-{target}.sock"\n'
                f'server-endpoint = "127.0.0.1:{port}"\nserver-name = "localhost"\n'
                f'ca-file = "{server_cert}"\ncert-file = "{cert}"\nkey-file = "{key}"\n'
                f'token-source = "{app.address}"\nconnect-wait = 3\n'
            )
    from quictund.policy import tls

    tls.ensure_self_signed(state_dir, ["localhost"])
    conf = short_tmp / "d.toml"
    conf.write_text("".join(lines))
    run = await Run.start("--config", str(conf))
    try:
        await run.wait_log("ready:")
        results = {}
        for name in ("ops", "dev"):
            for target in ("ops", "dev"):
                reader, writer = await connect(f"unix:{short_tmp}/{name}-{target}.sock")
                writer.write(b"hi")
                try:
                    results[(name, target)] = await asyncio.wait_for(reader.readexactly(2), 10)
                except (ConnectionError, asyncio.IncompleteReadError):
                    # the refusal's RST may surface as ECONNRESET, EOF or, when our write
                    # raced it, EPIPE
                    results[(name, target)] = b""
                writer.close()
        assert results == {
            ("ops", "ops"): b"hi",
            ("ops", "dev"): b"",
            ("dev", "ops"): b"",
            ("dev", "dev"): b"hi",
        }
        denied = await run.wait_log("not allowed by policy")
        assert "identity=" in denied and "CN=" in denied
        # the identity is shown in the API on the server side
        reader, writer = await connect(f"unix:{short_tmp}/ops-ops.sock")
        writer.write(b"hold")
        assert await reader.readexactly(4) == b"hold"
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-s",
            "--unix-socket",
            f"{short_tmp}/api.sock",
            "http://localhost/tunnels",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        server_side = [t for t in json.loads(out) if t["endpoint"] == "server"]
        assert [t["clientIdentity"] for t in server_side] == ["CN=ops"]
        writer.close()
    finally:
        assert await run.stop() == 0
        ops_app.close()
        dev_app.close()


@pytest.mark.parametrize("extra", ["", "verify-remote-endpoint = false\n"])
async def test_allow_for_needs_client_certificates(
    short_tmp: Path, state_dir: Path, extra: str
) -> None:
    conf = short_tmp / "d.toml"
    conf.write_text(
        f'[[server]]\nname = "edge"\n{ENGINE_TOML}listen-on = "127.0.0.1:0"\n'
        f'state-dir = "{state_dir}"\n{extra}allow = []\n'
        '[[server.allow-for]]\nidentity = "CN=ops"\nallow = ["tcp:10.0.0.1:22"]\n'
    )
    run = await Run.start("--config", str(conf))
    assert await run.exited() == 78
    assert any("allow-for needs client certificates" in line for line in run.log)


async def test_signed_tokens_end_to_end(short_tmp: Path, state_dir: Path) -> None:
    from quictund.policy import tls

    app = await echo().tcp()
    good, bad = short_tmp / "good.secret", short_tmp / "bad.secret"
    for path in (good, bad):
        path.write_text(os.urandom(32).hex())
        path.chmod(0o600)
    port = free_udp_port()
    cert, _ = tls.ensure_self_signed(state_dir, ["localhost"])
    conf = short_tmp / "d.toml"
    text = (
        f'[[server]]\nname = "edge"\n{ENGINE_TOML}listen-on = "127.0.0.1:{port}"\n'
        f'state-dir = "{state_dir}"\ntoken-parser-plugin = "Signed"\n'
        f'token-parser-key = "{good}"\ntoken-audience = "edge"\nallow = ["{app.address}"]\n'
    )
    for name, secret in (("good", good), ("bad", bad)):
        text += (
            f'[[client]]\nname = "{name}"\n{ENGINE_TOML}'
            f'listen-on = "unix:{short_tmp}/{name}.sock"\n'
            f'server-endpoint = "127.0.0.1:{port}"\nserver-name = "localhost"\n'
            f'ca-file = "{cert}"\ntoken-source-plugin = "Signed"\n'
            f'token-source = "{app.address}"\ntoken-secret-file = "{secret}"\n'
            'token-audience = "edge"\n'
        )
    conf.write_text(text)
    run = await Run.start("--config", str(conf))
    try:
        await run.wait_log("ready:")
        reader, writer = await connect(f"unix:{short_tmp}/good.sock")
        writer.write(b"signed")
        assert await reader.readexactly(6) == b"signed"
        writer.close()
        reader, writer = await connect(f"unix:{short_tmp}/bad.sock")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):  # UNIX: EOF
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()
        line = await run.wait_log("bad MAC")
        assert "token rejected" in line
        assert app.accepted == 1
    finally:
        assert await run.stop() == 0
        app.close()


# ---- issue 13 §3: an identity is what was verified, never what the client asserts -----------


def _self_signed(
    tmp: Path, name: str, *, ca: bool = False, shift: dt.timedelta = dt.timedelta(0)
) -> tuple[Path, Path, str]:
    """A self-signed client certificate (``shift`` moves its validity window), and its pin."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC) + shift
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    slug = f"{name}-{len(list(tmp.iterdir()))}"
    cert_path, key_path = tmp / f"{slug}.pem", tmp / f"{slug}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, tls.fingerprint(cert)


async def _raw_handshake(port: int, cert: Path, key: Path) -> None:
    """A hostile client on aioquic's own API presenting ``cert`` (the server logs the end)."""
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    config.load_cert_chain(cert, key)
    with contextlib.suppress(ConnectionError):
        async with quic_connect("127.0.0.1", port, configuration=config) as peer:
            await asyncio.wait_for(peer.wait_connected(), 10)
            await asyncio.wait_for(peer.ping(), 10)  # TLS 1.3: the refusal follows Finished


async def test_pinned_key_cannot_claim_a_subject(
    short_tmp: Path, tmp_path: Path, state_dir: Path
) -> None:
    """A pinned client that writes CN=ops into its own certificate gets nothing of ops's.

    On main the forged subject selected ``allow-for`` "CN=ops" (the tunnel reached ops_app)
    and shared ops's quota; now the pinned client is ``sha256:...`` and nothing else, and an
    ``allow-for`` that names that fingerprint is what gives it a policy.
    """
    ops_app, key_app, dev_app = await echo().tcp(), await echo().tcp(), await echo().tcp()
    forged, forged_key, forged_pin = _self_signed(tmp_path, "ops")
    keyed, keyed_key, keyed_pin = _self_signed(tmp_path, "anything")
    port = free_udp_port()
    server_cert, _ = tls.ensure_self_signed(state_dir, ["localhost"])
    text = (
        f'[[server]]\nname = "edge"\n{ENGINE_TOML}listen-on = "127.0.0.1:{port}"\n'
        f'state-dir = "{state_dir}"\nclient-fingerprints = ["{forged_pin}", "{keyed_pin}"]\n'
        f'allow = ["{dev_app.address}"]\n'
        f'[[server.allow-for]]\nidentity = "CN=ops"\nallow = ["{ops_app.address}"]\n'
        f'[[server.allow-for]]\nidentity = "{keyed_pin}"\nallow = ["{key_app.address}"]\n'
    )
    cases = {"forged": (forged, forged_key, ops_app), "keyed": (keyed, keyed_key, key_app)}
    cases["forged-dev"] = (forged, forged_key, dev_app)
    for name, (cert, key, app) in cases.items():
        text += (
            f'[[client]]\nname = "{name}"\n{ENGINE_TOML}'
            f'listen-on = "unix:{short_tmp}/{name}.sock"\n'
            f'server-endpoint = "127.0.0.1:{port}"\nserver-name = "localhost"\n'
            f'ca-file = "{server_cert}"\ncert-file = "{cert}"\nkey-file = "{key}"\n'
            f'token-source = "{app.address}"\nconnect-wait = 5\n'
        )
    conf = short_tmp / "d.toml"
    conf.write_text(text)
    run = await Run.start("--config", str(conf))
    try:
        await run.wait_log("ready:")
        got = {name: await _echo_once(short_tmp / f"{name}.sock") for name in cases}
        # the forged CN reaches nothing of ops's; the fingerprint's own allow-for works; the
        # forged client is no longer "CN=ops", so allow-for CN=ops does not cover it either
        # and it falls back to the listener's allow
        assert got == {"forged": b"", "keyed": b"hi", "forged-dev": b"hi"}, got
        denied = await run.wait_log("not allowed by policy")
        assert f"identity={forged_pin}" in denied or forged_pin in denied, denied
        assert "CN=ops" not in denied, denied
        assert ops_app.accepted == 0 and key_app.accepted == 1
    finally:
        assert await run.stop() == 0
        for app in (ops_app, key_app, dev_app):
            app.close()


async def _echo_once(sock: Path) -> bytes:
    reader, writer = await connect(f"unix:{sock}")
    writer.write(b"hi")
    try:
        return await asyncio.wait_for(reader.readexactly(2), 10)
    except (ConnectionError, asyncio.IncompleteReadError):
        return b""  # refused: RST, EOF or EPIPE, whichever raced our write
    finally:
        writer.close()


async def test_pinned_certificate_must_be_a_valid_leaf(
    short_tmp: Path, tmp_path: Path, state_dir: Path
) -> None:
    """A pinned key in an expired, not-yet-valid or CA:TRUE certificate fails the handshake."""
    app = await echo().tcp()
    certs = {
        "expired": _self_signed(tmp_path, "old", shift=-dt.timedelta(days=60)),
        "not yet valid": _self_signed(tmp_path, "new", shift=dt.timedelta(days=3)),
        "CA:TRUE": _self_signed(tmp_path, "authority", ca=True),
        "good": _self_signed(tmp_path, "good"),
    }
    pins = ", ".join(f'"{pin}"' for _, _, pin in certs.values())
    port = free_udp_port()
    conf = short_tmp / "d.toml"
    conf.write_text(
        f'[[server]]\nname = "edge"\n{ENGINE_TOML}listen-on = "127.0.0.1:{port}"\n'
        f'state-dir = "{state_dir}"\nclient-fingerprints = [{pins}]\n'
        f'allow = ["{app.address}"]\n'
    )
    run = await Run.start("--config", str(conf))
    try:
        await run.wait_log("ready:")
        expected = {
            "expired": "pinned client certificate expired on",
            "not yet valid": "pinned client certificate is not valid before",
            "CA:TRUE": "client certificate is a CA certificate (CA:TRUE), not a leaf",
            "good": "",
        }
        for name, (cert, key, _) in certs.items():
            mark = len(run.log)
            await _raw_handshake(port, cert, key)
            closed = await run.wait_log("closed by peer or engine", start=mark)
            if expected[name]:
                assert expected[name] in closed, (name, closed)
            else:
                assert "error 0x0" in closed, closed  # the client's own clean close
    finally:
        assert await run.stop() == 0
        app.close()


def test_allow_for_fingerprints_are_checked_and_names_without_a_ca_warned(
    tmp_path: Path,
) -> None:
    from quictund.config import files as config_files
    from quictund.daemon.build import Builder
    from quictund.tunnel.tunnels import TunnelTable

    pin = "sha256:" + "A" * 43 + "="

    def build(identity: str) -> list[str]:
        conf = tmp_path / "s.toml"
        conf.write_text(
            f'[[server]]\nname = "edge"\nlisten-on = "127.0.0.1:0"\nallow = []\n'
            f'client-fingerprints = ["{pin}"]\n'
            f'[[server.allow-for]]\nidentity = "{identity}"\nallow = ["tcp:10.0.0.1:22"]\n'
        )
        return Builder(TunnelTable(), dry_run=True).build(config_files.load([conf])).warnings

    assert not [w for w in build(pin) if "allow-for" in w]
    (warning,) = [w for w in build("CN=ops") if "allow-for" in w]
    assert "never matches" in warning and "sha256:" in warning
    with pytest.raises(config_files.ConfigProblems, match=r"allow-for\[0\]\.identity"):
        build("sha256:not-base64")


async def test_pinned_clients_writing_the_same_subject_do_not_share_a_quota(
    short_tmp: Path, tmp_path: Path, state_dir: Path
) -> None:
    """max-tunnels-per-identity counts a pinned client per key: CN=ops twice is two identities.

    On main both counted as "CN=ops": the second client's tunnel was refused while the first
    held its one; a forger could so also exhaust a real "ops" client's quota.
    """
    app = await echo().tcp()
    first, first_key, first_pin = _self_signed(tmp_path, "ops")
    second, second_key, second_pin = _self_signed(tmp_path, "ops")
    port = free_udp_port()
    server_cert, _ = tls.ensure_self_signed(state_dir, ["localhost"])
    text = (
        f'[[server]]\nname = "edge"\n{ENGINE_TOML}listen-on = "127.0.0.1:{port}"\n'
        f'state-dir = "{state_dir}"\nclient-fingerprints = ["{first_pin}", "{second_pin}"]\n'
        f'allow = ["{app.address}"]\nmax-tunnels-per-identity = 1\n'
    )
    for name, cert, key in (("first", first, first_key), ("second", second, second_key)):
        text += (
            f'[[client]]\nname = "{name}"\n{ENGINE_TOML}'
            f'listen-on = "unix:{short_tmp}/{name}.sock"\n'
            f'server-endpoint = "127.0.0.1:{port}"\nserver-name = "localhost"\n'
            f'ca-file = "{server_cert}"\ncert-file = "{cert}"\nkey-file = "{key}"\n'
            f'token-source = "{app.address}"\nconnect-wait = 5\n'
        )
    conf = short_tmp / "d.toml"
    conf.write_text(text)
    run = await Run.start("--config", str(conf))
    try:
        await run.wait_log("ready:")
        reader, writer = await connect(f"unix:{short_tmp}/first.sock")
        writer.write(b"hold")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"hold"  # held open
        assert await _echo_once(short_tmp / "second.sock") == b"hi"
        writer.close()
        assert not [line for line in run.log if "tunnels-per-identity" in line]
    finally:
        assert await run.stop() == 0
        app.close()
