"""The bench's applications, run as their own processes (uvloop, ``asyncio.Protocol``):

    load.py serve --host H --port P       the target app; prints its port, runs until killed
    load.py bulk --connect H:P --direction up|down [--conns N] [--seconds T] [--warmup W]
    load.py latency --connect H:P --size BYTES [--count N] [--think]
    load.py connect --connect H:P [--count N]
    load.py idle --connect H:P --count N  (interactive: see ``idle``)

Client commands print one JSON line.  The first byte a client sends picks what the app does
with the connection: ``U`` sink (it reports the bytes received so far as an 8-byte counter
every 10 ms, so the sender measures goodput where it arrives, not what sits in buffers), ``D``
source (it sends until the connection closes), ``E`` echo, ``W`` echo ``THINK_S`` late.  The
same bytes cross every path, so the app costs every path the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any, cast

BLOCK = os.urandom(256 * 1024)
ACK_EVERY = 0.01  # s between the sink's byte counters
THINK_S = 0.005  # how late the app answers a "W" (think) echo
_COUNT = struct.Struct("!Q")


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


PUMP_BURST = 16  # blocks written per loop turn at most (4 MiB)


class _Pump(asyncio.Protocol):
    """Writes ``BLOCK`` while the transport accepts it (pause/resume_writing).

    At most ``PUMP_BURST`` blocks per loop turn: when the peer reads as fast as this side
    writes (``direct`` on loopback or a veth pair, tens of Gbit/s), ``write`` sends each block
    at once, the buffer never reaches its high-water mark, ``pause_writing`` never comes, and
    an unbounded loop never gave the event loop back -- its timers (the end of the run) and
    every other connection of the process (the shared app) starved until the peer went away.
    """

    transport: asyncio.Transport
    paused = False
    stopped = False
    _again = False  # a pump is scheduled for the next loop turn

    def pump(self) -> None:
        self._again = False
        for _ in range(PUMP_BURST):
            if self.paused or self.stopped or self.transport.is_closing():
                return
            self.transport.write(BLOCK)
        if not self._again:
            self._again = True
            asyncio.get_running_loop().call_soon(self.pump)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()


class AppProtocol(_Pump):
    """One connection to the target app; the first byte chooses sink, source or echo."""

    def __init__(self) -> None:
        self.mode = b""
        self.received = 0
        self.last_ack = 0.0

    sndbuf = 0  # serve --sndbuf: a fixed kernel send buffer per connection (0: Linux autotunes)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        _nodelay(transport)
        self.transport.set_write_buffer_limits(high=1 << 20)
        sock = transport.get_extra_info("socket")
        if self.sndbuf and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)

    def data_received(self, data: bytes) -> None:
        if not self.mode:
            self.mode, data = data[:1], data[1:]
            if self.mode == b"D":
                self.pump()
        if self.mode == b"E":
            if data:
                self.transport.write(data)
        elif self.mode == b"W":  # echo after THINK_S: an app that takes a while to answer
            if data:
                asyncio.get_running_loop().call_later(THINK_S, self.transport.write, data)
        elif self.mode == b"U":
            self.received += len(data)
            now = time.monotonic()
            if now - self.last_ack >= ACK_EVERY:
                self.last_ack = now
                self.transport.write(_COUNT.pack(self.received))

    def connection_lost(self, exc: Exception | None) -> None:
        self.stopped = True


async def serve(host: str, port: int, sndbuf: int = 0) -> None:
    AppProtocol.sndbuf = sndbuf
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AppProtocol, host, port, backlog=4096, reuse_address=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class BulkClient(_Pump):
    """Uploads (and reads the sink's counters) or downloads; keeps (time, bytes) samples."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.samples: list[tuple[float, int]] = [(time.monotonic(), 0)]
        self.got = 0
        self.buf = b""
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        _nodelay(transport)
        self.transport.set_write_buffer_limits(high=1 << 20)
        self.samples = [(time.monotonic(), 0)]
        if self.direction == "up":
            self.transport.write(b"U")
            self.pump()
        else:
            self.transport.write(b"D")

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.direction == "up":
            self.buf += data
            whole = len(self.buf) - len(self.buf) % 8
            if whole:
                (count,) = _COUNT.unpack_from(self.buf, whole - 8)
                self.buf = self.buf[whole:]
                self.samples.append((now, count))
        else:
            self.got += len(data)
            if now - self.last >= ACK_EVERY:
                self.last = now
                self.samples.append((now, self.got))

    def at(self, t: float) -> int:
        """Bytes delivered by time ``t`` (the last sample not after it)."""
        best = 0
        for when, count in self.samples:
            if when > t:
                break
            best = count
        return best


async def bulk(
    host: str, port: int, direction: str, conns: int, seconds: float, warm: float
) -> Any:
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(conns):
        _, proto = await loop.create_connection(lambda: BulkClient(direction), host, port)
        clients.append(proto)
    start = time.monotonic()
    await asyncio.sleep(warm + seconds)
    end = time.monotonic()
    for c in clients:
        c.stopped = True
        c.transport.abort()
    if direction == "down":
        for c in clients:
            c.samples.append((end, c.got))
    t0 = start + warm
    moved = sum(c.at(end) - c.at(t0) for c in clients)
    series = []
    second = start
    while second + 1 <= end + 1e-6:
        series.append(sum(c.at(second + 1) - c.at(second) for c in clients) * 8 / 1e6)
        second += 1
    return {
        "mbit": moved * 8 / (end - t0) / 1e6,
        "bytes": moved,
        "seconds": end - t0,
        "total_bytes": sum(c.at(end) for c in clients),
        "per_conn_mbit": [(c.at(end) - c.at(t0)) * 8 / (end - t0) / 1e6 for c in clients],
        "series_mbit": series,
    }


def _percentiles(samples_us: list[float]) -> dict[str, float]:
    s = sorted(samples_us)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p / 100 * len(s)))]

    return {
        "n": len(s),
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": s[-1],
        "mean_us": statistics.fmean(s),
    }


