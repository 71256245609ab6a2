"""The benchmark harness itself works: a quick latency run over direct TCP, the bare Python
relay (bench/floor_relay.py) and quictund (a few seconds) produces numbers for each path and
leaves no process behind.  Speed is not
asserted here; bench/run.py measures it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def test_quick_latency_run(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "latency",
            "--paths", "direct,python-floor,quictund", "--scale", "0.2", "--no-docs",
            "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    got = {(r["path"], r["metric"]): r["value"] for r in rows}
    for path in ("direct", "python-floor", "quictund"):
        for metric in (
            "echo 1 B, p50",
            "echo 16 KiB, p99",
            "new tunnel: connect to first echoed byte, p50",
        ):
            value = got.get((path, metric))
            assert value is not None and value > 0, (path, metric, proc.stdout[-2000:])
    # a tunnel adds work: neither the bare relay's echo nor quictund's beats the same echo
    # without it
    assert got[("quictund", "echo 1 B, p50")] > got[("direct", "echo 1 B, p50")]
    assert got[("python-floor", "echo 1 B, p50")] > got[("direct", "echo 1 B, p50")]
    assert _processes_mentioning(str(out)) == []


def test_lossy_rows_carry_one_metric_per_loss_and_the_targets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The suite's tables are path x metric: each loss level must be its own metric, and
    issue 7's lossy targets must come out met or not from the numbers (no link needed)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.syspath_prepend(str(REPO / "bench" / "scenarios"))
    import lossy

    def row(path: str, metric: str, loss: float, value: float, **extra: float) -> dict:  # type: ignore[type-arg]
        return {
            "scenario": "lossy", "path": path, "metric": metric, "value": value,
            "unit": "ms" if metric.endswith("_ms") else "Mbit/s",
            "extra": {"loss_pct": loss, **extra},
        }  # fmt: skip

    raw = [
        row("tcp-cubic", "goodput_mbit", 1.0, 3.0),
        row("tcp-bbr", "goodput_mbit", 1.0, 90.0),
        row("quictund-bbr", "goodput_mbit", 1.0, 88.0),
        row("quictund-cubic", "goodput_mbit", 1.0, 20.0),
        row("quictund-bbr", "goodput_mbit", 0.0, 89.0),
        row("quictund-bbr", "first_byte_ms", 0.0, 55.2, rtts=1.09),
        row("quictund-cubic", "first_byte_ms", 0.0, 58.0, rtts=1.15),
    ]
    rows = lossy.suite_rows(raw)
    metrics = {(r["path"], r["metric"]) for r in rows}
    assert ("quictund-bbr", "goodput, 1 % loss") in metrics
    assert ("quictund-bbr", "goodput, 0 % loss") in metrics
    targets = {
        (r["path"], r["metric"]): r["extra"]["target"]["met"]
        for r in rows
        if "target" in r["extra"]
    }
    assert targets == {
        ("quictund-bbr", "goodput / Linux TCP BBR, 1 % loss"): True,  # 29x cubic, 0.98x bbr
        ("quictund-cubic", "goodput / Linux TCP BBR, 1 % loss"): False,  # 7x cubic
        ("quictund-bbr", "new tunnel: first echoed byte, link RTTs"): True,
        ("quictund-cubic", "new tunnel: first echoed byte, link RTTs"): False,
    }


def test_hostile_rows_state_issue_13_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hostile scenario's targets come out met or not from its numbers (no daemon)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.syspath_prepend(str(REPO / "bench" / "scenarios"))
    import hostile

    def targets(peak_mib: int, after_mib: int, attacked_us: float) -> dict[str, bool]:
        rows = hostile._rows(
            "quictund", 60 * 1024, peak_mib * 1024, after_mib * 1024, 100.0, attacked_us,
            [2000] * 4, 1000,
        )  # fmt: skip
        return {r.metric: r.extra["target"]["met"] for r in rows if "target" in r.extra}

    assert targets(60 + 4 * 64, 66, 200.0) == {
        "server RSS growth per hostile connection": True,
        "server RSS after they left, % of baseline": True,
        "honest echo 1 B p99, under attack": True,
    }
    assert not any(targets(60 + 4 * 65, 67, 201.0).values())
