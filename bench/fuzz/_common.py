"""What every atheris harness shares: the import path, instrumentation and the entry point.

Each ``fuzz_<name>.py`` defines ``test_one(data: bytes)`` that feeds one input to one parser
of outside input and raises only on a real finding: an exception type the parser does not
document, or a broken invariant (an ``AssertionError``).  Run all of them through
``bench/fuzz/run.py``, or one directly with libFuzzer flags:
``python bench/fuzz/fuzz_wire.py -runs=1000 WORKDIR bench/fuzz/corpus/wire`` (libFuzzer writes
new inputs into its first directory, so never name the committed seeds first).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # quictund and tests.quic_packets, without installing

import atheris  # noqa: E402


def instrument_imports() -> object:
    """Coverage feedback for what the harness imports inside this block."""
    # quictund may be installed in editable mode (a custom loader): instrument it regardless.
    return atheris.instrument_imports(enable_loader_override=False)


FuzzedDataProvider = atheris.FuzzedDataProvider


def main(test_one: Callable[[bytes], None]) -> None:
    """Hand ``test_one`` to libFuzzer with this process's command line."""
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


def one_line(message: str) -> None:
    """Error messages reach logs and terminals: one line, no traceback."""
    assert "\n" not in message and "\r" not in message, repr(message)
    assert "Traceback" not in message, message
