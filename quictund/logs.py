"""Logging setup: one handler, two formats, journald-aware, structured fields.

Why this module exists: a tunnel daemon is operated through its logs, mostly under systemd, and
sometimes by a log shipper that wants JSON.  Modules only ever do
``logging.getLogger(__name__)`` and pass structured data as
``extra={"fields": {"stream_id": 4, "bytes_up": 10}}`` (or use ``FieldsAdapter`` for fields
that every line of a tunnel carries); how that is rendered is decided here, once, by ``cli.py``.

Rules:

1. ``setup_logging`` owns exactly one handler, and it sits on the *root* logger.  That is the
   only change to the root logger (its level stays as it is, WARNING by default): it makes
   warnings from asyncio, aioquic and httpx come out in the same format -- a JSON log stays
   one object per line -- instead of through ``logging.lastResort``.  Calling it again replaces
   that handler, so reconfiguring on reload never duplicates lines.
2. The chosen level is set on the ``quictund`` logger, not on the root, so third-party INFO
   chatter stays off.  aioquic's loggers (``quic``, ``http3``) log every handshake at INFO;
   they are capped at WARNING unless the level is debug.
3. Under journald (``$JOURNAL_STREAM`` names our stream, as systemd documents), console lines
   carry no timestamp -- the journal adds its own -- but a ``<N>`` syslog priority prefix on
   every line, which journald turns into the entry's priority (``journalctl -p warning``).
4. Field values are rendered so that one record stays one line (console) or one object (JSON):
   values with spaces, quotes, ``=`` or control characters are double-quoted with escapes.
5. A line costs what it must: every tunnel logs one line when it opens (before its ack goes
   out) and one when it ends, on both daemons, so a line was ~40 us of a new tunnel's CPU.
   No record asks where it was logged from or by which thread or process (no format shows
   it: the logging HOWTO's "Optimization"), and a value is checked for quoting by two C-speed
   tests instead of a Python loop over its characters: ~17 us a line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from quictund.errors import ConfigError

__all__ = ["FieldsAdapter", "setup_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_FORMATS = ("console", "json")
_LIBRARY_LOGGERS = ("quic", "http3")  # aioquic's (quic/connection.py, h3/connection.py)
# RFC 5424 severities, understood by journald's SyslogLevelPrefix= (on by default)
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_JSON_CORE_KEYS = frozenset({"time", "level", "logger", "msg", "exc", "stack"})


# public API


def setup_logging(level: str = "info", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Route quictund's (and libraries' warning) records to ``stream`` (default: stderr).

    ``level`` is debug, info, warning (or warn) or error, case-insensitive; ``fmt`` is console
    or json.  Anything else raises ``ConfigError`` before the current setup is touched.
    Idempotent: a second call replaces the handler installed by the first.
    """
    numeric = _parse_level(level)
    if fmt.strip().lower() not in _FORMATS:
        raise ConfigError(f"log-format: expected console or json (got {fmt!r})")
    # Rule 5: no caller, thread or process lookups per record (no format of ours shows them).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    target = stream if stream is not None else sys.stderr
    handler = _Handler(target)
    if fmt.strip().lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        journal = _writes_to_journal(target)
        handler.setFormatter(ConsoleFormatter(timestamps=not journal, syslog_prefix=journal))

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()  # a StreamHandler never closes its stream; this only deregisters it
    root.addHandler(handler)

    ours = logging.getLogger("quictund")
    ours.setLevel(numeric)
    ours.propagate = True  # the handler lives on the root (rule 1)
    library = numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING)
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library)
        if not any(isinstance(f, _EngineCloseDuplicate) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_EngineCloseDuplicate())


