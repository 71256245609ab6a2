"""What a person reads: ``--help``, ``dump-config``, ``tunnels``, the demo's hint, the man
page's synopses, the client's failure reasons (issue 14, "Words for people")."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from quictund.config.files import load
from quictund.tunnel import reasons
from quictund.tunnel.tunnels import failure_category
from quictund.wire import Ack, ErrorCode

ROOT = Path(__file__).resolve().parent.parent


def quictund(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quictund", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_help_speaks_to_users() -> None:
    out = quictund("--help").stdout
    assert "sys.exit" not in out and "entry points" not in out
    assert "QUIC tunnels for TCP and UNIX-socket applications" in out
    assert "quictund demo" in out


def test_dump_config_writes_modes_in_octal_and_loads_back(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[[client]]\nname = "a"\nserver-endpoint = "h:1"\nlisten-on = "unix:/run/a.sock"\n'
        '[[client]]\nname = "b"\nserver-endpoint = "h:1"\nunix-socket-mode = 0o600\n'
    )
    result = quictund("dump-config", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("unix-socket-mode = 0o660") == 1
    assert lines.count("unix-socket-mode = 0o600") == 1
    assert not any(line.endswith(" = 432") for line in lines)  # no mode in decimal
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(result.stdout)
    modes = [c.unix_socket_mode for c in load([dumped]).clients]
    assert modes == [0o660, 0o600]
    assert tomllib.loads(result.stdout)["client"][0]["unix-socket-mode"] == 0o660


def test_missing_config_dir_says_it_does_not_exist(tmp_path: Path) -> None:
    result = quictund("check", "--config-dir", str(tmp_path / "nope"))
    assert result.returncode == 78
    assert (
        result.stderr == f"{tmp_path / 'nope'}: does not exist (create it, or give --config FILE)\n"
    )


async def test_tunnels_shows_each_uuid(tmp_path: Path) -> None:
    """``quictund tunnels`` against a hand-written API (the real one is covered in e2e)."""
    uuid = "0f8c6a52-3c1e-4b7e-9a51-2d1b1e6c0a11"
    tunnel = {
        "uuid": uuid,
        "listener": "ssh",
        "endpoint": "client",
        "streamId": 4,
        "clientAppAddr": "127.0.0.1:50000",
        "remoteEndpointAddr": "10.0.0.1:7500",
        "protocol": "ssh",
        "clientTotalBytes": 10,
        "serverTotalBytes": 20,
        "clientSendRate": "0 B/s",
        "serverSendRate": "0 B/s",
        "createdAt": "2026-01-01T00:00:00+00:00",
    }

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps([tunnel]).encode()
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    path = str(tmp_path / "api.sock")
    server = await asyncio.start_unix_server(api, path)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quictund", "tunnels", "--api", path,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
    finally:
        server.close()
    header, row, *_ = out.decode().splitlines()
    assert header.split()[0] == "UUID"
    assert row.split()[0] == uuid


def test_demo_hint_works_without_netcat() -> None:
    """The hint runs with bash and python3 only (a fresh Debian 12 has no nc)."""
    from quictund.cli.demo import try_it

    hint = try_it(1)
    assert "nc " not in hint and hint.startswith("python3 -c ")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        proc = subprocess.Popen(["bash", "-c", try_it(port)], stdout=subprocess.PIPE, text=True)
        conn, _ = srv.accept()
        with conn:
            data = conn.recv(100)
            conn.sendall(data)
        out, _ = proc.communicate(timeout=20)
    assert (data, out) == (b"hi\n", "hi\n")


def test_demo_leaves_no_certificate_behind(tmp_path: Path) -> None:
    """The demo kept its certificate in the daemon's state directory (as root
    /var/lib/quictund, here $STATE_DIRECTORY) and left it there."""
    tmp, state = tmp_path / "tmp", tmp_path / "state"
    tmp.mkdir()
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        udp.bind(("127.0.0.1", 0))
        ports = [str(tcp.getsockname()[1]), str(udp.getsockname()[1])]
    result = quictund(
        "demo", "--once", "--client-port", ports[0], "--server-port", ports[1],
        env={"TMPDIR": str(tmp), "STATE_DIRECTORY": str(state)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "demo: tunnel works" in result.stdout
    assert list(tmp.iterdir()) == [] and not state.exists()


def _mkman():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("mkman", ROOT / "packaging/deb/mkman.py")
    assert spec is not None and spec.loader is not None
    mkman = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mkman)
    return mkman


def test_man_page_synopses_and_options_are_documented() -> None:
    mkman = _mkman()
    page = mkman.quictund_page()
    lines = page.splitlines()
    for name in ("convert", "server", "client"):
        at = lines.index(f".SS quictund {name}")
        synopsis = lines[at + 4]  # .SS, help, .PP, .nf, then the usage line
        assert synopsis.startswith(f"\\fBquictund {name} ") and len(synopsis) > 30, synopsis
    for flag in ("secret\\-file", "client\\-port", "server\\-port", "state\\-dir", "ttl"):
        at = next(i for i, line in enumerate(lines) if f"\\fB\\-\\-{flag}\\fR" in line)
        assert lines[at + 1].strip(), f"--{flag} has no description"
    # every option and argument of every command says what it is
    for at, line in enumerate(lines):
        if line == ".TP":
            assert lines[at + 2].strip() and not lines[at + 2].startswith("."), lines[at + 1]


# ---- the client's failure reasons -------------------------------------------------------


def test_every_error_code_has_plain_words() -> None:
    for code in ErrorCode:
        text = reasons.client_reason(
            f"peer stopped reading ({code.name.lower()})", "tcp:10.0.0.5:22"
        )
        assert f"({code.name.lower()})" not in text and "peer" not in text, text
        assert text.startswith(("the server", "destination", "an operator")), text


def test_policy_denied_names_the_destination() -> None:
    text = reasons.client_reason("peer stopped reading (policy_denied)", "tcp:10.0.0.5:22")
    assert text.startswith(
        "the server refused destination tcp:10.0.0.5:22: not allowed by its policy"
    )
    assert failure_category(text) == "policy_denied"
    # an opaque (base64 or signed) token is not printed
    opaque = reasons.client_reason("peer reset the stream (policy_denied)", "dGNwOjEuMi4zLjQ6NQ==")
    assert "its destination" in opaque and "dGNw" not in opaque


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (ErrorCode.TIMEOUT, "timeout"),
        (ErrorCode.UNREACHABLE, "unreachable"),
        (ErrorCode.BAD_TOKEN, "bad_token"),
        (ErrorCode.CONNECTION_LOST, "connection_lost"),
        (ErrorCode.APP_RESET, "reset"),
    ],
)
def test_plain_words_keep_the_metric_category(code: ErrorCode, category: str) -> None:
    assert failure_category(reasons.for_code(code, "tcp:h:1")) == category


def test_ack_refusals_and_other_reasons() -> None:
    assert reasons.for_ack(Ack.UNREACHABLE, "unix:/run/x.sock") == (
        "the server could not reach (or may not reach) destination unix:/run/x.sock"
    )
    assert "bad token" in reasons.for_ack(Ack.BAD_TOKEN, None)
    assert "0x1ff" in reasons.client_reason("peer reset the stream (0x1ff)", None)
    assert reasons.client_reason("QUIC connection lost: idle", "tcp:h:1") == (
        "QUIC connection lost: idle"
    )
