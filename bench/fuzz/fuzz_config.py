"""TOML configuration: any file loads or gives ConfigProblems of one-line messages.

And what loads survives ``dump`` -> ``load`` unchanged (quictund/config/files.py, config.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _common import instrument_imports, main, one_line

with instrument_imports():
    from quictund.config.files import ConfigProblems, dump, load

_DIR = Path(tempfile.mkdtemp(prefix="qt-fuzz-config-"))
_PATH = _DIR / "fuzz.toml"


def _load(raw: bytes) -> object:
    _PATH.write_bytes(raw)
    try:
        return load([_PATH])
    except ConfigProblems as exc:
        assert exc.lines
        for line in exc.lines:
            assert line.startswith("fuzz.toml: ") or line.startswith(str(_PATH)), line
            one_line(line)
        return exc


def test_one(data: bytes) -> None:
    config = _load(data)
    if isinstance(config, ConfigProblems):
        return
    for minimal in (False, True):
        again = _load(dump(config, minimal=minimal).encode())  # type: ignore[arg-type]
        assert not isinstance(again, ConfigProblems), again.lines
        assert again.to_file() == config.to_file()  # type: ignore[attr-defined]


if __name__ == "__main__":
    try:
        main(test_one)
    finally:
        os.unlink(_PATH) if _PATH.exists() else None
        _DIR.rmdir()
