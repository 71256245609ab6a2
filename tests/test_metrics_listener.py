"""``[metrics] listen-on``: the read-only listener over a real TCP socket, its config and checks.

The end-to-end test with a real Prometheus scraping a running daemon is
tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quictund.api import Router
from quictund.api.metrics_listener import is_loopback, start_metrics
from quictund.config import files as config_files
from quictund.config.files import ConfigProblems
from quictund.metrics import Metrics
from tests.test_api import FakeProvider


async def exchange(address: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def req(method: str, target: str) -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def test_serves_metrics_and_healthz_only() -> None:
    provider = FakeProvider()
    server = await start_metrics("127.0.0.1:0", Router(provider))
    try:
        status, headers, body = await exchange(server.address, req("GET", "/metrics"))
        assert status == 200 and headers["content-type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "quictund_tunnels_opened" in names
        status, headers, body = await exchange(server.address, req("HEAD", "/metrics?x=1"))
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        status, _, body = await exchange(server.address, req("GET", "/healthz"))
        assert (status, json.loads(body)) == (200, {"status": "ok"})  # nothing more
        for method, target in [("POST", "/metrics"), ("DELETE", "/metrics"), ("PUT", "/healthz")]:
            status, headers, _ = await exchange(server.address, req(method, target))
            assert (status, headers["allow"]) == (405, "GET, HEAD")
        for method, target in [
            ("GET", "/tunnels"),
            ("GET", "/listeners"),
            ("DELETE", "/tunnels/abc"),
            ("GET", "/openapi.json"),
            ("GET", "/"),
        ]:
            status, _, _ = await exchange(server.address, req(method, target))
            assert status == 404, (method, target)
        assert provider.closed == []
    finally:
        server.close()
        await server.wait_closed()


async def test_unhealthy_inner_is_503_without_details() -> None:
    provider = FakeProvider()
    provider.health = lambda: (_ for _ in ()).throw(RuntimeError("secret detail"))  # type: ignore[method-assign]
    server = await start_metrics("127.0.0.1:0", Router(provider))
    try:
        status, _, body = await exchange(server.address, req("GET", "/healthz"))
        assert status == 503
        assert b"secret" not in body
    finally:
        server.close()
        await server.wait_closed()


async def test_wildcard_listener_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server = await start_metrics("0.0.0.0:0", Router(FakeProvider()))
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("not a loopback address" in w for w in warnings), warnings
    finally:
        server.close()
        await server.wait_closed()
    caplog.clear()
    server = await start_metrics("127.0.0.1:0", Router(FakeProvider()))
    server.close()
    await server.wait_closed()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]")
    assert is_loopback("localhost") and is_loopback("127.9.9.9")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("metrics.example.org")


def test_metrics_exports_connection_and_reload_state() -> None:
    metrics = Metrics()
    metrics.add_state(dict, dict, dict, lambda: {"a": True, "b": False})
    text = metrics.render()[0].decode()
    assert 'quictund_server_connected{listener="a"} 1.0' in text
    assert 'quictund_server_connected{listener="b"} 0.0' in text
    assert 'quictund_reloads_total{result="failed"} 0.0' in text
    assert "quictund_last_reload_successful 1.0" in text
    metrics.reload_finished(False)
    text = metrics.render()[0].decode()
    assert "quictund_last_reload_successful 0.0" in text
    assert 'quictund_reloads_total{result="failed"} 1.0' in text


# ------------------------------------------------------------------------------ config


def load(tmp_path: Path, text: str) -> config_files.Config:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return config_files.load([path])


def test_config_section(tmp_path: Path) -> None:
    config = load(tmp_path, '[metrics]\nlisten-on = "127.0.0.1:9417"\n')
    assert config.metrics.listen_on == "127.0.0.1:9417"
    assert load(tmp_path, "").metrics.listen_on is None
    dumped = config_files.dump(config)
    assert '[metrics]\nlisten-on = "127.0.0.1:9417"' in dumped


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[metrics]\nlisten-on = "9417"\n',
            "m.toml: metrics.listen-on: not a host:port address (got '9417')",
        ),
        ('[metrics]\nlisten = "x"\n', "m.toml: metrics.listen: unknown key (got 'x')"),
        (
            '[metrics]\nlisten-on = "127.0.0.1:9417"\n[api]\nlisten-on = "127.0.0.1:9417"\n',
            (
                "m.toml: metrics.listen-on: 127.0.0.1:9417 is also the [api] listen-on; "
                "pick another port"
            ),
        ),
        (
            (
                '[metrics]\nlisten-on = "127.0.0.1:9417"\n[[client]]\nname = "c"\n'
                'listen-on = "tcp:127.0.0.1:9417"\nserver-endpoint = "127.0.0.1:7500"\n'
                'server-fingerprint = "sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="\n'
            ),
            (
                "m.toml: metrics.listen-on: 127.0.0.1:9417 is also the client 'c' listen-on; "
                "pick another port"
            ),
        ),
    ],
)
def test_config_problems_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigProblems) as exc:
        load(tmp_path, text)
    assert exc.value.lines == [expected]


def test_quictund_check_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[metrics]\nlisten-on = "localhost"\n')
    done = subprocess.run(
        [sys.executable, "-m", "quictund", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78
    assert done.stderr.strip() == (
        "m.toml: metrics.listen-on: not a host:port address (got 'localhost')"
    )


def test_quictund_check_warns_about_an_exposed_listener(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[metrics]\nlisten-on = "0.0.0.0:9417"\n')
    done = subprocess.run(
        [sys.executable, "-m", "quictund", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "[metrics] listen-on 0.0.0.0:9417 is not a loopback address" in done.stderr
    path.write_text('[metrics]\nlisten-on = "127.0.0.1:9417"\n')
    done = subprocess.run(
        [sys.executable, "-m", "quictund", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