async def latency(
    host: str, port: int, size: int, count: int, timeline: str | None = None, think: bool = False
) -> Any:
    """Sequential echoes of ``size`` bytes; with ``timeline``, each sample's start
    (CLOCK_MONOTONIC, the clock every process shares) and latency go to that file, one
    ``start_s latency_us`` line each, so a tail can be matched to what happened then.  With
    ``think`` the app answers each echo ``THINK_S`` late (a database, a backend)."""
    reader, writer = await asyncio.open_connection(host, port)
    _nodelay(writer.transport)
    writer.write(b"W" if think else b"E")
    msg = os.urandom(size)
    samples = []
    starts = []
    for i in range(count + count // 10):
        t0 = time.perf_counter()
        writer.write(msg)
        await reader.readexactly(size)
        if i >= count // 10:  # the first tenth warms up
            samples.append((time.perf_counter() - t0) * 1e6)
            starts.append(time.monotonic() - samples[-1] / 1e6)
    writer.close()
    if timeline:  # the echoes are over: nothing waits on this write
        lines = (f"{t:.6f} {us:.1f}\n" for t, us in zip(starts, samples, strict=True))
        await asyncio.to_thread(Path(timeline).write_text, "".join(lines))
    return _percentiles(samples)


async def connect(host: str, port: int, count: int) -> Any:
    samples = []
    for i in range(count + 5):
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"E!")
        await reader.readexactly(1)
        if i >= 5:
            samples.append((time.perf_counter() - t0) * 1e6)
        writer.close()
        await writer.wait_closed()
    return _percentiles(samples)


async def idle(host: str, port: int, count: int) -> None:
    """Open ``count`` tunnels (each proven by a one-byte echo), print a JSON line, then on
    each stdin line ``check`` echo through a sample again and print a JSON line; exit (closing
    everything) on EOF."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: list[str] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"E!")
            await asyncio.wait_for(reader.readexactly(1), 30)
            conns.append((reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            errors.append(repr(exc))

    t0 = time.monotonic()
    for i in range(0, count, 200):
        await asyncio.gather(*(one() for _ in range(min(200, count - i))))
        if len(errors) > 50:
            break
    print(
        json.dumps({"opened": len(conns), "seconds": time.monotonic() - t0, "errors": errors[:5]}),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "check":
        ok = 0
        for reader, writer in conns[:: max(1, len(conns) // 100)]:
            writer.write(b"?")
            try:
                ok += await asyncio.wait_for(reader.readexactly(1), 10) == b"?"
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                pass
        print(json.dumps({"checked_ok": ok}), flush=True)
    for _, writer in conns:
        writer.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--sndbuf", type=int, default=0, help="fixed SO_SNDBUF per connection")
    b = sub.add_parser("bulk")
    b.add_argument("--connect", type=_hostport, required=True)
    b.add_argument("--direction", choices=["up", "down"], default="up")
    b.add_argument("--conns", type=int, default=1)
    b.add_argument("--seconds", type=float, default=10)
    b.add_argument("--warmup", type=float, default=1)
    lat = sub.add_parser("latency")
    lat.add_argument("--connect", type=_hostport, required=True)
    lat.add_argument("--size", type=int, default=1)
    lat.add_argument("--count", type=int, default=2000)
    lat.add_argument("--timeline", help="write each sample's start and latency to this file")
    lat.add_argument("--think", action="store_true", help="the app answers THINK_S late")
    c = sub.add_parser("connect")
    c.add_argument("--connect", type=_hostport, required=True)
    c.add_argument("--count", type=int, default=300)
    i = sub.add_parser("idle")
    i.add_argument("--connect", type=_hostport, required=True)
    i.add_argument("--count", type=int, default=10000)
    args = ap.parse_args()
    if args.cmd == "serve":
        await serve(args.host, args.port, args.sndbuf)
        return
    if args.cmd == "idle":
        await idle(*args.connect, args.count)
        return
    if args.cmd == "bulk":
        result = await bulk(*args.connect, args.direction, args.conns, args.seconds, args.warmup)
    elif args.cmd == "latency":
        result = await latency(*args.connect, args.size, args.count, args.timeline, args.think)
    else:
        result = await connect(*args.connect, args.count)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
