"""The shipped JSON Schema of the TOML format (quictund/cli/schema.py).

It must be what the models and docs generate today, accept the shipped examples, refuse what
the loader refuses, and explain every key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from quictund.cli.schema import DOCS, SCHEMA_FILE, render, toml_schema
from quictund.config import files as config_files

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "etc" / "quictun").glob("*.toml"))


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text() == render(toml_schema(DOCS.read_text())), (
        f"{SCHEMA_FILE.relative_to(ROOT)} is out of date with the models or "
        "docs/configuration.md: run `python -m quictund.cli.schema --write` and commit it"
    )


def test_module_prints_the_same() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quictund.cli.schema"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == SCHEMA_FILE.read_text()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_validate(example: Path, validator: Any) -> None:
    errors = list(validator.iter_errors(tomllib.loads(example.read_text())))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"client.toml", "server.toml"}


GOOD = """
[log]
level = "debug"
[metrics]
listen-on = "127.0.0.1:9417"
[[client]]
name = "db"
listen-on = "unix:/run/db.sock"
server-endpoint = "10.0.0.1:7500"
server-name = "edge"
unix-socket-mode = 0o600
[[server]]
name = "edge"
allow = ["tcp:10.0.0.0/8:5432"]
idle-timeout = 60.5
[[server.allow-for]]
identity = "CN=ops"
allow = ["tcp:*:22"]
"""


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("idle-timeout = 60.5", "idle-timout = 60.5"), "Additional properties"),
        (("idle-timeout = 60.5", "idle-timeout = 0"), "less than or equal to the minimum"),
        (("idle-timeout = 60.5", 'idle-timeout = "1m"'), "is not of type 'number'"),
        (('level = "debug"', 'level = "verbose"'), "is not one of"),
        (('name = "db"\n', ""), "'name' is a required property"),
        (('server-endpoint = "10.0.0.1:7500"\n', ""), "'server-endpoint' is a required"),
        (("[metrics]", "[metric]"), "Additional properties"),
        (("unix-socket-mode = 0o600", "unix-socket-mode = 0o1777"), "maximum"),
    ],
)
def test_schema_refuses_what_the_loader_refuses(
    tmp_path: Path, validator: Any, change: tuple[str, str], complaint: str
) -> None:
    assert not list(validator.iter_errors(tomllib.loads(GOOD)))
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    config_files.load([path])  # the loader agrees that GOOD is good
    bad = GOOD.replace(*change)
    assert bad != GOOD
    messages = [e.message for e in validator.iter_errors(tomllib.loads(bad))]
    assert any(complaint in m for m in messages), messages
    path.write_text(bad)
    with pytest.raises(config_files.ConfigProblems):
        config_files.load([path])


def test_every_key_is_explained() -> None:
    """Descriptions come from docs/configuration.md: a key missing there is missing here."""
    schema = json.loads(SCHEMA_FILE.read_text())
    undocumented = [
        f"{name}.{key}"
        for name, model in schema["$defs"].items()
        if name != "AllowFor"  # explained in the allow-for row
        for key, prop in model.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert not undocumented, f"keys without a row in docs/configuration.md: {undocumented}"
    listen = schema["$defs"]["ClientSettings"]["properties"]["listen-on"]
    assert listen["type"] == "string" and listen["default"] == "tcp:127.0.0.1:6500"
    assert "unix:/path" in listen["description"]
