"""CPU per GiB of each engine's *packet work*, sender and receiver apart, with no sockets.

    python bench/engine_cpu.py [--mib 256] [--engines aioquic,qh3] [--runs 3]
                               [--datagram 1452] [--profile sender|receiver] [--streams N]

A client and a server connection of one engine (``engine.new_connection``, so every adapter
override is in) exchange datagrams in this process: the client sends ``--mib`` MiB on one
stream, the server takes each event and consumes it at once, as a tunnel that keeps up does.
Each side's calls are timed with ``time.thread_time`` (CPU of this thread, so a busy neighbour
does not count), which makes this the quick, quiet-machine-independent way to weigh a change
to the engine adapter before the real-process benches (bulk.py, run.py) confirm it.  What it
leaves out: sockets (sendmsg/recvmsg, GSO), the event loop, the tunnel's TCP side.

``--profile`` runs cProfile on one side's calls and prints the top functions (``SORT`` and
``TOP`` in the environment: pstats sort key and how many; ``PROFILE_OUT``: also dump the stats
to that file, for pstats' callers and callees).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quictund import memory
from quictund.policy.selfsigned import ensure_self_signed
from quictund.quic import engine
from quictund.quic.engine import EngineSettings, events

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 7500)
CHUNK = 64 * 1024
QUEUED = 1024 * 1024  # keep this much unsent on the stream, as a busy tunnel does
T = TypeVar("T")


class Side:
    """One connection and the CPU its calls took."""

    def __init__(self, conn: Any, profiler: cProfile.Profile | None) -> None:
        self.conn = conn
        self.cpu = 0.0
        self.profiler = profiler

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        t0 = time.thread_time()
        if self.profiler is not None:
            self.profiler.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            if self.profiler is not None:
                self.profiler.disable()
            self.cpu += time.thread_time() - t0


def _connected(
    name: str, datagram: int, certs: tuple[Path, Path], profile: str | None, streams: int = 1
) -> tuple[Side, Side, list[int]]:
    """A handshaken client/server pair of engine ``name`` and ``streams`` client streams both
    know."""
    settings = EngineSettings(engine=name, max_datagram_size=datagram)  # type: ignore[arg-type]
    cconf = engine.make_configuration(
        is_client=True, settings=settings, server_name="localhost", verify=False
    )
    sconf = engine.make_configuration(
        is_client=False, settings=settings, certfile=str(certs[0]), keyfile=str(certs[1])
    )
    client = Side(engine.new_connection(configuration=cconf, settings=settings), None)
    client.conn.connect(SERVER, now=time.monotonic())
    first = client.conn.datagrams_to_send(now=time.monotonic())
    odcid = engine.parse_header(first[0][0], 8).destination_cid
    server = Side(
        engine.new_connection(
            configuration=sconf, settings=settings, original_destination_connection_id=odcid
        ),
        None,
    )
    pending = [(server, data, CLIENT) for data, _ in first]
    opened: list[int] = []
    for _ in range(100):
        for side, data, addr in pending:
            side.conn.receive_datagram(data, addr, now=time.monotonic())
        for side in (client, server):
            while (ev := side.conn.next_event()) is not None:
                if side is client and isinstance(ev, events.HandshakeCompleted):
                    for _ in range(streams):
                        opened.append(client.conn.open_stream())
                        client.conn.send_stream_data(opened[-1], b"hello")
        pending = [
            (peer, data, addr)
            for side, peer, addr in ((client, server, CLIENT), (server, client, SERVER))
            for data, _ in side.conn.datagrams_to_send(now=time.monotonic())
        ]
        if opened and not pending:
            break
    if not opened:
        raise SystemExit(f"{name}: no handshake")
    client.profiler = cProfile.Profile() if profile == "sender" else None
    server.profiler = cProfile.Profile() if profile == "receiver" else None
    return client, server, opened


def _print_profiles(*sides: Side) -> None:
    for side in sides:
        if side.profiler is not None:
            stats = pstats.Stats(side.profiler).sort_stats(os.environ.get("SORT", "tottime"))
            stats.print_stats(int(os.environ.get("TOP", "30")))
            if os.environ.get("PROFILE_OUT"):
                side.profiler.dump_stats(os.environ["PROFILE_OUT"])


def one_run(
    name: str,
    mib: int,
    datagram: int,
    certs: tuple[Path, Path],
    profile: str | None,
    streams: int = 1,
) -> tuple[float, float, int]:
    """(sender CPU s per GiB, receiver CPU s per GiB, datagrams the sender sent); with
    ``streams`` > 1 the data is spread over that many busy tunnels, written round-robin."""
    sender, receiver, opened = _connected(name, datagram, certs, profile, streams)
    queued = max(QUEUED // streams, CHUNK)
    total = mib * 1024 * 1024
    block = bytes(CHUNK)
    written = got = sent = 0
    deadline = time.monotonic() + 600
    while got < total:
        now = time.monotonic()
        if now > deadline:
            raise SystemExit(f"{name}: stuck at {got} of {total} bytes")
        for stream in opened:
            while written < total and sender.conn.unsent(stream) < queued:
                sender.call(sender.conn.send_stream_data, stream, block)
                written += CHUNK
        out = sender.call(sender.conn.datagrams_to_send, now=now)
        sent += len(out)
        for data, _ in out:
            receiver.call(receiver.conn.receive_datagram, data, CLIENT, now=now)
        while (ev := receiver.call(receiver.conn.next_event)) is not None:
            if isinstance(ev, events.StreamDataReceived) and ev.data:
                got += len(ev.data)
                receiver.call(receiver.conn.consume, ev.stream_id, len(ev.data))
        for data, _ in receiver.call(receiver.conn.datagrams_to_send, now=now):
            sender.call(sender.conn.receive_datagram, data, SERVER, now=now)
        while sender.call(sender.conn.next_event) is not None:
            pass
        for side in (sender, receiver):
            timer = side.conn.get_timer()
            if timer is not None and timer <= time.monotonic():
                side.call(side.conn.handle_timer, now=time.monotonic())
    _print_profiles(sender, receiver)
    gib = total / 2**30
    return sender.cpu / gib, receiver.cpu / gib, sent


def echo_run(
    name: str, rounds: int, datagram: int, certs: tuple[Path, Path], profile: str | None
) -> tuple[float, float, int]:
    """(client CPU µs per 1-byte echo, server CPU µs per echo, datagrams per echo).

    Each side does what ``QuicSession`` does per datagram: receive it, take the events,
    consume what a tunnel read, write the answer, ``datagrams_to_send`` and ``get_timer``;
    when nothing moves, the clock jumps to the earliest timer (delayed ACKs, pacing), as the
    loop's timer would.  The fixed cost per call is what a request/response tunnel (redis,
    ssh keystrokes) pays.
    """
    client, server, (stream,) = _connected(name, datagram, certs, profile)
    clock = time.monotonic()
    moved = 0
    for _ in range(rounds):
        client.call(client.conn.send_stream_data, stream, b"x")
        answered = False
        for _ in range(1000):
            clock = max(clock, time.monotonic())  # never back: qh3's core would stall
            before = moved
            for src, dst, addr in ((client, server, CLIENT), (server, client, SERVER)):
                for data, _ in src.call(src.conn.datagrams_to_send, now=clock):
                    moved += 1
                    dst.call(dst.conn.receive_datagram, data, addr, now=clock)
                    answered |= _take(dst, echo=dst is server)
                src.call(src.conn.get_timer)
            if answered:
                break
            if moved == before:
                clock = max(clock, min(t for s in (client, server) if (t := s.conn.get_timer())))
                for side in (client, server):
                    if (t := side.conn.get_timer()) is not None and t <= clock:
                        side.call(side.conn.handle_timer, now=clock)
        else:
            raise SystemExit(f"{name}: an echo never came back")
    _print_profiles(client, server)
    return client.cpu / rounds * 1e6, server.cpu / rounds * 1e6, round(moved / rounds)


def _take(side: Side, *, echo: bool) -> bool:
    """Drain ``side``'s events, consuming data (and echoing it if ``echo``); True if any."""
    got = False
    while (ev := side.call(side.conn.next_event)) is not None:
        if isinstance(ev, events.StreamDataReceived) and ev.data:
            got = True
            side.call(side.conn.consume, ev.stream_id, len(ev.data))
            if echo:
                side.call(side.conn.send_stream_data, ev.stream_id, ev.data)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--engines", default="aioquic")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--datagram", type=int, default=1452)
    ap.add_argument("--profile", choices=["sender", "receiver"])
    ap.add_argument("--echo", type=int, default=0, help="1-byte echoes instead of bulk")
    ap.add_argument("--streams", type=int, default=1, help="bulk over this many streams")
    ap.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's collector settings (the daemon settles them: memory.py)",
    )
    args = ap.parse_args()
    if not args.default_gc:
        memory.settle_collector()
    with tempfile.TemporaryDirectory() as state:
        certs = ensure_self_signed(Path(state), ["localhost"])
        results: dict[str, list[tuple[float, float, int]]] = {}
        for _ in range(args.runs):
            for name in args.engines.split(","):
                if args.echo:
                    one = echo_run(name, args.echo, args.datagram, certs, args.profile)
                    unit = "µs/echo"
                else:
                    one = one_run(name, args.mib, args.datagram, certs, args.profile, args.streams)
                    unit = "s/GiB"
                results.setdefault(name, []).append(one)
                print(
                    f"{name}: client {one[0]:.2f} {unit}, server {one[1]:.2f} {unit}, "
                    f"{one[2]} datagrams",
                    flush=True,
                )
    what = f"{args.echo} echoes" if args.echo else f"{args.mib} MiB on {args.streams} stream(s)"
    print(f"\nmedians of {args.runs} run(s), {what}, {args.datagram}-byte datagrams")
    for name, runs in results.items():
        cli = statistics.median(r[0] for r in runs)
        srv = statistics.median(r[1] for r in runs)
        print(f"{name:8} client (sender) {cli:7.2f} {unit}   server (receiver) {srv:7.2f} {unit}")


if __name__ == "__main__":
    main()
