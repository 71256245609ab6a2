"""API requests: bytes from a client through h11, the limits of api/http.py and the Router.

The real ``_Connection`` runs on an in-memory reader (the input, then EOF) and a writer that
records what it sends.  Findings: an exception out of the connection, a 500 (the router caught
something), or a reply that is not HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging

from _common import instrument_imports, main

with instrument_imports():
    from quictund.api.app import Router
    from quictund.api.http import Limits, _Connection


class _Provider:
    def tunnels(self) -> list[object]:
        return []

    def close_tunnel(self, uuid: str) -> bool:
        return uuid == "known"

    def listeners(self) -> list[dict[str, object]]:
        return [{"name": "x"}]

    def health(self) -> dict[str, object]:
        return {"status": "ok"}

    def metrics(self) -> tuple[bytes, str]:
        return b"# metrics\n", "text/plain"


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None


class _Raise(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise AssertionError(f"API logged an error: {record.getMessage()}")


logging.getLogger("quictund.api").addHandler(_Raise(logging.ERROR))
logging.getLogger("quictund.api").propagate = False
ROUTER = Router(_Provider())  # type: ignore[arg-type]
LIMITS = Limits(max_head_bytes=2048, max_body_bytes=1024, request_timeout_s=5)
LOOP = asyncio.new_event_loop()


async def _serve(data: bytes) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    writer = _Writer()
    await _Connection(ROUTER, LIMITS, reader, writer).run()  # type: ignore[arg-type]
    return bytes(writer.out)


def test_one(data: bytes) -> None:
    out = LOOP.run_until_complete(_serve(data))
    assert not out or out.startswith(b"HTTP/1.1 "), out[:40]
    assert b"HTTP/1.1 500 " not in out, out[:200]


if __name__ == "__main__":
    main(test_one)
