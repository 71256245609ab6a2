"""The tunnel API over a real UNIX socket: quic-tun's fields, bounds, errors, OpenAPI, curl.

Every response a test receives through ``Client`` is checked against the served OpenAPI
document (``check_openapi``), so the document cannot drift from what the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import grp
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h11
import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quictund.api import (
    ApiServer,
    Limits,
    RateMeter,
    Request,
    Router,
    TunnelView,
    format_rate,
    start_tcp,
    start_unix,
    view_of,
)
from quictund.api.openapi import openapi_document
from quictund.api.views import TUNNEL_KEYS
from quictund.errors import ConfigError
from quictund.tunnel.tunnels import TunnelRecord

# ------------------------------------------------------------------------------ fake provider


class FakeProvider:
    """Hand-written ApiProvider: fixed tunnels, records close calls."""

    def __init__(self, views: list[TunnelView] | None = None) -> None:
        self.views = list(views or [])
        self.closed: list[str] = []
        self.registry = CollectorRegistry()
        self.opened = Counter(
            "quictund_tunnels_opened", "Tunnels opened", ["endpoint"], registry=self.registry
        )
        self.opened.labels("client").inc(3)
        self.fail = False
        self.big_metrics = b""  # to make a response larger than the socket buffers

    def tunnels(self) -> list[TunnelView]:
        if self.fail:
            raise RuntimeError("provider broke")
        return list(self.views)

    def close_tunnel(self, uuid: str) -> bool:
        self.closed.append(uuid)
        before = len(self.views)
        self.views = [v for v in self.views if v.uuid != uuid]
        return len(self.views) < before

    def listeners(self) -> list[dict[str, object]]:
        return [{"name": "ssh", "listenOn": "tcp:127.0.0.1:6500", "tunnels": len(self.views)}]

    def health(self) -> dict[str, object]:
        return {"status": "ok", "tunnels": len(self.views)}

    def metrics(self) -> tuple[bytes, str]:
        body = generate_latest(self.registry) + self.big_metrics
        return body, "text/plain; version=0.0.4; charset=utf-8"


CREATED = datetime(2026, 11, 25, 11, 58, 10, 100534, tzinfo=UTC)


def client_view() -> TunnelView:
    record = TunnelRecord(
        endpoint="client",
        listener="ssh",
        remote_endpoint_addr="192.0.2.10:7500",
        client_app_addr="127.0.0.1:51000",
        stream_id=8,
        created_at=CREATED,
        client_total_bytes=2048,
        server_total_bytes=1_000_000,
    )
    return view_of(record, rates=(205.0, 1024.0))


def server_view() -> TunnelView:
    record = TunnelRecord(
        endpoint="server",
        listener="quic",
        remote_endpoint_addr="198.51.100.7:46706",
        server_app_addr="/run/spice.sock",
        stream_id=4,
        created_at=CREATED.astimezone(timezone(timedelta(hours=8))),
    )
    props: dict[str, object] = {"version": "2.2", "sessionId": "d0306d75", "channelType": "main"}
    return view_of(record, protocol="spice", properties=props)


# ------------------------------------------------------------------------------ OpenAPI check

SPEC: dict[str, Any] = openapi_document()
# Codes any route may answer (documented in info.description), always with an Error body.
SERVER_WIDE = {400, 404, 405, 408, 413, 431, 500, 503, 505}


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable: true`` becomes a ``null`` type."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items() if k not in ("nullable", "discriminator")}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    return out


_COMPONENTS = _to_json_schema(SPEC["components"])


def validate(instance: object, schema: dict[str, Any]) -> None:
    root = {**_to_json_schema(schema), "components": _COMPONENTS}
    jsonschema.Draft7Validator(root, format_checker=jsonschema.FormatChecker()).validate(instance)


def _operation(method: str, target: str) -> dict[str, Any] | None:
    path = target.split("?", 1)[0]
    if path.startswith(("http://", "https://")):
        path = "/" + path.split("/", 3)[3]
    for template, item in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return item.get(method.lower())  # type: ignore[no-any-return]
    return None


def check_openapi(method: str, target: str, reply: Reply) -> None:
    """Assert ``reply`` is what the served OpenAPI document says ``method target`` returns."""
    reply.checked = True
    op = _operation(method, target)
    documented = op is not None and str(reply.status) in op["responses"]
    if not documented:
        assert reply.status in SERVER_WIDE, (method, target, reply.status)
        if method != "HEAD":
            validate(json.loads(reply.body), SPEC["components"]["schemas"]["Error"])
        if reply.status == 405:
            assert "allow" in reply.headers
        return
    assert op is not None
    response = op["responses"][str(reply.status)]
    content = response.get("content")
    if method == "HEAD" or content is None:
        assert reply.body == b""
        return
    ctype = reply.headers["content-type"].split(";")[0].strip()
    assert ctype in content, (ctype, list(content))
    if ctype == "application/json":
        validate(json.loads(reply.body), content[ctype]["schema"])


# ------------------------------------------------------------------------------ client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    checked: bool = field(default=False, repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A keep-alive HTTP/1.1 client (h11) on one UNIX-socket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, path: str) -> Client:
        return cls(*await asyncio.open_unix_connection(path))

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Reply:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("Host", "localhost"), *headers]
        if body:
            hdrs.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(data)
        await self.writer.drain()
        reply = await self._read()
        check_openapi(method, target, reply)
        return reply

    async def _read(self) -> Reply:
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), 5))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, headers, bytes(body))
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def raw_exchange(path: str, data: bytes, *, eof: bool = True) -> bytes:
    """Send raw bytes, read everything until the server closes (5 s bound)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def parse_raw(data: bytes) -> Reply:
    """One response from raw bytes, checked against the Error schema if it is JSON."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Response), event
    body = b""
    while isinstance(nxt := conn.next_event(), h11.Data):
        body += nxt.data
    reply = Reply(event.status_code, {k.decode(): v.decode() for k, v in event.headers}, body)
    check_openapi("GET", "/malformed", reply)  # server-wide codes only: Error body
    return reply


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider([client_view(), server_view()])


@pytest.fixture
async def api(short_tmp: Path, provider: FakeProvider) -> AsyncIterator[ApiServer]:
    server = await start_unix(str(short_tmp / "api.sock"), Router(provider))
    yield server
    server.close()
    await server.wait_closed()


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[Client]:
    c = await Client.open(api.address)
    yield c
    await c.aclose()


# ------------------------------------------------------------------------------ /tunnels


async def test_tunnels_fields_of_client_and_server_objects(client: Client) -> None:
    reply = await client.request("GET", "/tunnels")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    by_endpoint = {t["endpoint"]: t for t in reply.json()}
    cli, srv = by_endpoint["client"], by_endpoint["server"]

    assert list(cli) == [k for k in TUNNEL_KEYS if k != "serverAppAddr"]  # quic-tun's order
    assert list(srv) == [k for k in TUNNEL_KEYS if k != "clientAppAddr"]
    assert cli["clientAppAddr"] == "127.0.0.1:51000"
    assert srv["serverAppAddr"] == "/run/spice.sock"
    assert (cli["streamId"], srv["streamId"]) == (8, 4)
    assert cli["remoteEndpointAddr"] == "192.0.2.10:7500"
    uuidlib.UUID(cli["uuid"])
    assert cli["createdAt"] == "2026-11-25T11:58:10.100534+00:00"
    assert srv["createdAt"] == "2026-11-25T19:58:10.100534+08:00"
    assert datetime.fromisoformat(srv["createdAt"]) == CREATED
    assert (cli["clientTotalBytes"], cli["serverTotalBytes"]) == (2048, 1_000_000)
    assert type(cli["clientTotalBytes"]) is int and type(srv["serverTotalBytes"]) is int
    assert (cli["clientSendRate"], cli["serverSendRate"]) == ("0.20 kB/s", "1.00 kB/s")
    assert (srv["clientSendRate"], srv["serverSendRate"]) == ("0.00 kB/s", "0.00 kB/s")
    assert (cli["protocol"], cli["protocolProperties"]) == ("", None)
    assert srv["protocol"] == "spice"
    assert srv["protocolProperties"] == {
        "version": "2.2",
        "sessionId": "d0306d75",
        "channelType": "main",
    }
    assert (cli["listener"], srv["listener"]) == ("ssh", "quic")


async def test_no_tunnels_is_an_empty_array_not_null(short_tmp: Path) -> None:
    api = await start_unix(str(short_tmp / "a.sock"), Router(FakeProvider()))
    try:
        c = await Client.open(api.address)
        reply = await c.request("GET", "/tunnels")
        await c.aclose()
    finally:
        api.close()
        await api.wait_closed()
    assert (reply.status, reply.body) == (200, b"[]")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_on_tunnels_get_quic_tuns_405(client: Client, method: str) -> None:
    reply = await client.request(method, "/tunnels")
    assert reply.status == 405
    assert reply.json() == {"message": "Please use GET request method"}
    assert reply.headers["allow"] == "GET, HEAD"


async def test_one_tunnel_get_delete_and_404(client: Client, provider: FakeProvider) -> None:
    uuid = provider.views[0].uuid
    reply = await client.request("GET", f"/tunnels/{uuid}")
    assert reply.status == 200 and reply.json()["uuid"] == uuid

    reply = await client.request("DELETE", f"/tunnels/{uuid}")
    assert (reply.status, reply.body) == (204, b"")
    assert "content-length" not in reply.headers
    assert provider.closed == [uuid]

    for method in ("GET", "DELETE"):
        reply = await client.request(method, f"/tunnels/{uuid}")
        assert reply.status == 404
        assert reply.json() == {"message": f"no tunnel {uuid}"}
    assert provider.closed == [uuid, uuid]

    reply = await client.request("PUT", f"/tunnels/{uuid}")
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD, DELETE"


@pytest.mark.parametrize("target", ["/", "/tunnels/", "/nope", "/tunnels/a/b", "/TUNNELS"])
async def test_unknown_paths_get_json_404(client: Client, target: str) -> None:
    reply = await client.request("GET", target)
    assert reply.status == 404 and "message" in reply.json()


async def test_query_absolute_form_and_bad_escapes(client: Client) -> None:
    assert (await client.request("GET", "/tunnels?pretty=1")).status == 200
    assert (await client.request("GET", "http://localhost/tunnels")).status == 200
    assert (await client.request("GET", "/tunnels/%ff")).status == 400
    assert (await client.request("GET", "*")).status == 400


async def test_listeners_healthz(client: Client) -> None:
    reply = await client.request("GET", "/listeners")
    assert reply.json() == [{"name": "ssh", "listenOn": "tcp:127.0.0.1:6500", "tunnels": 2}]
    reply = await client.request("GET", "/healthz")
    assert reply.json() == {"status": "ok", "tunnels": 2}
    assert (await client.request("POST", "/healthz")).status == 405


async def test_provider_failure_is_a_500_and_the_server_lives_on(
    client: Client, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.fail = True
    with caplog.at_level(logging.ERROR, "quictund.api"):
        reply = await client.request("GET", "/tunnels")
    assert reply.status == 500 and reply.json() == {"message": "internal error"}
    assert "provider broke" in caplog.text
    provider.fail = False
    assert (await client.request("GET", "/tunnels")).status == 200  # same connection


# ------------------------------------------------------------------------------ HTTP semantics


async def test_head_has_gets_headers_and_no_body(client: Client) -> None:
    get = await client.request("GET", "/tunnels")
    head = await client.request("HEAD", "/tunnels")
    assert head.status == 200 and head.body == b""
    assert head.headers == get.headers  # including the GET body's Content-Length
    assert (await client.request("HEAD", "/nope")).status == 404
    assert (await client.request("GET", "/healthz")).status == 200  # framing intact


async def test_keep_alive_two_requests_on_one_connection(api: ApiServer, client: Client) -> None:
    first = await client.request("GET", "/tunnels")
    second = await client.request("GET", "/healthz")
    assert (first.status, second.status) == (200, 200)
    assert "connection" not in second.headers
    assert api.active_connections == 1


async def test_pipelined_requests_are_answered_in_order(api: ApiServer) -> None:
    data = (
        b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in ("/healthz", "/nope"))
        + b"GET /tunnels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = await raw_exchange(api.address, data, eof=False)
    assert [int(m) for m in re.findall(rb"HTTP/1\.1 (\d+) ", raw)] == [200, 404, 200]


async def test_expect_100_continue(api: ApiServer) -> None:
    reader, writer = await asyncio.open_unix_connection(api.address)
    writer.write(
        b"DELETE /tunnels/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (b"HTTP/1.1 100 \r\n\r\n")
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 404 ")
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /tunnels HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /tunnels HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # TLS hello
        b"GET /tunnels HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ],
)
async def test_malformed_request_gets_400_and_close(api: ApiServer, data: bytes) -> None:
    reply = parse_raw(await raw_exchange(api.address, data, eof=False))
    assert reply.status == 400
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["message"].startswith("bad request")
    assert reply.headers["connection"] == "close"


async def test_unsupported_http_version_gets_505(api: ApiServer) -> None:
    for data in (b"GET /tunnels HTTP/9.9\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        reply = parse_raw(await raw_exchange(api.address, data, eof=False))
        assert reply.status == 505 and reply.headers["connection"] == "close"


async def test_oversized_head_and_body(api: ApiServer) -> None:
    big_head = b"GET /tunnels HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (17 * 1024)
    assert parse_raw(await raw_exchange(api.address, big_head)).status == 431

    too_long = b"DELETE /tunnels/x HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n"
    assert parse_raw(await raw_exchange(api.address, too_long)).status == 413

    chunked = b"DELETE /tunnels/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"4000\r\n" + b"z" * 0x4000 + b"\r\n" for _ in range(5))
    assert parse_raw(await raw_exchange(api.address, chunked)).status == 413

    ok = b"DELETE /tunnels/x HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n"
    ok += b"z" * 65536
    assert parse_raw(await raw_exchange(api.address, ok)).status == 404  # body accepted


async def test_eof_mid_request_and_idle_eof_do_not_break_the_server(api: ApiServer) -> None:
    assert await raw_exchange(api.address, b"") == b""
    raw = await raw_exchange(api.address, b"GET /tunnels HTTP/1.1\r\nHost: x\r\n")
    assert raw == b"" or parse_raw(raw).status == 400
    c = await Client.open(api.address)
    assert (await c.request("GET", "/healthz")).status == 200
    await c.aclose()


# ------------------------------------------------------------------------------ bounds


async def test_slow_client_is_cut_off_after_the_time_limit(short_tmp: Path) -> None:
    limit = 0.3
    api = await start_unix(
        str(short_tmp / "s.sock"), Router(FakeProvider()), limits=Limits(request_timeout_s=limit)
    )
    loop = asyncio.get_running_loop()
    try:
        # A slowloris: one byte at a time, each well within the limit, never finishing.
        reader, writer = await asyncio.open_unix_connection(api.address)
        started = loop.time()
        got = b""
        for byte in b"GET /tunnels HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 1000:
            with contextlib.suppress(TimeoutError):
                got = await asyncio.wait_for(reader.read(), 0.05)
            if reader.at_eof():
                break
            writer.write(bytes([byte]))
        elapsed = loop.time() - started
        assert reader.at_eof(), "server never disconnected the slow client"
        assert limit <= elapsed < limit + 2
        assert parse_raw(got).status == 408
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

        # An idle keep-alive connection is closed quietly (nothing was asked).
        c = await Client.open(api.address)
        assert (await c.request("GET", "/healthz")).status == 200
        assert await asyncio.wait_for(c.reader.read(), 5) == b""
        await c.aclose()
        assert api.active_connections == 0
    finally:
        api.close()
        await api.wait_closed()


async def test_client_that_stops_reading_is_cut_off(short_tmp: Path) -> None:
    limit = 0.3
    provider = FakeProvider()
    provider.big_metrics = b"# " + b"x" * (8 << 20) + b"\n"  # far beyond the socket buffers
    api = await start_unix(
        str(short_tmp / "r.sock"), Router(provider), limits=Limits(request_timeout_s=limit)
    )
    try:
        reader, writer = await asyncio.open_unix_connection(api.address)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(limit * 3)  # being slow is the point of this test
        received = 0
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 5):
                received += len(chunk)
        assert 0 < received < len(provider.big_metrics)
        assert api.active_connections == 0
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        c = await Client.open(api.address)
        assert (await c.request("GET", "/healthz")).status == 200
        await c.aclose()
    finally:
        api.close()
        await api.wait_closed()


async def test_client_that_hangs_up_mid_response(short_tmp: Path) -> None:
    provider = FakeProvider()
    provider.big_metrics = b"# " + b"x" * (8 << 20) + b"\n"
    api = await start_unix(str(short_tmp / "h.sock"), Router(provider))
    try:
        reader, writer = await asyncio.open_unix_connection(api.address)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(1024), 5)).startswith(b"HTTP/1.1 200 OK")
        writer.transport.abort()
        c = await Client.open(api.address)
        assert (await c.request("GET", "/healthz")).status == 200
        await c.aclose()
    finally:
        api.close()
        await api.wait_closed()


async def test_connection_limit_answers_503(short_tmp: Path) -> None:
    api = await start_unix(
        str(short_tmp / "c.sock"), Router(FakeProvider()), limits=Limits(max_connections=2)
    )
    try:
        held = [await Client.open(api.address) for _ in range(2)]
        for c in held:  # one round trip each: the server has registered both
            assert (await c.request("GET", "/healthz")).status == 200
        reply = parse_raw(await raw_exchange(api.address, b"", eof=False))
        assert reply.status == 503
        assert reply.json() == {"message": "too many API connections"}
        # The server forgets a connection before closing it, so our EOF means it is gone.
        reply = await held[0].request("GET", "/healthz", headers=(("Connection", "close"),))
        assert reply.headers["connection"] == "close"
        assert await asyncio.wait_for(held[0].reader.read(), 5) == b""
        assert api.active_connections == 1
        await held[0].aclose()
        c = await Client.open(api.address)
        assert (await c.request("GET", "/healthz")).status == 200
        await c.aclose()
        await held[1].aclose()
    finally:
        api.close()
        await api.wait_closed()


async def test_close_disconnects_live_keep_alive_connections(api: ApiServer) -> None:
    c = await Client.open(api.address)
    assert (await c.request("GET", "/healthz")).status == 200
    api.close()
    await asyncio.wait_for(api.wait_closed(), 5)
    assert await asyncio.wait_for(c.reader.read(), 5) == b""
    assert api.active_connections == 0
    await c.aclose()


# ------------------------------------------------------------------------------ socket file


def exists(path: str) -> bool:
    """Sync helper: a stat of a local tmpfs file, not a blocking call worth a thread."""
    return os.path.lexists(path)


async def test_socket_mode_group_and_removal_on_close(short_tmp: Path) -> None:
    path = str(short_tmp / "m.sock")
    group = grp.getgrgid(os.getgid()).gr_name
    api = await start_unix(path, Router(FakeProvider()), group=group)
    st_ = os.stat(path)
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o660
    assert st_.st_gid == os.getgid()
    api.close()
    await api.wait_closed()
    assert not exists(path)

    api = await start_unix(path, Router(FakeProvider()), mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    api.close()
    await api.wait_closed()


async def test_numeric_group(short_tmp: Path) -> None:
    path = str(short_tmp / "n.sock")
    gid = os.getgid()
    with contextlib.suppress(KeyError):
        grp.getgrnam(str(gid))
        pytest.skip(f"a group is named {gid}")
    api = await start_unix(path, Router(FakeProvider()), group=str(gid))
    assert os.stat(path).st_gid == gid
    api.close()
    await api.wait_closed()


@pytest.mark.parametrize(
    ("relative", "message"),
    [("no/such/dir/a.sock", "No such file or directory"), ("l" * 120, "too long")],
)
async def test_unbindable_path_is_a_config_error(
    short_tmp: Path, relative: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        await start_unix(str(short_tmp / relative), Router(FakeProvider()))


async def test_unknown_group_is_a_config_error(short_tmp: Path) -> None:
    path = str(short_tmp / "g.sock")
    with pytest.raises(ConfigError, match="group 'no-such-group-qt' does not exist"):
        await start_unix(path, Router(FakeProvider()), group="no-such-group-qt")
    assert not exists(path)


async def test_stale_socket_is_replaced_live_one_refused(short_tmp: Path) -> None:
    path = str(short_tmp / "x.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a crashed process leaves behind
    stale.close()
    api = await start_unix(path, Router(FakeProvider()))
    try:
        with pytest.raises(ConfigError, match="another process is listening"):
            await start_unix(path, Router(FakeProvider()))
        c = await Client.open(path)  # the first server still owns and serves it
        assert (await c.request("GET", "/healthz")).status == 200
        await c.aclose()
    finally:
        api.close()
        await api.wait_closed()


async def test_regular_file_is_never_replaced(short_tmp: Path) -> None:
    path = short_tmp / "f.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        await start_unix(str(path), Router(FakeProvider()))
    assert path.read_text() == "precious"


async def test_close_leaves_a_socket_file_that_is_not_ours(short_tmp: Path) -> None:
    path = str(short_tmp / "o.sock")
    api = await start_unix(path, Router(FakeProvider()))
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)  # someone else's socket now has the name
    try:
        api.close()
        await api.wait_closed()
        assert exists(path)
    finally:
        other.close()


# ------------------------------------------------------------------------------ TCP


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", ""])
async def test_tcp_refuses_any_address(host: str) -> None:
    with pytest.raises(ConfigError, match="every address"):
        await start_tcp(host, 0, Router(FakeProvider()))


async def test_tcp_on_loopback() -> None:
    api = await start_tcp("127.0.0.1", 0, Router(FakeProvider([server_view()])))
    try:
        host, port = api.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        reader, writer = await asyncio.open_connection(host, int(port))
        c = Client(reader, writer)
        reply = await c.request("GET", "/tunnels")
        assert reply.status == 200 and len(reply.json()) == 1
        await c.aclose()
        with pytest.raises(ConfigError, match="127.0.0.1"):
            await start_tcp("127.0.0.1", int(port), Router(FakeProvider()))
    finally:
        api.close()
        await api.wait_closed()


async def test_tcp_by_host_name() -> None:
    api = await start_tcp("localhost", 0, Router(FakeProvider()))
    assert api.address.rsplit(":", 1)[1] != "0"
    api.close()
    await api.wait_closed()


async def test_tcp_any_address_when_allowed() -> None:
    api = await start_tcp("0.0.0.0", 0, Router(FakeProvider()), allow_any=True)
    assert api.address.startswith("0.0.0.0:")
    api.close()
    await api.wait_closed()


# ------------------------------------------------------------------------------ metrics, OpenAPI


async def test_metrics_parse_as_prometheus_text(client: Client) -> None:
    reply = await client.request("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    sample = families["quictund_tunnels_opened"].samples[0]
    assert (sample.labels, sample.value) == ({"endpoint": "client"}, 3.0)


async def test_openapi_is_served_and_matches_the_routes(client: Client) -> None:
    reply = await client.request("GET", "/openapi.json")
    assert reply.status == 200
    spec = reply.json()
    assert spec == SPEC
    assert spec["openapi"].startswith("3.0.")
    schemas = spec["components"]["schemas"]
    for name, other in (("ClientTunnel", "serverAppAddr"), ("ServerTunnel", "clientAppAddr")):
        schema = schemas[name]
        assert schema["additionalProperties"] is False
        assert list(schema["properties"]) == [k for k in TUNNEL_KEYS if k != other]
        assert schema["required"] == list(schema["properties"])
    assert schemas["ProtocolProperties"]["nullable"] is True
    # Every documented GET answers 200 here and every documented path exists.
    for template, item in spec["paths"].items():
        target = template.replace(
            "{uuid}", (await client.request("GET", "/tunnels")).json()[0]["uuid"]
        )
        for method in ("get", "head"):
            assert (await client.request(method.upper(), target)).status == 200, target
        for param in item.get("parameters", []):
            assert "{" + param["name"] + "}" in template and param["required"] is True


def test_openapi_check_rejects_a_wrong_body() -> None:
    """The validator the other tests rely on does reject what it should."""
    bad = copy.deepcopy(client_view().to_json())
    bad["extra"] = 1
    with pytest.raises(jsonschema.ValidationError):
        check_openapi(
            "GET",
            "/tunnels",
            Reply(200, {"content-type": "application/json"}, json.dumps([bad]).encode()),
        )
    good = server_view().to_json()
    good["protocolProperties"] = None
    check_openapi(
        "GET",
        "/tunnels",
        Reply(200, {"content-type": "application/json"}, json.dumps([good]).encode()),
    )
    good["serverTotalBytes"] = "12"
    with pytest.raises(jsonschema.ValidationError):
        check_openapi(
            "GET",
            "/tunnels/x",
            Reply(200, {"content-type": "application/json"}, json.dumps(good).encode()),
        )


# ------------------------------------------------------------------------------ curl

CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")
async def test_curl_lists_tunnels_and_reuses_the_connection(api: ApiServer) -> None:
    assert CURL is not None
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sS", "--unix-socket", api.address,
        "-w", "\n%{http_code} %{content_type} %{num_connects}\n",
        "http://localhost/tunnels", "http://localhost/tunnels",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 4
    for body, trailer in ((lines[0], lines[1]), (lines[2], lines[3])):
        tunnels = json.loads(body)
        assert {t["endpoint"] for t in tunnels} == {"client", "server"}
        check_openapi(
            "GET", "/tunnels", Reply(200, {"content-type": "application/json"}, body.encode())
        )
        assert trailer.split()[:2] == ["200", "application/json"]
    assert lines[1].split()[2] == "1" and lines[3].split()[2] == "0"  # second: kept alive


@pytest.mark.skipif(CURL is None, reason="curl is not installed on this machine")
async def test_curl_delete_and_head(api: ApiServer, provider: FakeProvider) -> None:
    assert CURL is not None
    uuid = provider.views[1].uuid
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}\n", "--unix-socket", api.address,
        "-X", "DELETE", f"http://localhost/tunnels/{uuid}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert out.decode().strip() == "204", err
    assert provider.closed == [uuid]
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sSI", "--unix-socket", api.address, "http://localhost/tunnels",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: " in out


# ------------------------------------------------------------------------------ fuzz

_METHODS = st.sampled_from(["GET", "HEAD", "DELETE", "POST", "G\x00T", "", "get"])
_TEXT = st.text(st.characters(codec="latin-1"), max_size=40)
_REQUEST_LIKE = st.builds(
    lambda m, t, hs, tail: (
        (f"{m} {t} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n").encode(
            "latin-1"
        )
        + tail
    ),
    _METHODS,
    st.one_of(st.sampled_from(["/tunnels", "/tunnels/x", "*", "/%zz", ""]), _TEXT),
    st.lists(
        st.tuples(
            st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Expect", "X"]),
            st.one_of(st.sampled_from(["5", "-1", "chunked", "100-continue", "x"]), _TEXT),
        ),
        max_size=4,
    ),
    st.binary(max_size=64),
)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _fuzz_once(path: str, data: bytes) -> None:
    api = await start_unix(
        path, Router(FakeProvider([client_view()])), limits=Limits(request_timeout_s=2)
    )
    try:
        with contextlib.suppress(ConnectionError):
            await raw_exchange(path, data)
        c = await Client.open(path)
        reply = await c.request("GET", "/tunnels")
        assert reply.status == 200 and len(reply.json()) == 1
        await c.aclose()
    finally:
        api.close()
        await api.wait_closed()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=4096), _REQUEST_LIKE))
def test_random_bytes_never_crash_the_server(data: bytes) -> None:
    errors = _Errors()
    logging.getLogger("quictund.api").addHandler(errors)
    try:
        with tempfile.TemporaryDirectory(prefix="qt-", dir="/tmp") as d:
            asyncio.run(_fuzz_once(os.path.join(d, "z.sock"), data))
    finally:
        logging.getLogger("quictund.api").removeHandler(errors)
    assert errors.records == []


# ------------------------------------------------------------------------------ pure parts


def test_view_of_maps_a_record() -> None:
    record = TunnelRecord(
        endpoint="server", listener="l", remote_endpoint_addr="[2001:db8::1]:7500"
    )
    view = view_of(record)
    assert (view.uuid, view.stream_id, view.endpoint) == (record.uuid, -1, "server")
    assert view.created_at == record.created_at
    out = view.to_json()
    assert out["serverAppAddr"] == "" and "clientAppAddr" not in out
    assert out["protocolProperties"] is None and out["protocol"] == ""
    naive = TunnelView("u", 0, "client", "a", datetime(2026, 1, 2, 3, 4, 5), "l")
    assert naive.to_json()["createdAt"] == "2026-01-02T03:04:05.000000+00:00"


def test_router_without_sockets() -> None:
    router = Router(FakeProvider())
    assert router.handle(Request("GET", "/tunnels")).body == b"[]"
    assert router.handle(Request("BREW", "/tunnels")).status == 405
    assert router.handle(Request("GET", "https://h/healthz?x")).status == 200


def test_rate_meter_steady_one_second_ticks() -> None:
    meter = RateMeter()
    assert meter.sample(10.0, 0, 0) == (0.0, 0.0)
    assert meter.sample(11.0, 1024, 2048) == (1024.0, 2048.0)
    assert meter.sample(12.0, 1024 + 512, 2048) == (512.0, 0.0)
    assert meter.rates(12.5) == (512.0, 0.0)
    assert meter.rates(14.1) == (0.0, 0.0)  # nothing seen for > 2 windows
    assert format_rate(205.0) == "0.20 kB/s"
    assert format_rate(1_048_576) == "1024.00 kB/s"


def test_rate_meter_dense_samples_use_the_last_second_and_stay_bounded() -> None:
    meter = RateMeter(window_s=1.0)
    for i in range(10_001):  # 1 ms apart, 100 bytes each: 100 kB/s
        meter.sample(i / 1000, i * 100, i * 10)
    client, server = meter.rates(10.0)
    assert client == pytest.approx(100_000, rel=0.01)
    assert server == pytest.approx(10_000, rel=0.01)
    assert len(meter._samples) <= 13


def test_rate_meter_restarts_on_counter_or_clock_going_back() -> None:
    meter = RateMeter()
    meter.sample(1.0, 100, 100)
    meter.sample(2.0, 200, 200)
    assert meter.sample(3.0, 50, 300) == (0.0, 0.0)  # a reset counter: no negative rate
    assert meter.sample(2.5, 60, 310) == (0.0, 0.0)
    assert meter.sample(3.5, 1084, 310) == (1024.0, 0.0)
    assert RateMeter().sample(1.0, 5, 5) == (0.0, 0.0)
    meter = RateMeter()
    meter.sample(1.0, 0, 0)
    assert meter.sample(1.0, 10, 10) == (0.0, 0.0)  # no time has passed: no rate yet
    with pytest.raises(ValueError, match="window_s"):
        RateMeter(0)


def test_rate_tick_samples_established_tunnels_a_batch_per_loop_turn() -> None:
    # Issue 13: one pass over a hostile peer's thousands of tunnels stalled the loop 7-73 ms;
    # the daemon now awaits a loop turn between batches (daemon.py, "rate-tick").
    from quictund.api.provider import DaemonApi
    from quictund.metrics import Metrics
    from quictund.tunnel.tunnels import TunnelTable

    table = TunnelTable()
    records = []
    for i in range(600):
        record = TunnelRecord(
            endpoint="server", listener="quic", remote_endpoint_addr="192.0.2.1:1", stream_id=4 * i
        )
        record.established = i % 3 != 0  # 400 established, 200 still in their handshake
        record.client_total_bytes = i
        table.add(record)
        records.append(record)
    api = DaemonApi(table, Metrics(), lambda: [], lambda: "ok")
    steps = api.tick_steps(batch=100)
    first = next(steps)
    assert first is None and len(api._meters) == 100  # one batch, then the loop's turn
    assert sum(1 for _ in steps) == 2  # 400 established tunnels: 4 batches, 3 yields in all
    assert set(api._meters) == {r.uuid for r in records if r.established}
    table.closed(records[1], "done")
    api.tick()
    assert records[1].uuid not in api._meters and len(api._meters) == 399
