"""Bash completion for ``quictund`` (quictund/cli/completion.py), loaded and run in a real bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "quictund.cli.completion"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("completion") / "quictund"
    path.write_text(done.stdout)
    return path


def complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the last word of ``line`` (``line`` ending in a space: a new word)."""
    words = line.split()
    if line.endswith(" "):
        words.append("")
    program = (
        'source "$0" || exit 9; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
        '_quictund; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program, str(script), *words],
        capture_output=True, text=True, timeout=30, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [w for w in done.stdout.splitlines() if w]


def test_loads_and_registers(script: Path) -> None:
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", 'source "$0" && complete -p quictund', script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.strip() == "complete -F _quictund quictund"


def test_subcommands(script: Path) -> None:
    everything = complete(script, "quictund ")
    assert {"run", "reload", "check", "dump-config", "token", "status", "tunnels"} <= set(
        everything
    )
    assert complete(script, "quictund re") == ["reload"]
    assert complete(script, "quictund d") == ["dump-config", "demo"]
    assert complete(script, "quictund token ") == ["sign"]
    assert complete(script, "quictund --") == ["--help", "--version"]


def test_options_and_values(script: Path, tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "client.toml").write_text("")
    assert complete(script, "quictund run --con") == ["--config", "--config-dir"]
    assert "--worker" not in complete(script, "quictund run --")  # hidden options stay hidden
    assert complete(script, "quictund run --config-dir c", cwd=tmp_path) == ["conf.d"]
    assert sorted(complete(script, "quictund run --config c", cwd=tmp_path)) == [
        "client.toml",
        "conf.d",
    ]
    assert complete(script, "quictund run --config x.toml --w") == ["--workers"]
    assert complete(script, "quictund run --workers ") == []  # a number: nothing to offer
    assert complete(script, "quictund token sign --se") == ["--secret-file"]
    assert complete(script, "quictund fingerprint cl", cwd=tmp_path) == ["client.toml"]


def test_quic_tun_flags_for_server_and_client(script: Path) -> None:
    assert "--allow" in complete(script, "quictund server --")
    assert "--server-endpoint" in complete(script, "quictund client --")
    assert complete(script, "quictund client --quic-engine ") == ["aioquic", "qh3"]
    assert complete(script, "quictund server --log-level w") == ["warning"]
