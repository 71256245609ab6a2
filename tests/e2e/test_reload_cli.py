"""``quictund reload`` (the units' ExecReload) against a real daemon with a real SIGHUP."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import connect, echo
from tests.e2e.test_daemon import Run, client_toml, free_udp_port, server_toml


@pytest.fixture
def ca(state_dir: Path) -> Path:
    from quictund.policy import tls

    cert, _ = tls.ensure_self_signed(state_dir, ["localhost", socket.gethostname()])
    return cert


async def quictund(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quictund",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def echoes(address: str, payload: bytes) -> None:
    reader, writer = await connect(address)
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    writer.close()


async def test_reload_waits_and_reports(short_tmp: Path, state_dir: Path, ca: Path) -> None:
    backend = await echo().tcp()
    port = free_udp_port()
    main = short_tmp / "main.toml"
    drop_ins = short_tmp / "main.d"  # absent at start: a missing drop-in dir is fine
    api = short_tmp / "api.sock"
    main.write_text(
        '[api]\nsocket = "/nonexistent/overridden.sock"\n'
        + server_toml("s", port, state_dir, [backend.address])
        + client_toml("a", f"unix:{short_tmp}/a.sock", port, ca, backend.address)
    )
    run = await Run.start(
        "--config", str(main), "--drop-in-dir", str(drop_ins), "--api-socket", str(api)
    )
    try:
        await run.wait_log("ready:")
        await echoes(f"unix:{short_tmp}/a.sock", b"first")
        # A tunnel that stays open across both reloads.
        reader, writer = await connect(f"unix:{short_tmp}/a.sock")
        writer.write(b"open")
        assert await reader.readexactly(4) == b"open"

        # 1. an accepted reload: a drop-in adds a listener; the PID comes from SO_PEERCRED
        drop_ins.mkdir()
        (drop_ins / "b.toml").write_text(
            client_toml("b", f"unix:{short_tmp}/b.sock", port, ca, backend.address)
        )
        rc, out, err = await quictund("reload", "--api", str(api))
        assert (rc, err) == (0, ""), err
        assert "accepted: kept 2, changed none, started b, stopped none" in out
        # the answer carries the reload's own summary: it had finished, and there was one
        await run.wait_log("reloaded: kept 2, changed none, started b")
        assert sum("reloaded:" in line for line in run.log) == 1
        await echoes(f"unix:{short_tmp}/b.sock", b"new listener")

        # 2. a rejected reload: exit 78 with the reason; the old configuration keeps running
        (drop_ins / "b.toml").write_text(client_toml("b", "6600", port, ca, backend.address))
        assert run.proc.pid is not None
        rc, out, err = await quictund(
            "reload", "--api", str(api), "--pid", str(run.proc.pid), "--timeout", "30"
        )
        assert rc == 78, (out, err)
        assert (
            "rejected, still running the old configuration: b.toml: client[0].listen-on: "
            "not a tcp:/unix: address (got '6600')"
        ) in err
        await echoes(f"unix:{short_tmp}/b.sock", b"still there")
        writer.write(b"survived")
        assert await reader.readexactly(8) == b"survived"
        writer.close()

        # the API reports the last outcome too
        rc, out, _ = await quictund("status", "--api", str(api), "--json")
        assert rc == 0
        state = json.loads(out)["health"]["reload"]
        assert state["ok"] is False and state["answered"] == state["requested"] == 2

        # 3. a fixed file reloads fine again
        (drop_ins / "b.toml").unlink()
        rc, out, err = await quictund("reload", "--api", str(api))
        assert rc == 0 and "stopped b" in out, err
        assert await run.stop() == 0
        assert not api.exists(), "the API socket is removed at exit"
    finally:
        if run.proc.returncode is None:
            run.proc.kill()
        backend.close()


async def test_reload_errors(short_tmp: Path, state_dir: Path) -> None:
    rc, _, err = await quictund("reload", "--api", str(short_tmp / "none.sock"))
    assert rc == 1 and "cannot reach the API" in err

    port = free_udp_port()
    conf = short_tmp / "d.toml"
    conf.write_text(server_toml("s", port, state_dir, ["tcp:127.0.0.1:1"]))
    api = short_tmp / "api.sock"
    run = await Run.start("--config", str(conf), "--api-socket", str(api))
    try:
        await run.wait_log("ready:")
        # a PID that is not running: nothing is signalled, and the command says so
        dead = await asyncio.create_subprocess_exec("true")
        await dead.wait()
        rc, _, err = await quictund("reload", "--api", str(api), "--pid", str(dead.pid))
        assert rc == 1 and f"cannot signal PID {dead.pid}" in err
        assert await run.stop() == 0
    finally:
        if run.proc.returncode is None:
            run.proc.kill()


async def test_reload_timeout(short_tmp: Path) -> None:
    """An API whose reload counter never moves: the command gives up after --timeout."""

    async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps(
            {"status": "ok", "reload": {"requested": 3, "answered": 3, "ok": True, "message": ""}}
        ).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(frozen, str(short_tmp / "api.sock"))
    # the "daemon": a process that ignores SIGHUP, so it survives the signal and never answers
    sleeper = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
        "print('ok', flush=True); time.sleep(60)",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert sleeper.stdout is not None
        assert await sleeper.stdout.readline() == b"ok\n"  # SIG_IGN is in place
        started = asyncio.get_running_loop().time()
        rc, _, err = await quictund(
            "reload",
            "--api",
            str(short_tmp / "api.sock"),
            "--pid",
            str(sleeper.pid),
            "--timeout",
            "1",
        )
        assert rc == 1 and f"no answer from PID {sleeper.pid} within 1 s" in err
        assert asyncio.get_running_loop().time() - started >= 1
        assert sleeper.returncode is None
    finally:
        sleeper.kill()
        await sleeper.wait()
        server.close()
        await server.wait_closed()


async def test_reload_that_cannot_bind_changes_nothing(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    """Binding is the one thing ``build`` cannot check: a listener moved to a port that is
    taken refuses the whole reload, and the listener it would replace keeps accepting."""
    backend = await echo().tcp()
    port = free_udp_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    main = short_tmp / "main.toml"
    api = short_tmp / "api.sock"
    server = server_toml("s", port, state_dir, [backend.address])
    main.write_text(
        server + client_toml("a", f"unix:{short_tmp}/a.sock", port, ca, backend.address)
    )
    run = await Run.start("--config", str(main), "--api-socket", str(api))
    try:
        await run.wait_log("ready:")
        reader, writer = await connect(f"unix:{short_tmp}/a.sock")
        writer.write(b"open")
        assert await reader.readexactly(4) == b"open"

        # c is new and binds first; a moves to the taken port and cannot: c is closed again
        main.write_text(
            server
            + client_toml("c", f"unix:{short_tmp}/c.sock", port, ca, backend.address)
            + client_toml("a", f"tcp:127.0.0.1:{busy}", port, ca, backend.address)
        )
        rc, out, err = await quictund("reload", "--api", str(api))
        assert rc == 78, (out, err)
        assert (
            f"rejected, still running the old configuration: listener a cannot start: "
            f"listen-on tcp:127.0.0.1:{busy}: Address already in use"
        ) in err
        await echoes(f"unix:{short_tmp}/a.sock", b"still accepting")
        writer.write(b"survived")
        assert await reader.readexactly(8) == b"survived"
        with pytest.raises(OSError):
            await connect(f"unix:{short_tmp}/c.sock")

        # the same change once the port is free is accepted
        taken.close()
        rc, out, err = await quictund("reload", "--api", str(api))
        assert rc == 0 and "changed a, started c," in out, (out, err)
        await echoes(f"tcp:127.0.0.1:{busy}", b"moved")
        await echoes(f"unix:{short_tmp}/c.sock", b"added")
        writer.close()
        assert await run.stop() == 0
    finally:
        taken.close()
        if run.proc.returncode is None:
            run.proc.kill()
        backend.close()


async def test_reload_by_pid_alone_says_what_changed(
    short_tmp: Path, state_dir: Path, ca: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``quictund reload --pid PID`` finds the daemon's socket among several in the run
    directory, and the verdict names the listener whose settings changed."""
    backend = await echo().tcp()
    port = free_udp_port()
    conf = short_tmp / "d.toml"
    server = server_toml("s", port, state_dir, [backend.address])
    client = client_toml("a", f"unix:{short_tmp}/a.sock", port, ca, backend.address)
    run_dir = short_tmp / "run"
    run_dir.mkdir()
    api = f'[api]\nsocket = "{run_dir}/mine.sock"\n'  # not on its command line: found by asking
    conf.write_text(api + server + client)
    decoy = socket.socket(socket.AF_UNIX)  # another instance's socket, served by us
    decoy.bind(str(run_dir / "other.sock"))
    decoy.listen()
    run = await Run.start("--config", str(conf))
    monkeypatch.setenv("QUICTUND_RUN_DIR", str(run_dir))
    monkeypatch.delenv("QUICTUND_API", raising=False)
    try:
        await run.wait_log("ready:")
        # the server's policy changes (same address: adopted in place), the client does not
        conf.write_text(api + server.replace("allow = [", 'allow = ["tcp:127.0.0.1:1", ') + client)
        assert run.proc.pid is not None
        rc, out, err = await quictund("reload", "--pid", str(run.proc.pid))
        assert (rc, err) == (0, "")
        assert "accepted: kept 1, changed s, started none, stopped none" in out
        await echoes(f"unix:{short_tmp}/a.sock", b"still tunnels")
        dead = await asyncio.create_subprocess_exec("true")
        await dead.wait()
        rc, _, err = await quictund("reload", "--pid", str(dead.pid))
        assert rc == 1
        assert f"which API socket does PID {dead.pid} serve? (found: none in {run_dir})" in err
        assert await run.stop() == 0
    finally:
        decoy.close()
        if run.proc.returncode is None:
            run.proc.kill()
        backend.close()


async def test_reload_by_pid_alone_reads_its_api_socket_flag(
    short_tmp: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The units' way: ``--api-socket`` on the daemon's command line names the socket, even
    outside /run/quictun."""
    conf = short_tmp / "d.toml"
    conf.write_text(server_toml("s", free_udp_port(), state_dir, ["tcp:127.0.0.1:1"]))
    run = await Run.start("--config", str(conf), "--api-socket", str(short_tmp / "api.sock"))
    monkeypatch.setenv("QUICTUND_RUN_DIR", str(short_tmp / "empty"))
    monkeypatch.delenv("QUICTUND_API", raising=False)
    try:
        await run.wait_log("ready:")
        assert run.proc.pid is not None
        rc, out, err = await quictund("reload", "--pid", str(run.proc.pid))
        assert (rc, err) == (0, "")
        assert "accepted: kept 1, changed none, started none, stopped none" in out
        assert await run.stop() == 0
    finally:
        if run.proc.returncode is None:
            run.proc.kill()
