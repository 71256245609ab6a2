"""TCP and UNIX listening sockets for client endpoints.

A UNIX socket file left behind by a crashed process is replaced only if nothing accepts on it
(we try to connect first); a live one is an error, never silently stolen.  The file is removed
when the listener closes, but only if it is still ours (same inode).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from quictund.errors import ConfigError, os_reason
from quictund.policy.addresses import StreamAddress
from quictund.tunnel.groups import gid_of, give_to_group
from quictund.tunnel.unixsock import remove_stale


class StreamListener:
    def __init__(self, server: asyncio.Server, address: StreamAddress, inode: int | None) -> None:
        self.server = server
        self.address = address
        self._inode = inode

    @property
    def bound(self) -> str:
        """The address actually bound (port 0 resolved), as ``tcp:host:port`` / ``unix:path``."""
        if self.address.is_unix:
            return str(self.address)
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(StreamAddress(self.address.network, host, port))

    def close(self) -> None:
        self.server.close()
        if self.address.is_unix and self._inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.address.path).st_ino == self._inode:
                    os.unlink(self.address.path)


async def listen(
    address: StreamAddress,
    factory: Callable[[], asyncio.BaseProtocol],
    *,
    unix_mode: int = 0o660,
    unix_group: str | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
) -> StreamListener:
    """Bind ``address``; ``reuse_port`` lets the daemon's workers share a TCP port (the
    kernel spreads new connections over them)."""
    loop = asyncio.get_running_loop()
    if address.is_unix:
        what = f"listen-on {address}: unix-socket-group"
        if unix_group is not None:
            gid_of(unix_group, what)  # an unknown group fails before anything is bound
        remove_stale(address.path, f"listen-on {address}")
        server = await loop.create_unix_server(factory, address.path, backlog=backlog)
        listener = StreamListener(server, address, os.stat(address.path).st_ino)
        try:
            os.chmod(address.path, unix_mode)
            if unix_group is not None:
                give_to_group(address.path, unix_group, what)
        except BaseException:
            listener.close()
            raise
        return listener
    family = {"tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}.get(
        address.network, socket.AF_UNSPEC
    )
    try:
        server = await loop.create_server(
            factory,
            address.host or None,
            address.port,
            family=family,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    except OSError as exc:
        raise ConfigError(f"listen-on {address}: {os_reason(exc)}") from None
    return StreamListener(server, address, None)
