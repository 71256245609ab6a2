"""Real processes and real sockets for end-to-end tests (loopback only, never mocks).

``Endpoint`` runs ``python -m quictund server|client …`` with JSON logs on stderr and exposes
what it logged, so tests wait on conditions ("listening on", "tunnel closed") instead of
sleeping.  Backends are small asyncio servers run by the test itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LISTEN_RE = re.compile(r"listening on (?:udp )?(?P<addr>\S+?)(?:,|$)")

# ``make test`` runs the QUIC tests a second time with QUICTUND_TEST_ENGINE=qh3: every endpoint
# started here (flags) or configured by a test (TOML, via ENGINE_TOML) then uses that engine.
TEST_ENGINE = os.environ.get("QUICTUND_TEST_ENGINE", "")
ENGINE_ARGS: tuple[str, ...] = ("--quic-engine", TEST_ENGINE) if TEST_ENGINE else ()
ENGINE_TOML = f'quic-engine = "{TEST_ENGINE}"\n' if TEST_ENGINE else ""


@dataclass
class Endpoint:
    proc: asyncio.subprocess.Process
    role: str
    logs: list[dict[str, Any]] = field(default_factory=list)
    address: str = ""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        role: str,
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        prefix: tuple[str, ...] = (),
    ) -> Endpoint:
        """``prefix``: a command to run it under (``ip netns exec NS``)."""
        full_env = dict(os.environ)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "quictund",
            role,
            "--log-format",
            "json",
            "--log-level",
            "debug" if os.environ.get("QUICTUND_TEST_DEBUG") else "info",
            *(ENGINE_ARGS if role in ("server", "client") else ()),
            *args,  # after ENGINE_ARGS: a test's own --quic-engine wins
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
        )
        ep = cls(proc, role)
        ep._reader = asyncio.get_running_loop().create_task(ep._read())
        if wait_ready:
            line = await ep.wait_log(
                lambda e: "endpoint listening on" in e.get("msg", ""), within=20
            )
            m = LISTEN_RE.search(line["msg"])
            assert m, line
            ep.address = m["addr"]
        return ep

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            try:
                entry = json.loads(text)
            except ValueError:
                entry = {"msg": text, "level": "raw"}
            self.logs.append(entry)
            self._changed.set()
        self._changed.set()

    async def wait_log(
        self, pred: Callable[[dict[str, Any]], bool], within: float = 10, start: int = 0
    ) -> dict[str, Any]:
        async with asyncio.timeout(within):
            seen = start
            while True:
                for entry in self.logs[seen:]:
                    if pred(entry):
                        return entry
                seen = len(self.logs)
                if self._reader is not None and self._reader.done():
                    # Its stderr is closed, so nothing more will come; the exit status may be
                    # recorded a moment after EOF, so wait for it rather than for more output.
                    code = await self.proc.wait()
                    raise AssertionError(f"{self.role} exited {code}: {self.logs[-5:]}")
                self._changed.clear()
                await self._changed.wait()

    def messages(self, needle: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if needle in e.get("msg", "")]

    @property
    def host_port(self) -> tuple[str, int]:
        addr = self.address.split(":", 1)[1] if self.address.startswith("tcp") else self.address
        host, _, port = addr.rpartition(":")
        return host.strip("[]"), int(port)

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    async def stop(self, sig: int = signal.SIGTERM, within: float = 20) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(within):
            rc = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return rc

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def start_server(state_dir: Path, *extra: str, listen: str = "127.0.0.1:0") -> Endpoint:
    """A quic-tun compatible server endpoint keeping its certificate in ``state_dir``."""
    return await Endpoint.start(
        "server", "--listen-on", listen, "--state-dir", str(state_dir), *extra
    )


async def start_client(
    server_address: str, token: str, *extra: str, listen: str = "tcp:127.0.0.1:0"
) -> Endpoint:
    """A client endpoint with a Fixed token, talking to ``server_address``."""
    return await Endpoint.start(
        "client",
        "--listen-on",
        listen,
        "--server-endpoint",
        server_address,
        "--token-source",
        token,
        *extra,
    )


# ---- backends --------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.t.write(data)

    def eof_received(self) -> bool:
        self.t.write_eof()
        return True


class _ReplyAfterEof(asyncio.Protocol):
    """Reads everything, then answers how much it got: needs a working half-close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.h = hashlib.sha256()
        self.n = 0

    def data_received(self, data: bytes) -> None:
        self.h.update(data)
        self.n += len(data)

    def eof_received(self) -> bool:
        self.t.write(f"got {self.n} {self.h.hexdigest()}".encode())
        self.t.close()
        return True


class Backend:
    """A server the tunnel connects to; records connections for assertions."""

    def __init__(self, protocol: Callable[[], asyncio.Protocol]) -> None:
        self._protocol = protocol
        self.server: asyncio.Server | None = None
        self.accepted = 0
        self.address = ""
        self.protocols: list[asyncio.Protocol] = []

    def _factory(self) -> asyncio.Protocol:
        self.accepted += 1
        proto = self._protocol()
        self.protocols.append(proto)
        return proto

    async def tcp(self) -> Backend:
        self.server = await asyncio.get_running_loop().create_server(self._factory, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"tcp:127.0.0.1:{port}"
        return self

    async def unix(self, path: str) -> Backend:
        self.server = await asyncio.get_running_loop().create_unix_server(self._factory, path)
        self.address = f"unix:{path}"
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for proto in self.protocols:
            transport = getattr(proto, "t", None)
            if transport is not None:
                transport.abort()


def echo() -> Backend:
    return Backend(_Echo)


def reply_after_eof() -> Backend:
    return Backend(_ReplyAfterEof)


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.startswith("unix:"):
        return await asyncio.open_unix_connection(address[5:], limit=1 << 20)
    host, _, port = address.split(":", 1)[1].rpartition(":")
    return await asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 20)


async def transfer_both_ways(address: str, size: int) -> tuple[str, str, int]:
    """Send ``size`` random bytes to an echo through ``address``; return (sent, got) sha256."""
    reader, writer = await connect(address)
    payload = os.urandom(size)
    sent = hashlib.sha256(payload).hexdigest()

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, size, 1 << 20):
            writer.write(view[i : i + (1 << 20)])
            await writer.drain()
        writer.write_eof()

    async def recv() -> tuple[str, int]:
        h = hashlib.sha256()
        n = 0
        while chunk := await reader.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        return h.hexdigest(), n

    _, (got, n) = await asyncio.gather(send(), recv())
    writer.close()
    await writer.wait_closed()
    return sent, got, n


def rst_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
