"""A client's ``ca-file``: checked when it exists, waited for when it does not exist yet.

Why wait: on a host that runs both a server and a client of it, the client's ``ca-file`` is
often the certificate the server generates at its first start (``selfsigned.py``).  Units start
in parallel at boot, so the client may come first; refusing to start (exit 78, which systemd
does not retry) would leave it down on that boot.  Instead the client endpoint comes up at once
(its listener accepts; tunnels wait ``connect-wait`` and fail with "waiting for ca-file") and
its connector starts when the file appears.

Rules:

1. A ``ca-file`` that exists must hold a PEM certificate (``check_ca``: a ``ConfigError`` at
   start-up or reload, as before).  Only a file that does not exist at all is waited for.
2. ``wait_for_ca_file`` polls every ``POLL_S`` (a ``stat``: no cost worth an inotify watch) and
   says at INFO what it waits for and for how long; after ``PATIENCE_S`` it says at ERROR that
   the file is still missing and what to do, then keeps polling every ``SLOW_POLL_S`` -- the
   listener stays up, and the client connects as soon as the file appears, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Protocol

from quictund.errors import ConfigError, os_reason

__all__ = ["PATIENCE_S", "check_ca", "wait_for_ca_file"]

logger = logging.getLogger(__name__)

POLL_S = 0.2
PATIENCE_S = 120.0  # a server's first start (key generation included) takes well under 1 s
SLOW_POLL_S = 5.0


class _Status(Protocol):
    """Where a waiting client says why it has no connection (the connector's fields)."""

    state: str
    last_error: str


def check_ca(path: str) -> None:
    """A CA file must exist and hold at least one PEM certificate."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"ca-file {path}: {os_reason(exc)}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"ca-file {path}: no PEM certificate in it")


def missing(path: str) -> bool:
    """True if ``path`` does not exist (yet): the case ``wait_for_ca_file`` handles."""
    return not os.path.lexists(path)


async def wait_for_ca_file(name: str, path: str, status: _Status) -> None:
    """Return once ``path`` exists (at once if it does); see the module docstring."""
    if not missing(path):
        return
    started = time.monotonic()
    status.state = "waiting for ca-file"
    status.last_error = f"waiting for ca-file {path}, which does not exist yet"
    logger.info(
        "[%s] ca-file %s does not exist yet: waiting up to %g s for it (a quictund server on "
        "this host writes its generated certificate there when it starts)",
        name,
        path,
        PATIENCE_S,
    )
    warned = False
    while missing(path):
        waited = time.monotonic() - started
        if not warned and waited >= PATIENCE_S:
            warned = True
            logger.error(
                "[%s] ca-file %s still does not exist after %g s: no connection to the server "
                "until it does (checked every %g s); fix ca-file, or start the server that "
                "generates it",
                name,
                path,
                PATIENCE_S,
                SLOW_POLL_S,
            )
        await asyncio.sleep(SLOW_POLL_S if warned else POLL_S)
    try:
        check_ca(path)
    except ConfigError as exc:
        logger.error("[%s] %s (connecting anyway; the server check will refuse it)", name, exc)
    logger.info(
        "[%s] ca-file %s appeared after %.1f s: connecting", name, path, time.monotonic() - started
    )
    status.state = "connecting"
    status.last_error = ""
