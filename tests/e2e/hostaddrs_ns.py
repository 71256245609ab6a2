"""Issue 13 section 4: the host's own addresses are checked as they are when a tunnel connects.

``test_hostaddrs_ns.py`` runs this module under ``unshare --net --mount``.  In that private
namespace a server starts with ``allow = tcp:0.0.0.0/0:*, tcp:[::/0]:*`` and a "local" service
listens on ``0.0.0.0`` / ``::``.  Only *then* is an address added to an interface
(``hostpol-a``, one end of a veth pair whose other end, ``hostpol-b``, later moves to a second
namespace):

1. the tunnel to the new address (IPv4 and IPv6) must be refused, the local service untouched;
2. the address moves to ``peer`` (removed here), where another service answers "remote": the
   tunnel to it must now be allowed and reach that service;
3. the host name comes to resolve to another address (``/etc/hosts``, bind-mounted): once a
   reload (SIGHUP) resolved it again, a tunnel to it is denied;
4. in-process, ``HostAddresses`` sees an address added or removed by ``ip`` in the very next
   check, 50 times in a row (the netlink queue is drained at check time: it cannot be outrun).

Prints one JSON object with what it saw and the server's log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

from quictund.policy.hostaddrs import HostAddresses

PORT, UDP = 7001, 7500
NEW4, NEW6, MINE4, NAMED = "10.77.0.1", "fd00:77::1", "10.77.0.2", "10.88.0.1"
ENGINE = os.environ.get("QUICTUND_TEST_ENGINE", "")
PEER_SERVICE = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(8); print("up", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"remote"); c.close()
"""


def ip(*args: str, ns: int | None = None) -> None:
    prefix = ["nsenter", "-t", str(ns), "-n"] if ns else []
    subprocess.run([*prefix, "ip", *args], check=True)


class Peer(QuicConnectionProtocol):
    """A raw quic-tun client: one stream per tunnel, returns the ack and what followed."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.data: dict[int, bytearray] = {}
        self.ended: dict[int, asyncio.Event] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream or len(self.data[event.stream_id]) >= 7:
                self.ended.setdefault(event.stream_id, asyncio.Event()).set()

    async def tunnel(self, token: str) -> tuple[int, str]:
        sid = self._quic.get_next_available_stream_id()
        done = self.ended.setdefault(sid, asyncio.Event())
        self._quic.send_stream_data(sid, token.encode().ljust(512, b"\0"))
        self.transmit()
        try:
            await asyncio.wait_for(done.wait(), 10)
        except TimeoutError:
            pass
        got = bytes(self.data.get(sid, b""))
        return (got[0] if got else -1), got[1:].decode(errors="replace")


class Service:
    """The host's own service on 0.0.0.0 / :: (what a new address must not expose)."""

    def __init__(self, family: int, host: str) -> None:
        self.count = 0
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind((host, PORT))
        self.sock.listen(16)
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock, self._accept)

    def _accept(self) -> None:
        conn, _ = self.sock.accept()
        self.count += 1
        conn.sendall(b"local")
        conn.close()


def race(rounds: int) -> int:
    """Add/remove an address with ``ip`` and check at once; return how many checks were wrong."""
    host = HostAddresses()
    addr = ipaddress.ip_address("10.79.0.1")
    wrong = int(addr in host)
    for _ in range(rounds):
        ip("addr", "add", "10.79.0.1/32", "dev", "lo")
        wrong += addr not in host
        ip("addr", "del", "10.79.0.1/32", "dev", "lo")
        wrong += addr in host
    host.close()
    return wrong


