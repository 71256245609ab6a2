"""The client's connector against a closed UDP port, on both event loops and both engines.

Issue 14 §1: a refused attempt must end at once (ICMP port unreachable) and be retried after
the delay its log line announced, never after the 10 s handshake timeout.  Real sockets on
loopback; the "server" is a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

import pytest
import uvloop

from quictund.quic import engine
from quictund.quic.client import Connector
from quictund.quic.settings import ENGINES, EngineSettings

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
RETRY_RE = re.compile(r"retry (\d+) in ([\d.]+) s")


def _closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[tuple[float, str]] = []
        self.third = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))
        if len(self.lines) >= 3:
            self.third.set()


async def _three_refusals(name: str) -> list[tuple[float, str]]:
    settings = EngineSettings(engine=name)  # type: ignore[arg-type]
    connector = Connector(
        name="t",
        host="127.0.0.1",
        port=_closed_port(),
        configuration=lambda: engine.make_configuration(
            is_client=True, settings=settings, verify=False
        ),
        settings=settings,
        keepalive_s=5,
        dead_after_s=15,
        handshake_timeout_s=10,
        socket_buffer=1 << 20,
    )
    handler = _Lines()
    log = logging.getLogger("quictund.quic.client")
    log.addHandler(handler)
    task = asyncio.get_running_loop().create_task(connector.run(), name="connector")
    try:
        async with asyncio.timeout(8):  # three attempts before one handshake timeout (10 s)
            await handler.third.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.removeHandler(handler)
    return handler.lines


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("loop", LOOPS)
def test_refused_attempt_retries_as_announced(loop: str, name: str) -> None:
    if not engine.engine_available(name):
        pytest.skip(f"{name} not installed")
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        lines = runner.run(_three_refusals(name))
    assert all("connection refused" in msg for _, msg in lines), lines
    for (t0, msg), (t1, _) in zip(lines, lines[1:], strict=False):
        m = RETRY_RE.search(msg)
        assert m, msg
        # the next attempt is refused one loopback round trip after it starts
        assert float(m[2]) - 0.05 <= t1 - t0 <= float(m[2]) + 0.3, (msg, t1 - t0)
