"""The ``File`` token source: the app's IP looked up in a token file or an inline mapping.

The file is re-read when its (mtime, size, inode) changes, with no restart needed, and only
then.  Reading *and* parsing run in a worker thread, so a huge or hostile file never stalls
the event loop (every tunnel of the client shares it); the file is capped at
``MAX_TOKEN_FILE_BYTES`` and the log gets at most ``LOGGED_PROBLEMS`` bad lines per load and
one summary line, not one line per bad line (a 16 MiB file of bad lines would otherwise write
two million warnings).  The format itself is in ``token_file.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Mapping
from ipaddress import ip_address
from typing import Final, TypeAlias

from quictund.errors import ConfigError, TokenError
from quictund.tokens.base import TokenSource, describe, register_source
from quictund.tokens.token_file import (
    IP,
    UNIX_KEY,
    TokenTable,
    Unix,
    parse_token_file,
    table_from_mapping,
    unmap,
)

__all__ = ["LOGGED_PROBLEMS", "MAX_TOKEN_FILE_BYTES", "File"]

logger = logging.getLogger("quictund.tokens")

_Version: TypeAlias = tuple[int, int, int]
MAX_TOKEN_FILE_BYTES: Final = 16 * 1024 * 1024
LOGGED_PROBLEMS: Final = 5  # bad lines logged per load; the rest are counted


def _app_host(app_addr: str) -> IP | Unix:
    """The part of quic-tun's app address a token file is keyed by."""
    if app_addr in ("", UNIX_KEY) or app_addr.startswith(("/", UNIX_KEY)):
        return UNIX_KEY  # unnamed UNIX client ("@"), a named one (a path), or abstract ("@x")
    host = app_addr
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return unmap(ip_address(host))
    except ValueError:
        raise TokenError(f"app address {app_addr!r} is neither ip:port nor a UNIX socket") from None


def _load_token_file(path: str) -> tuple[_Version, TokenTable, list[str]]:
    """Read *and* parse the file in a worker thread: its size and content cannot stall the
    event loop (the GIL is handed back to the loop every ``sys.getswitchinterval()``, 5 ms)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # swapped for a FIFO since the stat: never block on it
            raise ValueError("not a regular file")
        data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(
            f"larger than {MAX_TOKEN_FILE_BYTES // (1024 * 1024)} MiB "
            f"({MAX_TOKEN_FILE_BYTES} bytes); split it or use the Http source"
        )
    # surrogateescape: a non-UTF-8 line becomes one reported problem, not a failed file.
    text = data.decode("utf-8", "surrogateescape")
    del data
    table, problems = parse_token_file(text, path, keep=LOGGED_PROBLEMS)
    return (st.st_mtime_ns, st.st_size, st.st_ino), table, problems


@register_source
class File(TokenSource):
    """Looks the app's IP up in a token file (re-read when it changes) or an inline mapping."""

    name = "File"

    def __init__(self, path: str | None = None, mapping: Mapping[str, str] | None = None) -> None:
        if (path is None) == (mapping is None):
            raise ConfigError("token source File: give either a token file path or a mapping")
        if mapping is not None and not mapping:
            raise ConfigError("token source File: the mapping is empty")
        self._path = os.path.abspath(path) if path is not None else None
        self._origin = self._path or "the inline token mapping"
        self._table = table_from_mapping(mapping) if mapping is not None else None
        self._version: _Version | None = None
        self._problems: list[str] = []
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, arg: str | None, mapping: dict[str, str] | None, timeout_s: float) -> File:
        if arg and mapping is not None:
            raise ConfigError("token source File: give a token file path or a mapping, not both")
        if not arg and mapping is None:
            raise ConfigError("token source File: needs a token file path or a mapping")
        return cls(arg or None, mapping)

    async def fetch(self, app_addr: str) -> str:
        host = _app_host(app_addr)
        table = await self._current_table()
        token = table.lookup(host)
        if token is None:
            raise TokenError(f"no token for app address {host} in {self._origin}")
        return token

    def problems(self) -> list[str]:
        """The ``path:line: problem`` messages of the first ``LOGGED_PROBLEMS`` lines skipped in
        the current file, then ``path: and N more bad lines`` if there were more."""
        return list(self._problems)

    async def _current_table(self) -> TokenTable:
        if self._path is None:
            assert self._table is not None
            return self._table
        version = self._stat(self._path)
        if self._table is not None and version == self._version:
            return self._table
        async with self._lock:  # concurrent fetches after an edit parse (and warn) once
            if self._table is not None and version == self._version:
                return self._table
            try:
                version, table, problems = await asyncio.to_thread(_load_token_file, self._path)
            except (OSError, ValueError) as exc:
                raise TokenError(f"cannot read token file {self._path}: {describe(exc)}") from None
            for problem in problems:  # at most LOGGED_PROBLEMS + 1 lines
                logger.warning("%s (skipped)", problem)
            logger.info("token file %s loaded: %d entries", self._path, len(table))
            self._table, self._problems, self._version = table, problems, version
            return table

    @staticmethod
    def _stat(path: str) -> _Version:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TokenError(f"cannot read token file {path}: {describe(exc)}") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader thread for ever
            raise TokenError(f"cannot read token file {path}: not a regular file")
        return st.st_mtime_ns, st.st_size, st.st_ino
