"""Token plugins: how a client picks the token for an app connection, and how a server reads it.

Importing this package registers the built-ins (``Fixed``, ``File``, ``Http`` and ``Signed``
sources, the ``Cleartext`` and ``Signed`` parsers) so that :func:`make_source` and
:func:`make_parser` find them by their case-insensitive names.  The interfaces and rules
are in ``base.py``.
"""

from quictund.tokens import parsers, sources, signed  # noqa: I001 -- registration order = help order
from quictund.tokens.base import TokenParser, TokenSource, make_parser, make_source

__all__ = [
    "TokenParser",
    "TokenSource",
    "make_parser",
    "make_source",
    "parsers",
    "signed",
    "sources",
]
