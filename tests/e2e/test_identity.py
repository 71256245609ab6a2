"""Client identities: attached to tunnels, logged, and choosing the destination policy."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from quictund.identity import Identity
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
    from quictund import tls

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
    from quictund import tls

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
