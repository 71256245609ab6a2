"""Request/response latency over an existing tunnel (1 byte and 16 KiB echoed, p50/p99), and
the time from ``connect()`` to the first echoed byte through a new tunnel (p50/p99).

Each measurement is one process doing round trips one after the other; the first tenth are
warm-up.  Values are medians over ``ctx.reps`` interleaved runs.
"""

from __future__ import annotations

import statistics
from typing import Any

from context import BenchContext, Row

TITLE = "Latency"
NAME = "latency"
LINKS = ("loopback", "veth")  # bench/topology.py: runs across the veth pair too


def measurements(quick: bool, scale: float = 1.0) -> list[tuple[str, list[str]]]:
    counts = (500, 300, 100) if quick else (3000, 1000, 500)
    n1, n16, nc = (max(20, int(n * scale)) for n in counts)
    return [
        ("echo 1 B", ["latency", "--size", "1", "--count", str(n1)]),
        ("echo 16 KiB", ["latency", "--size", "16384", "--count", str(n16)]),
        ("new tunnel: connect to first echoed byte", ["connect", "--count", str(nc)]),
    ]


def run(ctx: BenchContext) -> list[Row]:
    app = ctx.start_app()
    running, rows = ctx.start_paths(NAME, ctx.spec((app.host, app.port)))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(ctx.reps):
        for label, args in measurements(ctx.quick, ctx.scale):
            for name, path in running.items():
                ctx.log(f"{label} via {name} (run {rep + 1}/{ctx.reps})")
                try:
                    r = ctx.load([args[0], "--connect", path.address, *args[1:]], timeout=300)
                except RuntimeError as exc:
                    r = {"error": str(exc)}
                results.setdefault((name, label), []).append(r)
    for (name, label), rs in results.items():
        good = [r for r in rs if "p50_us" in r]
        for pct in ("p50", "p99"):
            if not good:
                rows.append(Row(NAME, name, f"{label}, {pct}", None, "µs", {"error": rs[0]}))
                continue
            values = [r[f"{pct}_us"] for r in good]
            rows.append(
                Row(
                    NAME, name, f"{label}, {pct}", statistics.median(values), "µs",
                    {"runs": values, "n": good[0]["n"], "percentile": pct},
                )
            )  # fmt: skip
    return rows


def plot(rows: list[Row], img_dir: Any) -> list[Any]:
    import report

    return report.bar_chart(
        rows, img_dir / "latency.png", f"Latency, {report.link_of(rows)} (lower is better)",
        log=True,
    )
