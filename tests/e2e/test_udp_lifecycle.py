"""UDP flows' lifecycle and bounds end to end (issue 16): idle timeout, a silent destination,
oversized datagrams, many flows at once.  Real daemons, loopback only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.harness import start_client, start_server
from tests.e2e.udp_apps import one_flow, udp_app, udp_echo


async def test_a_flow_idles_out_and_comes_back(state_dir: Path) -> None:
    async with one_flow(state_dir, client_args=("--udp-idle-timeout", "1")) as f:
        assert await f.app.ask(b"one") == b"echo:one"
        line = await f.client.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert line["reason"] == "idle for 1 s" and line["protocol"] == "udp"
        assert line["datagrams_to_tunnel"] >= 1 and line["datagrams_from_tunnel"] >= 1
        # The client's reset closes the server's socket too.
        closed = await f.server.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert closed["reason"] == "client closed the flow"
        # The same app address comes back: a new flow, a new tunnel.
        assert await f.app.ask(b"two") == b"echo:two"
        opened = [e for e in f.client.logs if e.get("msg") == "tunnel open"]
        assert len(opened) == 2 and opened[0]["tunnel"] != opened[1]["tunnel"]


async def test_a_destination_that_never_answers(state_dir: Path) -> None:
    async with one_flow(state_dir, silent=True, server_args=("--udp-idle-timeout", "1")) as f:
        for i in range(20):
            f.app.send(b"hello %d" % i)
            await asyncio.sleep(0.02)
        line = await f.server.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert line["reason"] == "idle for 1 s"
        assert line["datagrams_to_tunnel"] == 0 and line["datagrams_from_tunnel"] >= 1
        assert f.echo.received == line["datagrams_from_tunnel"]
        # The server's reset ends the client's flow as well; the daemons carry on.
        done = await f.client.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert done["reason"] == "server closed the flow"


async def test_a_datagram_over_the_size_limit_is_dropped_and_counted(state_dir: Path) -> None:
    async with one_flow(state_dir, client_args=("--udp-idle-timeout", "1")) as f:
        assert await f.app.ask(b"small") == b"echo:small"
        f.app.send(b"x" * 1400)  # fits (docs/configuration.md: at most 1400 bytes)
        assert await asyncio.wait_for(f.app.replies.get(), 5) == b"echo:" + b"x" * 1400
        for size in (1452, 4000, 65000):
            f.app.send(b"y" * size)
        assert await f.app.ask(b"after") == b"echo:after"
        line = await f.client.wait_log(lambda e: e.get("msg") == "tunnel closed", within=10)
        assert line["drops"] == {"too_big": 3}
        assert f.echo.received == line["datagrams_to_tunnel"]  # nothing oversized arrived


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
    async with one_flow(state_dir, allow="udp:127.0.0.1:1") as f:  # not the echo
        for i in range(100):  # an app retrying hard for 1.5 s
            f.app.send(b"retry %d" % i)
            await asyncio.sleep(0.015)
        await f.server.wait_log(lambda e: e.get("msg") == "tunnel failed")
        await asyncio.sleep(0.5)
        refused = f.server.messages("tunnel failed")
        assert 1 <= len(refused) <= 3, len(refused)
        assert all("not allowed by policy" in e["reason"] for e in refused)
        assert f.echo.received == 0


async def test_shutdown_does_not_wait_for_udp_flows(state_dir: Path) -> None:
    async with one_flow(state_dir) as f:
        assert await f.app.ask(b"hi") == b"echo:hi"
        started = asyncio.get_running_loop().time()
        assert await f.server.stop() == 0
        took = asyncio.get_running_loop().time() - started
        line = next(e for e in f.server.logs if e.get("msg") == "tunnel closed")
        assert line["reason"] == "server endpoint stopping"
        assert took < 5, f"shutdown waited {took:.1f} s for a UDP flow"  # the grace is 10 s
