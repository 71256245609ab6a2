"""TOML listener definitions: find the files, validate them, report every problem in one line.

A file holds any of ``[log]``, ``[api]``, ``[daemon]``, ``[metrics]`` and any number of
``[[client]]`` and ``[[server]]`` tables whose keys are quic-tun's flag names.  Problems come
back as lines a person can act on, naming the file and the field::

    client.toml: client[1].listen-on: not a tcp:/unix: address (got '6500')

Validation is pure (no sockets); plugin, certificate and policy checks happen when the daemon
builds its endpoints, and their messages get the same ``file: client[i]:`` prefix.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quictund.config.settings import ClientSettings, ServerSettings
from quictund.errors import ConfigError, os_reason
from quictund.policy.addresses import parse_host_port

DEFAULT_DIR = Path("/etc/quictun")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class ApiSection(_Section):
    socket: str | None = None
    group: str | None = None
    listen_on: Annotated[str | None, Field(alias="listen-on")] = None

    @field_validator("listen_on")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)  # raises ValueError with a readable message
        return value


class MetricsSection(_Section):
    """``[metrics]``: the read-only Prometheus listener (quictund/api/metrics_listener.py)."""

    listen_on: Annotated[
        str | None,
        Field(
            alias="listen-on",
            description="host:port of a TCP listener that serves only GET /metrics and "
            "/healthz, for Prometheus (e.g. 127.0.0.1:9417); none by default",
        ),
    ] = None

    @field_validator("listen_on")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value, allow_port_zero=True)  # 0: any free port (tests)
        return value


class DaemonSection(_Section):
    shutdown_grace_s: Annotated[float, Field(alias="shutdown-grace", ge=0, le=3600)] = 10.0
    workers: Annotated[int, Field(ge=1, le=64)] = 1


class ConfigFile(_Section):
    """One TOML file, as written."""

    log: LogSection | None = None
    api: ApiSection | None = None
    daemon: DaemonSection | None = None
    metrics: MetricsSection | None = None
    client: list[ClientSettings] = []
    server: list[ServerSettings] = []


@dataclass
class Config:
    """Every file merged: what the daemon runs."""

    files: list[Path] = field(default_factory=list)
    log: LogSection = field(default_factory=LogSection)
    api: ApiSection = field(default_factory=ApiSection)
    daemon: DaemonSection = field(default_factory=DaemonSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    clients: list[ClientSettings] = field(default_factory=list)
    servers: list[ServerSettings] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # listener name -> "file: client[i]"

    def to_file(self) -> ConfigFile:
        return ConfigFile(
            log=self.log,
            api=self.api,
            daemon=self.daemon,
            metrics=self.metrics,
            client=self.clients,
            server=self.servers,
        )


class ConfigProblems(ConfigError):
    """One or more problems, one line each."""

    def __init__(self, lines: list[str], partial: Config | None = None) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines
        self.partial = partial  # what did validate, so `check` can look deeper


def find_files(files: list[str], dirs: list[str]) -> list[Path]:
    """``--config`` files in order, then each ``--config-dir``'s ``*.toml`` sorted."""
    paths = [Path(f) for f in files]
    if not files and not dirs:
        dirs = [str(DEFAULT_DIR)]
    for d in dirs:
        directory = Path(d)
        if not directory.exists():
            raise ConfigProblems([f"{d}: does not exist (create it, or give --config FILE)"])
        if not directory.is_dir():
            raise ConfigProblems([f"{d}: not a directory"])
        paths.extend(sorted(directory.glob("*.toml")))
    if not paths:
        where = ", ".join(f"{d}/*.toml" for d in dirs)
        raise ConfigProblems([f"no configuration files found (looked in {where})"])
    return paths


def load(paths: list[Path]) -> Config:
    """Read and validate every file; raise ``ConfigProblems`` listing everything wrong."""
    problems: list[str] = []
    config = Config(files=list(paths))
    if not paths:
        raise ConfigProblems(["no configuration files found (looked in /etc/quictun/*.toml)"])
    sections: dict[str, str] = {}
    for path in paths:
        parsed = _read(path, problems)
        if parsed is None:
            continue
        for key in ("log", "api", "daemon", "metrics"):
            section = getattr(parsed, key)
            if section is None:
                continue
            if key in sections:
                if section != getattr(config, key):
                    problems.append(
                        f"{path.name}: [{key}] differs from the one in "
                        f"{sections[key]}; set it in one file only"
                    )
                continue
            sections[key] = path.name
            setattr(config, key, section)
        listeners: list[tuple[str, int, ClientSettings | ServerSettings]] = [
            *(("client", i, c) for i, c in enumerate(parsed.client)),
            *(("server", i, s) for i, s in enumerate(parsed.server)),
        ]
        for role, i, item in listeners:
            where = f"{path.name}: {role}[{i}]"
            if item.name in config.origins:
                problems.append(
                    f"{where}.name: {item.name!r} is already used by {config.origins[item.name]}"
                )
                continue
            config.origins[item.name] = where
            if isinstance(item, ClientSettings):
                config.clients.append(item)
            else:
                config.servers.append(item)
    problems.extend(_metrics_clashes(config, sections.get("metrics", "")))
    if problems:
        raise ConfigProblems(problems, partial=config)
    return config


