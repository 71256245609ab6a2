"""Bulk throughput through a quictund tunnel on loopback (one direction, one or more tunnels).

    python bench/bulk.py [--seconds 10] [--tunnels 1] [--direction up|down]
                         [--congestion-control bbr|cubic|reno]

Starts a quictund server and client as subprocesses (uvloop), a sink/source app in this
process, pushes data for ``--seconds`` (>= 10 s to catch the uvloop-clock pacer collapse) and
prints Mbit/s and the CPU seconds each daemon used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from _daemons import cpu_s, start  # bench/ is on sys.path
from _toml_daemons import start_pair

CHUNK = 256 * 1024


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--tunnels", type=int, default=1)
    ap.add_argument("--direction", choices=["up", "down"], default="up")
    ap.add_argument(
        "--idle",
        type=int,
        default=0,
        help="open this many idle tunnels (to a separate echo) before measuring",
    )
    ap.add_argument(
        "--congestion-control", default=None, help="start the daemons from TOML with this setting"
    )
    args = ap.parse_args()
    received = 0

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        if args.direction == "up":
            while data := await reader.read(CHUNK):
                received += len(data)
        else:
            block = os.urandom(CHUNK)
            try:
                while True:
                    writer.write(block)
                    await writer.drain()
            except ConnectionError:
                pass
        writer.close()

    sink = await asyncio.start_server(app, "127.0.0.1", 0)
    port = sink.sockets[0].getsockname()[1]
    state = tempfile.mkdtemp()
    if args.congestion_control:
        server, client, listen = await start_pair(
            Path(state),
            congestion_control=args.congestion_control,
            server_listen="127.0.0.1:0",
            client_listen="127.0.0.1:0",
            destination=f"tcp:127.0.0.1:{port}",
        )
    else:
        server, udp = await start(
            "server",
            "--listen-on",
            "127.0.0.1:0",
            "--state-dir",
            state,
            "--allow",
            f"tcp:127.0.0.1:{port}",
        )
        client, listen = await start(
            "client",
            "--listen-on",
            "tcp:127.0.0.1:0",
            "--server-endpoint",
            udp,
            "--token-source",
            f"tcp:127.0.0.1:{port}",
        )
    host, _, cport = listen.split(":", 1)[1].rpartition(":")
    idle = []
    for _ in range(args.idle):
        r, w = await asyncio.open_connection(host, int(cport))
        w.write(b"")
        idle.append((r, w))
    conns = [await asyncio.open_connection(host, int(cport)) for _ in range(args.tunnels)]
    cpu0 = (cpu_s(client.pid), cpu_s(server.pid))
    t0 = time.monotonic()
    stop = t0 + args.seconds
    got_down = 0

    async def push(writer: asyncio.StreamWriter) -> None:
        block = os.urandom(CHUNK)
        while time.monotonic() < stop:
            writer.write(block)
            await writer.drain()

    async def pull(reader: asyncio.StreamReader) -> None:
        nonlocal got_down
        while time.monotonic() < stop:
            got_down += len(await reader.read(CHUNK))

    if args.direction == "up":
        await asyncio.gather(*(push(w) for _, w in conns))
    else:
        await asyncio.gather(*(pull(r) for r, _ in conns))
    elapsed = time.monotonic() - t0
    cpu1 = (cpu_s(client.pid), cpu_s(server.pid))
    moved = received if args.direction == "up" else got_down
    mbit = moved * 8 / elapsed / 1e6
    print(
        f"{args.direction} tunnels={args.tunnels} idle={args.idle}: {mbit:.0f} Mbit/s "
        f"over {elapsed:.1f} s; CPU client {cpu1[0] - cpu0[0]:.1f} s, "
        f"server {cpu1[1] - cpu0[1]:.1f} s"
    )
    for _, w in conns + idle:
        w.close()
    for proc in (client, server):
        proc.terminate()
        await proc.wait()
    sink.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
