"""What ``quictund.memory`` returns after a connection with many streams closed (issue 13).

The bench scenario ``hostile`` measures the whole effect on a real server; these check each
lever on its own, cheaply.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import weakref
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from quictund import memory
from tests.test_allocator import _start as start_daemon
from tests.test_allocator import _stop as stop_daemon


@pytest.fixture(autouse=True)
def _no_pending_reclaim() -> Iterator[None]:
    """Each test has its own event loop: no reclaim left scheduled on another one."""
    yield
    if memory._pending is not None:
        memory._pending.cancel()
    memory._pending = None
    memory._follow_up = False


def _fresh(text: str) -> str:
    """A str object of its own (not the interned constant), as C code makes them."""
    return "".join(list(text))


async def test_reclaim_drops_the_type_cache_names() -> None:
    # datetime.astimezone() looks "utcoffset" up by a fresh string per call; CPython's type
    # cache keeps the last one per slot alive, and each such string held a 16 KiB pool, and
    # so a 1 MiB arena, of the small-object allocator after a hostile peer left.
    name = _fresh("utcoffset")
    before = sys.getrefcount(name)
    getattr(UTC, name)
    assert sys.getrefcount(name) == before + 1, "the type cache did not keep the name"
    memory.reclaim_soon()
    for _ in range(100):
        if sys.getrefcount(name) == before:
            break
        await asyncio.sleep(0.01)
    assert sys.getrefcount(name) == before


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


async def test_reclaim_runs_again_for_what_was_freed_late() -> None:
    gc.collect()
    first = memory._last
    memory.reclaim_soon()
    await asyncio.sleep(memory._MIN_INTERVAL_S + 0.2)
    assert memory._last > first, "the first pass did not run"
    gc.disable()  # so that only the follow-up can free the cycle
    try:
        late = _Node()
        freed = asyncio.Event()
        weakref.finalize(late, freed.set)
        del late
        assert not freed.is_set()
        # "no follow-up reclaim after the first" if this times out
        await asyncio.wait_for(freed.wait(), memory._FOLLOW_UP_S + 2)
    finally:
        gc.enable()


def test_settle_collector_freezes_what_was_loaded_and_spaces_young_collections() -> None:
    before = gc.get_threshold()
    try:
        memory.settle_collector()
        assert gc.get_freeze_count() > 10_000  # what pytest and quictund imported
        assert gc.get_threshold() == (memory.YOUNG_THRESHOLD, *before[1:])
        # Only what existed is frozen: a cycle made afterwards is still collected.
        made = []
        for _ in range(3):
            a: list[object] = []
            a.append(a)
            made.append(weakref.ref(_Box(a)))
        gc.collect()
        assert all(ref() is None for ref in made)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class _Box:
    """A weakly referenceable object inside a reference cycle."""

    def __init__(self, inner: list[object]) -> None:
        self.me = self
        self.inner = inner


def test_the_daemon_settles_its_collector_once_ready(tmp_path: Path) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text(
        '[log]\nlevel = "debug"\n\n[[server]]\nname = "t"\nlisten-on = "127.0.0.1:0"\n'
        f'state-dir = "{tmp_path / "state"}"\nallow = ["tcp:127.0.0.1:9"]\n'
    )
    # test_allocator's helpers: they return once the line is logged, after "ready:".
    proc, lines = start_daemon(conf, dict(os.environ), "young collections every")
    try:
        froze = lines[-1]
        count = int(froze.split("froze ", 1)[1].split()[0])
        assert count > 10_000, froze  # the daemon's modules, its settings and certificates
    finally:
        stop_daemon(proc)
