"""Bulk throughput through a quictund tunnel on loopback (one direction, one or more tunnels).

    python bench/bulk.py [--seconds 10] [--tunnels 1] [--direction up|down|both]
                         [--engines aioquic,qh3] [--runs 3]
                         [--congestion-control bbr|cubic|reno]

Starts a quictund server and client as subprocesses (uvloop), a sink/source app in this
process, pushes data for ``--seconds`` (>= 10 s to catch the uvloop-clock pacer collapse) and
prints Mbit/s and the CPU seconds each daemon used.  With several engines, directions or runs
the runs are interleaved (engine A, engine B, A, B, ...) so a noisy neighbour hits both alike,
and a table of medians closes the output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from _daemons import cpu_s, start  # bench/ is on sys.path

CHUNK = 256 * 1024


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--tunnels", type=int, default=1)
    ap.add_argument("--direction", choices=["up", "down", "both"], default="up")
    ap.add_argument("--engines", default="aioquic", help="comma-separated quic-engine values")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--congestion-control", default="bbr", choices=["bbr", "cubic", "reno"])
    ap.add_argument(
        "--idle",
        type=int,
        default=0,
        help="open this many idle tunnels (to a separate echo) before measuring",
    )
    args = ap.parse_args()
    directions = ["up", "down"] if args.direction == "both" else [args.direction]
    engines = args.engines.split(",")
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for _ in range(args.runs):
        for direction in directions:
            for engine in engines:
                one = await run_once(args, engine, direction)
                results.setdefault((engine, direction), []).append(one)
    if len(results) > 1 or args.runs > 1:
        print(f"\nmedians of {args.runs} run(s), {args.tunnels} tunnel(s), {args.seconds:g} s each")
        print("engine   dir   Mbit/s  [min-max]        CPU s client  server  (CPU s per GiB c/s)")
        for (engine, direction), runs in results.items():
            mbit = [r[0] for r in runs]
            med = statistics.median(mbit)
            cli = statistics.median(r[1] for r in runs)
            srv = statistics.median(r[2] for r in runs)
            gib = med * 1e6 * args.seconds / 8 / 2**30
            print(
                f"{engine:8} {direction:5} {med:7.0f}  [{min(mbit):.0f}-{max(mbit):.0f}]"
                f"{'':8} {cli:6.1f}  {srv:6.1f}   ({cli / gib:.1f} / {srv / gib:.1f})"
            )


async def run_once(
    args: argparse.Namespace, engine: str, direction: str
) -> tuple[float, float, float]:
    """One measurement with fresh daemons: (Mbit/s, client CPU s, server CPU s)."""
    received = 0
    per_tunnel: list[int] = []  # bytes each tunnel moved before ``stop``

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        if direction == "up":
            mine = len(per_tunnel)
            per_tunnel.append(0)
            try:
                while data := await reader.read(CHUNK):
                    received += len(data)
                    if time.monotonic() < stop:
                        per_tunnel[mine] += len(data)
            except ConnectionError:
                pass  # the daemons are stopped with tunnels open
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
    server, udp = await start(
        "server",
        "--listen-on",
        "127.0.0.1:0",
        "--state-dir",
        state,
        "--allow",
        f"tcp:127.0.0.1:{port}",
        "--quic-engine",
        engine,
        "--congestion-control",
        args.congestion_control,
    )
    client, listen = await start(
        "client",
        "--listen-on",
        "tcp:127.0.0.1:0",
        "--server-endpoint",
        udp,
        "--token-source",
        f"tcp:127.0.0.1:{port}",
        "--quic-engine",
        engine,
        "--congestion-control",
        args.congestion_control,
    )
    host, _, cport = listen.split(":", 1)[1].rpartition(":")
    idle = []
    for _ in range(args.idle):
        r, w = await asyncio.open_connection(host, int(cport))
        w.write(b"")
        idle.append((r, w))
    conns = [await asyncio.open_connection(host, int(cport)) for _ in range(args.tunnels)]
    cpu0 = (cpu_s(client.pid), cpu_s(server.pid))
    own0 = time.process_time()
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
        mine = len(per_tunnel)
        per_tunnel.append(0)
        while time.monotonic() < stop:
            data = await reader.read(CHUNK)
            got_down += len(data)
            per_tunnel[mine] += len(data)

    if direction == "up":
        await asyncio.gather(*(push(w) for _, w in conns))
    else:
        await asyncio.gather(*(pull(r) for r, _ in conns))
    elapsed = time.monotonic() - t0
    cpu1 = (cpu_s(client.pid), cpu_s(server.pid))
    own = time.process_time() - own0
    moved = received if direction == "up" else got_down
    mbit = moved * 8 / elapsed / 1e6
    cpu = (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
    # fairness: the slowest tunnel's share of what an equal split would give it
    # (the largest --tunnels entries: with --idle, the idle tunnels' zeros are the rest)
    moved_each = sorted(per_tunnel)[-args.tunnels :]
    fair = min(moved_each) / (sum(moved_each) / len(moved_each)) if sum(moved_each) else 0.0
    print(
        f"{engine} {direction} tunnels={args.tunnels} idle={args.idle}: {mbit:.0f} Mbit/s "
        f"over {elapsed:.1f} s; CPU client {cpu[0]:.1f} s, server {cpu[1]:.1f} s, "
        f"apps {own:.1f} s; "
        f"slowest tunnel {fair:.2f} of an equal share",
        flush=True,
    )
    for _, w in conns + idle:
        w.close()
    for proc in (client, server):
        proc.terminate()
        await proc.wait()
    sink.close()
    return mbit, cpu[0], cpu[1]


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