async def start_server(tmp: Path) -> tuple[asyncio.subprocess.Process, list[dict[str, object]]]:
    conf = tmp / "server.toml"
    engine = f'quic-engine = "{ENGINE}"\n' if ENGINE else ""
    conf.write_text(
        '[log]\nformat = "json"\n'
        f'[[server]]\nname = "edge"\nlisten-on = "127.0.0.1:{UDP}"\nstate-dir = "{tmp}"\n'
        f'{engine}allow = ["tcp:0.0.0.0/0:*", "tcp:[::/0]:*"]\n'
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quictund", "run", "--config", str(conf),
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert server.stderr is not None
    log: list[dict[str, object]] = []
    while True:
        line = await asyncio.wait_for(server.stderr.readline(), 30)
        if not line:
            raise SystemExit(f"server exited: {log}")
        log.append(_entry(line.decode()))
        if str(log[-1].get("msg", "")).startswith("ready"):
            return server, log


async def moved_away(peer: Peer, services: list[Service]) -> dict[str, object]:
    """Move NEW4 to a second namespace whose service answers "remote"; tunnel to it."""
    pipe = asyncio.subprocess.PIPE
    holder = await asyncio.create_subprocess_exec(
        "unshare", "--net", "sh", "-c", "echo up; exec sleep 60", stdout=pipe
    )
    remote = None
    try:
        assert holder.stdout is not None
        await holder.stdout.readline()  # its namespace exists
        ip("addr", "del", f"{NEW4}/24", "dev", "hostpol-a")
        ip("addr", "add", f"{MINE4}/24", "dev", "hostpol-a")
        ip("link", "set", "hostpol-b", "netns", str(holder.pid))
        ip("link", "set", "lo", "up", ns=holder.pid)
        ip("addr", "add", f"{NEW4}/24", "dev", "hostpol-b", ns=holder.pid)
        ip("link", "set", "hostpol-b", "up", ns=holder.pid)
        remote = await asyncio.create_subprocess_exec(
            "nsenter", "-t", str(holder.pid), "-n", sys.executable, "-c", PEER_SERVICE,
            stdout=pipe,
        )  # fmt: skip
        assert remote.stdout is not None
        await remote.stdout.readline()  # listening
        before = sum(s.count for s in services)
        ack, said = await peer.tunnel(f"tcp:{NEW4}:{PORT}")
        return {"ack": ack, "said": said, "hits": sum(s.count for s in services) - before}
    finally:
        for proc in (remote, holder):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()


async def main(tmp: Path) -> dict[str, object]:
    ip("link", "set", "lo", "up")
    (tmp / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    subprocess.run(["mount", "--bind", str(tmp / "hosts"), "/etc/hosts"], check=True)  # noqa: ASYNC221
    ip("link", "add", "hostpol-a", "type", "veth", "peer", "name", "hostpol-b")
    ip("link", "set", "hostpol-a", "up")
    services = [Service(socket.AF_INET, "0.0.0.0"), Service(socket.AF_INET6, "::")]
    server, log = await start_server(tmp)  # before the addresses exist
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
    )
    out: dict[str, object] = {"race_wrong": race(50)}
    async with connect("127.0.0.1", UDP, configuration=config, create_protocol=Peer) as peer:
        assert isinstance(peer, Peer)
        ip("addr", "add", f"{NEW4}/24", "dev", "hostpol-a")
        ip("-6", "addr", "add", f"{NEW6}/64", "dev", "hostpol-a", "nodad")
        for name, token in (("new4", f"tcp:{NEW4}:{PORT}"), ("new6", f"tcp:[{NEW6}]:{PORT}")):
            before = sum(s.count for s in services)
            ack, said = await peer.tunnel(token)
            out[name] = {"ack": ack, "said": said, "hits": sum(s.count for s in services) - before}
        # The trap can see connections to the new address, or zero hits would prove nothing.
        before = sum(s.count for s in services)
        _, writer = await asyncio.open_connection(NEW4, PORT)
        writer.close()
        await asyncio.sleep(0.05)
        out["selfcheck"] = sum(s.count for s in services) - before
        # The address moves to another host (namespace "peer"): no longer this host's.
        out["moved"] = await moved_away(peer, services)
        out["named"] = await named_after_reload(peer, server, log, tmp)
    server.terminate()
    assert server.stderr is not None
    rest = await server.stderr.read()
    await server.wait()
    out["log"] = log + [_entry(x) for x in rest.decode().splitlines()]
    return out


async def named_after_reload(
    peer: Peer, server: asyncio.subprocess.Process, log: list[dict[str, object]], tmp: Path
) -> list[bool]:
    """The host name comes to resolve to NAMED: denied once a reload resolved it again."""
    denied = []
    hosts = tmp / "hosts"
    assert server.stderr is not None
    for step in ("before", "after"):
        if step == "after":
            with hosts.open("a") as f:  # in place: the bind mount shows the same inode
                f.write(f"{NAMED} {socket.gethostname()}\n")
            server.send_signal(signal.SIGHUP)
            while "reloaded" not in str(log[-1].get("msg", "")):
                log.append(_entry((await server.stderr.readline()).decode()))
        await peer.tunnel(f"tcp:{NAMED}:{PORT}")
        while not (log[-1].get("msg") == "tunnel failed" and NAMED in str(log[-1])):
            log.append(_entry((await server.stderr.readline()).decode()))
        denied.append("not allowed by policy" in str(log[-1].get("reason", "")))
    return denied


def _entry(line: str) -> dict[str, object]:
    try:
        entry = json.loads(line)
    except ValueError:
        return {"msg": line.rstrip(), "level": "raw"}
    return entry if isinstance(entry, dict) else {"msg": line}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="hostpol-ns-") as d:
        os.chmod(d, 0o755)
        print(json.dumps(asyncio.run(asyncio.wait_for(main(Path(d)), 90))))