def _metrics_clashes(config: Config, where: str) -> list[str]:
    """``[metrics] listen-on`` must not be a TCP address something else of ours listens on."""
    if config.metrics.listen_on is None:
        return []
    mine = parse_host_port(config.metrics.listen_on, allow_port_zero=True)
    if mine.port == 0:
        return []
    taken = [(f"client '{c.name}' listen-on", c.listen_on.host, c.listen_on.port)
             for c in config.clients if not c.listen_on.is_unix]  # fmt: skip
    if config.api.listen_on:
        api = parse_host_port(config.api.listen_on)
        taken.append(("[api] listen-on", api.host, api.port))
    return [
        f"{where}: metrics.listen-on: {mine} is also the {what}; pick another port"
        for what, host, port in taken
        if (host, port) == (mine.host, mine.port)
    ]


def _read(path: Path, problems: list[str]) -> ConfigFile | None:
    """Validate one file part by part, so one bad listener does not hide the others."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        problems.append(f"{path}: {os_reason(exc)}")
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: not valid TOML: {exc}")
        return None
    parts: dict[str, Any] = {}
    problems.extend(
        f"{path.name}: {_key(key)}: unknown key (got {data[key]!r})"
        for key in sorted(set(data) - set(ConfigFile.model_fields))
    )
    sections: tuple[tuple[str, type[_Section]], ...] = (
        ("log", LogSection),
        ("api", ApiSection),
        ("daemon", DaemonSection),
        ("metrics", MetricsSection),
    )
    for key, model in sections:
        if key in data:
            try:
                parts[key] = model.model_validate(data[key])
            except ValidationError as exc:
                problems.extend(f"{path.name}: {line}" for line in validation_lines(exc, key))
    roles: tuple[tuple[str, type[ClientSettings] | type[ServerSettings]], ...] = (
        ("client", ClientSettings),
        ("server", ServerSettings),
    )
    for role, listener in roles:
        items = data.get(role, [])
        if not isinstance(items, list):
            problems.append(f"{path.name}: {role}: expected [[{role}]] tables")
            continue
        good = []
        for i, item in enumerate(items):
            where = f"{role}[{i}]"
            if not isinstance(item, dict):
                problems.append(f"{path.name}: {where}: expected a table")
            elif "name" not in item:
                problems.append(
                    f"{path.name}: {where}.name: missing (every listener needs a "
                    "unique name; it appears in logs and the API)"
                )
            else:
                try:
                    good.append(listener.model_validate(item))
                except ValidationError as exc:
                    problems.extend(f"{path.name}: {line}" for line in validation_lines(exc, where))
        parts[role] = good
    return ConfigFile(**parts)


def validation_lines(exc: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = prefix
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            else:
                loc += f".{_key(part)}" if loc else _key(part)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing (required)"
        if "(got " not in msg and err["type"] not in ("missing",):
            msg += f" (got {err.get('input')!r})"
        lines.append(f"{loc}: {msg}")
    return lines


def _key(part: object) -> str:
    """A TOML key for a message: bare if it reads well, else quoted so it stays on one line."""
    text = str(part)
    if text and text.isprintable() and not any(c.isspace() for c in text):
        return text
    return json.dumps(text)  # a TOML basic string: "a\nb", "" (control characters escaped)


def dump(config: Config, *, minimal: bool = False) -> str:
    """The configuration as TOML that loads back to the same.

    ``minimal`` keeps only what differs from the defaults (plus each listener's name and the
    settings whose TOML default differs from quic-tun's), for ``convert``; otherwise every
    default is filled in, for ``dump-config``.
    """
    data = config.to_file().model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude_defaults=minimal
    )
    names = {
        "client": [(m.name, str(m.listen_on)) for m in config.clients],
        "server": [(m.name, str(m.listen_on)) for m in config.servers],
    }
    for role, pairs in names.items():
        for entry, (name, listen_on) in zip(data.get(role, []), pairs, strict=True):
            entry["name"] = name
            entry["listen-on"] = listen_on
    return _octal_modes(str(tomli_w.dumps(_plain(_ordered(data)))))


_MODE_LINE = re.compile(r"^(unix-socket-mode = )(\d+)$", re.MULTILINE)


def _octal_modes(text: str) -> str:
    """File modes in octal (``0o660``, valid TOML) as people write them; tomli_w has no
    octal output, and ``432`` means nothing to a reader."""
    return _MODE_LINE.sub(lambda m: f"{m[1]}0o{int(m[2]):03o}", text)


_FIRST = (
    "name",
    "listen-on",
    "server-endpoint",
    "token-source-plugin",
    "token-source",
    "token-parser-plugin",
    "token-parser-key",
    "allow",
)


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k not in ("client", "server") and v}
    for role in ("client", "server"):
        if data.get(role):
            out[role] = [
                {
                    **{k: e[k] for k in _FIRST if k in e},
                    **{k: v for k, v in e.items() if k not in _FIRST},
                }
                for e in data[role]
            ]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
