"""Connect to a ``unix:`` destination exactly at the path the policy checked (no TOCTOU).

``Policy.unix_target`` resolves symlinks and checks the result; between that check and
``connect()`` someone who may write in an allowed directory could swap the socket, or a
directory on its path, for a symlink to a socket outside it.  ``connect()`` on a UNIX socket
follows symlinks and has no ``O_NOFOLLOW``, so instead:

1. open the checked path with ``O_PATH | O_NOFOLLOW`` (a handle on the inode, no I/O);
2. refuse it unless it is a socket and the kernel's name for what was opened
   (``/proc/self/fd/N``) is still the checked path, i.e. no component changed;
3. connect through ``/proc/self/fd/N``, which reaches that very inode.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable
from typing import TypeVar

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

async def connect_unix(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], _P], path: str
) -> tuple[asyncio.BaseTransport, _P]:
    """``loop.create_unix_connection`` to ``path`` (already resolved and checked) or OSError."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode) or os.readlink(f"/proc/self/fd/{fd}") != path:
            raise OSError(errno.ELOOP, "the path changed (to a symbolic link) while connecting")
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.ECONNREFUSED, "not a UNIX socket")
        return await loop.create_unix_connection(factory, f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
