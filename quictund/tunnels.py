"""Live tunnel records: what the API lists and what the close log line reports.

Pure data.  A record is created when a tunnel's handshake starts, counts bytes as they pass,
and is removed when the tunnel ends; ``close_line`` renders quic-tun-style facts in one line.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

logger = logging.getLogger("quictund.tunnel")


@dataclass(slots=True)
class TunnelRecord:
    endpoint: Literal["client", "server"]
    listener: str
    remote_endpoint_addr: str
    client_app_addr: str = ""
    server_app_addr: str = ""
    stream_id: int = -1
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC).astimezone())
    started: float = field(default_factory=time.monotonic)
    # Bytes sent by the client application / by the server application (quic-tun's meaning,
    # identical on both endpoints).
    client_total_bytes: int = 0
    server_total_bytes: int = 0
    established: bool = False

    def fields(self) -> dict[str, object]:
        return {
            "tunnel": self.uuid[:8],
            "listener": self.listener,
            "endpoint": self.endpoint,
            "stream_id": self.stream_id,
            "client_app": self.client_app_addr,
            "server_app": self.server_app_addr,
            "peer": self.remote_endpoint_addr,
        }


class TunnelTable:
    """The tunnels of one daemon, keyed by uuid."""

    def __init__(self) -> None:
        self._records: dict[str, TunnelRecord] = {}
        self._empty: asyncio.Event | None = None

    def add(self, record: TunnelRecord) -> None:
        self._records[record.uuid] = record
        if self._empty is not None:
            self._empty.clear()

    async def wait_empty(self) -> None:
        if self._empty is None:
            self._empty = asyncio.Event()
        if not self._records:
            self._empty.set()
        await self._empty.wait()

    def opened(self, record: TunnelRecord) -> None:
        record.established = True
        logger.info("tunnel open", extra={"fields": record.fields()})

    def closed(self, record: TunnelRecord, reason: str) -> None:
        if self._records.pop(record.uuid, None) is None:
            return
        if not self._records and self._empty is not None:
            self._empty.set()
        level = logging.INFO if record.established else logging.WARNING
        fields = record.fields()
        fields.update(
            client_bytes=record.client_total_bytes,
            server_bytes=record.server_total_bytes,
            duration_s=round(time.monotonic() - record.started, 3),
            reason=reason,
        )
        msg = "tunnel closed" if record.established else "tunnel failed"
        logger.log(level, msg, extra={"fields": fields})

    def __len__(self) -> int:
        return len(self._records)

    def snapshot(self) -> list[TunnelRecord]:
        return list(self._records.values())
