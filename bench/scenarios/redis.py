"""Many small requests: ``redis-benchmark`` (50 clients, SET and GET, no pipelining) against
our own redis-server (loopback, no persistence) through each path; ops/s and the ratio to
direct.  Debian packages redis-server and redis-tools.
"""

from __future__ import annotations

import csv
import io
import shutil
import statistics
import subprocess
from typing import Any

from context import BenchContext, Row
from paths import PathSpec, free_port, wait_tcp

TITLE = "redis-benchmark"
NAME = "redis"
TESTS = ("SET", "GET")


def run(ctx: BenchContext) -> list[Row]:
    if not (shutil.which("redis-server") and shutil.which("redis-benchmark")):
        raise SystemExit("redis is not installed (apt-get install redis-server redis-tools)")
    port = free_port("127.0.0.1")
    work = ctx.workdir("redis")
    redis = ctx.procs.spawn(
        "redis-server",
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(work),
            "--maxclients", "1000",
        ],  # fmt: skip
    )
    wait_tcp("127.0.0.1", port, None, [redis])
    running, rows = ctx.start_paths(NAME, PathSpec(target=("127.0.0.1", port)))
    requests = 20_000 if ctx.quick else 100_000
    results: dict[tuple[str, str], list[float]] = {}
    for rep in range(ctx.reps):
        for name, path in running.items():
            ctx.log(f"redis-benchmark via {name} (run {rep + 1}/{ctx.reps})")
            for test, ops in _bench(ctx, path.host, path.port, requests).items():
                results.setdefault((name, test), []).append(ops)
    for test in TESTS:
        direct = results.get(("direct", test))
        base = statistics.median(direct) if direct else None
        for name in running:
            values = results.get((name, test), [])
            if not values:
                rows.append(Row(NAME, name, f"{test} ops/s", None, "ops/s", {"error": "no run"}))
                continue
            ops = statistics.median(values)
            extra: dict[str, Any] = {"runs": values, "requests": requests, "clients": 50}
            rows.append(Row(NAME, name, f"{test} ops/s", ops, "ops/s", extra))
            if base:
                rows.append(Row(NAME, name, f"{test}, % of direct", 100 * ops / base, "%", {}))
    return rows


def _bench(ctx: BenchContext, host: str, port: int, requests: int) -> dict[str, float]:
    proc = ctx.procs.spawn(
        "redis-benchmark",
        [
            "redis-benchmark", "-h", host, "-p", str(port), "-c", "50", "-n", str(requests),
            "-t", ",".join(t.lower() for t in TESTS), "--csv",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        ctx.procs.stop(proc)
    found = {}
    for row in csv.DictReader(io.StringIO(out.decode())):
        if row.get("test") in TESTS:
            found[row["test"]] = float(row["rps"])
    return found


def plot(rows: list[Row], img_dir: Any) -> list[Any]:
    import report

    return report.bar_chart(
        [r for r in rows if r.unit == "ops/s"], img_dir / "redis.png",
        "redis-benchmark, 50 clients (higher is better)",
    )  # fmt: skip
