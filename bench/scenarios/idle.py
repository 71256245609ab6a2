"""Many concurrent idle tunnels: resident memory per tunnel of each side of each path.

Every tunnel is proven with a one-byte echo, then left open; the growth of each side's RSS
(the process and its children: sshd forks per session, stunnel runs a thread per connection)
divided by the number of open tunnels is the figure.  Afterwards a sample of the tunnels
must still echo.  10,000 tunnels (1,000 in quick mode) for quictund; stunnel and ssh get at
most 2,000: stunnel runs a thread per connection on each side (20,000 threads would come close
to pid_max, 32,768, which every process on the machine shares), and ssh's channel loop makes
10,000 take about 4 minutes (measured once: 33.7 / 33.4 KiB per tunnel, the same as at 2,000).
"""

from __future__ import annotations

import json
import select
import subprocess
import time
from typing import Any

from context import BENCH, BenchContext, Row, rss_kib
from paths import PathSpec

TITLE = "Idle tunnels"
NAME = "idle"
PEER_MAX = 2000


def run(ctx: BenchContext) -> list[Row]:
    count = 1000 if ctx.quick else 10_000
    app = ctx.start_app()
    rows: list[Row] = []
    for name in ctx.paths:
        if name == "direct":
            continue
        n = min(count, PEER_MAX) if name in ("stunnel", "ssh") else count
        with ctx.procs.scope():
            try:
                path = ctx.start_path(name, PathSpec(target=(app.host, app.port)))
            except (RuntimeError, OSError) as exc:
                rows.append(Row(NAME, name, "start", None, "", {"error": str(exc)}))
                continue
            ctx.log(f"{n} idle tunnels via {name}")
            rows.extend(_measure(ctx, name, path, n))
    return rows


def _read_json(proc: subprocess.Popen[bytes], within: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], within)
    if not ready:
        raise RuntimeError(f"no answer from load.py idle within {within} s")
    line = proc.stdout.readline().decode()
    if not line:
        raise RuntimeError("load.py idle exited")
    result: dict[str, Any] = json.loads(line)
    return result


def _measure(ctx: BenchContext, name: str, path: Any, count: int) -> list[Row]:
    ctx.load(["connect", "--connect", path.address, "--count", "5"], timeout=60)  # warm up
    time.sleep(1)
    base = {side: rss_kib(pid) for side, pid in path.pids.items()}
    proc = ctx.procs.spawn(
        "load-idle",
        [ctx.python, str(BENCH / "load.py"), "idle", "--connect", path.address,
         "--count", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        opened = _read_json(proc, 600)
        time.sleep(1)
        after = {side: rss_kib(pid) for side, pid in path.pids.items()}
        proc.stdin.write(b"check\n")
        proc.stdin.flush()
        checked = _read_json(proc, 120)
    except (RuntimeError, OSError) as exc:
        return [Row(NAME, name, "open tunnels", None, "", {"error": str(exc)})]
    finally:
        ctx.procs.stop(proc)
    n = opened["opened"]
    ctx.log(f"  {n} open in {opened['seconds']:.1f} s; RSS {base} -> {after} KiB")
    rows = [
        Row(
            NAME, name, "tunnels opened", n, "tunnels",
            {"asked": count, "seconds": opened["seconds"], "errors": opened["errors"],
             "checked_ok": checked["checked_ok"]},
        )
    ]  # fmt: skip
    rows += [
        Row(
            NAME, name, f"memory per idle tunnel, {side} side",
            (after[side] - base[side]) / n if n else None, "KiB",
            {"rss_before_kib": base[side], "rss_after_kib": after[side], "tunnels": n},
        )
        for side in sorted(after)
    ]  # fmt: skip
    return rows


def plot(rows: list[Row], img_dir: Any) -> list[Any]:
    import report

    return report.bar_chart(
        [r for r in rows if r.unit == "KiB"], img_dir / "idle-memory.png",
        "Resident memory per idle tunnel (lower is better)",
    )  # fmt: skip
