"""Batched UDP I/O (quictund/quic/udp.py) on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from pathlib import Path

import pytest
import uvloop

from quictund.quic.udp import (
    MAX_GSO_BYTES,
    MAX_SEGMENTS,
    READ_TURN_S,
    UdpSocket,
    gso_runs,
    open_udp,
)


def test_gso_runs_follow_the_kernel_rules() -> None:
    d = [b"a" * 1200] * 3 + [b"b" * 500] + [b"c" * 1200] * 2 + [b"d" * 1300]
    runs = gso_runs(d)
    assert [(size, [len(x) for x in run]) for size, run in runs] == [
        (1200, [1200, 1200, 1200, 500]),  # a shorter last segment ends a run
        (1200, [1200, 1200]),
        (1300, [1300]),  # a larger one starts a new run
    ]
    assert [x for _, run in runs for x in run] == d  # order kept


def test_gso_runs_respect_segment_and_byte_limits() -> None:
    many = [b"x" * 100] * (MAX_SEGMENTS * 2 + 1)
    assert [len(run) for _, run in gso_runs(many)] == [MAX_SEGMENTS, MAX_SEGMENTS, 1]
    big = [b"y" * 1452] * 100
    for _, run in gso_runs(big):
        assert sum(map(len, run)) <= MAX_GSO_BYTES
    assert gso_runs([]) == []


async def test_batches_arrive_whole_and_in_order() -> None:
    got: list[bytes] = []
    arrived = asyncio.Event()

    def on_datagram(data: bytes, addr: tuple[object, ...]) -> None:
        got.append(data)
        if len(got) == len(sent):
            arrived.set()

    receiver = await open_udp(on_datagram, local=("127.0.0.1", 0))
    sender = await open_udp(lambda d, a: None, remote=receiver.sockname[:2])
    sent = [os.urandom(1200) for _ in range(30)] + [os.urandom(77)] + [os.urandom(1452)]
    try:
        sender.send_many([(d, receiver.sockname[:2]) for d in sent])
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == sent  # GRO-coalesced reads are split back into the original datagrams
        assert sender.dropped == 0
    finally:
        sender.close()
        receiver.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_slow_backlog_is_read_over_several_loop_turns(loop: str) -> None:
    """Handling datagrams stops after READ_TURN_S per readable event, so a backlog that takes
    long to handle (thousands of streams opening) never holds the loop for its whole length:
    the loop turns between, and every datagram still arrives, in order."""

    async def main() -> None:
        got: list[bytes] = []
        turns: list[int] = []  # datagrams handled by each loop turn
        done = asyncio.Event()

        def on_datagram(data: bytes, addr: tuple[object, ...]) -> None:
            until = time.perf_counter() + 0.0005  # 0.5 ms of work per datagram
            while time.perf_counter() < until:
                pass
            got.append(data)
            if len(got) == 200:
                done.set()

        receiver = await open_udp(on_datagram, local=("127.0.0.1", 0))
        sender = await open_udp(lambda d, a: None, remote=receiver.sockname[:2])
        try:
            # sizes all different: GRO coalesces only equal ones, and one coalesced read (at
            # most MAX_SEGMENTS datagrams) is handled whole
            sent = [i.to_bytes(2, "big") * (100 + i) for i in range(200)]
            sender.send_many([(d, receiver.sockname[:2]) for d in sent])
            while not done.is_set():
                turns.append(len(got))
                await asyncio.sleep(0)
            assert got == sent
            steps = [b - a for a, b in zip(turns, turns[1:], strict=False) if b > a]
            # ~4 datagrams a turn (2 ms / 0.5 ms); before, 64 (READ_BATCH reads)
            assert max(steps) <= READ_TURN_S / 0.0005 + 2, steps
        finally:
            sender.close()
            receiver.close()

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None)
    with runner:
        runner.run(main())


async def test_unconnected_socket_sends_to_each_address() -> None:
    inbox: dict[int, list[bytes]] = {0: [], 1: []}
    receivers = [
        await open_udp(lambda d, a, i=i: inbox[i].append(d), local=("127.0.0.1", 0))
        for i in (0, 1)
    ]
    server = await open_udp(lambda d, a: None, local=("127.0.0.1", 0))
    a, b = (r.sockname[:2] for r in receivers)
    try:
        server.send_many([(b"1", a), (b"2", a), (b"3", b), (b"4", a)])
        for _ in range(100):
            if len(inbox[0]) == 3 and len(inbox[1]) == 1:
                break
            await asyncio.sleep(0.01)
        assert inbox == {0: [b"1", b"2", b"4"], 1: [b"3"]}
    finally:
        for s in (server, *receivers):
            s.close()


LO_MTU = int(Path("/sys/class/net/lo/mtu").read_text())


async def test_path_payload_follows_the_route_mtu() -> None:
    receiver = await open_udp(lambda d, a: None, local=("127.0.0.1", 0))
    sender = await open_udp(lambda d, a: None, remote=receiver.sockname[:2])
    try:
        assert sender.path_payload() == min(LO_MTU, 65535) - 28  # IPv4 + UDP headers
        assert receiver.path_payload() is None  # not connected: no route yet
    finally:
        sender.close()
        receiver.close()


# ---- ICMP errors never silence a socket (issue 14 §1), on both event loops -----------------

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def _refused_then_answered() -> tuple[int, list[int], list[bytes]]:
    """Talk to a closed port (ICMP port-unreachable), then to a server bound there."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    got: list[bytes] = []
    errors: list[int] = []
    answered = asyncio.Event()

    def on_datagram(data: bytes, addr: tuple[object, ...]) -> None:
        got.append(data)
        answered.set()

    client = await open_udp(
        on_datagram, remote=("127.0.0.1", port), on_error=lambda e: errors.append(e.errno or 0)
    )
    server: UdpSocket | None = None
    try:
        for _ in range(200):  # the ICMP answer is parked on the socket; wait till it is seen
            client.sendto(b"anyone?", ("127.0.0.1", port))
            await asyncio.sleep(0.01)
            if errors:
                break
        await asyncio.sleep(0.05)  # the loop polls the socket with its error pending
        server = await open_udp(
            lambda d, a: server.sendto(b"re:" + d, a) if server else None,
            local=("127.0.0.1", port),
        )
        for _ in range(50):
            client.sendto(b"hello", ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), 0.1)
            if got:
                break
        return client.errors, errors, got
    finally:
        client.close()
        if server is not None:
            server.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_icmp_error_never_stops_reading(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        seen, reported, got = runner.run(_refused_then_answered())
    assert seen >= 1 and errno.ECONNREFUSED in reported  # the owner hears of it ...
    assert got and got[0] == b"re:hello"  # ... and the socket is still read afterwards


async def _queued_datagrams_drain() -> tuple[list[bytes], list[bytes]]:
    """Datagrams that had to wait (the socket was full) leave once it is writable."""
    got: list[bytes] = []
    done = asyncio.Event()
    sent = [os.urandom(100) + bytes([i]) for i in range(50)]

    def on_datagram(data: bytes, addr: tuple[object, ...]) -> None:
        got.append(data)
        if len(got) == len(sent):
            done.set()

    receiver = await open_udp(on_datagram, local=("127.0.0.1", 0))
    sender = await open_udp(lambda d, a: None, remote=receiver.sockname[:2])
    try:
        target = receiver.sockname[:2]
        sender._enqueue([(d, target) for d in sent[:40]])  # as if sendmsg had said EAGAIN
        sender.send_many([(d, target) for d in sent[40:]])  # queued behind them, in order
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 5)
        return got, sent
    finally:
        sender.close()
        receiver.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_queued_datagrams_leave_when_writable(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        got, sent = runner.run(_queued_datagrams_drain())
    assert got == sent
