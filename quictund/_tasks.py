"""The only place allowed to call ``asyncio.create_task``.

Fire-and-forget tasks are garbage-collected mid-flight unless someone holds a reference, and
their exceptions vanish.  ``spawn`` keeps a strong reference until the task ends, names it, and
logs an exception that escaped it.  Prefer a TaskGroup where a lifetime scope exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)
_live: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    task = asyncio.create_task(coro, name=name)
    _live.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _live.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("task %s failed", task.get_name(), exc_info=task.exception())


async def first_of(*aws: Awaitable[object], name: str = "wait-first") -> None:
    """Wait until one of ``aws`` finishes; cancel the others."""

    async def wrap(aw: Awaitable[object]) -> None:
        await aw

    tasks = [spawn(wrap(a), name=name) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
