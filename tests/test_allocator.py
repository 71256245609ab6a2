"""The daemon runs on jemalloc (``quictund/allocator.py``, issue 13: memory returned after a
hostile peer left): the decision, the re-executed daemon, and that freed memory really goes
back to the system, which under CPython's own allocator it does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from quictund import allocator
from quictund.allocator import plan

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
FOUND = allocator.find_jemalloc()
needs_jemalloc = pytest.mark.skipif(
    FOUND is None and not os.environ.get("CI"), reason="libjemalloc2 is not installed"
)  # CI installs it (.ci/run): there these never skip


def _plan(env: dict[str, str], argv: list[str], **kw: object) -> allocator.Plan:
    opts: dict[str, object] = {"library": LIB, "jemalloc_mapped": False, "pymalloc": True}
    opts.update(kw)
    return plan(env, argv, **opts)  # type: ignore[arg-type]


def test_isolated_interpreter_reexecs_without_e_but_as_isolated() -> None:
    env = {"PATH": "/bin", "PYTHONPATH": "/evil", "PYTHONSTARTUP": "/evil.py", "X": "1"}
    p = _plan(env, ["/usr/lib/quictund/bin/python3", "-I", "-c", "code", "run", "-I"])
    assert p.argv == ["/usr/lib/quictund/bin/python3", "-sP", "-c", "code", "run", "-I"]
    assert "PYTHONPATH" not in p.env and "PYTHONSTARTUP" not in p.env  # -I ignored them
    assert p.env["PYTHONMALLOC"] == "malloc" and p.env["X"] == "1" and p.env["PATH"] == "/bin"
    assert p.env["LD_PRELOAD"] == LIB
    assert p.env["MALLOC_CONF"] == allocator.MALLOC_CONF


def test_plain_interpreter_keeps_its_environment_and_flags() -> None:
    env = {"PYTHONPATH": "/src", "LD_PRELOAD": "/other.so", "MALLOC_CONF": "narenas:1"}
    p = _plan(env, ["python", "-X", "dev", "-Es", "-m", "quictund", "run"])
    assert p.argv == ["python", "-X", "dev", "-s", "-m", "quictund", "run"]
    assert "PYTHONPATH" not in p.env  # -E was there: still not honoured
    p = _plan(env, ["python", "-Im", "quictund", "-E"])
    assert p.argv == ["python", "-sP", "-m", "quictund", "-E"]
    p = _plan(env, ["python", "-m", "quictund", "run"])
    assert p.argv == ["python", "-m", "quictund", "run"]
    assert p.env["PYTHONPATH"] == "/src"
    assert p.env["LD_PRELOAD"] == f"{LIB} /other.so"
    assert p.env["MALLOC_CONF"] == "narenas:1"  # the operator's own tuning wins


def test_no_loop_no_lib_opt_out_and_bad_value() -> None:
    assert _plan({}, ["python"], jemalloc_mapped=True, pymalloc=False).argv is None
    looped = _plan({"QUICTUND_ALLOCATOR_EXEC": "1"}, ["python"])
    assert looped.argv is None and looped.level == "warning" and "could not" in looped.message
    missing = _plan({}, ["python"], library=None)
    assert missing.argv is None and "apt install libjemalloc2" in missing.message
    off = _plan({"QUICTUND_ALLOCATOR": "pymalloc"}, ["python"])
    assert off.argv is None and off.level == "warning"
    with pytest.raises(ValueError, match="QUICTUND_ALLOCATOR='tcmalloc'.*jemalloc.*pymalloc"):
        _plan({"QUICTUND_ALLOCATOR": "tcmalloc"}, ["python"])


def _server_toml(tmp_path: Path) -> Path:
    conf = tmp_path / "s.toml"
    conf.write_text(
        '[[server]]\nname = "t"\nlisten-on = "127.0.0.1:0"\n'
        f'state-dir = "{tmp_path / "state"}"\nallow = ["tcp:127.0.0.1:9"]\n'
    )
    return conf


def _start(
    conf: Path, env: dict[str, str], until: str
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Start a daemon; return once it logged ``until`` (the allocator's line comes after
    "ready", so that a configuration error stays one line: tests/e2e/test_bad_input.py)."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "quictund", "run", "--config", str(conf)],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line:
            break
        lines.append(line)
        if until in line:
            assert any("ready:" in x for x in lines), lines
            return proc, lines
    proc.kill()
    _stop(proc)
    raise AssertionError("daemon did not start: " + "".join(lines))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    if proc.stderr is not None:
        proc.stderr.close()


@needs_jemalloc
def test_daemon_under_python_I_runs_on_jemalloc_with_the_same_pid(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICTUND_ALLOC")}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])  # -I ignored it; so must the daemon
    proc, lines = _start(_server_toml(tmp_path), env, "allocator: jemalloc")
    try:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libjemalloc" in maps, "the daemon (same PID) is not on jemalloc"
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"PYTHONMALLOC=malloc" in environ
        assert not any(e.startswith(b"PYTHONPATH=") for e in environ)
    finally:
        _stop(proc)


def test_daemon_opt_out_warns_and_bad_value_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, QUICTUND_ALLOCATOR="pymalloc")
    proc, lines = _start(_server_toml(tmp_path), env, "QUICTUND_ALLOCATOR=pymalloc")
    try:
        assert "libjemalloc" not in Path(f"/proc/{proc.pid}/maps").read_text()
        assert any("WARNING" in x and "QUICTUND_ALLOCATOR=pymalloc" in x for x in lines), lines
    finally:
        _stop(proc)
    done = subprocess.run(
        [sys.executable, "-m", "quictund", "run", "--config", str(_server_toml(tmp_path))],
        env=dict(os.environ, QUICTUND_ALLOCATOR="jemallok"), capture_output=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 78
    err = done.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "QUICTUND_ALLOCATOR='jemallok'" in err[0], err


# Objects a hostile connection's streams leave behind: many small ones, freed but for a few
# long-lived ones spread among them (a freelist, a counter, a cached name).
_CHURN = textwrap.dedent(
    """
    import asyncio, sys
    from quictund import memory
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 // 1024
    base = rss()
    junk = [{"stream": i, "buf": bytearray(64), "name": str(i) * 3} for i in range(300_000)]
    keep = junk[::2000]
    peak = rss()
    del junk
    memory.reclaim()
    print(base, peak, rss(), len(keep), sys.getallocatedblocks())
    """
)


@needs_jemalloc
def test_freed_memory_goes_back_on_jemalloc_and_not_on_pymalloc() -> None:
    def run(env: dict[str, str]) -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", _CHURN], env=env, capture_output=True, timeout=60,
            cwd=Path(__file__).parents[1], check=True,
        )  # fmt: skip
        return [int(x) for x in out.stdout.split()]

    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", "LD_PRELOAD")}
    # A decay of a minute: what comes back within the test is what memory.reclaim() purged.
    jemalloc = dict(base, PYTHONMALLOC="malloc", LD_PRELOAD=str(FOUND or LIB),
                    MALLOC_CONF="background_thread:false,dirty_decay_ms:60000")  # fmt: skip
    b0, p0, a0, _, blocks0 = run(base)
    b1, p1, a1, _, blocks1 = run(jemalloc)
    assert blocks0 > 0 and blocks1 == 0  # pymalloc, then every object from malloc
    assert p0 - b0 > 50_000 and p1 - b1 > 50_000  # KiB: the churn really grew both
    assert a1 - b1 < (p1 - b1) * 0.15, (b1, p1, a1)  # jemalloc: returned
    assert a0 - b0 > (p0 - b0) * 0.5, (b0, p0, a0)  # pymalloc: arenas pinned by survivors
