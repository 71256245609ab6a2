"""What the numbers were measured on: CPU, cores, kernel, Python and the versions of
everything on the data path.  Load averages show how busy the (shared) machine was, and the
host's TCP memory whether other programs pushed TCP into memory pressure (the limit is one
for the whole host, every namespace included: under pressure TCP drops what it receives, and
every TCP leg of every path, ``direct`` too, stalls on retransmission timeouts)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import time
from pathlib import Path

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
        "TCP memory at start": tcp_memory()[0],
    }


def tcp_memory() -> tuple[str, bool]:
    """(the host's TCP buffer memory against its pressure threshold, as text; under pressure?)
    from /proc/net/sockstat and net.ipv4.tcp_mem (pages of 4 KiB)."""
    try:
        pressure = int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[1])
        m = re.search(r"^TCP:.* mem (\d+)", Path("/proc/net/sockstat").read_text(), re.M)
    except (OSError, ValueError, IndexError):
        return "unknown", False
    if m is None:
        return "unknown", False
    used = int(m.group(1))
    text = f"{used * 4 // 1024} MiB of {pressure * 4 // 1024} MiB (pressure threshold)"
    return text + (" -- UNDER PRESSURE" if used >= pressure else ""), used >= pressure
