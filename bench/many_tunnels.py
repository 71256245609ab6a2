"""Many concurrent idle tunnels: resident memory per tunnel of each quictund daemon.

    python bench/many_tunnels.py [--tunnels 10000]

An echo app runs in its own process (file-descriptor limits), quictund's server and client
endpoints in theirs.  Every tunnel is proven with a one-byte echo, then left open, and the
daemons' RSS growth divided by the tunnel count is printed and written to
docs/performance.md (section "Idle tunnels").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _daemons import rss_kib, start  # bench/ is on sys.path

ECHO = r"""
import asyncio, uvloop, resource, sys
s, h = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
class E(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)
async def main():
    srv = await asyncio.get_running_loop().create_server(E, "127.0.0.1", 0, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tunnels", type=int, default=10000)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    echo = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ECHO, stdout=asyncio.subprocess.PIPE
    )
    assert echo.stdout is not None
    echo_port = int(await echo.stdout.readline())
    state = tempfile.mkdtemp()
    server, udp = await start(
        "server",
        "--listen-on",
        "127.0.0.1:0",
        "--state-dir",
        state,
        "--allow",
        f"tcp:127.0.0.1:{echo_port}",
    )
    client, listen = await start(
        "client",
        "--listen-on",
        "tcp:127.0.0.1:0",
        "--server-endpoint",
        udp,
        "--token-source",
        f"tcp:127.0.0.1:{echo_port}",
    )
    host, _, port = listen.split(":", 1)[1].rpartition(":")
    await asyncio.sleep(0.5)
    base = {"client": rss_kib(client.pid), "server": rss_kib(server.pid)}
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    started = time.monotonic()

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"!")
        await reader.readexactly(1)
        conns.append((reader, writer))

    batch = 250
    for i in range(0, args.tunnels, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, args.tunnels - i))))
    setup_s = time.monotonic() - started
    await asyncio.sleep(1)
    after = {"client": rss_kib(client.pid), "server": rss_kib(server.pid)}
    per = {k: (after[k] - base[k]) / len(conns) for k in after}
    line = (
        f"{len(conns)} idle tunnels (opened in {setup_s:.1f} s): "
        f"client {per['client']:.1f} KiB/tunnel (RSS {base['client'] // 1024}"
        f"->{after['client'] // 1024} MiB), server {per['server']:.1f} KiB/tunnel "
        f"(RSS {base['server'] // 1024}->{after['server'] // 1024} MiB)"
    )
    print(line)
    # every tunnel still works after all are open
    for reader, writer in conns[:: max(1, len(conns) // 100)]:
        writer.write(b"?")
        assert await reader.readexactly(1) == b"?"
    for _, writer in conns:
        writer.close()
    for proc in (client, server, echo):
        proc.terminate()
        await proc.wait()
    if not args.no_write:
        write_section(line, per)


def write_section(line: str, per: dict[str, float]) -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
    text = doc.read_text() if doc.exists() else "# Performance\n"
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "unknown CPU",
    )
    section = (
        "## Idle tunnels\n\n"
        f"`python bench/many_tunnels.py` on {os.cpu_count()} x {cpu}, "
        f"{time.strftime('%Y-%m-%d')}:\n\n{line}\n\n"
        f"Target (issue 7): under 40 KiB per tunnel per daemon -> client "
        f"{'met' if per['client'] < 40 else 'NOT met'}, server "
        f"{'met' if per['server'] < 40 else 'NOT met'}.\n"
    )
    if "## Idle tunnels" in text:
        head, _, rest = text.partition("## Idle tunnels")
        tail = rest.split("\n## ", 1)
        text = head + section + ("\n## " + tail[1] if len(tail) > 1 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    doc.write_text(text)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
