"""A server under four hostile QUIC connections (issue 13, point 1): resident memory before,
during and after, and an honest tunnel's echo latency on the same server.

Each hostile connection is `tests/hostile.py` (a real aioquic client in its own process, from
its own loopback address) and tries both attacks with thousands of streams: the receive *gap*
(one STREAM byte far inside each stream's window, then a bad token, never FIN or RESET_STREAM)
and the send-side *flood* (tunnels to the app's source, which sends as fast as it is read,
while the client grants no credit).  The server's RSS is sampled every 0.2 s; the honest
tunnel (the path's own client, on its own QUIC connection) echoes 1 byte at a time, unloaded
and while the attack opens its streams and holds them.  Then the attackers close their
connections and the server's RSS is read again after a short wait.  Targets: growth at most
64 MiB per hostile connection, back within 10 % of the baseline after, honest echo p99 within
2x of unloaded.  The attack stops early (and the growth target is not met) if the server grows
by more than 2 GiB: the bench must not take the machine down with it.

CPU: real attackers run on their own machines.  Here they share the server's, and four Python
QUIC clients take ~1.5 cores, so the server waited for a CPU half of the time (schedstat) and
the echo measured the scheduler, not the daemon.  With two or more cores the attackers and
their flood target run on the last half of the cores, and the server, the honest tunnel and
its echo on the rest (``_cores``; the row's ``cpus`` says which).  The server still does all
the attack's work on its own cores: what the echo measures is whether the daemon keeps an
honest connection flowing while it handles hostile ones.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from context import REPO, BenchContext, Row, rss_kib
from paths import PathSpec, free_port

TITLE = "Hostile peers"
NAME = "hostile"
CONNECTIONS = 4
MiB = 1024
SAFETY_KIB = 2 * 1024 * 1024  # stop the attack past this growth
# QUICTUND_HOSTILE_ATTACKS=gap or =flood: one half of the attack alone (which one costs what)
ATTACKS = os.environ.get("QUICTUND_HOSTILE_ATTACKS", "gap,flood").split(",")


def _cores() -> tuple[set[int], set[int]]:
    """(the server's and honest side's cores, the attackers' cores); the same set twice on a
    one-core machine."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    half = len(cpus) // 2
    return set(cpus[:-half]), set(cpus[-half:])


HONEST_CPUS, HOSTILE_CPUS = _cores()


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (the daemon's allocator and loop threads too) on ``cpus``."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # a thread that just ended


def run(ctx: BenchContext) -> list[Row]:
    honest_cpus, hostile_cpus = HONEST_CPUS, HOSTILE_CPUS
    app = ctx.start_app()  # the honest tunnel's echo
    _pin(app.proc.pid, honest_cpus)
    # What the attackers' tunnels reach: another process, so that the echo measures the
    # server under attack, not an app loop busy with 4,000 floods; and with 64 KiB socket send
    # buffers: autotuned ones (up to 4 MiB each, this app's, not the server's) took the host's
    # TCP memory past its pressure threshold, where TCP drops packets, the honest echo's too.
    target = ctx.start_app(extra=["--sndbuf", str(64 * 1024)])
    _pin(target.proc.pid, hostile_cpus)
    rows: list[Row] = []
    for name in ctx.paths:
        if name not in ctx.variants:
            continue  # the attacks are QUIC: only quictund's servers face them
        with ctx.procs.scope():
            port = free_port("127.0.0.1", None, socket.SOCK_DGRAM)
            spec = PathSpec(
                target=(app.host, app.port),
                wire=("127.0.0.1", port),
                also_allow=(f"tcp:{target.host}:{target.port}",),
            )
            try:
                path = ctx.start_path(name, spec)
            except (RuntimeError, OSError) as exc:
                rows.append(Row(NAME, name, "start", None, "", {"error": str(exc)}))
                continue
            for pid in path.pids.values():
                _pin(pid, honest_cpus)
            rows += _measure(
                ctx, name, path, f"127.0.0.1:{port}", f"tcp:{target.host}:{target.port}"
            )
    for row in rows:
        row.extra["cpus"] = {"server": sorted(honest_cpus), "attackers": sorted(hostile_cpus)}
    return rows


class _Sampler(threading.Thread):
    """Samples a process's RSS every 0.1 s; remembers the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.last = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.last = rss_kib(self.pid)
            except (OSError, ValueError):
                return
            self.peak = max(self.peak, self.last)


def _latency(
    ctx: BenchContext, address: str, count: int, timeline: str | None = None
) -> subprocess.Popen[bytes]:
    extra = ["--timeline", timeline] if timeline else []
    proc = ctx.procs.spawn(
        "hostile-echo",
        [ctx.python, str(REPO / "bench" / "load.py"), "latency", "--connect", address,
         "--size", "1", "--count", str(count), *extra],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    _pin(proc.pid, HONEST_CPUS)
    return proc


def _p99(proc: subprocess.Popen[bytes], within: float) -> float | None:
    import json

    try:
        out, _ = proc.communicate(timeout=within)
        return float(json.loads(out.decode().strip().splitlines()[-1])["p99_us"])
    except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError):
        return None


def _attack(ctx: BenchContext, wire: str, token: str, streams: int) -> list[Any]:
    procs = [
        ctx.procs.spawn(
            f"hostile-{i}",
            [
                ctx.python,
                "-m",
                "tests.hostile",
                wire,
                "--source",
                f"127.13.0.{i + 1}",
                "--flood",
                str(streams if "flood" in ATTACKS else 0),
                "--gap",
                str(streams if "gap" in ATTACKS else 0),
                "--token",
                token,
                "--first",
                "D",
                "--open-within",
                "20",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )  # fmt: skip
        for i in range(CONNECTIONS)
    ]
    for proc in procs:
        _pin(proc.pid, HOSTILE_CPUS)
    return procs


def _leave(ctx: BenchContext, attackers: list[Any]) -> None:
    """Close each attacker's stdin: it sends CONNECTION_CLOSE and exits by itself."""
    for proc in attackers:
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in attackers:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        ctx.procs.stop(proc)


def _settled_rss(pid: int, within: float, at_least: float = 10.0) -> int:
    """The process's RSS once it stopped falling for 3 s, after at least ``at_least`` seconds
    (closing thousands of tunnels takes the server a few seconds per connection) and at most
    ``within``."""
    start = time.monotonic()
    low, since = rss_kib(pid), start
    while time.monotonic() - start < within:
        time.sleep(0.25)
        now = rss_kib(pid)
        if now < low * 0.99:
            low, since = now, time.monotonic()
        elif time.monotonic() - since >= 3 and time.monotonic() - start >= at_least:
            break
    return rss_kib(pid)


def _opened(procs: list[Any], sampler: _Sampler, base: int, within: float) -> list[int]:
    """Wait for each attacker's ``opened N`` (or the safety stop); return the N's."""
    import select

    opened: dict[int, int] = {}
    deadline = time.monotonic() + within
    while len(opened) < len(procs) and time.monotonic() < deadline:
        if sampler.last - base > SAFETY_KIB:
            break
        outs = [p.stdout for i, p in enumerate(procs) if i not in opened]
        ready, _, _ = select.select(outs, [], [], 0.1)
        for i, p in enumerate(procs):
            if p.stdout in ready:
                line = p.stdout.readline().decode().split()
                opened[i] = int(line[1]) if len(line) == 2 and line[0] == "opened" else -1
    return [opened.get(i, -1) for i in range(len(procs))]


def _measure(ctx: BenchContext, name: str, path: Any, wire: str, token: str) -> list[Row]:
    streams = 250 if ctx.quick else 1000
    count = 2000 if ctx.quick else 5000
    ctx.load(["connect", "--connect", path.address, "--count", "5"], timeout=60)  # warm up
    unloaded = _p99(_latency(ctx, path.address, count), 300)
    time.sleep(1)
    server = path.pids["server"]
    base = rss_kib(server)
    sampler = _Sampler(server)
    sampler.start()
    ctx.log(f"{name}: {CONNECTIONS} hostile connections x ({streams} gap + {streams} flood)")
    # Each echo's start and latency, and the phases' times (CLOCK_MONOTONIC, as the echo's):
    # where the tail falls in the attack.
    timeline = ctx.workdir(name) / "hostile-echo-timeline.txt"
    during = _latency(ctx, path.address, count * 4, str(timeline))  # the ramp and the hold
    phases = {"attack": time.monotonic()}
    attackers = _attack(ctx, wire, token, streams)
    opened = _opened(attackers, sampler, base, 120)
    phases["opened"] = time.monotonic()
    hold_until = time.monotonic() + 5  # hold: let what can pile up pile up
    while time.monotonic() < hold_until and sampler.last - base <= SAFETY_KIB:
        time.sleep(0.1)
    killed = sampler.last - base > SAFETY_KIB
    if killed:
        ctx.log(f"  server grew past {SAFETY_KIB // MiB} MiB: attack stopped")
        for proc in attackers:
            proc.kill()  # at once; the server drops the connections at its idle timeout
    phases["held"] = time.monotonic()
    p99_attack = _p99(during, 300)
    phases["echo-done"] = time.monotonic()
    (timeline.parent / "hostile-phases.txt").write_text(
        "".join(f"{t:.6f} {phase}\n" for phase, t in phases.items())
    )
    peak = sampler.peak
    _leave(ctx, attackers)
    if killed:
        time.sleep(35)  # idle-timeout (30 s) and the reclaim after it
    after = _settled_rss(server, 60)
    sampler.done.set()
    ctx.log(f"  opened {opened}; RSS {base} -> peak {peak} -> after {after} KiB; "
            f"echo p99 {unloaded} -> {p99_attack} µs")  # fmt: skip
    return _rows(name, base, peak, after, unloaded, p99_attack, opened, streams)


def _rows(
    name: str, base: int, peak: int, after: int, unloaded: float | None,
    attacked: float | None, opened: list[int], streams: int,
) -> list[Row]:  # fmt: skip
    per_conn = (peak - base) / MiB / CONNECTIONS
    back = after / base * 100
    extra = {"opened": opened, "asked": 2 * streams, "base_kib": base, "peak_kib": peak,
             "after_kib": after}  # fmt: skip
    ratio = attacked / unloaded if attacked and unloaded else None
    return [
        Row(NAME, name, "server RSS, baseline", base / MiB, "MiB", extra),
        Row(NAME, name, "server RSS growth per hostile connection", per_conn, "MiB",
            {**extra, "target": {"text": f"server grows <= 64 MiB per hostile connection "
                                         f"({name})", "met": per_conn <= 64}}),
        Row(NAME, name, "server RSS after they left, % of baseline", back, "%",
            {**extra, "target": {"text": f"server back within 10 % of its baseline ({name})",
                                 "met": after * 10 <= base * 11}}),
        Row(NAME, name, "honest echo 1 B p99, unloaded", unloaded, "µs", {}),
        Row(NAME, name, "honest echo 1 B p99, under attack", attacked, "µs",
            {"ratio": ratio, "target": {"text": f"honest echo p99 under attack <= 2x "
                                                f"unloaded ({name})",
                                        "met": ratio is not None and ratio <= 2}}),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit("run through bench/run.py --only hostile")
