"""What the benchmarks share: start a quictund endpoint and read its address; process stats."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import BinaryIO

_LISTEN = re.compile(r"listening on (?:udp )?(\S+?)(?:,|$)")
_drains: list[asyncio.Task[None]] = []


async def start(role: str, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """Run ``python -m quictund ROLE ARGS``; return it and the address it announced."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quictund", role, *args, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    while line := (await proc.stderr.readline()).decode():
        if m := _LISTEN.search(line.strip()):
            # keep reading its log, or the pipe fills and the daemon blocks
            _drains.append(asyncio.get_running_loop().create_task(_discard(proc.stderr)))
            return proc, m.group(1)
    raise SystemExit(f"{role} exited")


async def _discard(stream: asyncio.StreamReader) -> None:
    """Read a daemon's log to its end; with ``QUICTUND_BENCH_LOGS=DIR`` keep it in DIR."""
    log = _log_file(f"daemon-{id(stream):x}.log")
    try:
        while line := await stream.readline():
            if log is not None:
                log.write(line)
                log.flush()
    finally:
        if log is not None:
            log.close()


def _log_file(name: str) -> BinaryIO | None:
    keep = os.environ.get("QUICTUND_BENCH_LOGS")
    if not keep:
        return None
    Path(keep).mkdir(parents=True, exist_ok=True)
    return (Path(keep) / name).open("ab")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
