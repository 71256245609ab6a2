"""The bench's veth link and its quic-tun comparison work: a quick latency run across the
1500-byte-MTU veth pair produces numbers, marks them as the veth link's and removes its
namespaces and processes; the tables' ``P vs quic-tun`` columns and issue 15's targets come
out of the numbers the right way round (higher is better for rates, lower for times and CPU).
Speed is not asserted here; bench/run.py measures it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))


def _rows(values: dict[str, tuple[float, float, float]]) -> list:  # type: ignore[type-arg]
    from context import Row

    units = {"upload, 1 tunnel": "Mbit/s", "echo 1 B, p50": "µs", "SET ops/s": "ops/s"}
    return [
        Row("x", path, metric, value, units[metric], {"link": "veth"})
        for metric, triple in values.items()
        for path, value in zip(("quictun-go", "quictund", "quictund-qh3"), triple, strict=True)
    ]


def test_ratio_columns_say_how_many_times_better_than_quictun(bench: None) -> None:
    import report

    rows = _rows({"upload, 1 tunnel": (400, 200, 1000), "echo 1 B, p50": (300, 600, 150)})
    table = report.markdown_table(rows).splitlines()
    assert table[0].endswith("| quictund vs quic-tun | quictund-qh3 vs quic-tun |")
    assert table[2].endswith("| 0.50x | 2.50x |")  # Mbit/s: higher is better
    assert table[3].endswith("| 0.50x | 2.00x |")  # µs: lower is better, so the inverse
    without = [r for r in rows if r.path != "quictun-go"]
    assert "vs quic-tun" not in report.text_table(without)


def test_issue_15_targets_hold_each_engine_to_its_floor(bench: None) -> None:
    import targets

    rows = _rows({"SET ops/s": (10_000, 10_000, 14_000), "echo 1 B, p50": (300, 290, 210)})
    engines = {"quictund": "aioquic", "quictund-qh3": "qh3"}
    got = {t: s for t, _, s in targets.check_vs_quictun(rows, engines, "veth")}
    assert got == {
        "veth: SET ops/s >= 1x quic-tun (quictund)": "met",
        "veth: echo 1 B, p50 >= 1x quic-tun (quictund)": "met",
        "veth: SET ops/s >= 1.5x quic-tun (quictund-qh3)": "**not met**",  # 1.4x
        "veth: echo 1 B, p50 >= 1.5x quic-tun (quictund-qh3)": "**not met**",  # 1.43x
    }


def test_a_bulk_run_that_moved_nothing_gives_no_cpu_per_gib(bench: None) -> None:
    """A run stalled by the machine (TCP memory pressure) moves 0 bytes: its throughput row
    says 0, and it must not take the scenario down with a division by zero."""
    import scenarios.throughput as throughput

    stalled = {"mbit": 0.0, "total_bytes": 0, "cpu_s": {"client": 0.1, "server": 0.1},
               "series_mbit": [0.0], "per_conn_mbit": [0.0]}  # fmt: skip
    rows = throughput._rows("direct", "up", 1, [stalled])
    assert [(r.metric, r.value) for r in rows] == [("upload, 1 tunnel", 0.0)]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")
def test_quick_latency_run_across_the_veth_pair(tmp_path: Path) -> None:
    prefix = os.environ.get("QUICTUND_NETEM_PREFIX", "") + f"t{os.getpid()}-"
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "latency",
            "--link", "veth", "--paths", "direct,quictund", "--scale", "0.1", "--no-docs",
            "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, QUICTUND_NETEM_PREFIX=prefix),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "quic-tun (Go) NOT measured" in proc.stdout
    rows = json.loads((out / "results.json").read_text())["rows"]
    got = {(r["path"], r["metric"]): r for r in rows}
    for path in ("direct", "quictund"):
        row = got[(path, "echo 1 B, p50")]
        assert row["value"] and row["extra"]["link"] == "veth"
        assert row["extra"]["tcp_pressure_s"] >= 0  # the host's TCP memory was watched
    # the tunnel's server end delivered to the app on the server side's address
    server_toml = next((out / "paths").glob("quictund-*/server.toml")).read_text()
    assert 'allow = ["tcp:10.97.15.2:' in server_toml
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in namespaces
    leftovers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(out).encode() in cmdline:
                leftovers.append(cmdline)
    assert leftovers == []
