"""Give memory back to the system after a connection with many streams goes away.

Issue 13 asks that a server a hostile peer pushed up returns to its baseline once the peer
left.  Two things stand in the way, both measured (bench scenario ``hostile``):

1. A connection's objects form reference cycles (engine internals, session <-> handlers <->
   transports), so they wait for a *full* cyclic collection, which CPython runs rarely on a
   long-lived heap: 4 x 500 hostile streams left the server at 104 MiB (baseline 61) for good.
   ``gc.collect()`` frees them (61 -> 64 MiB).
2. glibc keeps freed pages in its heap; ``malloc_trim(0)`` returns every free page (glibc >= 2.8
   also releases pages inside the heap).  Without ``malloc_trim`` (another C library) only the
   collection runs.

A full collection stops the loop for as long as freeing takes (~10 ms per 100 MiB freed here;
it is the freeing that costs), so this runs only for connections that opened many streams
(the caller decides), at most once per ``_MIN_INTERVAL_S``, shortly after the close.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

_MIN_INTERVAL_S = 1.0


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _load_trim()
_last = 0.0
_pending: asyncio.TimerHandle | None = None


def reclaim_soon() -> None:
    """Collect cycles and return free heap pages shortly (coalesced, at most once a second)."""
    global _pending
    if _pending is not None:
        return
    loop = asyncio.get_running_loop()
    delay = max(0.05, _last + _MIN_INTERVAL_S - time.monotonic())
    _pending = loop.call_later(delay, _run)


def _run() -> None:
    global _pending, _last
    _pending = None
    _last = time.monotonic()
    found = gc.collect()
    collected = time.monotonic()
    if _trim is not None:
        _trim(0)
    logger.debug(
        "freed %d cyclic objects in %.1f ms, trimmed the heap in %.1f ms",
        found, (collected - _last) * 1000, (time.monotonic() - collected) * 1000,
    )  # fmt: skip
