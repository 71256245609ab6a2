"""The packaging files agree with the code: unit command lines parse, man pages list every
command, the Debian version is the code's version.  (The package itself is tested under a
real systemd by ``make e2e-systemd``.)"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from quictund import __version__
from quictund.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "packaging" / "systemd"
DEB = ROOT / "packaging" / "deb"


def unit(name: str) -> dict[str, list[str]]:
    """``[Service]`` and friends as key -> every value (systemd keys repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def command(line: str, instance: str = "client") -> list[str]:
    words = shlex.split(line.replace("%i", instance).replace("$MAINPID", "4242"))
    assert words[0] == "/usr/bin/quictund"
    return words[1:]


@pytest.mark.parametrize("name", ["quictun@.service", "quictund.service"])
def test_unit_command_lines_parse(name: str) -> None:
    u = unit(name)
    assert u["Service.Type"] == ["notify"]
    run = build_parser().parse_args(command(u["Service.ExecStart"][0]))
    reload = build_parser().parse_args(command(u["Service.ExecReload"][0]))
    assert run.command == "run" and reload.command == "reload"
    assert reload.pid == 4242
    # the reload command asks the API socket the daemon was told to serve
    assert run.api_socket == reload.api
    if name == "quictun@.service":
        assert run.config == ["/etc/quictun/client.toml"]
        assert run.drop_in_dir == ["/etc/quictun/client.d"]
        assert run.api_socket == "/run/quictun/client.sock"


def test_units_share_their_sandbox() -> None:
    template, host = unit("quictun@.service"), unit("quictund.service")
    differ = {k for k in template.keys() | host.keys() if template.get(k) != host.get(k)}
    assert differ == {
        "Unit.Description",
        "Unit.AssertPathExists",
        "Service.ExecStart",
        "Service.ExecReload",
    }
    assert template["Service.RuntimeDirectoryPreserve"] == ["yes"]  # instances share /run/quictun
    assert template["Service.RestartPreventExitStatus"] == ["78"]


def test_man_pages_list_every_command(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("mkman", DEB / "mkman.py")
    assert spec is not None and spec.loader is not None
    mkman = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mkman)
    page = mkman.quictund_page()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    commands = subparsers.choices
    assert isinstance(commands, dict) and commands
    for name, sub in commands.items():
        assert f".SS quictund {mkman.esc(name)}\n" in page
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:  # internal (the workers' supervisor sets them)
                continue
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert mkman.esc(flag) in page, (name, flag)
    assert ".SS quictund token sign\n" in page
    assert "\\-\\-server\\-endpoint" in mkman.compat_page("client", mkman.client_parser())


def test_debian_version_is_the_code_version() -> None:
    first = (DEB / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"quictund \(([^)]+)\)", first)
    assert match is not None
    assert re.split(r"[-+~]", match.group(1))[0] == __version__


def test_debian_install_lists_existing_files() -> None:
    for line in (DEB / "debian" / "quictund.install").read_text().splitlines():
        source = line.split()[0]
        assert (ROOT / source).is_file(), source


def test_sysctl_drop_in_matches_the_default_socket_buffer() -> None:
    from quictund.config.settings import ClientSettings

    default = ClientSettings.model_fields["socket_buffer"].default
    conf = configparser.ConfigParser()
    conf.read_string("[s]\n" + (DEB / "60-quictund.conf").read_text())
    assert int(conf["s"]["net.core.rmem_max"]) == int(conf["s"]["net.core.wmem_max"]) == default


def test_license_is_an_spdx_string_with_its_file() -> None:
    """setuptools >= 77 warns on every build about a `project.license` table (PEP 639)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert "Permission is hereby granted" in (ROOT / "LICENSE").read_text()
    build = (DEB / "build.sh").read_text()
    assert " LICENSE " in build  # the package build copies it too


def test_units_give_the_api_socket_to_its_own_group() -> None:
    for name in ("quictun@.service", "quictund.service"):
        u = unit(name)
        run = build_parser().parse_args(command(u["Service.ExecStart"][0]))
        assert run.api_group == "quictun-api"
        assert u["Service.SupplementaryGroups"] == ["quictun-api"]
        assert u["Service.Group"] == ["quictun"]  # /etc/quictun stays readable by quictun only
        assert u["Service.PrivateUsers"] == ["no"]  # else chown to quictun-api is EINVAL
    postinst = (DEB / "debian" / "quictund.postinst").read_text()
    assert "addgroup --system --quiet quictun-api" in postinst


def test_purge_leaves_what_an_admin_made() -> None:
    postrm = (DEB / "debian" / "quictund.postrm").read_text()
    code = "\n".join(line for line in postrm.splitlines() if not line.lstrip().startswith("#"))
    assert "rm -rf /etc/quictun" not in code
    assert ".service.d" not in code  # `systemctl edit` drop-ins are the admin's
