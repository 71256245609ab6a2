"""QUIC-LB routable connection ids through a real server (aioquic engine, loopback).

A server with ``quic-lb-server-id`` must put its server id into every connection id it hands
out -- the source connection id of its Initial/Handshake packets and each NEW_CONNECTION_ID --
as the client sees them, and tunnels must work as before.  The client here is a raw aioquic
connection that records the ids, then moves to new ids (``change_connection_id``) so the
server has to issue more; a quictund client then runs a tunnel through the same server.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

from quictund.quic import quic_lb
from tests.e2e.cid_router import Nat, Router
from tests.e2e.daemons import LOG_TOML, run_daemon
from tests.e2e.harness import (
    ENGINE_TOML,
    TEST_ENGINE,
    Backend,
    Endpoint,
    echo,
    start_client,
    transfer_both_ways,
)

aioquic_only = pytest.mark.skipif(
    TEST_ENGINE == "qh3", reason="qh3 cannot issue QUIC-LB ids (refused at start-up, tested)"
)

SERVER_ID = b"\x0a\x01"
CONFIG_ID = 3


class _Recorder(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.data: asyncio.Queue[bytes] = asyncio.Queue()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.data:
            self.data.put_nowait(event.data)

    def peer_cids(self) -> set[bytes]:
        quic = self._quic
        return {quic._peer_cid.cid} | {c.cid for c in quic._peer_cid_available}


@pytest.fixture(params=["", "retry-threshold = 0\n"], ids=["plain", "retry"])
async def lb_server(
    tmp_path: Path, short_tmp: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Endpoint, Backend, bool]]:
    """A QUIC-LB server; ``retry``: every client must first echo a Retry (RFC 9000 §8.1)."""
    backend = await echo().unix(str(short_tmp / "echo.sock"))
    conf = tmp_path / "server.toml"
    conf.write_text(
        f'{LOG_TOML}[[server]]\nname = "lb1"\nlisten-on = "127.0.0.1:0"\n'
        f'state-dir = "{tmp_path}"\nallow = ["unix:{short_tmp}/echo.sock"]\n'
        f'quic-lb-server-id = "0x{SERVER_ID.hex()}"\nquic-lb-config-id = {CONFIG_ID}\n'
        f"{request.param}"
    )
    server = await run_daemon(conf)
    yield server, backend, bool(request.param)
    server.kill()
    await server.proc.wait()
    backend.close()


@aioquic_only
async def test_every_issued_connection_id_carries_the_server_id(
    lb_server: tuple[Endpoint, Backend, bool],
) -> None:
    server, backend, retry = lb_server
    host, port = server.host_port
    config = QuicConfiguration(is_client=True, alpn_protocols=["quic-tun"])
    config.verify_mode = ssl.CERT_NONE
    seen: set[bytes] = set()
    async with connect(host, port, configuration=config, create_protocol=_Recorder) as proto:
        assert isinstance(proto, _Recorder)
        await proto.ping()
        seen |= proto.peer_cids()
        retry_cid = proto._quic._retry_source_connection_id
        if retry_cid is not None:  # the Retry's source id is one the server issued too
            seen.add(retry_cid)
        assert (retry_cid is not None) == retry
        for _ in range(12):  # use up the ids: the server must announce new ones
            proto.change_connection_id()
            await proto.ping()
            await proto.ping()
            seen |= proto.peer_cids()
        # A tunnel still works on this connection (quic-tun's 512-byte token, ack 0x01).
        sid = proto._quic.get_next_available_stream_id()
        token = backend.address.encode().ljust(512, b"\0")
        proto._quic.send_stream_data(sid, token + b"ping")
        proto.transmit()
        got = b""
        async with asyncio.timeout(10):
            while len(got) < 5:
                got += await proto.data.get()
        assert got == b"\x01ping"
    codec = quic_lb.CidCodec(CONFIG_ID, SERVER_ID, 5)
    assert len(seen) >= 12  # the Initial's (and Retry's) id and more from NEW_CONNECTION_ID
    assert all(codec.owns(cid) for cid in seen), sorted(c.hex() for c in seen)
    assert all(quic_lb.decode(c, 2).server_id == SERVER_ID for c in seen)


@aioquic_only
async def test_a_quictund_client_tunnels_through_a_quic_lb_server(
    lb_server: tuple[Endpoint, Backend, bool], short_tmp: Path
) -> None:
    server, backend, _ = lb_server
    client = await start_client(server.address, backend.address, listen=f"unix:{short_tmp}/c.sock")
    try:
        sent, got, n = await transfer_both_ways(client.address, 4 << 20)
        assert (got, n) == (sent, 4 << 20)
    finally:
        await client.stop()


async def test_qh3_with_quic_lb_is_refused_at_start_up(tmp_path: Path) -> None:
    pytest.importorskip("qh3")
    conf = tmp_path / "server.toml"
    conf.write_text(
        f'[[server]]\nname = "lb1"\nlisten-on = "127.0.0.1:0"\nstate-dir = "{tmp_path}"\n'
        'allow = ["tcp:10.0.0.1:22"]\nquic-engine = "qh3"\nquic-lb-server-id = "0x0a01"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quictund", "check",
        "--config", str(conf),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 78, out
    assert b"server.toml: server[0]: quic-lb-server-id needs quic-engine" in out


# ---- roaming behind a balancer that routes by connection id -----------------------------

ROAMERS = 12
KEEP_ALIVE_S, DEAD_AFTER_S = 1.0, 3.0


async def _start_fleet(
    tmp: Path, sock_dir: Path, echo_path: Path, router: Router, started: list[Endpoint]
) -> Nat:
    """3 QUIC-LB servers, ``router`` in front of them, a NAT in front of that, 12 clients."""
    knobs = f"keep-alive = {KEEP_ALIVE_S}\ndead-after = {DEAD_AFTER_S}\n"
    servers = []
    for n in (1, 2, 3):
        conf = tmp / f"s{n}.toml"
        conf.write_text(
            f'{LOG_TOML}[[server]]\nname = "s{n}"\nlisten-on = "127.0.0.1:0"\n'
            f'state-dir = "{tmp}"\nallow = ["unix:{echo_path}"]\nquic-engine = "aioquic"\n'
            f'quic-lb-server-id = "0x0{n}"\n{knobs}'
        )
        servers.append(await run_daemon(conf))
        started.append(servers[-1])
    router.servers = {bytes([n + 1]): s.host_port for n, s in enumerate(servers)}
    nat = Nat(await router.start())
    host, port = await nat.start()
    conf = tmp / "clients.toml"
    conf.write_text(
        LOG_TOML
        + "".join(
            f'[[client]]\nname = "r{i}"\nlisten-on = "unix:{sock_dir}/r{i}.sock"\n'
            f'server-endpoint = "{host}:{port}"\nverify-remote-endpoint = false\n'
            f'token-source = "unix:{echo_path}"\n{ENGINE_TOML}{knobs}'
            for i in range(ROAMERS)
        )
    )
    started.append(await run_daemon(conf, listeners=ROAMERS))
    return nat


async def _echo_ok(tunnel: tuple[asyncio.StreamReader, asyncio.StreamWriter], n: int) -> bool:
    reader, writer = tunnel
    msg = f"{n}\n".encode()
    writer.write(msg)
    try:
        async with asyncio.timeout(2.0):
            return await reader.readexactly(len(msg)) == msg
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def _rebind_and_watch(nat: Nat, sock_dir: Path) -> int:
    """Open a tunnel per client, rebind them all, echo for dead-after + 2 keep-alives + 2 s;
    return how many tunnels stopped echoing."""
    tunnels = [
        await asyncio.open_unix_connection(str(sock_dir / f"r{i}.sock")) for i in range(ROAMERS)
    ]
    try:
        assert all(await asyncio.gather(*(_echo_ok(t, 0) for t in tunnels)))
        assert nat.rebind() == ROAMERS  # every client now arrives from a new port
        alive = list(range(ROAMERS))
        for n in range(1, int((DEAD_AFTER_S + 2 * KEEP_ALIVE_S + 2) / 0.25)):
            ok = await asyncio.gather(*(_echo_ok(tunnels[i], n) for i in alive))
            alive = [i for i, good in zip(alive, ok, strict=True) if good]
            await asyncio.sleep(0.25)
        return ROAMERS - len(alive)
    finally:
        for _, writer in tunnels:
            writer.close()


async def _roaming(tmp: Path, sock_dir: Path, *, by_cid: bool) -> tuple[int, int, Router]:
    """12 clients behind a NAT in front of ``Router`` and 3 QUIC-LB servers; the NAT rebinds
    every client at once.  Returns (tunnels that broke, clients that logged a loss, router)."""
    echo_path = sock_dir / "echo.sock"
    backend = await echo().unix(str(echo_path))
    started: list[Endpoint] = []
    router = Router({}, by_cid=by_cid)
    nat: Nat | None = None
    try:
        nat = await _start_fleet(tmp, sock_dir, echo_path, router, started)
        broke = await _rebind_and_watch(nat, sock_dir)
        msgs = [e.get("msg", "") for e in started[-1].logs]
        lost = {m.split("]")[0] for m in msgs if "QUIC connection to" in m}
        return broke, len(lost), router
    finally:
        for ep in started:
            ep.kill()
            await ep.proc.wait()
        if nat is not None:
            nat.close()
        router.close()
        backend.close()


async def test_connection_id_routing_keeps_roaming_clients_on_their_server(
    tmp_path: Path, short_tmp: Path
) -> None:
    broke, lost, router = await _roaming(tmp_path, short_tmp, by_cid=True)
    print(f"\nCID routing: {broke} of {ROAMERS} tunnels broke, {lost} clients reconnected")
    assert router.routed_by_cid > 0
    assert (broke, lost) == (0, 0)


async def test_address_hashing_loses_roaming_clients(tmp_path: Path, short_tmp: Path) -> None:
    """The control: the same rebinding behind a balancer that hashes the client's address."""
    broke, lost, router = await _roaming(tmp_path, short_tmp, by_cid=False)
    print(f"\naddress hashing: {broke} of {ROAMERS} tunnels broke, {lost} clients reconnected")
    assert router.routed_by_cid == 0
    assert broke >= 1 and lost >= 1, (broke, lost)  # all 12 stay: (1/3)**12 by chance
