"""Handing the stop and reload signals back once a daemon is on its way out."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable


def ignore_from_now(loop: asyncio.AbstractEventLoop, signals: Iterable[int]) -> None:
    """Remove the loop's handlers for ``signals`` and ignore them from now on.

    A daemon that is exiting anyway must not turn its exit 0 into death by a late SIGTERM
    (a second ``systemctl stop``, a test's stop helper).  ``remove_signal_handler`` restores
    the default action, so between it and ``SIG_IGN`` a late signal killed the process with
    -15 (seen once in CI).  The signals are blocked in this thread meanwhile: one that arrives
    stays pending and is discarded once ignored.  The daemon's only other thread, jemalloc's,
    blocks every signal; a thread started later without that mask could still take one.
    """
    sigs = set(signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        for sig in sigs:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
