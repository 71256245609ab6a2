"""TOML configuration files: ``quictund check``, ``dump-config``, ``convert`` and the examples.

The command-line tests run ``python -m quictund`` as a real subprocess, so exit codes and the
exact stderr lines (one per problem, each starting with the file name) are what a person sees.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from quictund.cli.main import EX_CONFIG, client_parser, compat_config, server_parser
from quictund.config import files as config_files
from quictund.config.files import (
    ApiSection,
    Config,
    ConfigFile,
    ConfigProblems,
    DaemonSection,
    LogSection,
    dump,
    find_files,
    load,
    validation_lines,
)
from quictund.config.settings import ClientSettings, ServerSettings
from quictund.policy.tls import ensure_self_signed

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "etc" / "quictun"
MiB = 1024 * 1024


# ----------------------------------------------------------------------------- helpers


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.err.splitlines()


def quictund(*args: str | Path, cwd: Path | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "quictund", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def check(*files: Path) -> Result:
    args: list[str | Path] = []
    for f in files:
        args += ["--config", f]
    return quictund("check", *args)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _same(a: Config, b: Config) -> None:
    assert a.clients == b.clients
    assert a.servers == b.servers
    assert a.log == b.log
    assert a.api == b.api
    assert a.daemon == b.daemon


def _write(directory: Path, files: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text.replace("@TMP@", str(directory)))
        paths.append(path)
    return paths


def _assert_lines(lines: list[str], expected: list[str | re.Pattern[str]]) -> None:
    """Exactly one line per expected entry (a literal line or a fullmatch pattern), any order."""
    left = list(lines)
    missing = []
    for want in expected:
        for line in left:
            if want.fullmatch(line) if isinstance(want, re.Pattern) else want == line:
                left.remove(line)
                break
        else:
            missing.append(want)
    assert not missing and not left, f"missing: {missing!r}\nunexpected: {left!r}"


MISSING_DIR = "does not exist (create it, or give --config FILE)"

# ----------------------------------------------------------------------------- examples


@dataclass
class Examples:
    dir: Path
    client: Path
    server: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Examples:
    """Both examples copied, their /etc/quictun certificate paths pointing at real files."""
    tmp = tmp_path_factory.mktemp("examples")
    cert, key = ensure_self_signed(tmp / "state", ["localhost", "tunnel.example.com"])
    conf = tmp / "conf"
    conf.mkdir()
    replace = {'"/etc/quictun/tunnel-server.pem"': f'"{cert}"'}
    for name in ("client.toml", "server.toml"):
        text = (EXAMPLES / name).read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        (conf / name).write_text(text)
        stale = [s for s in _strings(tomllib.loads(text)) if s.startswith("/etc/quictun")]
        assert not stale, f"{name}: paths left pointing at /etc/quictun: {stale}"
    return Examples(conf, conf / "client.toml", conf / "server.toml", cert, key)


def test_examples_use_the_generated_certificates(examples: Examples) -> None:
    client = load([examples.client])
    server = load([examples.server])
    assert {c.ca_file for c in client.clients} == {str(examples.cert)}
    assert all(c.verify_remote_endpoint for c in client.clients)
    # the server makes its own (self-signed) certificate, which clients get as their ca-file
    assert [(s.cert_file, s.key_file) for s in server.servers] == [(None, None)]


@pytest.mark.parametrize("role", ["client", "server"])
def test_check_accepts_each_example_alone(examples: Examples, role: str) -> None:
    result = check(examples.dir / f"{role}.toml")
    assert result.rc == 0, result.err
    names = {"client": "ssh, db", "server": "edge"}[role]
    assert result.out == f"ok: 1 file(s), {names}\n"
    assert result.err == ""


def test_check_accepts_both_examples_in_one_dir(examples: Examples) -> None:
    result = quictund("check", "--config-dir", examples.dir)
    assert result.rc == 0, result.err
    assert result.out == "ok: 2 file(s), ssh, db, edge\n"
    assert result.err == ""


def test_check_accepts_both_examples_given_as_files(examples: Examples) -> None:
    result = check(examples.server, examples.client)
    assert result.rc == 0, result.err
    assert result.out == "ok: 2 file(s), edge, ssh, db\n"


def _default_dump_keys(config: Config) -> tuple[set[str], set[str]]:
    """(keys of the [log]/[daemon]/[api] sections, keys of the listeners) in ``dump``."""
    data = tomllib.loads(dump(config))
    sections: set[str] = set()
    listeners: set[str] = set()
    for value in data.values():
        if isinstance(value, list):
            for entry in value:
                listeners |= set(entry)
        else:
            sections |= set(value)
    return sections, listeners


def _mentioned(text: str, key: str) -> bool:
    """``key = ...`` set or shown in a comment (``# key = ...``)."""
    return re.search(rf"^[ \t]*#?[ \t]*{re.escape(key)}[ \t]*=", text, re.MULTILINE) is not None


def test_examples_document_every_default_setting() -> None:
    client_cfg = Config(clients=[ClientSettings.model_validate({"server-endpoint": "h:1"})])
    server_cfg = Config(servers=[ServerSettings()])
    texts = {name: (EXAMPLES / f"{name}.toml").read_text() for name in ("client", "server")}
    missing: dict[str, list[str]] = {}
    for role, cfg in (("client", client_cfg), ("server", server_cfg)):
        sections, listeners = _default_dump_keys(cfg)
        assert {"level", "format", "shutdown-grace"} <= sections
        absent = sorted(k for k in listeners if not _mentioned(texts[role], k))
        if absent:
            missing[f"etc/quictun/{role}.toml"] = absent
        # [log] and [daemon] belong in one file only: either example may document them.
        absent = sorted(k for k in sections if not any(_mentioned(t, k) for t in texts.values()))
        if absent:
            missing["etc/quictun/*.toml (sections)"] = absent
    assert not missing, f"settings the examples do not mention: {missing}"


# ----------------------------------------------------------------------------- broken files


BROKEN: dict[str, tuple[dict[str, str], list[str | re.Pattern[str]]]] = {
    "bad-toml-syntax": (
        {"bad.toml": '[[client]\nname = "x"\n'},
        [re.compile(r"bad\.toml: not valid TOML: .*\(at line 1, column \d+\)")],
    ),
    "unknown-key": (
        {
            "client.toml": '[[client]]\nname = "ssh"\nserver-endpoint = "h:7500"\n'
            'token-source = "tcp:10.0.0.5:22"\nlisen-on = "tcp:127.0.0.1:6500"\n'
        },
        ["client.toml: client[0].lisen-on: unknown key (got 'tcp:127.0.0.1:6500')"],
    ),
    "unknown-section": (
        {"x.toml": '[clients]\nname = "a"\n'},
        ["x.toml: clients: unknown key (got {'name': 'a'})"],
    ),
    "missing-name-client": (
        {"client.toml": '[[client]]\nserver-endpoint = "h:7500"\ntoken-source = "t"\n'},
        [
            (
                "client.toml: client[0].name: missing (every listener needs a unique name; "
                "it appears in logs and the API)"
            )
        ],
    ),
    "missing-name-server": (
        {"server.toml": '[[server]]\nallow = ["*"]\n'},
        [
            (
                "server.toml: server[0].name: missing (every listener needs a unique name; "
                "it appears in logs and the API)"
            )
        ],
    ),
    "duplicate-name-across-files": (
        {
            "a.toml": '[[client]]\nname = "ssh"\nserver-endpoint = "h:7500"\ntoken-source = "t"\n',
            "b.toml": '[[client]]\nname = "web"\nserver-endpoint = "h:7500"\ntoken-source = "t"\n'
            '[[client]]\nname = "ssh"\nserver-endpoint = "h:7500"\ntoken-source = "t"\n',
        },
        ["b.toml: client[1].name: 'ssh' is already used by a.toml: client[0]"],
    ),
    "duplicate-name-across-roles": (
        {
            "x.toml": '[[client]]\nname = "edge"\nserver-endpoint = "h:7500"\ntoken-source = "t"\n'
            '[[server]]\nname = "edge"\nallow = ["*"]\n'
        },
        ["x.toml: server[0].name: 'edge' is already used by x.toml: client[0]"],
    ),
    "bad-listen-on-issue-example": (
        {
            "client.toml": '[[client]]\nname = "a"\nserver-endpoint = "h:7500"\n'
            'token-source = "t"\n'
            '[[client]]\nname = "b"\nlisten-on = "6500"\nserver-endpoint = "h:7500"\n'
            'token-source = "t"\n'
        },
        ["client.toml: client[1].listen-on: not a tcp:/unix: address (got '6500')"],
    ),
    "bad-listen-on-server": (
        {"s.toml": '[[server]]\nname = "s"\nlisten-on = "7500"\nallow = ["*"]\n'},
        ["s.toml: server[0].listen-on: not a host:port address (got '7500')"],
    ),
    "bad-listen-on-unix-empty": (
        {"c.toml": '[[client]]\nname = "a"\nlisten-on = "unix:"\nserver-endpoint = "h:1"\n'},
        ["c.toml: client[0].listen-on: unix: needs a socket path (got 'unix:')"],
    ),
    "bad-server-endpoint": (
        {"c.toml": '[[client]]\nname = "a"\nserver-endpoint = "tunnel.example.com"\n'},
        ["c.toml: client[0].server-endpoint: not a host:port address (got 'tunnel.example.com')"],
    ),
    "server-endpoint-port-out-of-range": (
        {"c.toml": '[[client]]\nname = "a"\nserver-endpoint = "h:70000"\n'},
        ["c.toml: client[0].server-endpoint: port out of range (got 'h:70000')"],
    ),
    "server-endpoint-missing": (
        {"c.toml": '[[client]]\nname = "a"\n'},
        ["c.toml: client[0].server-endpoint: missing (required)"],
    ),
    "bad-allow-rule": (
        {"s.toml": '[[server]]\nname = "edge"\nallow = ["tcp:10.0.0.0/8:22", "ssh"]\n'},
        [
            (
                "s.toml: server[0]: server 'edge': allow: not a tcp:HOST:PORTS or unix:PATH rule "
                "(got 'ssh')"
            )
        ],
    ),
    "bad-allow-ports": (
        {"s.toml": '[[server]]\nname = "edge"\nallow = ["tcp:10.0.0.0/8:99999"]\n'},
        [
            (
                "s.toml: server[0]: server 'edge': allow: port range out of order or bounds "
                "(got '99999' in 'tcp:10.0.0.0/8:99999')"
            )
        ],
    ),
    "server-without-allow": (
        {"server.toml": '[[server]]\nname = "edge"\n'},
        [re.compile(r"server\.toml: server\[0\]: server 'edge': no allow list; .*allow = \[.*")],
    ),
    "unknown-token-source-plugin": (
        {
            "c.toml": '[[client]]\nname = "a"\nserver-endpoint = "h:1"\n'
            'token-source-plugin = "Vault"\ntoken-source = "x"\n'
        },
        [
            (
                "c.toml: client[0]: unknown token source plugin 'Vault'; "
                "known: Fixed, File, Http, Signed"
            )
        ],
    ),
    "unknown-token-parser-plugin": (
        {"s.toml": '[[server]]\nname = "s"\nallow = ["*"]\ntoken-parser-plugin = "Jwt"\n'},
        ["s.toml: server[0]: unknown token parser plugin 'Jwt'; known: Cleartext, Signed"],
    ),
    "unknown-token-parser-key": (
        {"s.toml": '[[server]]\nname = "s"\nallow = ["*"]\ntoken-parser-key = "bas64"\n'},
        [
            (
                "s.toml: server[0]: unknown token-parser-key 'bas64' for Cleartext; "
                "use 'base64' or leave it empty"
            )
        ],
    ),
    "cert-file-does-not-exist": (
        {
            "s.toml": '[[server]]\nname = "s"\nallow = ["*"]\n'
            'cert-file = "@TMP@/nope.pem"\nkey-file = "@TMP@/nope.key"\n'
        },
        ["s.toml: server[0]: cert-file @TMP@/nope.pem: no such file"],
    ),
    "cert-file-without-key-file": (
        {"s.toml": '[[server]]\nname = "s"\nallow = ["*"]\ncert-file = "@TMP@/c.pem"\n'},
        ["s.toml: server[0]: server 's': cert-file and key-file go together"],
    ),
    # (a *client's* missing ca-file is waited for, not an error: tests/e2e/test_server_cert.py)
    "ca-file-does-not-exist": (
        {
            "s.toml": '[[server]]\nname = "s"\nallow = ["*"]\nverify-remote-endpoint = true\n'
            'ca-file = "@TMP@/ca.pem"\n'
        },
        ["s.toml: server[0]: ca-file @TMP@/ca.pem: No such file or directory"],
    ),
    "client-ca-file-not-pem": (
        {
            "c.toml": '[[client]]\nname = "a"\nserver-endpoint = "h:1"\ntoken-source = "t"\n'
            'ca-file = "@TMP@/c.toml"\n'
        },
        ["c.toml: client[0]: ca-file @TMP@/c.toml: no PEM certificate in it"],
    ),
    "negative-idle-timeout": (
        {
            "c.toml": '[[client]]\nname = "a"\nserver-endpoint = "h:1"\ntoken-source = "t"\n'
            "idle-timeout = -1\n"
        },
        ["c.toml: client[0].idle-timeout: Input should be greater than 0 (got -1)"],
    ),
    "send-budget-below-one-tunnel": (
        {"s.toml": '[[server]]\nname = "s"\nallow = ["*"]\nconnection-send-budget = 65536\n'},
        [
            (
                "s.toml: server[0].connection-send-budget: Input should be greater than or "
                "equal to 1048576 (got 65536)"
            )
        ],
    ),
    "log-level-bogus": (
        {"l.toml": '[log]\nlevel = "bogus"\n'},
        ["l.toml: log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'bogus')"],
    ),
    "log-differs-between-files": (
        {"a.toml": '[log]\nlevel = "debug"\n', "b.toml": '[log]\nlevel = "info"\n'},
        ["b.toml: [log] differs from the one in a.toml; set it in one file only"],
    ),
    "daemon-differs-between-files": (
        {
            "a.toml": "[daemon]\nshutdown-grace = 1\n",
            "b.toml": "[daemon]\nshutdown-grace = 1\n",
            "c.toml": "[daemon]\nshutdown-grace = 2\n",
        },
        ["c.toml: [daemon] differs from the one in a.toml; set it in one file only"],
    ),
    "several-schema-problems-in-one-file": (
        {
            "many.toml": '[log]\nlevel = "bogus"\n[[client]]\nname = "m"\nlisten-on = "6500"\n'
            'server-endpoint = "nope"\nidle-timeout = -1\n'
        },
        [
            (
                "many.toml: log.level: Input should be 'debug', 'info', 'warning' or 'error' "
                "(got 'bogus')"
            ),
            "many.toml: client[0].idle-timeout: Input should be greater than 0 (got -1)",
            "many.toml: client[0].listen-on: not a tcp:/unix: address (got '6500')",
            "many.toml: client[0].server-endpoint: not a host:port address (got 'nope')",
        ],
    ),
    "several-build-problems-in-one-file": (
        {
            "srv.toml": '[[server]]\nname = "s1"\n'
            '[[server]]\nname = "s2"\nallow = ["foo"]\n'
            '[[server]]\nname = "s3"\nallow = ["*"]\ntoken-parser-key = "bas64"\n'
            '[[client]]\nname = "c1"\nserver-endpoint = "h:1"\ntoken-source-plugin = "Nope"\n'
        },
        [
            re.compile(r"srv\.toml: server\[0\]: server 's1': no allow list; .*"),
            (
                "srv.toml: server[1]: server 's2': allow: not a tcp:HOST:PORTS or unix:PATH rule "
                "(got 'foo')"
            ),
            (
                "srv.toml: server[2]: unknown token-parser-key 'bas64' for Cleartext; "
                "use 'base64' or leave it empty"
            ),
            (
                "srv.toml: client[0]: unknown token source plugin 'Nope'; "
                "known: Fixed, File, Http, Signed"
            ),
        ],
    ),
    "problems-in-two-files": (
        {
            "a.toml": '[[client]]\nname = "a"\nserver-endpoint = "nope"\n',
            "b.toml": '[[server]]\nname = "b"\nlisten-on = "x"\n',
        },
        [
            "a.toml: client[0].server-endpoint: not a host:port address (got 'nope')",
            "b.toml: server[0].listen-on: not a host:port address (got 'x')",
        ],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_broken_files(tmp_path: Path, case: str) -> None:
    files, expected = BROKEN[case]
    paths = _write(tmp_path, files)
    result = check(*paths)
    assert result.rc == EX_CONFIG, (result.out, result.err)
    assert result.out == ""
    for line in result.lines:
        assert line.split(": ", 1)[0] in files, f"line does not start with a file name: {line!r}"
    tmp = str(tmp_path)
    _assert_lines(
        result.lines,
        [w.replace("@TMP@", tmp) if isinstance(w, str) else w for w in expected],
    )


def test_there_are_at_least_ten_broken_cases() -> None:
    assert len(BROKEN) >= 10


def test_check_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = check(missing)
    assert result.rc == EX_CONFIG
    assert result.lines == [f"{missing}: No such file or directory"]


def test_check_missing_config_dir(tmp_path: Path) -> None:
    result = quictund("check", "--config-dir", tmp_path / "nowhere")
    assert result.rc == EX_CONFIG
    assert result.lines == [f"{tmp_path / 'nowhere'}: {MISSING_DIR}"]


def test_check_reports_every_missing_name_in_a_file(tmp_path: Path) -> None:
    """Bug: ``_read`` returns at the first listener without a name, hiding the rest."""
    (path,) = _write(
        tmp_path,
        {
            "c.toml": '[[client]]\nserver-endpoint = "h:1"\n'
            '[[client]]\nname = "b"\nserver-endpoint = "h:1"\nlisen-on = "x"\n'
            '[[server]]\nallow = ["*"]\n'
        },
    )
    result = check(path)
    assert result.rc == EX_CONFIG
    hint = "missing (every listener needs a unique name; it appears in logs and the API)"
    _assert_lines(
        result.lines,
        [
            f"c.toml: client[0].name: {hint}",
            "c.toml: client[1].lisen-on: unknown key (got 'x')",
            f"c.toml: server[0].name: {hint}",
        ],
    )


def test_check_reports_schema_and_build_problems_together(tmp_path: Path) -> None:
    """Issue: one line per problem -- a bad address must not hide a server without allow."""
    (path,) = _write(
        tmp_path,
        {
            "x.toml": '[[client]]\nname = "a"\nlisten-on = "6500"\nserver-endpoint = "h:1"\n'
            '[[server]]\nname = "edge"\n'
        },
    )
    result = check(path)
    assert result.rc == EX_CONFIG
    _assert_lines(
        result.lines,
        [
            "x.toml: client[0].listen-on: not a tcp:/unix: address (got '6500')",
            re.compile(r"x\.toml: server\[0\]: server 'edge': no allow list; .*allow = \[.*"),
        ],
    )


@pytest.mark.parametrize(
    ("listener", "field"),
    [
        ('[[client]]\nname = "a"\nlisten-on = 6500\nserver-endpoint = "h:1"\n', "listen-on"),
        (
            (
                '[[client]]\nname = "a"\nlisten-on = { network = "unix", path = "" }\n'
                'server-endpoint = "h:1"\ntoken-source = "t"\n'
            ),
            "listen-on",
        ),
        (
            (
                '[[client]]\nname = "a"\nserver-endpoint = { host = "h", port = 70000 }\n'
                'token-source = "t"\n'
            ),
            "server-endpoint",
        ),
        (
            '[[server]]\nname = "s"\nlisten-on = { host = "::", port = 99999 }\nallow = ["*"]\n',
            "listen-on",
        ),
    ],
    ids=["int-listen-on", "table-unix-no-path", "table-port-70000", "table-server-port-99999"],
)
def test_check_address_fields_accept_only_strings(
    tmp_path: Path, listener: str, field: str
) -> None:
    """Bug: a TOML integer or inline table skips ``parse_*`` (the validators only parse str)."""
    (path,) = _write(tmp_path, {"a.toml": listener})
    result = check(path)
    assert result.rc == EX_CONFIG, result.out
    role = "client" if listener.startswith("[[client]]") else "server"
    assert len(result.lines) == 1, result.lines
    (line,) = result.lines
    assert line.startswith(f"a.toml: {role}[0].{field}: "), line
    assert "StreamAddress" not in line and "HostPort" not in line, line


def test_check_empty_config_dir_names_that_dir(tmp_path: Path) -> None:
    """Bug: ``load`` always says it looked in /etc/quictun, whatever ``--config-dir`` was."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = quictund("check", "--config-dir", empty)
    assert result.rc == EX_CONFIG
    assert len(result.lines) == 1, result.lines
    assert str(empty) in result.lines[0], result.lines
    assert "/etc/quictun" not in result.lines[0], result.lines


# ----------------------------------------------------------------------------- dump-config


def _dump_and_reload(tmp_path: Path, *args: str | Path) -> tuple[str, Config]:
    result = quictund("dump-config", *args)
    assert result.rc == 0, result.err
    out = tmp_path / "dumped.toml"
    out.write_text(result.out)
    return result.out, load([out])


@pytest.mark.parametrize("which", ["client", "server", "both"])
def test_dump_config_round_trips_the_examples(
    examples: Examples, tmp_path: Path, which: str
) -> None:
    if which == "both":
        args: tuple[str | Path, ...] = ("--config-dir", examples.dir)
        original = load(find_files([], [str(examples.dir)]))
    else:
        path = examples.dir / f"{which}.toml"
        args = ("--config", path)
        original = load([path])
    text, reloaded = _dump_and_reload(tmp_path, *args)
    _same(reloaded, original)
    assert dump(reloaded) == text  # a fixed point


def test_dump_config_fills_in_every_default(tmp_path: Path) -> None:
    (path,) = _write(
        tmp_path,
        {
            "m.toml": '[[client]]\nname = "c"\nserver-endpoint = "h:1"\n'
            '[[server]]\nname = "s"\nallow = ["*"]\n'
        },
    )
    text, reloaded = _dump_and_reload(tmp_path, "--config", path)
    data = tomllib.loads(text)
    assert data["log"] == {"level": "info", "format": "console"}
    assert data["daemon"] == {"shutdown-grace": 10.0, "workers": 1}
    for role, model in (("client", ClientSettings), ("server", ServerSettings)):
        defaults = {
            f.alias or name
            for name, f in model.model_fields.items()
            if not f.is_required() and f.default is not None
        }
        (entry,) = data[role]
        assert defaults <= set(entry), sorted(defaults - set(entry))
    assert data["client"][0]["verify-remote-endpoint"] is True
    assert data["server"][0]["verify-remote-endpoint"] is False
    assert data["client"][0]["listen-on"] == "tcp:127.0.0.1:6500"
    assert data["server"][0]["listen-on"] == "0.0.0.0:7500"
    _same(reloaded, load([path]))


FULL = """\
[log]
level = "debug"
format = "json"

[api]
socket = "/run/quictund/api.sock"
group = "adm"
listen-on = "127.0.0.1:8080"

[daemon]
shutdown-grace = 2.5

[[client]]
name = "v6 \\"quoted\\" ü"
listen-on = "TCP6:[::1]:6501"
server-endpoint = "[2001:db8::1]:7501"
server-name = "tunnel.example.com"
token-source-plugin = "Http"
token-source = "http://127.0.0.1:9/token"
token-timeout = 1.5
cert-file = "/c.pem"
key-file = "/c.key"
ca-file = "/ca.pem"
verify-remote-endpoint = false
connect-wait = 0
unix-socket-mode = 0o600
idle-timeout = 600
keep-alive = 0
dead-after = 0.25
handshake-timeout = 120
congestion-control = "reno"
max-datagram-size = 1200
stream-window = 65536
connection-window = 262144
max-tunnels = 1
socket-buffer = 65536

[[client]]
name = "unix"
listen-on = "unix:/run/x y.sock"
server-endpoint = "h:1"
token-source-plugin = "File"
unix-socket-mode = 0

[client.token-map]
"@" = "unix:/a"
"10.0.0.0/8" = "tcp:1.2.3.4:5"

[[server]]
name = "srv"
listen-on = "[::]:0"
token-parser-plugin = "cleartext"
token-parser-key = "base64"
cert-file = "/s.pem"
key-file = "/s.key"
ca-file = "/ca.pem"
verify-remote-endpoint = true
allow = []
connect-timeout = 0.5
token-timeout = 300
max-connections = 1
state-dir = "/var/lib/x y"
"""


def test_dump_config_round_trips_every_setting(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, {"full.toml": FULL})
    original = load([path])
    assert original.api.listen_on == "127.0.0.1:8080"
    assert original.servers[0].allow == []
    text, reloaded = _dump_and_reload(tmp_path, "--config", path)
    _same(reloaded, original)
    assert dump(reloaded) == text


def test_dump_config_reports_problems(tmp_path: Path) -> None:
    (path,) = _write(tmp_path, {"l.toml": '[log]\nlevel = "bogus"\n'})
    result = quictund("dump-config", "--config", path)
    assert result.rc == EX_CONFIG
    assert result.out == ""
    assert result.lines == [
        "l.toml: log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'bogus')"
    ]


# One changed value at a time, applied to every listener of that role in the examples.
KNOBS: list[tuple[str, object]] = [
    ("idle-timeout", 600.0),
    ("idle-timeout", 0.001),
    ("keep-alive", 0.0),
    ("dead-after", 0.5),
    ("handshake-timeout", 120),
    ("congestion-control", "reno"),
    ("max-datagram-size", 1452),
    ("stream-window", 64 * 1024),
    ("connection-window", 1024 * MiB),
    ("max-tunnels", 1),
    ("connection-send-budget", 1 * MiB),
    ("socket-buffer", 256 * MiB),
    ("name", 'odd "name" with \\ and ü'),
    ("name", ""),
    ("cert-file", "/x y/c.pem"),
    ("key-file", "/x y/c.key"),
    ("ca-file", "/ca.pem"),
]
ALTERNATIVES: list[tuple[str, str, object]] = [
    *(("client", k, v) for k, v in KNOBS),
    *(("server", k, v) for k, v in KNOBS),
    ("client", "listen-on", "tcp6:[::1]:0"),
    ("client", "listen-on", "TCP4:127.0.0.1:65535"),
    ("client", "listen-on", "unix:/tmp/a b/ü.sock"),
    ("client", "server-endpoint", "[2001:db8::1]:65535"),
    ("client", "server-endpoint", "h.example:1"),
    ("client", "server-name", "x.example"),
    ("client", "token-source-plugin", "http"),
    ("client", "token-source", "http://h/t?a=b"),
    ("client", "token-map", {"@": "unix:/x", "::1": "tcp:[::1]:22", "10.0.0.0/8": "tcp:a:1"}),
    ("client", "token-timeout", 120.0),
    ("client", "verify-remote-endpoint", False),
    ("client", "connect-wait", 0),
    ("client", "unix-socket-mode", 0o777),
    ("client", "unix-socket-mode", 0),
    ("server", "listen-on", "[::]:0"),
    ("server", "listen-on", "127.0.0.1:65535"),
    ("server", "token-parser-plugin", "cleartext"),
    ("server", "token-parser-key", None),
    ("server", "allow", []),
    ("server", "allow", ["*"]),
    ("server", "allow", ["tcp:[::1]:1-65535", "unix:/run/*.sock", "tcp:*:*"]),
    ("server", "allow", None),
    ("server", "verify-remote-endpoint", True),
    ("server", "connect-timeout", 300.0),
    ("server", "token-timeout", 0.001),
    ("server", "max-connections", 1),
    ("server", "state-dir", "/var/lib/x y"),
]


@pytest.mark.parametrize(("role", "key", "value"), ALTERNATIVES)
def test_dump_load_round_trip_over_examples(
    examples: Examples, tmp_path: Path, role: str, key: str, value: object
) -> None:
    base = load([examples.client, examples.server])
    listeners = base.clients if role == "client" else base.servers
    model = ClientSettings if role == "client" else ServerSettings
    changed = []
    for i, item in enumerate(listeners):
        data = item.model_dump(mode="json", by_alias=True)
        data[key] = value
        if key == "name":
            data["name"] = f"{value}{i}"
        changed.append(model.model_validate(data))
    config = Config(
        clients=changed if role == "client" else base.clients,
        servers=changed if role == "server" else base.servers,
        log=base.log,
        api=base.api,
        daemon=base.daemon,
    )
    text = dump(config)
    path = tmp_path / "rt.toml"
    path.write_text(text)
    reloaded = load([path])
    _same(reloaded, config)
    assert dump(reloaded) == text


@pytest.mark.parametrize(
    ("log", "api", "daemon"),
    [
        (LogSection(level="warning", format="json"), ApiSection(), DaemonSection()),
        (
            LogSection(level="error"),
            ApiSection(socket="/run/a.sock", group="g", **{"listen-on": "[::1]:1"}),
            DaemonSection(**{"shutdown-grace": 0}),
        ),
        (LogSection(), ApiSection(group="wheel"), DaemonSection(**{"shutdown-grace": 3600})),
    ],
)
def test_dump_load_round_trip_sections(
    examples: Examples, tmp_path: Path, log: LogSection, api: ApiSection, daemon: DaemonSection
) -> None:
    base = load([examples.client, examples.server])
    config = Config(clients=base.clients, servers=base.servers, log=log, api=api, daemon=daemon)
    path = tmp_path / "rt.toml"
    path.write_text(dump(config))
    _same(load([path]), config)


# ----------------------------------------------------------------------------- convert


def _convert(tmp_path: Path, *argv: str) -> tuple[str, Config]:
    result = quictund("convert", "--", *argv)
    assert result.rc == 0, result.err
    path = tmp_path / "converted.toml"
    path.write_text(result.out)
    return result.out, load([path])


def _compat(role: str, flags: list[str]) -> Config:
    parser = client_parser() if role == "client" else server_parser()
    return compat_config(role, parser.parse_args(flags))


CLIENT_FLAGS = [
    "--listen-on",
    "tcp:127.0.0.1:6500",
    "--server-endpoint",
    "10.0.0.1:7500",
    "--token-source",
    "tcp:10.0.0.5:22",
]


def test_convert_client(tmp_path: Path) -> None:
    text, loaded = _convert(tmp_path, "quictun-client", *CLIENT_FLAGS)
    compat = _compat("client", CLIENT_FLAGS)
    assert loaded.clients == compat.clients
    assert loaded.servers == []
    assert loaded.log == compat.log
    assert loaded.daemon == compat.daemon
    # TOML verifies by default, quic-tun does not: the conversion has to say so.
    assert re.search(r"^verify-remote-endpoint = false$", text, re.MULTILINE), text
    assert tomllib.loads(text)["client"][0]["verify-remote-endpoint"] is False
    assert loaded.clients[0].verify_remote_endpoint is False


def test_convert_client_every_flag(tmp_path: Path) -> None:
    flags = [
        "--listen-on",
        "unix:/run/app.sock",
        "--server-endpoint",
        "[2001:db8::1]:7500",
        "--server-name",
        "tunnel.example.com",
        "--token-source-plugin",
        "File",
        "--token-source",
        "/etc/quictun/tokens",
        "--connect-wait",
        "3",
        "--cert-file",
        "/c.pem",
        "--key-file",
        "/c.key",
        "--ca-file",
        "/ca.pem",
        "--verify-remote-endpoint",
        "--log-level",
        "warn",
        "--log-format",
        "json",
        "--idle-timeout",
        "60",
        "--keep-alive",
        "0",
        "--shutdown-grace",
        "2",
    ]
    text, loaded = _convert(tmp_path, "/usr/bin/quictun-client", *flags)
    compat = _compat("client", flags)
    _same(loaded, compat)
    assert loaded.clients[0].verify_remote_endpoint is True
    assert loaded.log == LogSection(level="warning", format="json")


def test_convert_server_is_open_like_quic_tun(tmp_path: Path) -> None:
    text, loaded = _convert(tmp_path, "quictun-server")
    compat = _compat("server", [])
    assert compat.servers[0].allow is None  # the command line's open proxy ...
    assert tomllib.loads(text)["server"][0]["allow"] == ["*"]  # ... spelled out in TOML
    assert loaded.servers == [compat.servers[0].model_copy(update={"allow": ["*"]})]
    assert loaded.clients == []
    assert loaded.log == compat.log
    assert loaded.daemon == compat.daemon


def test_convert_server_with_allow_and_flags(tmp_path: Path) -> None:
    flags = [
        "--listen-on",
        "[::]:7501",
        "--allow",
        "tcp:10.0.0.0/8:22",
        "--allow",
        "unix:/run/postgresql/*",
        "--token-parser-key",
        "base64",
        "--cert-file",
        "/etc/quictun/server.pem",
        "--key-file",
        "/etc/quictun/server.key",
        "--token-timeout",
        "4",
        "--connect-timeout",
        "5",
        "--state-dir",
        "/var/lib/q",
    ]
    text, loaded = _convert(tmp_path, "quictun-server", *flags)
    compat = _compat("server", flags)
    _same(loaded, compat)
    data = tomllib.loads(text)["server"][0]
    assert data["allow"] == ["tcp:10.0.0.0/8:22", "unix:/run/postgresql/*"]
    assert data["token-parser-key"] == "base64"
    assert data["cert-file"] == "/etc/quictun/server.pem"
    assert data["key-file"] == "/etc/quictun/server.key"


def test_converted_files_pass_check(tmp_path: Path, examples: Examples) -> None:
    result = quictund("convert", "--", "quictun-client", *CLIENT_FLAGS)
    assert result.rc == 0
    client = tmp_path / "c.toml"
    client.write_text(result.out)
    result = quictund(
        "convert", "--", "quictun-server", "--allow", "tcp:10.0.0.5:22",
        "--cert-file", str(examples.cert), "--key-file", str(examples.key),
    )  # fmt: skip
    assert result.rc == 0
    server = tmp_path / "s.toml"
    server.write_text(result.out)
    checked = check(client, server)
    assert checked.rc == 0, checked.err
    assert checked.out == "ok: 2 file(s), client, server\n"


def test_convert_unknown_flag_exits_2() -> None:
    result = quictund("convert", "--", "quictun-client", "--server-endpoint", "h:1", "--bogus")
    assert result.rc == 2
    assert result.out == ""
    assert "unrecognized arguments: --bogus" in result.err


@pytest.mark.parametrize("argv", [[], ["--"], ["--", "quictun-proxy"]])
def test_convert_needs_a_quic_tun_command(argv: list[str]) -> None:
    result = quictund("convert", *argv)
    assert result.rc == 2
    assert "usage: quictund convert -- quictun-client|quictun-server" in result.err


def test_convert_bad_value_exits_78() -> None:
    result = quictund("convert", "--", "quictun-client", "--server-endpoint", "nope")
    assert result.rc == EX_CONFIG
    assert result.lines == ["quictun-client: server-endpoint: not a host:port address (got 'nope')"]


# ----------------------------------------------------------------------------- validation_lines


def _lines(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        ConfigFile.model_validate(data)
    return validation_lines(info.value)


def test_validation_lines_formats_locations_and_messages() -> None:
    lines = _lines(
        {
            "bogus": 1,
            "log": {"level": "loud"},
            "client": [
                {"name": "a", "server-endpoint": "h:1"},
                {"name": "b", "listen-on": "6500"},
            ],
            "server": [{"name": "s", "allow": ["*", 5], "max-connections": 0}],
        }
    )
    assert sorted(lines) == sorted(
        [
            "bogus: unknown key (got 1)",
            "log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'loud')",
            "client[1].listen-on: not a tcp:/unix: address (got '6500')",
            "client[1].server-endpoint: missing (required)",
            "server[0].max-connections: Input should be greater than or equal to 1 (got 0)",
            "server[0].allow[1]: Input should be a valid string (got 5)",
        ]
    )


def test_validation_lines_one_line_each() -> None:
    lines = _lines({"client": [{"name": "x", "server-endpoint": "a\nb", "idle-timeout": "x"}]})
    assert len(lines) == 2
    assert all("\n" not in line for line in lines)
    assert "client[0].server-endpoint: not a host:port address (got 'a\\nb')" in lines


def test_keys_with_line_breaks_are_quoted(tmp_path: Path) -> None:
    """Regression (found by fuzzing): a key holding a newline split its message in two."""
    path = tmp_path / "k.toml"
    path.write_text(
        '"a\\nb" = 1\n[[client]]\nname = "x"\nserver-endpoint = "h:1"\n'
        '"\\r" = 2\ntoken-map = { "\\u2028" = 3, "@" = 4 }\n'
    )
    with pytest.raises(ConfigProblems) as info:
        load([path])
    assert sorted(info.value.lines) == [
        'k.toml: "a\\nb": unknown key (got 1)',
        'k.toml: client[0]."\\r": unknown key (got 2)',
        'k.toml: client[0].token-map."\\u2028": Input should be a valid string (got 3)',
        "k.toml: client[0].token-map.@: Input should be a valid string (got 4)",
    ]


def test_validation_lines_does_not_repeat_got() -> None:
    (line,) = _lines({"client": [{"name": "x", "server-endpoint": "h:0"}]})
    assert line == "client[0].server-endpoint: port out of range (got 'h:0')"
    assert line.count("(got ") == 1


def test_validation_lines_nested_mapping() -> None:
    (line,) = _lines({"client": [{"name": "x", "server-endpoint": "h:1", "token-map": {"@": 1}}]})
    assert line == "client[0].token-map.@: Input should be a valid string (got 1)"


# ----------------------------------------------------------------------------- find_files


def test_find_files_sorted_toml_of_a_dir(tmp_path: Path) -> None:
    for name in ("b.toml", "a.toml", "c.toml.bak", "README", "10-z.toml"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "0.toml").write_text("")
    assert find_files([], [str(tmp_path)]) == [
        tmp_path / "10-z.toml",
        tmp_path / "a.toml",
        tmp_path / "b.toml",
    ]


def test_find_files_files_first_then_each_dir(tmp_path: Path) -> None:
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    (d1 / "y.toml").write_text("")
    (d1 / "x.toml").write_text("")
    (d2 / "a.toml").write_text("")
    found = find_files(["z.toml", "/abs/a.toml"], [str(d2), str(d1)])
    assert found == [
        Path("z.toml"),
        Path("/abs/a.toml"),
        d2 / "a.toml",
        d1 / "x.toml",
        d1 / "y.toml",
    ]


def test_find_files_only_files_skips_the_default_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_files, "DEFAULT_DIR", tmp_path / "absent")
    assert find_files(["one.toml"], []) == [Path("one.toml")]


@pytest.mark.parametrize("kind", ["missing", "a-file"])
def test_find_files_bad_dir(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "x"
    if kind == "a-file":
        bad.write_text("")
    with pytest.raises(ConfigProblems) as info:
        find_files([], [str(bad)])
    why = "not a directory" if kind == "a-file" else MISSING_DIR
    assert info.value.lines == [f"{bad}: {why}"]
    assert str(info.value) == f"{bad}: {why}"


def test_find_files_defaults_to_etc_quictun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Path("/etc/quictun") == config_files.DEFAULT_DIR
    (tmp_path / "server.toml").write_text("")
    (tmp_path / "client.toml").write_text("")
    monkeypatch.setattr(config_files, "DEFAULT_DIR", tmp_path)
    assert find_files([], []) == [tmp_path / "client.toml", tmp_path / "server.toml"]


def test_find_files_default_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_files, "DEFAULT_DIR", tmp_path / "etc-quictun")
    with pytest.raises(ConfigProblems) as info:
        find_files([], [])
    assert info.value.lines == [f"{tmp_path / 'etc-quictun'}: {MISSING_DIR}"]


def test_load_nothing_found() -> None:
    with pytest.raises(ConfigProblems) as info:
        load([])
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith("no configuration files found")


def test_load_records_origins(examples: Examples) -> None:
    config = load([examples.client, examples.server])
    assert config.origins == {
        "ssh": "client.toml: client[0]",
        "db": "client.toml: client[1]",
        "edge": "server.toml: server[0]",
    }
    assert config.files == [examples.client, examples.server]


def test_turning_reclaiming_off_is_a_warning(tmp_path: Path) -> None:
    """reclaim-stalled-after = 0 turns a protection off: said loudly, naming the listener."""
    (path,) = _write(
        tmp_path,
        {
            "c.toml": """
[[client]]
name = "ssh"
listen-on = "tcp:127.0.0.1:6500"
server-endpoint = "127.0.0.1:7500"
token-source-plugin = "Fixed"
token-source = "tcp:127.0.0.1:22"
server-fingerprint = "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
reclaim-stalled-after = 0
"""
        },
    )
    result = check(path)
    assert result.rc == 0, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("[ssh] reclaim-stalled-after = 0: tunnels whose app stops")
    path.write_text(path.read_text().replace("reclaim-stalled-after = 0", ""))
    assert check(path).err == ""  # the default says nothing
