"""A hostile peer cannot flood a server's log (issue 13): its tunnel lines are held back past a
per-peer budget and reported in one summary; every failure is still counted in the metrics, and
another peer's failures are still logged meanwhile (quictund/tunnel/tunnels.py,
``LineThrottle``)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.e2e.harness import echo
from tests.e2e.test_daemon import client_toml, free_udp_port, server_toml
from tests.e2e.test_flood import counter_totals, daemon, refused

REPO = Path(__file__).resolve().parents[2]
STREAMS = 600
HOSTILE = "127.13.0.9"


async def failed_total(api: Path) -> int:
    return sum((await counter_totals(api, "quictund_tunnels_failed", "reason")).values())


async def test_a_peer_refused_600_times_gets_its_burst_and_one_summary(
    short_tmp: Path, state_dir: Path, ca: Path
) -> None:
    from quictund.tunnel.tunnels import LINES_BURST, LINES_PER_S

    backend = await echo().tcp()
    port = free_udp_port()
    run, api = await daemon(
        short_tmp,
        "d",
        server_toml("edge", port, state_dir, [backend.address])
        + client_toml("denied", f"unix:{short_tmp}/d.sock", port, ca, "tcp:127.0.0.1:9"),
    )
    hostile = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.hostile", f"127.0.0.1:{port}", "--source", HOSTILE,
        "--flood", str(STREAMS), "--token", "tcp:127.0.0.1:9",  # not allowed: each one fails
        "--open-within", "30",
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert hostile.stdout is not None and hostile.stdin is not None
        line = (await asyncio.wait_for(hostile.stdout.readline(), 60)).decode()
        assert line.strip() == f"opened {STREAMS}", line
        loop = asyncio.get_running_loop()
        started = loop.time()
        # meanwhile another peer's refusal is still logged
        await refused(f"unix:{short_tmp}/d.sock")
        await run.wait_log("not allowed")  # the client's line: the server's is in by now
        assert any(
            "tunnel failed" in ln and "endpoint=server" in ln and "peer=127.0.0.1:" in ln
            for ln in run.log
        ), run.log[-5:]
        summary = await run.wait_log(f"peer {HOSTILE}:", within=20)
        took = loop.time() - started + 1  # the attack itself lasted under a second or two
        held = int(re.search(r": (\d+) tunnel log lines held back", summary).group(1))  # type: ignore[union-attr]
        logged = [ln for ln in run.log if "tunnel failed" in ln and f"peer={HOSTILE}:" in ln]
        assert LINES_BURST <= len(logged) <= LINES_BURST + LINES_PER_S * (took + 10)
        assert len(logged) + held == STREAMS  # nothing lost: logged or summarised
        assert f"{held} tunnel failed" in summary
        assert await failed_total(api) >= STREAMS + 1  # the metrics count every failure
    finally:
        if hostile.stdin is not None:
            hostile.stdin.close()
        await asyncio.wait_for(hostile.wait(), 20)
        assert await run.stop() == 0
        backend.close()
