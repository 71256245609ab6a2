"""What the numbers were measured on: CPU, cores, kernel, Python and the versions of
everything on the data path.  Load averages show how busy the (shared) machine was, and the
host's TCP memory whether other programs pushed TCP into memory pressure (bench/pressure.py)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import pressure
from context import REPO


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _first_line(argv: list[str], pattern: str = r".+") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(0).strip() if m else "unknown"


def describe() -> dict[str, str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    changed = " + uncommitted changes" if dirty and dirty != "unknown" else ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem) // 1024} MiB",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "quictund": f"{_version('quictund')} (git {commit}{changed})",
        "aioquic": _version("aioquic"),
        "qh3": _version("qh3"),
        "uvloop": _version("uvloop"),
        "cryptography": _version("cryptography"),
        "stunnel": _first_line(["stunnel4", "-version"], r"stunnel \S+"),
        "OpenSSH": _first_line(["ssh", "-V"], r"OpenSSH_\S+"),
        "redis": _first_line(["redis-server", "--version"], r"v=\S+"),
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "TCP memory at start": pressure.describe()[0],
    }

