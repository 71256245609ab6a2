"""File token source lines: ``parse_token_file`` never raises (quictund/tokens/token_file.py)."""

from __future__ import annotations

from _common import instrument_imports, main, one_line

with instrument_imports():
    from quictund.tokens.sources import parse_token_file


def test_one(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")  # as File reads it
    table, problems = parse_token_file(text, "f")
    for problem in problems:
        assert problem.startswith("f:")
        one_line(problem)
    assert "TokenTable(" in repr(table) and len(table) <= text.count("\n") + 1


if __name__ == "__main__":
    main(test_one)
