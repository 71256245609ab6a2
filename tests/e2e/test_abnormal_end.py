"""Every abnormal end of a QUIC connection resets its app connections (issue 17 §0).

A tunnel whose QUIC connection dies must never look like a clean end to the app: a clean EOF
after part of a transfer is a silent truncation.  Each way a connection can end abnormally
gets a test with real daemons and a paced transfer in flight: the client host's address
vanishing and socket errors (every datagram rejected with ICMP, or the route to the server
deleted; both event loops) in network namespaces this test creates (named after the branch),
the server going silent (dead-after), the engine's idle timeout, the peer closing the
connection, and a restarted server's stateless reset.  An engine error has its own module,
tests/e2e/test_engine_error.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Backend, Endpoint, connect, echo, start_client, start_server

NS_C, NS_S = "roam17-c", "roam17-s"  # prefixed with the branch that made them
C_OLD, C_NEW, S_ADDR = "10.77.0.2", "10.77.0.3", "10.77.0.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_hosts() -> Iterator[None]:
    """Client host | server host on one veth pair; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    for ns in (NS_C, NS_S):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        _ip("netns", "add", ns)
    try:
        _ip("link", "add", "roam17-c0", "netns", NS_C, "type", "veth",
            "peer", "name", "roam17-s0", "netns", NS_S)  # fmt: skip
        _ip("-n", NS_C, "addr", "add", f"{C_OLD}/24", "dev", "roam17-c0")
        _ip("-n", NS_S, "addr", "add", f"{S_ADDR}/24", "dev", "roam17-s0")
        # as systemd's sysctl.d does: deleting the primary address promotes the new one
        subprocess.run(
            ["ip", "netns", "exec", NS_C, "sysctl", "-qw",
             "net.ipv4.conf.all.promote_secondaries=1",
             "net.ipv4.conf.roam17-c0.promote_secondaries=1"],
            check=True, capture_output=True,
        )  # fmt: skip
        for ns, dev in ((NS_C, "roam17-c0"), (NS_S, "roam17-s0")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield
    finally:
        for ns in (NS_C, NS_S):
            kill_inside(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def kill_inside(ns: str) -> None:
    """End what a failed test left running in namespace ``ns`` (deleting a namespace does not
    end its processes); all of them were started by the test in its own namespace."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


async def _pump(address: str, total: int, rate: int) -> tuple[int, BaseException | None]:
    """Send ``total`` bytes at ``rate`` B/s through an echo; return bytes echoed and how the
    app connection ended (``None``: a clean EOF)."""
    reader, writer = await connect(address)
    got = 0
    chunk = b"x" * (rate // 10)

    async def send() -> None:
        with contextlib.suppress(OSError):
            for _ in range(total // len(chunk)):
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.write_eof()

    sender = asyncio.get_running_loop().create_task(send())
    end: BaseException | None = None
    try:
        while data := await reader.read(1 << 16):
            got += len(data)
    except OSError as exc:
        end = exc
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    writer.close()
    return got, end


# The app, run where it can reach the client's listener (inside the client's namespace for
# TCP): prints the bytes it got back and how its connection ended.
APP = f"""
import asyncio, sys, time
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from tests.e2e.test_abnormal_end import _pump
got, end = asyncio.run(_pump(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
print(got, time.monotonic(), repr(end))
"""


async def run_app(address: str, total: int, rate: int, prefix: tuple[str, ...]) -> tuple[int, str]:
    got, _, end = await run_app_timed(address, total, rate, prefix)
    return got, end


async def run_app_timed(
    address: str, total: int, rate: int, prefix: tuple[str, ...]
) -> tuple[int, float, str]:
    """As ``run_app``, plus when (``time.monotonic``, one clock for all namespaces) it ended."""
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-c", APP, address, str(total), str(rate),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 50)
    got, ended, end = out.decode().strip().split(" ", 2)
    return int(got), float(ended), end


# Apps on TCP only: a UNIX stream socket has no reset.  Closing it shows the app ECONNRESET
# only while the app's unread bytes sit in our receive queue, otherwise a clean EOF; see
# docs/design.md, "Abnormal ends".


@pytest.mark.timeout(60)
async def test_client_address_gone_resets_the_app(two_hosts: None, short_tmp: Path) -> None:
    backend = await echo().unix(str(short_tmp / "echo.sock"))
    server = await Endpoint.start(
        "server", "--listen-on", f"{S_ADDR}:0", "--state-dir", str(short_tmp),
        prefix=("ip", "netns", "exec", NS_S),
    )  # fmt: skip
    in_client = ("ip", "netns", "exec", NS_C)
    client = await Endpoint.start(
        "client", "--listen-on", "tcp:127.0.0.1:0", "--server-endpoint", server.address,
        "--token-source", backend.address, prefix=in_client,
    )  # fmt: skip
    try:
        # 16 s at 512 KiB/s: the connection is lost half way, or (since roaming, quic/migrate.py)
        # moves to the new address; a multiple of _pump's chunk, so a complete run adds up
        total = 160 * ((512 << 10) // 10)
        pump = asyncio.get_running_loop().create_task(
            run_app(client.address, total, 512 << 10, in_client)
        )
        await asyncio.sleep(2)
        # DHCP renewing to a new address: add the new one, delete the old one.
        _ip("-n", NS_C, "addr", "add", f"{C_NEW}/24", "dev", "roam17-c0")
        _ip("-n", NS_C, "addr", "del", f"{C_OLD}/24", "dev", "roam17-c0")
        got, end = await pump
        assert got == total or end != "None", (
            f"clean EOF after {got} of {total} bytes: a lost connection looked like an end"
        )
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


def _break_path(way: str) -> None:
    """The client's sends start failing: an ICMP error for every datagram (a firewall on the
    path), or ENETUNREACH from sendmsg itself (the route to the server removed)."""
    if way == "icmp":
        table = f"ip {NS_S}"
        _ip("netns", "exec", NS_S, "nft",
            f"add table {table}; add chain {table} in {{ type filter hook input priority 0; }}; "
            f"add rule {table} in udp dport 1-65535 reject with icmp type admin-prohibited",
        )  # fmt: skip
    else:
        _ip("-n", NS_C, "route", "del", "10.77.0.0/24", "dev", "roam17-c0")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("way", ["icmp", "route"])
async def test_socket_errors_reset_the_app(
    two_hosts: None, short_tmp: Path, way: str, loop: str
) -> None:
    """Every datagram the client sends fails (an ICMP error parked on the socket, or sendmsg
    refusing): the connection is lost at dead-after, and the app sees a reset."""
    env = {"QUICTUND_EVENT_LOOP": loop}
    backend = await echo().unix(str(short_tmp / "echo.sock"))
    server = await Endpoint.start(
        "server", "--listen-on", f"{S_ADDR}:0", "--state-dir", str(short_tmp),
        prefix=("ip", "netns", "exec", NS_S), env=env,
    )  # fmt: skip
    in_client = ("ip", "netns", "exec", NS_C)
    client = await Endpoint.start(
        "client", "--listen-on", "tcp:127.0.0.1:0", "--server-endpoint", server.address,
        "--token-source", backend.address, prefix=in_client, env=env,
    )  # fmt: skip
    try:
        total = 160 * ((512 << 10) // 10)
        pump = asyncio.get_running_loop().create_task(
            run_app_timed(client.address, total, 512 << 10, in_client)
        )
        await asyncio.sleep(2)
        broken = time.monotonic()
        _break_path(way)
        got, ended, end = await pump
        print(f"socket error ({way}, {loop}): app reset {ended - broken:.2f} s after")
        if os.environ.get("QUICTUND_ROAM_LOGS"):
            for ep in (client, server):
                for e in ep.logs:
                    print(ep.role, e.get("time"), e.get("msg"), e.get("reason", ""))
        assert 0 < got < total and "ConnectionResetError" in end, (got, end)
        closed = await client.wait_log(lambda e: e.get("msg") == "tunnel closed")
        assert "QUIC connection lost" in closed["reason"], closed
        assert ended - broken < 15 + 3, "later than dead-after (15 s)"
        assert not [e for e in client.logs if e.get("level") in ("ERROR", "CRITICAL")]
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


# ---- on loopback -------------------------------------------------------------------------


async def _loopback_pair(
    *client_args: str, app: str, short_tmp: Path
) -> tuple[Endpoint, Endpoint, Backend]:
    backend = await echo().tcp()
    server = await start_server(short_tmp)
    listen = "tcp:127.0.0.1:0" if app == "tcp" else f"unix:{short_tmp}/c.sock"
    client = await start_client(server.address, backend.address, *client_args, listen=listen)
    return server, client, backend


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("way", "client_args"),
    [
        ("peer silent", ()),  # dead-after (15 s) with keep-alive
        ("idle timeout", ("--keep-alive", "0", "--idle-timeout", "4")),  # the engine's timer
        ("peer closed", ()),  # CONNECTION_CLOSE from a server shutting down
    ],
)
async def test_lost_connection_resets_the_app(
    short_tmp: Path, way: str, client_args: tuple[str, ...]
) -> None:
    server, client, backend = await _loopback_pair(*client_args, app="tcp", short_tmp=short_tmp)
    try:
        total = 32 << 20  # 64 s at 512 KiB/s: the connection ends long before
        pump = asyncio.get_running_loop().create_task(_pump(client.address, total, 512 << 10))
        await asyncio.sleep(1.5)
        if way == "peer closed":
            await server.stop()
        else:
            server.proc.send_signal(signal.SIGSTOP)
        got, end = await asyncio.wait_for(pump, 40)
        assert 0 < got < total
        assert isinstance(end, ConnectionResetError), (
            f"{way}: app saw {end!r} after {got} bytes; "
            f"{[(e.get('msg'), e.get('reason')) for e in client.logs[-6:]]}"
        )
        closed = await client.wait_log(lambda e: e.get("msg") == "tunnel closed")
        assert "QUIC connection lost" in closed["reason"], closed
    finally:
        if server.proc.returncode is None:
            server.proc.send_signal(signal.SIGCONT)
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()


@pytest.mark.timeout(60)
async def test_restarted_server_resets_the_app_at_once(short_tmp: Path) -> None:
    """The server is killed and restarted with the same state directory: it answers the
    client's packets for the connection it lost with a stateless reset (RFC 9000 §10.3), and
    the client resets its app connections then, not at dead-after (15 s)."""
    server, client, backend = await _loopback_pair(app="tcp", short_tmp=short_tmp)
    port = server.host_port[1]
    try:
        pump = asyncio.get_running_loop().create_task(
            _pump(client.address, 32 << 20, 512 << 10)
        )
        await asyncio.sleep(1.5)
        server.kill()
        await server.proc.wait()
        killed = time.monotonic()
        server = await start_server(short_tmp, listen=f"127.0.0.1:{port}")
        restarted = time.monotonic()
        got, end = await asyncio.wait_for(pump, 40)
        reset_s = time.monotonic() - restarted
        print(f"stateless reset: app reset {reset_s:.3f} s after the restart "
              f"({time.monotonic() - killed:.3f} s after the kill)")  # fmt: skip
        assert isinstance(end, ConnectionResetError), f"app saw {end!r} after {got} bytes"
        closed = await client.wait_log(lambda e: e.get("msg") == "tunnel closed")
        assert "QUIC connection lost" in closed["reason"], closed
        # dead-after is 15 s: a reset within 2 s can only be the stateless reset
        assert reset_s < 2.0, f"app reset {reset_s:.1f} s after the restart: {closed}"
    finally:
        await client.stop()
        server.kill()
        await server.proc.wait()
        backend.close()
