"""An engine error mid-transfer resets the app connection (issue 17 §0, "engine error").

A hostile client built on aioquic's own API (tests/e2e/hostile_client.py) opens a real tunnel
through a real server daemon to a backend this test runs, sends a paced stream of bytes, then
breaks QUIC's flow control: it sends a byte 4 MiB beyond the credit the server granted.
The server's engine closes the connection with FLOW_CONTROL_ERROR, a transport error; the
backend -- the app behind the server -- must see a reset, never a clean end of a transfer that
was cut short.  The daemon runs on both event loops (it is an error path).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from quictund.wire import encode_token
from tests.e2e.harness import Endpoint
from tests.e2e.hostile_client import QuicPeer
from tests.hostile_streams import send_at, stream_acked


class Sink:
    """The backend: counts what arrives on its one connection and how that connection ended."""

    def __init__(self) -> None:
        self.got = 0
        self.end: str | None = None
        self.ended_at = 0.0
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                self.got += len(data)
            self.end = "eof"
        except OSError as exc:
            self.end = repr(exc)
        self.ended_at = time.monotonic()
        self.done.set()
        writer.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_flow_control_violation_resets_the_app(short_tmp: Path, loop: str) -> None:
    sink = Sink()
    backend = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    target = f"tcp:127.0.0.1:{backend.sockets[0].getsockname()[1]}"
    server = await Endpoint.start(
        "server", "--listen-on", "127.0.0.1:0", "--state-dir", str(short_tmp),
        env={"QUICTUND_EVENT_LOOP": loop},
    )  # fmt: skip
    peer = await QuicPeer.connect(server.host_port)
    conn = peer.conn
    try:
        sid = conn.get_next_available_stream_id()
        conn.send_stream_data(sid, encode_token(target))
        for _ in range(20):  # 1 s of a paced transfer: 16 KiB every 50 ms
            conn.send_stream_data(sid, b"x" * (16 << 10))
            await peer.run_until(lambda: False, 0.05)
        assert await peer.run_until(lambda: sink.got >= 256 << 10, 5), sink.got
        # The violation: one byte 4 MiB past the credit the server gave (sent at once, once
        # everything before it was acknowledged), as if it had granted that much.
        sent = conn._streams[sid].sender._buffer_stop
        assert await peer.run_until(lambda: stream_acked(conn, sid, sent), 5)
        stream = conn._streams[sid]
        far = stream.max_stream_data_remote + (4 << 20)
        stream.max_stream_data_remote = far + 1
        conn._remote_max_data += 8 << 20
        send_at(conn, sid, far, b"y")
        violated = time.monotonic()
        await peer.run_until(lambda: peer.terminated is not None, 10)
        async with asyncio.timeout(10):
            await sink.done.wait()
        print(f"engine error ({loop}): backend reset {sink.ended_at - violated:.3f} s after")
        assert peer.terminated is not None and peer.terminated.error_code == 0x3, peer.terminated
        assert sink.end is not None and "ConnectionResetError" in sink.end, (
            f"the backend saw {sink.end} after {sink.got} bytes: a cut transfer looked complete"
        )
        closed = await server.wait_log(lambda e: e.get("msg") == "tunnel closed")
        assert "QUIC connection lost" in closed["reason"], closed
        assert server.proc.returncode is None
    finally:
        with contextlib.suppress(Exception):
            peer.close()
        server.kill()
        await server.proc.wait()
        backend.close()
