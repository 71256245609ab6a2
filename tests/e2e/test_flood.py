"""Flood limits through real daemons: Retry, half-open cap, handshake timeout, per-source
connection and tunnel rates, per-identity tunnel cap, and a handshake flood during which a
legitimate client keeps opening tunnels (issue 5, "Limits against floods")."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import flooder
from tests.e2e.harness import Backend, connect, echo, rss_kib
from tests.e2e.test_daemon import Run, client_toml, free_udp_port, server_toml


async def api_get(sock: Path, path: str) -> str:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


async def counter_totals(api: Path, name: str, label: str) -> dict[str, int]:
    """The daemon's counter ``name`` by the value of ``label``."""
    totals: dict[str, int] = {}
    for family in text_string_to_metric_families(await api_get(api, "/metrics")):
        if family.name == name:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = sample.labels[label]
                    totals[key] = totals.get(key, 0) + int(sample.value)
    return totals


async def limit_hits(api: Path) -> dict[str, int]:
    return await counter_totals(api, "quictund_limit_hits", "limit")


async def wait_hits(api: Path, limit: str, at_least: int, within: float = 15) -> int:
    """Poll the metric (it lives in another process: there is no event to wait on)."""
    deadline = time.monotonic() + within
    while (count := (await limit_hits(api)).get(limit, 0)) < at_least:
        assert time.monotonic() < deadline, f"{limit}: {count} hits, expected {at_least}"
        await asyncio.sleep(0.1)
    return count


async def daemon(tmp: Path, name: str, body: str) -> tuple[Run, Path]:
    api = tmp / f"{name}.api.sock"
    conf = tmp / f"{name}.toml"
    conf.write_text(f'[api]\nsocket = "{api}"\n' + body)
    run = await Run.start("--config", str(conf))
    await run.wait_log("ready:")
    return run, api


async def echo_once(address: str, payload: bytes = b"ping") -> None:
    reader, writer = await connect(address)
    try:
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    finally:
        writer.close()


async def refused(address: str) -> None:
    reader, writer = await connect(address)
    writer.write(b"x")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError, BrokenPipeError)):
        await asyncio.wait_for(reader.readexactly(1), 10)
    writer.close()


