"""Bulk throughput through one tunnel in each direction and through 8 at once, and the CPU
seconds each side of each path spends per GiB moved.

Runs are interleaved (every path once, then every path again, ...) so that noise from the
shared machine lands on all paths alike; the value is the median of ``ctx.reps`` runs of
``ctx.duration`` seconds (>= 10 s: aioquic's pacer collapses under uvloop's 1 ms clock only
once the congestion window has grown).  Goodput is counted where the bytes arrive.
"""

from __future__ import annotations

import statistics
from typing import Any

from context import BenchContext, Row, cpu_s

TITLE = "Bulk throughput"
NAME = "throughput"
LINKS = ("loopback", "veth")  # bench/topology.py: runs across the veth pair too


def cases(quick: bool) -> list[tuple[str, int]]:
    if quick:
        return [("up", 1), ("down", 1), ("up", 8)]
    return [("up", 1), ("down", 1), ("up", 8), ("down", 8), ("up", 100)]


def metric(direction: str, conns: int) -> str:
    what = "upload" if direction == "up" else "download"
    return f"{what}, {conns} tunnel" + ("s (sum)" if conns > 1 else "")


def run(ctx: BenchContext) -> list[Row]:
    app = ctx.start_app()
    spec = ctx.spec((app.host, app.port))
    running, rows = ctx.start_paths(NAME, spec)
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for rep in range(ctx.reps):
        if rep:
            # Every run starts its tunnels afresh: quic-tun's, once 100 tunnels opened at
            # once, moved 0 bytes through every later tunnel (2026-12-05), which voided
            # every row of its runs 2 and 3 instead of only the row that broke it.
            for path in running.values():
                ctx.stop_path(path)
            running, _ = ctx.start_paths(NAME, spec)
        for direction, conns in cases(ctx.quick):
            for name, path in running.items():
                ctx.log(f"{metric(direction, conns)} via {name} (run {rep + 1}/{ctx.reps})")
                before = {side: cpu_s(pid) for side, pid in path.pids.items()}
                try:
                    result = ctx.load(
                        [
                            "bulk", "--connect", path.address, "--direction", direction,
                            "--conns", str(conns), "--seconds", str(ctx.duration),
                        ],  # fmt: skip
                        timeout=ctx.duration + 120,
                    )
                except RuntimeError as exc:
                    result = {"error": str(exc)}
                result["cpu_s"] = {s: cpu_s(pid) - before[s] for s, pid in path.pids.items()}
                runs.setdefault((name, direction, conns), []).append(result)
                if "mbit" in result:
                    ctx.log(f"  {result['mbit']:.0f} Mbit/s, CPU {result['cpu_s']}")
    for (name, direction, conns), results in runs.items():
        rows.extend(_rows(name, direction, conns, results))
    return rows


def _rows(name: str, direction: str, conns: int, results: list[dict[str, Any]]) -> list[Row]:
    good = [r for r in results if "mbit" in r]
    m = metric(direction, conns)
    if not good:
        return [Row(NAME, name, m, None, "Mbit/s", {"error": results[0].get("error")})]
    mbits = [r["mbit"] for r in good]
    median_run = sorted(good, key=lambda r: r["mbit"])[len(good) // 2]
    rows = [
        Row(
            NAME, name, m, statistics.median(mbits), "Mbit/s",
            {
                "runs_mbit": mbits,
                "series_mbit": median_run["series_mbit"],
                "per_conn_mbit": median_run["per_conn_mbit"],
                "direction": direction,
                "conns": conns,
            },
        )
    ]  # fmt: skip
    moved = [r for r in good if r["total_bytes"] > 0]  # a stalled run has no CPU per GiB
    if conns == 1 and moved:
        for side in sorted(moved[0]["cpu_s"]):
            per_gib = [r["cpu_s"][side] / (r["total_bytes"] / 2**30) for r in moved]
            what = "upload" if direction == "up" else "download"
            rows.append(
                Row(
                    NAME, name, f"CPU per GiB, {what}, {side} side", statistics.median(per_gib),
                    "CPU s/GiB", {"runs": per_gib, "side": side, "direction": direction},
                )
            )  # fmt: skip
    return rows


def plot(rows: list[Row], img_dir: Any) -> list[Any]:
    """Bars per metric and one throughput-over-time figure (pacer collapses show there)."""
    import report

    figs = report.bar_chart(
        [r for r in rows if r.unit == "Mbit/s"], img_dir / "throughput.png",
        f"Bulk throughput, {report.link_of(rows)} (median)", log=True,
    )  # fmt: skip
    figs += report.bar_chart(
        [r for r in rows if r.unit == "CPU s/GiB"], img_dir / "cpu-per-gib.png",
        f"CPU seconds per GiB moved, per side, {report.link_of(rows)} (lower is better)", log=True,
    )  # fmt: skip
    series = {
        r.path: r.extra["series_mbit"]
        for r in rows
        if r.metric == metric("up", 1) and r.value is not None
    }
    figs += report.line_chart(
        series, img_dir / "throughput-over-time.png",
        f"Upload through one tunnel, per second, {report.link_of(rows)} (median run)",
        "second", "Mbit/s", log=True,
    )  # fmt: skip
    return figs
