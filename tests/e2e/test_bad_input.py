"""Bad input gets one clear line and affects nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioquic.asyncio import connect as quic_connect
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e.harness import Backend, Endpoint, connect, echo, start_client, start_server


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quictund",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            [
                "server",
                "--cert-file",
                "/nonexistent/cert.pem",
                "--key-file",
                "/nonexistent/key.pem",
            ],
            "cert-file /nonexistent/cert.pem: no such file",
        ),
        (
            ["server", "--token-parser-plugin", "Signedd"],
            "unknown token parser plugin 'Signedd'; known: Cleartext, Signed",
        ),
        (["server", "--token-parser-key", "bas64"], "unknown token-parser-key 'bas64'"),
        (
            ["client", "--server-endpoint", "127.0.0.1:7500", "--token-source-plugin", "Nope"],
            "unknown token source plugin 'Nope'",
        ),
        (
            [
                "client",
                "--server-endpoint",
                "127.0.0.1:7500",
                "--listen-on",
                "6500",
                "--token-source",
                "tcp:127.0.0.1:22",
            ],
            "not a tcp:/unix: address (got '6500')",
        ),
        (
            ["client", "--server-endpoint", "127.0.0.1:7500", "--token-source-plugin", "fixed"],
            "Fixed",
        ),
        (["server", "--verify-remote-endpoint"], "verify-remote-endpoint needs ca-file"),
    ],
)
async def test_startup_errors_exit_78_with_one_line(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    if args[0] == "server":
        args = [*args, "--listen-on", "127.0.0.1:0", "--state-dir", str(tmp_path)]
    rc, err = await run_cli(*args)
    assert rc == 78, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert expected in lines[0]


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[Endpoint]:
    ep = await start_server(state_dir)
    yield ep
    ep.kill()
    await ep.proc.wait()


async def assert_refused(address: str) -> None:
    # An RST, never a clean EOF; it may come so fast that connect() itself reports it.
    with pytest.raises(ConnectionResetError):
        reader, writer = await connect(address)
        try:
            await asyncio.wait_for(reader.readexactly(1), 15)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def assert_echo(address: str, msg: bytes = b"ok?") -> None:
    reader, writer = await connect(address)
    writer.write(msg)
    assert await asyncio.wait_for(reader.readexactly(len(msg)), 15) == msg
    writer.close()
    await writer.wait_closed()


async def test_file_source_broken_line(server: Endpoint, tmp_path: Path) -> None:
    backend = await echo().tcp()
    token_file = tmp_path / "tokens"
    token_file.write_text(
        "# app addresses\n127.0.0.2 tcp:127.0.0.1:1\nbroken-line-without-token\n"
        f"127.0.0.1 {backend.address}\n"
    )
    client = await Endpoint.start(
        "client",
        "--listen-on",
        "tcp:127.0.0.1:0",
        "--server-endpoint",
        server.address,
        "--token-source-plugin",
        "file",
        "--token-source",
        str(token_file),
    )
    try:
        await assert_echo(client.address)
        warning = await client.wait_log(lambda e: f"{token_file}:3" in e.get("msg", ""))
        assert warning["level"] == "warning"
        # edits take effect without a restart: 127.0.0.1 now has no token
        token_file.write_text("127.0.0.2 tcp:127.0.0.1:1\n")
        await assert_refused(client.address)
        line = await client.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "no token" in line["reason"]
        assert client.proc.returncode is None
    finally:
        await client.stop()
        backend.close()


async def test_http_source_timeout_and_404(server: Endpoint) -> None:
    backend = await echo().tcp()
    answers: list[bytes] = []

    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        answer = answers.pop(0)
        if answer != b"hang":
            writer.write(answer)
            await writer.drain()
            writer.close()

    http = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{http.sockets[0].getsockname()[1]}/get"
    client = await Endpoint.start(
        "client",
        "--listen-on",
        "tcp:127.0.0.1:0",
        "--server-endpoint",
        server.address,
        "--token-source-plugin",
        "Http",
        "--token-source",
        url,
    )
    try:
        body = f'{{"token": "{backend.address}"}}'.encode()
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        answers[:] = [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b"hang", ok]
        await assert_refused(client.address)
        line = await client.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "404" in line["reason"]
        await assert_refused(client.address)  # times out after 5 s
        await client.wait_log(
            lambda e: e.get("msg") == "tunnel failed" and "no answer within 5 s" in e["reason"]
        )
        await assert_echo(client.address)  # and the next one works
    finally:
        await client.stop()
        http.close()
        for w in writers:
            w.transport.abort()
        backend.close()


async def test_policy_denies_without_connecting(state_dir: Path) -> None:
    allowed = await echo().tcp()
    denied = await Backend(asyncio.Protocol).tcp()
    server = await start_server(state_dir, "--allow", allowed.address)
    good = await start_client(server.address, allowed.address)
    bad = await start_client(server.address, denied.address)
    try:
        await assert_refused(bad.address)
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        assert "not allowed" in line["reason"]
        assert denied.accepted == 0, "a denied destination must see no connection attempt"
        await assert_echo(good.address)
    finally:
        for ep in (good, bad):
            await ep.stop()
        server.kill()
        await server.proc.wait()
        allowed.close()
        denied.close()


def _issue(
    tmp: Path,
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    expired: bool = False,
) -> tuple[Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC) - (dt.timedelta(days=60) if expired else dt.timedelta(0))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert, key


async def assert_raw_handshake_refused(
    server: Endpoint, cert: Path, key: Path, reason: str
) -> None:
    """A raw aioquic client presenting ``cert``: the server's TLS alert ends the handshake."""
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    config.load_cert_chain(cert, key)
    host, port = server.host_port
    with pytest.raises(ConnectionError):
        async with quic_connect(host, port, configuration=config) as peer:
            await asyncio.wait_for(peer.wait_connected(), 10)
            await asyncio.wait_for(peer.ping(), 10)
    entry = await server.wait_log(lambda e: reason in str(e.get("msg", "")).lower())
    assert entry["level"] in ("info", "warning"), entry


