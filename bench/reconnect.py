"""Restart-to-working time (issue 14 §1): seconds from a server announcing "listening" to an
app connection through its client echoing, median of several runs, for three cases:

* ``restart``: the server is stopped (SIGTERM, as ``systemctl restart`` does) and started
  again on the same port while the client runs;
* ``client-first``: the client starts, the server 0.3 s later;
* ``down-30s`` (``--long``): the server is away for 30 s;
* ``kill`` (``--long``): the server is killed (SIGKILL: no CONNECTION_CLOSE) and started again
  at once; the client only learns after ``dead-after`` (the engines do not notice stateless
  resets), so apps retry until one works.

Real processes on loopback (the e2e harness).  Usage, from the repository root:

    PYTHONPATH=. .venv/bin/python bench/reconnect.py [--runs 5] [--long]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from tests.e2e.harness import Endpoint, connect, echo, start_client, start_server


async def _working_after(state: Path, port: int, client: Endpoint) -> tuple[float, Endpoint]:
    """Start the server; seconds until an app connection (retried every 0.2 s) echoes."""
    server = await start_server(state, listen=f"127.0.0.1:{port}")
    ready = time.monotonic()
    while True:
        try:
            reader, writer = await connect(client.address)
            writer.write(b"x")
            await asyncio.wait_for(reader.readexactly(1), 30)
            writer.close()
            return time.monotonic() - ready, server
        except (OSError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one(state: Path, case: str) -> float:
    backend = await echo().tcp()
    port = _free_port()
    server: Endpoint | None = None
    client: Endpoint | None = None
    try:
        if case in ("restart", "kill"):
            server = await start_server(state, listen=f"127.0.0.1:{port}")
            client = await start_client(f"127.0.0.1:{port}", backend.address)
            reader, writer = await connect(client.address)
            writer.write(b"x")
            await reader.readexactly(1)
            writer.close()
            if case == "kill":
                server.kill()
                await server.proc.wait()
            else:
                seen = len(client.logs)
                await server.stop()
                await client.wait_log(lambda e: "lost" in e.get("msg", ""), start=seen)
                await asyncio.sleep(0.3)
        else:
            client = await start_client(f"127.0.0.1:{port}", backend.address)
            await asyncio.sleep(30 if case == "down-30s" else 0.3)
        took, server = await _working_after(state, port, client)
        return took
    finally:
        for ep in (client, server):
            if ep is not None:
                ep.kill()
                await ep.proc.wait()
        backend.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--long", action="store_true", help="also the 30 s outage (slow)")
    args = ap.parse_args()
    cases = ["restart", "client-first"] + (["down-30s", "kill"] if args.long else [])
    with tempfile.TemporaryDirectory(prefix="qt-bench-reconnect-") as d:
        for case in cases:
            runs = [await _one(Path(d), case) for _ in range(args.runs)]
            print(
                f"{case:14} median {statistics.median(runs):6.3f} s   "
                f"runs {' '.join(f'{r:.3f}' for r in runs)}"
            )


if __name__ == "__main__":
    asyncio.run(main())
