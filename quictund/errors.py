"""The exceptions quictund raises.

Library code raises these; only ``cli.py`` turns them into exit codes, so every message must be
one line a person can act on (it names the file, field, peer or plugin at fault).
"""

from __future__ import annotations


class QuictunError(Exception):
    """Base class of every error quictund reports to a person."""


class ConfigError(QuictunError):
    """A setting, flag, file or plugin argument is wrong; the daemon does not start (exit 78)."""


class TokenError(QuictunError):
    """A token source could not produce a token for one app connection (that tunnel fails)."""


class TokenRejected(QuictunError):
    """The server's token parser refused a token (ack 0x02 for that tunnel only)."""