async def test_mutual_tls_is_enforced(state_dir: Path, tmp_path: Path) -> None:
    backend = await echo().tcp()
    ca_path, _, ca_cert, ca_key = _issue(tmp_path, "ca", None, ca=True)
    good_cert, good_key, _, _ = _issue(tmp_path, "ops", (ca_cert, ca_key))
    rogue_cert, rogue_key, _, _ = _issue(tmp_path, "rogue", None)
    old_cert, old_key, _, _ = _issue(tmp_path, "expired", (ca_cert, ca_key), expired=True)
    server_only, server_only_key, _, _ = _issue(
        tmp_path, "server-only", (ca_cert, ca_key), eku=[ExtendedKeyUsageOID.SERVER_AUTH]
    )
    server = await start_server(state_dir, "--verify-remote-endpoint", "--ca-file", str(ca_path))
    clients = {}
    try:
        for name, extra in {
            "none": [],
            "rogue": ["--cert-file", str(rogue_cert), "--key-file", str(rogue_key)],
            "server-only": ["--cert-file", str(server_only), "--key-file", str(server_only_key)],
            "good": ["--cert-file", str(good_cert), "--key-file", str(good_key)],
        }.items():
            clients[name] = await start_client(server.address, backend.address, *extra)
        await assert_echo(clients["good"].address)
        lost = await clients["none"].wait_log(lambda e: "lost" in e.get("msg", ""))
        assert "client certificate required" in lost["msg"]
        await clients["rogue"].wait_log(lambda e: "lost" in e.get("msg", ""))
        # Our client refuses to start with an expired certificate; a raw peer presents one.
        with pytest.raises(AssertionError, match="certificate expired on"):
            await start_client(
                server.address, backend.address, "--cert-file", str(old_cert),
                "--key-file", str(old_key),
            )  # fmt: skip
        await assert_raw_handshake_refused(server, old_cert, old_key, "no longer valid")
        lost = await clients["server-only"].wait_log(lambda e: "lost" in e.get("msg", ""))
        assert "not for client authentication" in lost["msg"]
        for name in ("none", "rogue", "server-only"):
            await assert_refused(clients[name].address)
        assert backend.accepted == 1
        # refused clients back off instead of reconnecting in a tight loop: with back-off
        # from 0.25 s doubling to 10 s there are ~7 attempts in the first 10 s, then one
        # every 5-10 s; a tight loop would make hundreds.
        lost = clients["none"].messages("lost")
        stamps = [dt.datetime.fromisoformat(e["time"]) for e in lost]
        span = (stamps[-1] - stamps[0]).total_seconds()
        assert len(lost) <= 8 + span / 4, (len(lost), span)
    finally:
        for ep in clients.values():
            await ep.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


