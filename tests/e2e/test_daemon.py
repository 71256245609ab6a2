"""The daemon: `quictund run` from TOML files, sd_notify, SIGHUP reload, graceful shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import ENGINE_TOML, Backend, connect, echo


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Notifications:
    """A real NOTIFY_SOCKET: the AF_UNIX datagram socket systemd would listen on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def next(self, within: float = 15) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), within)
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def close(self) -> None:
        self.sock.close()


class Run:
    """``quictund run`` as systemd would start it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, *args: str, notify: Path | None = None) -> Run:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quictund",
            "run",
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()  # end of output: let waiters see the exit

    async def wait_log(self, needle: str, within: float = 15, start: int = 0) -> str:
        async with asyncio.timeout(within):
            while True:
                for line in self.log[start:]:
                    if needle in line:
                        return line
                start = max(start, len(self.log))
                if self._task.done():
                    raise AssertionError(f"exited {self.proc.returncode}: {self.log[-10:]}")
                self._changed.clear()
                await self._changed.wait()

    async def exited(self, within: float = 20) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), within)
        await self._task
        return rc

    async def stop(self, sig: int = signal.SIGTERM, within: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), within)
        await self._task
        return rc


def server_toml(name: str, port: int, state: Path, allow: list[str]) -> str:
    rules = ", ".join(f'"{a}"' for a in allow)
    return (
        f'[[server]]\nname = "{name}"\n{ENGINE_TOML}listen-on = "127.0.0.1:{port}"\n'
        f'state-dir = "{state}"\nallow = [{rules}]\n'
    )


def client_toml(
    name: str, listen: str, port: int, ca: Path, token: str = "", token_file: Path | None = None
) -> str:
    source = (
        f'token-source-plugin = "File"\ntoken-source = "{token_file}"\n'
        if token_file
        else f'token-source = "{token}"\n'
    )
    return (
        f'[[client]]\nname = "{name}"\n{ENGINE_TOML}listen-on = "{listen}"\n'
        f'server-endpoint = "127.0.0.1:{port}"\nserver-name = "localhost"\n'
        f'ca-file = "{ca}"\n{source}'
    )



async def test_notify_lifecycle(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    conf = short_tmp / "d.toml"
    conf.write_text(
        server_toml("s", port, state_dir, [backend.address])
        + client_toml("c", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
    )
    notes = Notifications(short_tmp / "notify")
    run = await Run.start("--config", str(conf), notify=notes.path)
    try:
        ready = await notes.next()
        assert ready["READY"] == "1"
        assert "1 client and 1 server listener(s)" in ready["STATUS"]
        reader, writer = await connect(f"unix:{short_tmp}/c.sock")  # bound before READY
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        run.proc.send_signal(signal.SIGHUP)
        reloading = await notes.next()
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= before + 10_000_000
        ready = await notes.next()
        assert ready["READY"] == "1" and "last reload: ok" in ready["STATUS"]

        run.proc.send_signal(signal.SIGTERM)
        stopping = await notes.next()
        assert stopping["STOPPING"] == "1"
        assert await run.stop() == 0
        assert not (short_tmp / "c.sock").exists()
    finally:
        notes.close()
        backend.close()
        if run.proc.returncode is None:
            run.proc.kill()


async def test_no_notify_socket_nothing_fails(short_tmp: Path, state_dir: Path) -> None:
    port = free_udp_port()
    conf = short_tmp / "d.toml"
    conf.write_text(server_toml("s", port, state_dir, ["tcp:127.0.0.1:1"]))
    run = await Run.start("--config", str(conf))
    await run.wait_log("ready:")
    assert await run.stop() == 0


async def test_bad_config_at_start_binds_nothing(short_tmp: Path, state_dir: Path) -> None:
    port = free_udp_port()
    (short_tmp / "a.toml").write_text(server_toml("s", port, state_dir, ["tcp:127.0.0.1:1"]))
    (short_tmp / "b.toml").write_text(
        '[[client]]\nname = "x"\nlisten-on = "6500"\nserver-endpoint = "127.0.0.1:7500"\n'
    )
    run = await Run.start("--config-dir", str(short_tmp))
    assert await run.exited() == 78
    assert "b.toml: client[0].listen-on: not a tcp:/unix: address (got '6500')" in run.log
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # nothing was bound


async def test_reload_keeps_unchanged_tunnels(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    """A long transfer through A runs while B is added, C removed and A's File map edited."""
    backend = await echo().tcp()
    other = await echo().tcp()
    port = free_udp_port()
    conf = short_tmp / "conf"
    conf.mkdir()
    tokens = short_tmp / "tokens"
    tokens.write_text(f"@ {backend.address}\n")
    (conf / "00-server.toml").write_text(
        server_toml("s", port, state_dir, [backend.address, other.address])
    )
    (conf / "a.toml").write_text(
        client_toml("a", f"unix:{short_tmp}/a.sock", port, ca, token_file=tokens)
    )
    (conf / "c.toml").write_text(
        client_toml("c", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
    )
    run = await Run.start("--config-dir", str(conf))
    try:
        await run.wait_log("ready:")
        # the long transfer through A, started before the reload
        reader, writer = await connect(f"unix:{short_tmp}/a.sock")
        size = 48 * 1024 * 1024
        payload = os.urandom(size)

        reloaded = asyncio.Event()

        async def send() -> None:
            for i in range(0, size, 1 << 20):
                if i == size - (1 << 20):
                    # The last MiB only after the reload: however fast the machine moves the
                    # rest, the tunnel is open across the reload and carries data after it.
                    await reloaded.wait()
                writer.write(payload[i : i + (1 << 20)])
                await writer.drain()
            writer.write_eof()

        async def recv() -> tuple[int, str]:
            h, n = hashlib.sha256(), 0
            while chunk := await reader.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
            return n, h.hexdigest()

        transfer = asyncio.gather(send(), recv())
        await asyncio.sleep(0.5)
        # reload: add B, remove C, edit A's token file (A's definition is unchanged)
        (conf / "b.toml").write_text(
            client_toml("b", f"unix:{short_tmp}/b.sock", port, ca, other.address)
        )
        (conf / "c.toml").unlink()
        tokens.write_text(f"@ {other.address}\n")
        mark = len(run.log)
        run.proc.send_signal(signal.SIGHUP)
        line = await run.wait_log("reloaded:", start=mark)
        assert "started b" in line and "stopped c" in line and "kept 2" in line
        assert not transfer.done(), "the transfer must still be running during the reload"
        reloaded.set()
        _, (n, digest) = await asyncio.wait_for(transfer, 120)
        assert (n, digest) == (size, hashlib.sha256(payload).hexdigest())
        writer.close()
        # B works, C is gone, A's new tunnels use the edited map
        for name, expected in (("b", other), ("a", other)):
            r, w = await connect(f"unix:{short_tmp}/{name}.sock")
            w.write(b"hello")
            assert await r.readexactly(5) == b"hello"
            w.close()
            assert expected.accepted >= 1
        assert other.accepted == 2
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await connect(f"unix:{short_tmp}/c.sock")

        # a broken file: everything stays as it was, and the log says why
        (conf / "b.toml").write_text(client_toml("b", "6600", port, ca, other.address))
        mark = len(run.log)
        run.proc.send_signal(signal.SIGHUP)
        line = await run.wait_log("reload rejected", start=mark)
        assert "b.toml: client[0].listen-on: not a tcp:/unix: address (got '6600')" in line
        r, w = await connect(f"unix:{short_tmp}/b.sock")
        w.write(b"still")
        assert await r.readexactly(5) == b"still"
        w.close()
        assert await run.stop() == 0
    finally:
        if run.proc.returncode is None:
            run.proc.kill()
        backend.close()
        other.close()


async def test_second_signal_forces_exit(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    conf = short_tmp / "d.toml"
    conf.write_text(
        "[daemon]\nshutdown-grace = 60\n"
        + server_toml("s", port, state_dir, [backend.address])
        + client_toml("c", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
    )
    run = await Run.start("--config", str(conf))
    try:
        await run.wait_log("ready:")
        reader, writer = await connect(f"unix:{short_tmp}/c.sock")
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        run.proc.send_signal(signal.SIGTERM)
        await run.wait_log("waiting up to 60 s")
        assert run.proc.returncode is None, "an open tunnel gets the grace period"
        started = time.monotonic()
        assert await run.stop(signal.SIGTERM, within=10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):  # UNIX: no RST
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
    finally:
        if run.proc.returncode is None:
            run.proc.kill()
        backend.close()


async def test_tunnel_finishing_in_grace_period_exits_early(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    backend: Backend = await echo().tcp()
    port = free_udp_port()
    conf = short_tmp / "d.toml"
    conf.write_text(
        "[daemon]\nshutdown-grace = 60\n"
        + server_toml("s", port, state_dir, [backend.address])
        + client_toml("c", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
    )
    run = await Run.start("--config", str(conf))
    try:
        await run.wait_log("ready:")
        reader, writer = await connect(f"unix:{short_tmp}/c.sock")
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        run.proc.send_signal(signal.SIGTERM)
        await run.wait_log("waiting up to 60 s")
        writer.write(b"still served while draining")
        assert await reader.readexactly(27) == b"still served while draining"
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        started = time.monotonic()
        assert await run.exited(within=15) == 0  # no second signal: the drain ends by itself
        assert time.monotonic() - started < 10
    finally:
        if run.proc.returncode is None:
            run.proc.kill()
        backend.close()


async def test_watchdog_and_coalesced_reloads(short_tmp: Path, state_dir: Path) -> None:
    port = free_udp_port()
    conf = short_tmp / "d.toml"
    conf.write_text(server_toml("s", port, state_dir, ["tcp:127.0.0.1:1"]))
    notes = Notifications(short_tmp / "notify")
    env_run = Run.start("--config", str(conf), notify=notes.path)
    os.environ["WATCHDOG_USEC"] = "400000"
    try:
        run = await env_run
    finally:
        del os.environ["WATCHDOG_USEC"]
    try:
        seen: list[dict[str, str]] = []
        while sum("WATCHDOG" in n for n in seen) < 2:
            seen.append(await notes.next())
        assert any(n.get("READY") == "1" for n in seen)
        await run.wait_log("ready:")
        # A burst of SIGHUPs that all arrive before the daemon runs again (stopped meanwhile,
        # so the test does not depend on scheduling) gives exactly one reload.
        run.proc.send_signal(signal.SIGSTOP)
        for _ in range(5):
            run.proc.send_signal(signal.SIGHUP)
        run.proc.send_signal(signal.SIGCONT)
        await run.wait_log("reloaded:")
        assert sum("reloaded:" in line for line in run.log) == 1
        # and a further burst while it runs: never more reloads than signals
        for _ in range(5):
            run.proc.send_signal(signal.SIGHUP)
        await run.wait_log("reloaded:", start=len(run.log))
        assert run.proc.returncode is None
        reloads = [line for line in run.log if "reloaded:" in line]
        assert 2 <= len(reloads) <= 6, reloads
        assert await run.stop() == 0
    finally:
        notes.close()
        if run.proc.returncode is None:
            run.proc.kill()


async def test_signals_while_exiting_never_kill_the_daemon(
    short_tmp: Path, state_dir: Path
) -> None:
    """SIGTERM after SIGTERM, ~10,000 a second, all through the shutdown: the daemon still
    exits 0, never -15 (the stop and reload signals are ignored from the moment it stops
    handling them: quictund/daemon/_signals.py)."""
    conf = short_tmp / "d.toml"
    conf.write_text(server_toml("s", free_udp_port(), state_dir, ["tcp:127.0.0.1:9"]))
    for _ in range(10):  # the window was microseconds wide: one round in 3-15 hit it
        notes = Notifications(short_tmp / "notify")
        run = await Run.start("--config", str(conf), notify=notes.path)
        try:
            assert (await notes.next())["READY"] == "1"
            sent = 0
            while run.proc.returncode is None:
                try:
                    os.kill(run.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
                sent += 1
                await asyncio.sleep(0.0001)  # ~10,000 a second: the daemon keeps up
            assert await run.stop() == 0, f"exit after {sent} SIGTERMs"
            assert sent > 1
        finally:
            if run.proc.returncode is None:
                run.proc.kill()
            notes.sock.close()
            (short_tmp / "notify").unlink(missing_ok=True)
