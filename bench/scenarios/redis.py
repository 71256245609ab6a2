"""Many small requests: ``redis-benchmark`` (50 clients, SET and GET, no pipelining) against
our own redis-server (no persistence) through each path; ops/s and the ratio to direct.
Debian packages redis-server and redis-tools.
"""

from __future__ import annotations

import csv
import io
import shutil
import statistics
import subprocess
from typing import Any

from context import BenchContext, Row
from paths import free_port, wait_tcp

TITLE = "redis-benchmark"
NAME = "redis"
TESTS = ("SET", "GET")
_LOG = "redis-benchmark"
LINKS = ("loopback", "veth")  # bench/topology.py: runs across the veth pair too


def run(ctx: BenchContext) -> list[Row]:
    if not (shutil.which("redis-server") and shutil.which("redis-benchmark")):
        raise SystemExit("redis is not installed (apt-get install redis-server redis-tools)")
    host, ns = ctx.topo.server_ip, ctx.topo.server_ns  # redis is the server side's app
    port = free_port(host, ns)
    work = ctx.workdir("redis")
    redis = ctx.procs.spawn(
        "redis-server",
        [
            "redis-server", "--port", str(port), "--bind", host, "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", str(work),
            "--maxclients", "1000",
            # on the veth pair the client side is another host: redis's protected mode would
            # refuse it (the namespace is ours alone; on loopback this changes nothing)
            "--protected-mode", "no",
        ],  # fmt: skip
        ns=ns,
    )
    wait_tcp(host, port, ns, [redis])
    running, rows = ctx.start_paths(NAME, ctx.spec((host, port)))
    requests = 20_000 if ctx.quick else 100_000
    results: dict[tuple[str, str], list[float]] = {}
    failed: dict[tuple[str, str], list[str]] = {}
    for rep in range(ctx.reps):
        for name, path in running.items():
            ctx.log(f"redis-benchmark via {name} (run {rep + 1}/{ctx.reps})")
            found, why = _bench(ctx, path.host, path.port, requests)
            for test in TESTS:
                if test in found:
                    results.setdefault((name, test), []).append(found[test])
                else:
                    ctx.log(f"  no {test} figure: {why}")
                    failed.setdefault((name, test), []).append(why)
    for test in TESTS:
        direct = results.get(("direct", test))
        base = statistics.median(direct) if direct else None
        for name in running:
            values = results.get((name, test), [])
            fails = failed.get((name, test), [])
            if not values:
                rows.append(Row(NAME, name, f"{test} ops/s", None, "ops/s", {"error": fails[0]}))
                continue
            ops = statistics.median(values)  # of the runs that finished; the others are kept
            extra: dict[str, Any] = {
                "runs": values, "failed_runs": fails, "requests": requests, "clients": 50,
            }  # fmt: skip
            rows.append(Row(NAME, name, f"{test} ops/s", ops, "ops/s", extra))
            if base:
                rows.append(Row(NAME, name, f"{test}, % of direct", 100 * ops / base, "%", {}))
    return rows


def _bench(
    ctx: BenchContext, host: str, port: int, requests: int
) -> tuple[dict[str, float], str]:
    """ops/s per test of one redis-benchmark run, and why a test has none.  The wait is
    bounded (500 ops/s and a minute): a tunnel that drops a connection (quic-tun refuses a
    tunnel whose token arrived in two reads) leaves redis-benchmark waiting forever."""
    proc = ctx.procs.spawn(
        _LOG,
        [
            "redis-benchmark", "-h", host, "-p", str(port), "-c", "50", "-n", str(requests),
            "-t", ",".join(t.lower() for t in TESTS), "--csv",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        ns=ctx.topo.client_ns,
    )
    limit = 60 + requests / 500
    log = ctx.procs.log_path(_LOG)
    try:
        out, _ = proc.communicate(timeout=limit)
        why = f"redis-benchmark exited with {proc.returncode}; see {log}"
    except subprocess.TimeoutExpired:
        ctx.procs.stop(proc)
        out, _ = proc.communicate()  # what it printed before (SET's figure when GET hung)
        why = f"redis-benchmark stuck, stopped after {limit:.0f} s; see {log}"
    finally:
        ctx.procs.stop(proc)
    found = {}
    for row in csv.DictReader(io.StringIO(out.decode())):
        if row.get("test") in TESTS:
            found[row["test"]] = float(row["rps"])
    return found, why


def plot(rows: list[Row], img_dir: Any) -> list[Any]:
    import report

    return report.bar_chart(
        [r for r in rows if r.unit == "ops/s"], img_dir / "redis.png",
        f"redis-benchmark, 50 clients, {report.link_of(rows)} (higher is better)",
    )  # fmt: skip
