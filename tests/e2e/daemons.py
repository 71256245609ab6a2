"""``quictund run --config FILE`` as a test ``Endpoint``, optionally inside a network namespace.

``harness.Endpoint.start`` passes the quic-tun subcommands' ``--log-format`` flags, which
``run`` does not take (its TOML's ``[log]`` does that): this starts ``run`` and reuses the
Endpoint's log reader, so tests wait on the daemon's JSON log lines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from tests.e2e.harness import LISTEN_RE, Endpoint

LOG_TOML = '[log]\nformat = "json"\nlevel = "info"\n'


async def run_daemon(conf: Path, *, netns: str | None = None, listeners: int = 1) -> Endpoint:
    """Start ``quictund run --config conf`` and wait until ``listeners`` endpoints listen."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    ip = shutil.which(
        "ip", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    )
    prefix = [ip or "ip", "netns", "exec", netns] if netns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "quictund", "run", "--config", str(conf),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    ep = Endpoint(proc, "run")
    ep._reader = asyncio.get_running_loop().create_task(ep._read())
    seen = 0
    for _ in range(listeners):
        line = await ep.wait_log(
            lambda e: "endpoint listening on" in e.get("msg", ""), within=30, start=seen
        )
        seen = ep.logs.index(line) + 1
        if not ep.address:
            m = LISTEN_RE.search(line["msg"])
            assert m, line
            ep.address = m["addr"]
    return ep