async def test_broad_allow_never_reaches_loopback(state_dir: Path) -> None:
    """``tcp:0.0.0.0/0:*`` does not open loopback, however the token spells it."""
    target = await Backend(asyncio.Protocol).tcp()
    port = target.address.rsplit(":", 1)[1]
    server = await start_server(state_dir, "--allow", "tcp:0.0.0.0/0:*")
    clients = []
    try:
        for spelling in ("127.0.0.1", "127.1", "0x7f.0.0.1", "2130706433", "localhost"):
            client = await start_client(server.address, f"tcp:{spelling}:{port}")
            clients.append(client)
            await assert_refused(client.address)
        await server.wait_log(
            lambda e: sum(x.get("msg") == "tunnel failed" for x in server.logs) >= 5
        )
        failed = [e for e in server.logs if e.get("msg") == "tunnel failed"]
        assert len(failed) == 5 and all("not allowed" in e["reason"] for e in failed)
        assert target.accepted == 0, "no connection attempt may reach a denied destination"
    finally:
        for client in clients:
            await client.stop()
        server.kill()
        await server.proc.wait()
        target.close()


async def test_key_pinning_both_ways(state_dir: Path, tmp_path: Path) -> None:
    """server-fingerprint on the client, client-fingerprints on the server: only pinned keys."""
    from quictund.policy.tls import fingerprint_file

    backend = await echo().tcp()
    server_cert = state_dir / "server.pem"
    good_cert, good_key, _, _ = _issue(tmp_path, "pinned-client", None)
    other_cert, other_key, _, _ = _issue(tmp_path, "other-client", None)
    server = await start_server(state_dir, "--client-fingerprint", fingerprint_file(good_cert))
    wrong_pin = fingerprint_file(other_cert)
    cases = {
        "good": [
            "--cert-file",
            str(good_cert),
            "--key-file",
            str(good_key),
            "--server-fingerprint",
            fingerprint_file(server_cert),
        ],
        "unpinned-client": [
            "--cert-file",
            str(other_cert),
            "--key-file",
            str(other_key),
            "--server-fingerprint",
            fingerprint_file(server_cert),
        ],
        "wrong-server-pin": [
            "--cert-file",
            str(good_cert),
            "--key-file",
            str(good_key),
            "--server-fingerprint",
            wrong_pin,
        ],
    }
    clients = {}
    try:
        for name, extra in cases.items():
            clients[name] = await start_client(server.address, backend.address, *extra)
        await assert_echo(clients["good"].address)
        assert not clients["good"].messages("NOT verifying"), "a pin is verification"
        for name in ("unpinned-client", "wrong-server-pin"):
            await assert_refused(clients[name].address)
        await clients["wrong-server-pin"].wait_log(
            lambda e: "does not match server-fingerprint" in e.get("msg", "")
        )
        await clients["unpinned-client"].wait_log(
            lambda e: "lost" in e.get("msg", "") or "cannot connect" in e.get("msg", "")
        )
        assert backend.accepted == 1
    finally:
        for ep in clients.values():
            await ep.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


async def test_no_session_tickets_with_client_authentication(
    state_dir: Path, tmp_path: Path
) -> None:
    """A resumed session would skip the client certificate check: the server issues none."""
    ca_path, _, ca_cert, ca_key = _issue(tmp_path, "ca", None, ca=True)
    cert, key, _, _ = _issue(tmp_path, "ops", (ca_cert, ca_key))
    server = await start_server(state_dir, "--verify-remote-endpoint", "--ca-file", str(ca_path))
    tickets: list[object] = []
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    config.load_cert_chain(cert, key)
    host, port = server.host_port
    try:
        async with quic_connect(
            host, port, configuration=config, session_ticket_handler=tickets.append
        ) as peer:
            await asyncio.wait_for(peer.ping(), 10)  # the handshake is confirmed
            await asyncio.sleep(0.3)
            await asyncio.wait_for(peer.ping(), 10)
        assert tickets == []
    finally:
        server.kill()
        await server.proc.wait()
