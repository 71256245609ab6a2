"""Logging setup: the two output shapes, fields, journald, idempotence and bad settings."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quictund import logs
from quictund.errors import ConfigError
from quictund.logs import FieldsAdapter, setup_logging

TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """setup_logging changes process-wide state; put it back after each test."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    names = ("quictund", "quic", "http3")
    saved = (list(root.handlers), [logging.getLogger(n).level for n in names])
    yield
    root.handlers[:] = saved[0]
    for name, level in zip(names, saved[1], strict=True):
        logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_console_shape() -> None:
    out = io.StringIO()
    setup_logging("info", "console", out)
    logging.getLogger("quictund.tunnel").info("tunnel %s closed", 7)
    [line] = lines(out)
    assert re.fullmatch(rf"{TIMESTAMP} INFO  quictund\.tunnel: tunnel 7 closed", line), line


def test_console_fields() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    fields = {"stream_id": 4, "bytes_up": 10, "peer": "a b", "q": 'say "hi"', "empty": ""}
    logging.getLogger("quictund.tunnel").warning("tunnel closed", extra={"fields": fields})
    [line] = lines(out)
    assert line.endswith(
        'WARNING quictund.tunnel: tunnel closed stream_id=4 bytes_up=10 peer="a b"'
        ' q="say \\"hi\\"" empty=""'
    ), line


def test_console_field_with_newline_stays_one_line() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    logging.getLogger("quictund").info("x", extra={"fields": {"reason": "a\nb"}})
    assert lines(out)[0].endswith('x reason="a\\nb"')
    assert len(lines(out)) == 1


def test_console_exception() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("quictund.x").exception("failed")
    text = out.getvalue()
    assert re.match(rf"{TIMESTAMP} ERROR quictund\.x: failed\nTraceback", text)
    assert "ValueError: boom" in text


def test_json_shape() -> None:
    out = io.StringIO()
    setup_logging("DEBUG", "json", out)
    log = logging.getLogger("quictund.tunnel")
    log.debug("tunnel closed", extra={"fields": {"stream_id": 4, "bytes_up": 10, "msg": "x"}})
    try:
        raise ZeroDivisionError("no")
    except ZeroDivisionError:
        log.exception("oops")
    first, second = (json.loads(line) for line in lines(out))
    assert first.pop("time")
    assert first == {
        "level": "debug",
        "logger": "quictund.tunnel",
        "msg": "tunnel closed",
        "stream_id": 4,
        "bytes_up": 10,
        "field.msg": "x",  # a field never overwrites a core key
    }
    time = dt.datetime.fromisoformat(second["time"])
    assert time.tzinfo is not None
    assert abs(time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert second["level"] == "error"
    assert second["exc"].startswith("Traceback")
    assert "ZeroDivisionError" in second["exc"]


def test_json_non_serialisable_field() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    logging.getLogger("quictund").info("p", extra={"fields": {"path": Path("/x")}})
    assert json.loads(out.getvalue())["path"] == "/x"


def test_journal_stream_drops_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    out = io.StringIO()
    setup_logging(stream=out)
    logging.getLogger("quictund.tunnel").warning("slow", extra={"fields": {"n": 1}})
    assert lines(out) == ["<4>WARNING quictund.tunnel: slow n=1"]


def test_journal_stream_must_name_our_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with open(tmp_path / "log", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging(stream=f)
        logging.getLogger("quictund").error("to the journal")
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # inherited
        setup_logging(stream=f)
        logging.getLogger("quictund").info("to a file")
    first, second = (tmp_path / "log").read_text().splitlines()
    assert first == "<3>ERROR quictund: to the journal"
    assert re.fullmatch(rf"{TIMESTAMP} INFO  quictund: to a file", second)


def test_idempotent() -> None:
    out = io.StringIO()
    before = len(logging.getLogger().handlers)
    setup_logging(stream=io.StringIO())
    setup_logging(stream=out)
    assert len(logging.getLogger().handlers) == before + 1
    logging.getLogger("quictund").info("once")
    assert len(lines(out)) == 1


@pytest.mark.parametrize(
    ("level", "ours", "library"),
    [
        ("debug", logging.DEBUG, logging.DEBUG),
        ("Info", logging.INFO, logging.WARNING),
        ("warn", logging.WARNING, logging.WARNING),
        ("WARNING", logging.WARNING, logging.WARNING),
        ("error", logging.ERROR, logging.ERROR),
    ],
)
def test_levels(level: str, ours: int, library: int) -> None:
    setup_logging(level, stream=io.StringIO())
    assert logging.getLogger("quictund").level == ours
    assert logging.getLogger("quic").level == library
    assert logging.getLogger("http3").level == library


def test_library_info_is_capped_and_warnings_pass() -> None:
    out = io.StringIO()
    setup_logging("info", "json", out)
    logging.getLogger("quic").info("handshake chatter")
    logging.getLogger("quic").warning("something odd")
    logging.getLogger("quictund").debug("hidden")
    [record] = [json.loads(line) for line in lines(out)]
    assert (record["logger"], record["msg"]) == ("quic", "something odd")


@pytest.mark.parametrize("level", ["x", "trace", "", "critical"])
def test_bad_level(level: str) -> None:
    expected = f"log-level: expected debug, info, warning or error (got {level!r})"
    with pytest.raises(ConfigError) as info:
        setup_logging(level)
    assert str(info.value) == expected


def test_bad_format_leaves_setup_alone() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    with pytest.raises(ConfigError) as info:
        setup_logging("info", "xml", io.StringIO())
    assert str(info.value) == "log-format: expected console or json (got 'xml')"
    logging.getLogger("quictund").info("still here")
    assert lines(out)[-1].endswith("quictund: still here")


def test_fields_adapter_merges() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    log = FieldsAdapter(logging.getLogger("quictund.tunnel"), {"tunnel": 7, "peer": "[::1]:5"})
    log.info("opened")
    log.info("closed", extra={"fields": {"bytes_up": 3, "peer": "other"}})
    first, second = lines(out)
    assert first.endswith("opened tunnel=7 peer=[::1]:5")
    assert second.endswith("closed tunnel=7 peer=other bytes_up=3")


def _render_by_characters(value: object) -> str:
    """The rule of logs.py rule 4 spelled out character by character (what ``_render``
    once ran, at ~25 us a line)."""
    text = str(value)
    if not text or any(c.isspace() or c in '"\\=' or not c.isprintable() for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


@settings(max_examples=2000)
@given(st.text())
def test_field_values_are_quoted_exactly_when_the_rule_says(text: str) -> None:
    assert logs._render(text) == _render_by_characters(text)


@pytest.mark.parametrize(
    "value",
    ["plain", "a b", "tab\there", "nbsp\u00a0x", "k=v", 'q"', "back\\slash", "é", "zero\u200bw",
     "line\u2028sep", "", "127.0.0.1:5000", "[::1]:7500", 42],
)  # fmt: skip
def test_field_values_quoting_examples(value: object) -> None:
    assert logs._render(value) == _render_by_characters(value)


def test_records_carry_no_caller_thread_or_process() -> None:
    """logs.py rule 5: set up, a record is made without looking up where it came from."""
    stream = io.StringIO()
    logs.setup_logging("info", "console", stream)
    record = logging.getLogger("quictund.tunnel").makeRecord(
        "quictund.tunnel", logging.INFO, "(unknown file)", 0, "m", (), None
    )
    assert logging._srcfile is None
    assert record.thread is None and record.process is None
    logging.getLogger("quictund.tunnel").info("still logs", extra={"fields": {"peer": "a b"}})
    assert 'still logs peer="a b"' in stream.getvalue()
