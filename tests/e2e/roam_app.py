"""Both ends of the roaming test's traffic: a bulk download and an interactive echo.

``Source`` is the backend (the token source of the client's listener): a connection that starts
with ``B`` gets ``size`` bytes of seeded random data at ``rate`` B/s, then a clean end; one that
starts with ``E`` is an echo.  ``main`` is the app, run inside the client's namespace: it
downloads through one tunnel while another exchanges a 64-byte message every 50 ms (what a
person typing in ``ssh`` sends), and prints one JSON line: bytes, sha256, how each ended, and
the longest wait for an echo (the pause a user would see).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time

CHUNK = 1 << 20


class Source:
    """The backend; ``sent_sha256`` is the digest of what it sent on its bulk connection."""

    def __init__(self, size: int, rate: int) -> None:
        self.size = size
        self.rate = rate
        self.sent_sha256 = ""
        self.sent = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            kind = await reader.readexactly(1)
            if kind == b"B":
                await self._bulk(writer)
            else:
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
            writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
        finally:
            writer.close()

    async def _bulk(self, writer: asyncio.StreamWriter) -> None:
        rng, h = random.Random(17), hashlib.sha256()
        start = time.monotonic()
        while self.sent < self.size:
            block = rng.randbytes(min(CHUNK, self.size - self.sent))
            h.update(block)
            writer.write(block)
            await writer.drain()
            self.sent += len(block)
            ahead = self.sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        self.sent_sha256 = h.hexdigest()


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.split(":", 1)[1].rpartition(":")
    return await asyncio.open_connection(host, int(port), limit=1 << 20)


async def download(address: str) -> dict[str, object]:
    reader, writer = await _open(address)
    writer.write(b"B")
    h, got, gap, last, end = hashlib.sha256(), 0, 0.0, time.monotonic(), "eof"
    try:
        while data := await reader.read(1 << 20):
            now = time.monotonic()
            gap, last = max(gap, now - last), now
            h.update(data)
            got += len(data)
    except OSError as exc:
        end = repr(exc)
    writer.close()
    return {"bytes": got, "sha256": h.hexdigest(), "end": end, "max_gap_s": round(gap, 3)}


async def interact(address: str, done: asyncio.Event) -> dict[str, object]:
    reader, writer = await _open(address)
    writer.write(b"E")
    n, worst, end, bad = 0, 0.0, "ok", 0
    try:
        while not done.is_set():
            msg = f"{n:063d}\n".encode()
            sent = time.monotonic()
            writer.write(msg)
            if await reader.readexactly(len(msg)) != msg:
                bad += 1
            took = time.monotonic() - sent
            worst = max(worst, took)
            n += 1
            await asyncio.sleep(max(0.0, 0.05 - took))
        writer.write_eof()
        if await reader.read() != b"":
            bad += 1
    except (OSError, asyncio.IncompleteReadError) as exc:
        end = repr(exc)
    writer.close()
    return {"echoes": n, "corrupt": bad, "end": end, "max_pause_s": round(worst, 3)}


async def main(address: str) -> None:
    done = asyncio.Event()
    chat = asyncio.get_running_loop().create_task(interact(address, done))
    print("started", flush=True)
    bulk = await download(address)
    done.set()
    print(json.dumps({"bulk": bulk, "chat": await chat}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
