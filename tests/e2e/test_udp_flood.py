"""A destination flooding its UDP flow (issue 16): the server's memory stays bounded (its
DATAGRAM queue drops the oldest, counted) and an honest flow on the same connection still
answers.  Real daemons; the flooder is a plain socket in a thread, as fast as Python sends."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

from tests.e2e.harness import start_client, start_server
from tests.e2e.udp_apps import udp_app, udp_echo

FLOOD_S = 4.0


def flood(sock: socket.socket, stop: threading.Event, sent: list[int]) -> None:
    """Answer the first datagram with a flood of 1200-byte datagrams until ``stop``."""
    _, peer = sock.recvfrom(2048)
    payload = b"f" * 1200
    n = 0
    while not stop.is_set():
        try:
            sock.sendto(payload, peer)
            n += 1
        except OSError:  # ENOBUFS / EAGAIN: the kernel pushes back, try again
            time.sleep(0.0005)
    sent.append(n)


async def test_a_flooding_destination_is_bounded(state_dir: Path) -> None:
    echo = await udp_echo()
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder.bind(("127.0.0.1", 0))
    flood_dest = f"udp:127.0.0.1:{flooder.getsockname()[1]}"
    honest_dest = f"udp:127.0.0.1:{echo.port}"
    server = await start_server(state_dir, "--allow", flood_dest, "--allow", honest_dest)
    victim = await start_client(server.address, flood_dest, listen="udp:127.0.0.1:0")
    honest = await start_client(server.address, honest_dest, listen="udp:127.0.0.1:0")
    stop, sent = threading.Event(), []
    thread = threading.Thread(target=flood, args=(flooder, stop, sent), daemon=True)
    thread.start()
    try:
        good = await udp_app(honest.address)
        assert await good.ask(b"before") == b"echo:before"
        rss_before = server.rss_kib()
        bad = await udp_app(victim.address)
        bad.send(b"start")
        worst = 0.0
        peak = rss_before
        end = time.monotonic() + FLOOD_S
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert await good.ask(b"during", within=5) == b"echo:during"
            worst = max(worst, time.monotonic() - t0)
            peak = max(peak, server.rss_kib())
            await asyncio.sleep(0.2)
        stop.set()
        thread.join(5)
        print(f"flood: {sent[0]} datagrams sent, server RSS {rss_before} -> {peak} KiB, "
              f"honest round trip worst {worst * 1000:.0f} ms")  # fmt: skip
        assert sent[0] > 10_000, "the flood did not flood"
        assert peak - rss_before < 64 * 1024, f"server grew {peak - rss_before} KiB"
        await victim.stop()
        line = await server.wait_log(
            lambda e: e.get("msg") == "tunnel closed" and e.get("server_app") == flood_dest
        )
        # What the tunnel could not carry was dropped and counted, never queued in memory.
        got = await victim.wait_log(lambda e: e.get("msg") == "tunnel closed")
        # What the server took either reached the client, was dropped and counted at the
        # DATAGRAM queue, or was lost as UDP is (the client's socket overflowing under the
        # flood; DATAGRAM frames are never retransmitted): nothing waits in memory.
        missing = line["datagrams_to_tunnel"] - got["datagrams_from_tunnel"]
        print(f"server took {line['datagrams_to_tunnel']}, client got "
              f"{got['datagrams_from_tunnel']}, drops {line['drops']}")  # fmt: skip
        assert line["datagrams_to_tunnel"] > 10_000
        assert missing >= 0 and got["datagrams_from_tunnel"] > 10_000
        good.close()
        bad.close()
    finally:
        stop.set()
        flooder.close()
        await victim.stop()
        await honest.stop()
        await server.stop()
        assert echo.transport is not None
        echo.transport.close()
