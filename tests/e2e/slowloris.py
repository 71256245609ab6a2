"""A hostile local API client, and an honest one, for the API fairness tests.

Stdlib only, so the tests can run it with Debian's ``/usr/bin/python3`` as another UID (the
test's own interpreter may live where an unprivileged user cannot execute it).

``attack TARGET N``: keep N connections open to TARGET (a UNIX socket path, or
``tcp:HOST:PORT``), each sending a request
head one byte every 0.2 s and never finishing it; whenever the server closes one (a 503 for
being over the share, or the head deadline), connect again at once -- the slowloris that
repeats.  Every 0.25 s it prints one JSON line: connections held (not refused) right now,
how many were refused with 503, and for connections the server cut off after being served
for a while, their status and how long they lasted.

``probe TARGET [PATH]``: one ``GET PATH`` (default ``/healthz``); prints
``{"status": ..., "seconds": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100_000
BYTE_EVERY_S = 0.2
# A refusal (503) comes at once; a connection not answered for this long holds a slot.  (Not
# the first byte interval: on a loaded machine a 503 can take longer than 0.2 s to arrive.)
HELD_AFTER_S = 1.0


class Stats:
    def __init__(self) -> None:
        self.held = 0
        self.refused = 0
        self.cut: list[tuple[str, float]] = []  # (status or "eof", seconds held)


async def open_connection(target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if target.startswith("tcp:"):
        host, _, port = target[4:].rpartition(":")
        return await asyncio.open_connection(host, int(port))
    return await asyncio.open_unix_connection(target)


def connect_blocking(target: str) -> socket.socket:
    if target.startswith("tcp:"):
        host, _, port = target[4:].rpartition(":")
        return socket.create_connection((host, int(port)), timeout=30)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(target)
    return sock


async def one(path: str, stats: Stats) -> None:
    while True:
        try:
            reader, writer = await open_connection(path)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        started = time.monotonic()
        reply = b""
        counted = False
        for i in range(len(HEAD)):
            try:
                chunk = await asyncio.wait_for(reader.read(4096), BYTE_EVERY_S)
            except TimeoutError:
                chunk = None
            except OSError:
                break
            if chunk == b"":
                break
            if chunk:
                reply += chunk
                continue
            if not counted and time.monotonic() - started >= HELD_AFTER_S:
                counted = True  # no answer for a second: the server is serving us
                stats.held += 1
            writer.write(HEAD[i : i + 1])
        status = reply[9:12].decode() or "eof"
        if counted:
            stats.held -= 1
            stats.cut.append((status, round(time.monotonic() - started, 3)))
        elif status == "503":
            stats.refused += 1
        writer.close()


async def attack(path: str, count: int) -> None:
    stats = Stats()
    tasks = [asyncio.ensure_future(one(path, stats)) for _ in range(count)]  # noqa: TID251
    try:
        while True:
            await asyncio.sleep(0.25)
            line = {"held": stats.held, "refused": stats.refused, "cut": stats.cut[-200:]}
            print(json.dumps(line), flush=True)
    finally:
        for task in tasks:
            task.cancel()


def probe(target: str, path: str) -> None:
    started = time.monotonic()
    with connect_blocking(target) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply[9:12] or 0)
    print(json.dumps({"status": status, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    if sys.argv[1] == "attack":
        asyncio.run(attack(sys.argv[2], int(sys.argv[3])))
    else:
        probe(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "/healthz")
