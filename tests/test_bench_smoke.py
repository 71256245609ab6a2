"""The benchmark harness itself works: a quick latency run over direct TCP and quictund (a
few seconds) produces numbers for both paths and leaves no process behind.  Speed is not
asserted here; bench/run.py measures it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
            "--paths", "direct,quictund", "--scale", "0.2", "--no-docs", "--out", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    got = {(r["path"], r["metric"]): r["value"] for r in rows}
    for path in ("direct", "quictund"):
        for metric in (
            "echo 1 B, p50",
            "echo 16 KiB, p99",
            "new tunnel: connect to first echoed byte, p50",
        ):
            value = got.get((path, metric))
            assert value is not None and value > 0, (path, metric, proc.stdout[-2000:])
    # a tunnel adds work: quictund's echo cannot beat the same echo without it
    assert got[("quictund", "echo 1 B, p50")] > got[("direct", "echo 1 B, p50")]
    assert _processes_mentioning(str(out)) == []
