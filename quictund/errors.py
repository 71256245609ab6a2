"""The exceptions quictund raises.

Library code raises these; only ``cli.py`` turns them into exit codes, so every message must be
one line a person can act on (it names the file, field, peer or plugin at fault).
"""

from __future__ import annotations

import os


class QuictunError(Exception):
    """Base class of every error quictund reports to a person."""


class ConfigError(QuictunError):
    """A setting, flag, file or plugin argument is wrong; the daemon does not start (exit 78)."""


class TokenError(QuictunError):
    """A token source could not produce a token for one app connection (that tunnel fails)."""


class TokenRejected(QuictunError):
    """The server's token parser refused a token (ack 0x02 for that tunnel only)."""


def os_reason(exc: OSError) -> str:
    """``Address already in use``: the errno's text, not the event loop's wording of it (uvloop
    says "error while attempting to bind on address ('127.0.0.1', 80): address already in use")."""
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