def send_initials(port: int, packets: list[bytes], source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    for packet in packets:
        sock.sendto(packet, ("127.0.0.1", port))
    return sock


async def test_retry_always_still_connects(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    run, api = await daemon(
        short_tmp,
        "d",
        server_toml("edge", port, state_dir, [backend.address])
        + "retry-threshold = 0\n"
        + client_toml("app", f"unix:{short_tmp}/c.sock", port, ca, backend.address),
    )
    try:
        await echo_once(f"unix:{short_tmp}/c.sock")
        assert await wait_hits(api, "retry", 1) >= 1  # the client went through a Retry
    finally:
        assert await run.stop() == 0
        backend.close()


async def test_half_open_cap_and_handshake_timeout(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    run, api = await daemon(
        short_tmp,
        "s",
        server_toml("edge", port, state_dir, [backend.address])
        + "max-half-open = 5\nretry-threshold = 1000\nhandshake-timeout = 1.5\n"
        + "source-connection-burst = 1000\n",
    )
    try:
        sock = send_initials(port, flooder.initials(("127.0.0.1", port), 12))
        assert await wait_hits(api, "half-open", 7) == 7  # 5 half open, 7 dropped
        assert await wait_hits(api, "handshake-timeout", 5) == 5
        sock.close()
        # The slots are free again: a real client connects and tunnels.
        app = client_toml("app", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
        client, _ = await daemon(short_tmp, "c", app)
        await echo_once(f"unix:{short_tmp}/c.sock")
        assert await client.stop() == 0
        assert (await limit_hits(api))["half-open"] == 7
    finally:
        assert await run.stop() == 0
        backend.close()


async def test_connection_rate_is_per_source(short_tmp: Path, state_dir: Path) -> None:
    port = free_udp_port()
    run, api = await daemon(
        short_tmp,
        "s",
        server_toml("edge", port, state_dir, ["tcp:127.0.0.1:9"])
        + "source-connection-rate = 0.01\nsource-connection-burst = 3\nretry-threshold = 1000\n",
    )
    try:
        packets = flooder.initials(("127.0.0.1", port), 7)
        socks = [send_initials(port, packets[:6])]
        assert await wait_hits(api, "connection-rate", 3) == 3
        socks.append(send_initials(port, packets[6:], source="127.0.0.2"))  # its own budget
        await asyncio.sleep(0.5)
        assert (await limit_hits(api))["connection-rate"] == 3
        for s in socks:
            s.close()
    finally:
        assert await run.stop() == 0


async def test_tunnel_rate_per_source(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    run, api = await daemon(
        short_tmp,
        "d",
        server_toml("edge", port, state_dir, [backend.address])
        + "source-tunnel-rate = 0.01\nsource-tunnel-burst = 5\n"
        + client_toml("app", f"unix:{short_tmp}/c.sock", port, ca, backend.address),
    )
    try:
        for _ in range(5):
            await echo_once(f"unix:{short_tmp}/c.sock")
        await refused(f"unix:{short_tmp}/c.sock")
        assert await wait_hits(api, "tunnel-rate", 1) == 1
        assert await run.wait_log("limit tunnel-rate: 127.0.0.1:")
    finally:
        assert await run.stop() == 0
        backend.close()


async def test_tunnels_per_identity_cap(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    run, api = await daemon(
        short_tmp,
        "d",
        server_toml("edge", port, state_dir, [backend.address])
        + "max-tunnels-per-identity = 3\n"
        + client_toml("a", f"unix:{short_tmp}/a.sock", port, ca, backend.address)
        + client_toml("b", f"unix:{short_tmp}/b.sock", port, ca, backend.address),
    )
    try:
        held = []
        for listener in ("a", "b", "a"):  # two QUIC connections, one source: one quota
            reader, writer = await connect(f"unix:{short_tmp}/{listener}.sock")
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            held.append(writer)
        await refused(f"unix:{short_tmp}/b.sock")
        assert await wait_hits(api, "tunnels-per-identity", 1) == 1
        held.pop().close()
        await run.wait_log("tunnel closed")
        await echo_once(f"unix:{short_tmp}/b.sock")  # a slot came free
        for writer in held:
            writer.close()
    finally:
        assert await run.stop() == 0
        backend.close()


def _hanging_listener() -> tuple[list[socket.socket], str]:
    """A TCP address whose connects hang: its accept queue is full, so Linux drops SYNs."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    held = [lsock]
    for _ in range(4):  # fill the accept queue (never accepted)
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        held.append(c)
    return held, f"tcp:127.0.0.1:{port}"


async def test_a_tunnel_abandoned_while_connecting_is_counted_off_once(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    # A client connection that goes away while one of its tunnels' server-side connect is
    # still pending: the handshake ended the tunnel, then its cancelled connect ended it again,
    # and the source's count went down twice, so it could hold more than
    # max-tunnels-per-identity.
    backend = await echo().tcp()
    held, hanging = _hanging_listener()
    port = free_udp_port()
    run, api = await daemon(
        short_tmp,
        "d",
        server_toml("edge", port, state_dir, [backend.address, hanging])
        + "max-tunnels-per-identity = 2\n"
        + client_toml("a", f"unix:{short_tmp}/a.sock", port, ca, backend.address),
    )
    other, _ = await daemon(  # the same source, its own process and QUIC connection
        short_tmp,
        "h",
        "[daemon]\nshutdown-grace = 0\n"
        + client_toml("h", f"unix:{short_tmp}/h.sock", port, ca, hanging),
    )
    writers = []
    try:
        reader, writer = await connect(f"unix:{short_tmp}/a.sock")  # one tunnel held open
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        writers.append(writer)
        _, stuck = await connect(f"unix:{short_tmp}/h.sock")  # its connect hangs
        writers.append(stuck)
        await asyncio.sleep(1.0)  # the token reaches the server, which starts connecting
        assert await other.stop() == 0  # closes its QUIC connection at once
        await run.wait_log("QUIC connection lost")
        await asyncio.sleep(0.5)
        reader, writer = await connect(f"unix:{short_tmp}/a.sock")  # the second of two
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        writers.append(writer)
        await refused(f"unix:{short_tmp}/a.sock")  # a third would exceed the quota
        assert await wait_hits(api, "tunnels-per-identity", 1) == 1
    finally:
        for w in writers:
            w.close()
        for sock in held:
            sock.close()
        assert await run.stop() == 0
        backend.close()


# The bound this test states: while 3,000 real and 3,000 garbage handshakes arrive from 200
# sources at 1,500 datagrams/s, an established client's new-tunnel setup (connect to first
# echoed byte) keeps p99 under 1 s and never fails, a new client still connects (through a
# Retry) within 10 s, and the server grows by less than 80 MiB.  Measured numbers are in
# docs/security.md (bench/flood.py); this is a loose functional bound for a shared 2-core CI.
P99_BOUND_S = 1.0
ROOT = Path(__file__).parents[2]
RSS_BOUND_KIB = 80 * 1024


async def test_handshake_flood_keeps_legit_tunnels_working(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    server, api = await daemon(
        short_tmp, "s", server_toml("edge", port, state_dir, [backend.address])
    )
    client, _ = await daemon(
        short_tmp, "c", client_toml("app", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
    )
    flood = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.e2e.flooder", f"127.0.0.1:{port}",
        "--count", "3000", "--garbage", "3000", "--rate", "1500", "--sources", "200",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        await echo_once(f"unix:{short_tmp}/c.sock")  # warm
        assert flood.stdout is not None and flood.stdin is not None
        ready = await asyncio.wait_for(flood.stdout.readline(), 120)
        assert ready.startswith(b"ready 6000"), ready
        rss_before = rss_kib(server.proc.pid)
        flood.stdin.write(b"go\n")
        await flood.stdin.drain()

        setups: list[float] = []
        late: list[Run] = []

        async def late_client() -> None:
            await asyncio.sleep(1.0)  # in the thick of it
            c, _ = await daemon(
                short_tmp, "late", client_toml("late", f"unix:{short_tmp}/l.sock", port, ca,
                                               backend.address),
            )  # fmt: skip
            late.append(c)
            async with asyncio.timeout(10):
                await echo_once(f"unix:{short_tmp}/l.sock")

        late_task = asyncio.get_running_loop().create_task(late_client())
        while flood.returncode is None and len(setups) < 2000:
            t0 = time.perf_counter()
            await echo_once(f"unix:{short_tmp}/c.sock", b"x")
            setups.append(time.perf_counter() - t0)
            try:
                await asyncio.wait_for(flood.wait(), 0.001)
            except TimeoutError:
                pass
        done = await asyncio.wait_for(flood.stdout.readline(), 60)
        assert done.startswith(b"sent 6000"), done
        await late_task
        rss_after = rss_kib(server.proc.pid)
        hits = await limit_hits(api)

        setups.sort()
        p99 = setups[int(len(setups) * 0.99)]
        print(
            f"flood: {len(setups)} tunnels during the flood, setup p50 "
            f"{statistics.median(setups) * 1000:.1f} ms p99 {p99 * 1000:.1f} ms; "
            f"server RSS +{(rss_after - rss_before) / 1024:.1f} MiB; limit hits {hits}"
        )
        assert len(setups) >= 50
        assert p99 < P99_BOUND_S
        assert rss_after - rss_before < RSS_BOUND_KIB
        assert hits.get("retry", 0) > 1000  # past the threshold, Initials got stateless Retries
        for c in late:
            assert await c.stop() == 0
    finally:
        if flood.returncode is None:
            flood.kill()
        await flood.wait()
        assert await client.stop() == 0
        assert await server.stop() == 0
        backend.close()



_ = Backend  # re-exported helpers used by other modules
