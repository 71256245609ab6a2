"""UDP flows' lifecycle and bounds end to end (issue 16): idle timeout, a silent destination,
oversized datagrams, many flows at once.  Real daemons, loopback only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.harness import start_client, start_server
from tests.e2e.udp_apps import udp_app, udp_echo


async def test_a_flow_idles_out_and_comes_back(state_dir: Path) -> None:
    echo = await udp_echo()
    dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", dest)
    client = await start_client(
        server.address, dest, "--udp-idle-timeout", "1", listen="udp:127.0.0.1:0"
    )
    app = await udp_app(client.address)
    try:
        assert await app.ask(b"one") == b"echo:one"
        line = await client.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert line["reason"] == "idle for 1 s" and line["protocol"] == "udp"
        assert line["datagrams_to_tunnel"] >= 1 and line["datagrams_from_tunnel"] >= 1
        # The client's reset closes the server's socket too.
        closed = await server.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert closed["reason"] == "client closed the flow"
        # The same app address comes back: a new flow, a new tunnel.
        assert await app.ask(b"two") == b"echo:two"
        opened = [e for e in client.logs if e.get("msg") == "tunnel open"]
        assert len(opened) == 2 and opened[0]["tunnel"] != opened[1]["tunnel"]
    finally:
        app.close()
        await client.stop()
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()


async def test_a_destination_that_never_answers(state_dir: Path) -> None:
    silent = await udp_echo(silent=True)
    dest = f"udp:127.0.0.1:{silent.port}"
    server = await start_server(state_dir, "--allow", dest, "--udp-idle-timeout", "1")
    client = await start_client(server.address, dest, listen="udp:127.0.0.1:0")
    app = await udp_app(client.address)
    try:
        for i in range(20):
            app.send(b"hello %d" % i)
            await asyncio.sleep(0.02)
        line = await server.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert line["reason"] == "idle for 1 s"
        assert line["datagrams_to_tunnel"] == 0 and line["datagrams_from_tunnel"] >= 1
        assert silent.received == line["datagrams_from_tunnel"]
        # The server's reset ends the client's flow as well; the daemons carry on.
        done = await client.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert done["reason"] == "server closed the flow"
    finally:
        app.close()
        await client.stop()
        await server.stop()
        assert silent.transport is not None
        silent.transport.close()


async def test_a_datagram_over_the_size_limit_is_dropped_and_counted(state_dir: Path) -> None:
    echo = await udp_echo()
    dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", dest)
    client = await start_client(
        server.address, dest, "--udp-idle-timeout", "1", listen="udp:127.0.0.1:0"
    )
    app = await udp_app(client.address)
    try:
        assert await app.ask(b"small") == b"echo:small"
        app.send(b"x" * 1400)  # fits (docs/configuration.md: at most 1400 bytes)
        assert await asyncio.wait_for(app.replies.get(), 5) == b"echo:" + b"x" * 1400
        for size in (1452, 4000, 65000):
            app.send(b"y" * size)
        assert await app.ask(b"after") == b"echo:after"
        line = await client.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert line["drops"] == {"too_big": 3}
        assert echo.received == line["datagrams_to_tunnel"]  # nothing oversized arrived
    finally:
        app.close()
        await client.stop()
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()


async def test_a_thousand_concurrent_flows(state_dir: Path) -> None:
    echo = await udp_echo()
    dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", dest)
    client = await start_client(server.address, dest, listen="udp:127.0.0.1:0")
    apps = [await udp_app(client.address) for _ in range(1000)]
    before = (client.rss_kib(), server.rss_kib())
    try:
        replies = await asyncio.gather(
            *(app.ask(b"flow %d" % i, within=60, every=3) for i, app in enumerate(apps))
        )
        assert replies == [b"echo:flow %d" % i for i in range(1000)]  # each to its own app
        opened = await client.wait_log(
            lambda e: len(client.messages("tunnel open")) >= 1000, within=30
        )
        assert opened
        assert len(server.messages("tunnel open")) == 1000
        grew = (client.rss_kib() - before[0], server.rss_kib() - before[1])
        print(f"1000 flows: client +{grew[0]} KiB, server +{grew[1]} KiB")
        assert max(grew) < 64 * 1024  # well under 64 KiB a flow
    finally:
        for app in apps:
            app.close()
        await client.stop()
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()


async def test_a_refused_flow_costs_one_handshake_a_second(state_dir: Path) -> None:
    echo = await udp_echo()
    server = await start_server(state_dir, "--allow", "udp:127.0.0.1:1")  # not the echo
    client = await start_client(
        server.address, f"udp:127.0.0.1:{echo.port}", listen="udp:127.0.0.1:0"
    )
    app = await udp_app(client.address)
    try:
        for i in range(100):  # an app retrying hard for 1.5 s
            app.send(b"retry %d" % i)
            await asyncio.sleep(0.015)
        await server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        await asyncio.sleep(0.5)
        refused = server.messages("tunnel failed")
        assert 1 <= len(refused) <= 3, len(refused)
        assert all("not allowed by policy" in e["reason"] for e in refused)
        assert echo.received == 0
    finally:
        app.close()
        await client.stop()
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()


async def test_shutdown_does_not_wait_for_udp_flows(state_dir: Path) -> None:
    echo = await udp_echo()
    dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", dest)
    client = await start_client(server.address, dest, listen="udp:127.0.0.1:0")
    app = await udp_app(client.address)
    try:
        assert await app.ask(b"hi") == b"echo:hi"
        started = asyncio.get_running_loop().time()
        assert await server.stop() == 0
        took = asyncio.get_running_loop().time() - started
        line = next(e for e in server.logs if e.get("msg") == "tunnel closed")
        assert line["reason"] == "server endpoint stopping"
        assert took < 5, f"shutdown waited {took:.1f} s for a UDP flow"  # the grace is 10 s
    finally:
        app.close()
        await client.stop()
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()
