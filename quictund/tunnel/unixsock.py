"""Safe reuse of a UNIX socket path (client listeners and the API socket share this rule).

A socket file left behind by a crashed process is replaced only if nothing accepts on it: we
try to connect first, without blocking (a full backlog answers EAGAIN, which means alive).  A
live socket, or a path that is not a socket at all, is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from quictund.errors import ConfigError


def remove_stale(path: str, what: str) -> None:
    """Unlink ``path`` if it is a dead socket; ``ConfigError`` starting with ``what`` otherwise."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{what}: exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: nobody accepts on it
            return
        if exc.errno != errno.EAGAIN:
            raise ConfigError(f"{what}: cannot probe existing socket: {exc}") from None
    finally:
        probe.close()
    raise ConfigError(f"{what}: another process is listening on it")