class _EngineCloseDuplicate(logging.Filter):
    """Drop the engines' own WARNING for a connection that ends in error.

    aioquic logs a ``QuicConnectionError`` ("Error: 298, reason: ...") and qh3 a "Native peer
    close" for every refused handshake; quictund reports the same end once, with the peer and
    what to do (``quic/client.py``, ``server_endpoint.py``), so the engine's line only doubles
    it -- and in raw engine terms.
    """

    _LINE = re.compile(r"(\[[0-9a-f]+\] )?(Error: \d+, reason: |Native peer close: )")

    def filter(self, record: logging.LogRecord) -> bool:
        # aioquic's QuicConnectionAdapter has already turned the exception into "[cid] Error:"
        return not self._LINE.match(str(record.msg))


class FieldsAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed fields (say ``tunnel=7 peer=[::1]:51000``) to every record.

    Per-call ``extra={"fields": {...}}`` is merged on top (the per-call value wins); the stock
    ``LoggerAdapter`` would instead replace the whole ``extra`` on Python < 3.13.
    """

    def __init__(self, logger: logging.Logger, fields: Mapping[str, object]) -> None:
        super().__init__(logger, {})
        self.fields = dict(fields)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra["fields"] = {**self.fields, **_as_fields(extra.get("fields"))}
        kwargs["extra"] = extra
        return msg, kwargs


class ConsoleFormatter(logging.Formatter):
    """``2026-11-25 13:00:00.123 INFO  quictund.tunnel: message key=value key2="a b"``."""

    default_msec_format = "%s.%03d"

    def __init__(self, *, timestamps: bool = True, syslog_prefix: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname:<5} {record.name}: {record.getMessage()}"
        fields = _as_fields(getattr(record, "fields", None))
        if fields:
            line += " " + " ".join(f"{key}={_render(value)}" for key, value in fields.items())
        if self.timestamps:
            line = f"{self.formatTime(record)} {line}"
        lines = [line, *_exception_lines(self, record)]
        if self.syslog_prefix:
            prefix = f"<{_syslog_priority(record.levelno)}>"
            lines = [prefix + part for chunk in lines for part in chunk.splitlines()]
        return "\n".join(lines)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, the fields, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        created = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out: dict[str, object] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _as_fields(getattr(record, "fields", None)).items():
            # a field never overwrites the core keys a log shipper relies on
            out[f"field.{key}" if key in _JSON_CORE_KEYS else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


# private


class _Handler(logging.StreamHandler[TextIO]):
    """Marks the handler ``setup_logging`` owns, so a second call can find and replace it."""


def _parse_level(level: str) -> int:
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"log-level: expected debug, info, warning or error (got {level!r})"
        ) from None


def _writes_to_journal(stream: TextIO) -> bool:
    """True if ``$JOURNAL_STREAM`` ("dev:inode") is this stream, as sd-daemon(3) advises.

    The variable is inherited by children whose stderr was redirected (a shell started from a
    user service, ``quictund run 2>file``), so its presence alone is not enough.  A stream
    without a file descriptor (an in-memory one) cannot be checked; the variable is trusted.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return True
    return value == f"{st.st_dev}:{st.st_ino}"


def _as_fields(fields: object) -> dict[str, object]:
    if fields is None:
        return {}
    if isinstance(fields, Mapping):
        return {str(key): value for key, value in fields.items()}
    return {"fields": fields}  # a caller passed a non-mapping: show it rather than drop it


# What makes a value need quotes besides a character that is not printable: whitespace (the
# space is printable), a quote, a backslash, an equals sign.  ``\s`` is str.isspace().
_QUOTE = re.compile(r'[\s"\\=]')


def _render(value: object) -> str:
    text = str(value)
    if not text or not text.isprintable() or _QUOTE.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _exception_lines(formatter: logging.Formatter, record: logging.LogRecord) -> list[str]:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    lines = [record.exc_text] if record.exc_text else []
    if record.stack_info:
        lines.append(formatter.formatStack(record.stack_info))
    return lines


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    for threshold in (logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _SYSLOG_PRIORITY[threshold]
    return _SYSLOG_PRIORITY[logging.DEBUG]
