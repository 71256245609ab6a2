"""A JSON Schema of the TOML format, generated from the pydantic models, for editors.

Editors that validate TOML against a JSON Schema (Taplo / "Even Better TOML", and others
through a ``#:schema`` comment or their settings) then flag unknown keys, wrong types and
out-of-range values while the file is written, and show what each key means.

Rules:

1. The schema is the models' own (``ConfigFile.model_json_schema``) in *serialization* mode,
   by alias: that is what a TOML file holds -- ``listen-on = "tcp:127.0.0.1:6500"`` is a
   string there, although the model holds a parsed address.  Unknown keys are refused
   (``additionalProperties: false``, from ``extra="forbid"``), as the loader does.
2. Each key's description is its row in docs/configuration.md (meaning, then the default), so
   the docs stay the one place where keys are explained; ``name`` is required in every
   listener table, as the loader requires it.
3. The file is generated in a source checkout and committed as
   ``packaging/share/quictund.schema.json`` (installed in /usr/share/quictund/):
   ``python -m quictund.cli.schema --write`` after changing a model or the docs.  A test fails
   when the committed file is not what this module generates.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from quictund.config.files import ConfigFile

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"
SCHEMA_FILE = ROOT / "packaging" / "share" / "quictund.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

# docs/configuration.md section headings -> the tables whose keys they explain
_HEADINGS = {
    "`[[client]]`": ("ClientSettings",),
    "`[[server]]`": ("ServerSettings",),
    "QUIC settings (both roles)": ("ClientSettings", "ServerSettings"),
}
_SECTIONS = {
    "[log]": "LogSection",
    "[api]": "ApiSection",
    "[daemon]": "DaemonSection",
    "[metrics]": "MetricsSection",
}


def toml_schema(docs: str) -> dict[str, Any]:
    """The JSON Schema (rules 1 and 2); ``docs`` is docs/configuration.md."""
    schema = ConfigFile.model_json_schema(by_alias=True, mode="serialization")
    defs: dict[str, Any] = schema["$defs"]
    for name, meanings in doc_meanings(docs).items():
        properties = defs.get(name, {}).get("properties", {})
        for key, meaning in meanings.items():
            if key in properties:
                properties[key]["description"] = meaning
    for name in ("ClientSettings", "ServerSettings"):
        defs[name]["required"] = sorted({"name", *defs[name].get("required", [])})
    _drop_null(schema)
    return {
        "$schema": DRAFT,
        "title": "quictund configuration (/etc/quictun/*.toml)",
        "description": "Listener definitions and daemon settings of quictund; see "
        "/usr/share/doc/quictund/configuration.md.gz or docs/configuration.md.",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def doc_meanings(docs: str) -> dict[str, dict[str, str]]:
    """Model name -> TOML key -> "meaning (default: ...)" from the docs' tables."""
    out: dict[str, dict[str, str]] = {}
    models: tuple[str, ...] = ()
    section = ""
    for line in docs.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            models = ("sections",) if heading == "Sections" else _HEADINGS.get(heading, ())
            continue
        if not models or not line.startswith("| ") or line.startswith(("|---", "| key ")):
            continue
        cells = [c.strip() for c in line.strip()[1:-1].split(" | ")]
        if models == ("sections",):
            if len(cells) != 4 or cells[1] == "key":
                continue
            section = _plain(cells[0]) or section
            targets: tuple[str, ...] = (_SECTIONS.get(section, ""),)
            cells = cells[1:]
        else:
            targets = models
        if len(cells) != 3:
            continue
        keys, default, meaning = cells
        text = _plain(meaning)
        if default and default != "required" and "**required**" not in default:
            text = f"{text} (default: {_plain(default)})" if text else f"default: {_plain(default)}"
        for key in re.findall(r"`([^`]+)`", keys):
            key = key.strip("[]").removeprefix("server.")
            for target in targets:
                out.setdefault(target, {})[key] = text
    return out


def _drop_null(node: Any) -> None:
    """TOML has no null: ``X | None`` fields become plain optional ``X`` keys."""
    if isinstance(node, list):
        for item in node:
            _drop_null(item)
    if not isinstance(node, dict):
        return
    for value in node.values():
        _drop_null(value)
    branches = node.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1:
            node.update(rest[0])
        else:
            node["anyOf"] = rest
        if node.get("default", 0) is None:
            del node["default"]


def _plain(markdown: str) -> str:
    """Markdown of a table cell as plain text for an editor's tooltip."""
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", markdown)
    return text.replace("**", "").replace("`", "").strip()


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quictund.cli.schema", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--write", action="store_true", help=f"write {SCHEMA_FILE}")
    args = parser.parse_args(argv)
    if not DOCS.is_file():
        sys.stderr.write(f"{DOCS}: not found; run this in a source checkout\n")
        return 1
    text = render(toml_schema(DOCS.read_text()))
    if args.write:
        SCHEMA_FILE.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
