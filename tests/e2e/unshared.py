"""Run a test module in a private network and mount namespace (root), read its JSON answer.

A plain blocking subprocess: the callers are module-scoped fixtures, outside any test's event
loop, and must not depend on whatever child watcher earlier tests left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]


def run_unshared(module: str, timeout: float = 100) -> dict[str, Any]:
    """``unshare --net --mount python -m module``; its stdout is one JSON object."""
    proc = subprocess.run(
        ["unshare", "--net", "--mount", sys.executable, "-m", module],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
