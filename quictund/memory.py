"""Give memory back to the system after a connection with many streams goes away.

Issue 13 asks that a server a hostile peer pushed up returns to its baseline once the peer
left.  What stands in the way, each measured (bench scenario ``hostile``, 4 x 2,000 streams;
how in docs/security.md, "Why memory stays and what returns it"):

1. A connection's objects form reference cycles (engine internals, session <-> handlers <->
   transports), so they wait for a *full* cyclic collection, which CPython runs rarely on a
   long-lived heap.  ``gc.collect()`` frees them.
2. CPython's type attribute cache (4,096 entries) keeps a reference to the *name* of each
   attribute looked up through it, interned or not: ``datetime.astimezone()`` (a tunnel
   record's timestamp) looks up a fresh ``"utcoffset"`` string every call, and the cache kept
   hundreds of those strings made during the attack, one or two per 16 KiB pool of CPython's
   small-object allocator, which can free its 1 MiB arenas only when they are empty: they
   were most of what held 20 such arenas after the attackers left.  ``sys._clear_type_cache()``
   drops them (the cache refills on the next lookups).
3. glibc keeps freed pages in its heap; ``malloc_trim(0)`` returns every free page (glibc >= 2.8
   also releases pages inside the heap).  Without ``malloc_trim`` (another C library) only the
   rest runs.
4. Under jemalloc (the daemon's allocator, ``quictund/allocator.py``) freed pages go back after
   a second by themselves; ``arena.<all>.purge`` returns them at once.
5. Some of a connection is freed only after the close: its streams' tasks, transports and
   timers finish on later loop turns.  So a reclaim that follows a close runs once more
   ``_FOLLOW_UP_S`` later.

A full collection stops the loop for as long as freeing takes (~10 ms per 100 MiB freed here;
it is the freeing that costs), so this runs only for connections that opened many streams
(the caller decides), at most once per ``_MIN_INTERVAL_S``, shortly after the close.

``settle_collector`` is the other half: what the cyclic collector does while the daemon
serves.  CPython's defaults (a young collection every 700 allocations, a full one when the
old generation grew by a quarter) suit a script; a daemon moving packets allocates a few
objects per packet that live for a round trip (sent-packet records, frames, events), so
with the defaults they were caught alive by young collections, promoted, and swept again by
full collections over everything the daemon had imported (~55,000 objects): 3.5 % of a
bulk tunnel's CPU.  Once the daemon serves, everything it loaded moves to the permanent
generation (``gc.freeze``: the collector never looks at it again) and young collections run
every ``YOUNG_THRESHOLD`` allocations, by when most per-packet objects are gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import sys
import time
from collections.abc import Callable

from quictund import allocator

logger = logging.getLogger(__name__)

_MIN_INTERVAL_S = 1.0
_FOLLOW_UP_S = 5.0
YOUNG_THRESHOLD = 50_000  # allocations between young collections (CPython's default: 700)


def _load_trim() -> Callable[[int], int] | None:
    # CDLL(None) is the process itself, libc included: no ldconfig run (find_library("c")
    # spawns one, slowly, at import).
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _load_trim()
_last = 0.0
_pending: asyncio.TimerHandle | None = None
_follow_up = False


def settle_collector() -> None:
    """Freeze what the daemon loaded and space young collections out (see the module's
    docstring); once, when the daemon is ready to serve.

    One full collection first, so start-up garbage is freed rather than frozen with the rest.
    The older generations keep CPython's ratios, so a cycle a closed tunnel leaves is still
    collected: by the next middle collection if it is young, else by the next full one (and
    after a connection with many streams, by ``reclaim``).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    logger.debug("froze %d objects; young collections every %d allocations",
                 gc.get_freeze_count(), YOUNG_THRESHOLD)  # fmt: skip


def reclaim_soon() -> None:
    """Return what a closed connection held, shortly and once more a little later.

    Coalesced: at most once a second, however many connections close.
    """
    global _pending, _follow_up
    _follow_up = True
    if _pending is not None:
        return
    loop = asyncio.get_running_loop()
    delay = max(0.05, _last + _MIN_INTERVAL_S - time.monotonic())
    _pending = loop.call_later(delay, _run)


def _run() -> None:
    global _pending, _follow_up
    _pending = None
    reclaim()
    if _follow_up:
        _follow_up = False
        _pending = asyncio.get_running_loop().call_later(_FOLLOW_UP_S, _run)


def reclaim() -> None:
    """Collect cycles, drop the type cache's names and return free heap pages, now."""
    global _last
    _last = time.monotonic()
    sys._clear_type_cache()
    found = gc.collect()
    collected = time.monotonic()
    if _trim is not None:
        _trim(0)
    allocator.purge()
    logger.debug(
        "freed %d cyclic objects in %.1f ms, trimmed the heap in %.1f ms",
        found, (collected - _last) * 1000, (time.monotonic() - collected) * 1000,
    )  # fmt: skip
