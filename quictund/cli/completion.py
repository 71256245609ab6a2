"""Bash completion for ``quictund``, generated from its argparse definitions.

Generated at package build time (debian/rules, like the man pages), so it completes exactly
the commands and flags of the installed code: ``python -m quictund.cli.completion`` prints the
script, which the package installs as /usr/share/bash-completion/completions/quictund.

What it completes:

1. subcommands (``run``, ``reload``, ``token sign``...) from the subparsers, at any depth;
2. each subcommand's options; ``quictund server`` / ``client`` take quic-tun's flags, so they
   get those of ``quictun-server`` / ``quictun-client``;
3. option values: files for files and sockets (``--config``, ``--ca-file``, ``--api``...),
   directories for ``--config-dir`` and the like, the choices of a choice option or the fixed
   words of a few known ones (``--log-level``); nothing for free text such as addresses;
4. positional file arguments (``quictund fingerprint FILE``) as files.

The generated script is plain bash (no bash-completion helpers needed) and defines only
``_quictund`` and ``__quictund_*`` functions.
"""

from __future__ import annotations

import argparse
import sys

from quictund.cli.cli_parser import build_parser
from quictund.config.compat import client_parser, server_parser

# Free-text options whose values are still one of a few words.
_WORDS = {
    "log_level": "debug info warning error",
    "log_format": "console json",
    "token_source_plugin": "Fixed File Http Signed",
    "token_parser_plugin": "Cleartext Signed",
    "verify_remote_endpoint": "true false",
}
_DIRS = ("config_dir", "drop_in_dir", "state_dir")
_FILES = ("config", "file", "api", "api_socket", "secret_file")


def _value_kind(action: argparse.Action) -> str:
    """What follows an option: ``file``, ``dir``, ``words:...``, ``any`` or ``none``."""
    if action.nargs == 0:
        return "none"
    if action.choices:
        return "words:" + " ".join(map(str, action.choices))
    dest = action.dest
    if dest in _WORDS:
        return "words:" + _WORDS[dest]
    if dest in _DIRS or dest.endswith("_dir"):
        return "dir"
    if dest in _FILES or dest.endswith("_file"):
        return "file"
    return "any"


class _Command:
    """One (sub)command: its options with their value kinds, subcommands and positionals."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.options: dict[str, str] = {}
        self.commands: dict[str, argparse.ArgumentParser] = {}
        self.positional = "none"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                self.commands.update(action.choices)
            elif action.help == argparse.SUPPRESS:
                continue
            elif action.option_strings:
                for option in action.option_strings:
                    self.options[option] = _value_kind(action)
            else:
                self.positional = _value_kind(action)


def _commands() -> dict[str, _Command]:
    """Every command path ("" for ``quictund`` itself, "token sign"...) and what it takes."""
    found: dict[str, _Command] = {}
    compat = {"server": server_parser(), "client": client_parser()}

    def walk(path: str, parser: argparse.ArgumentParser) -> None:
        command = found[path] = _Command(parser)
        for name, sub in command.commands.items():
            walk(f"{path} {name}".strip(), compat.get(name, sub) if not path else sub)

    walk("", build_parser())
    found["convert"].positional = "words:quictun-client quictun-server"
    return found


def _case(cases: dict[str, str], subject: str, default: str = "") -> str:
    lines = [f'    case "{subject}" in']
    for pattern, value in cases.items():
        lines.append(f'        "{pattern}") echo "{value}" ;;')
    lines.append(f'        *) echo "{default}" ;;')
    lines.append("    esac")
    return "\n".join(lines)


_MAIN = r"""
_quictund() {
    local cur=${COMP_WORDS[COMP_CWORD]} path="" expect="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ -n $expect ]]; then expect=""; continue; fi
        if [[ $word == -* ]]; then
            [[ $word == *=* ]] || expect=$(__quictund_value "$path" "$word")
            [[ $expect == none || $expect == "" ]] && expect=""
            continue
        fi
        if [[ " $(__quictund_commands "$path") " == *" $word "* ]]; then
            path=${path:+$path }$word
        fi
    done
    local kind=$expect
    if [[ -z $kind ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$(__quictund_options "$path")" -- "$cur"))
            return
        fi
        local commands
        commands=$(__quictund_commands "$path")
        if [[ -n $commands ]]; then
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
            return
        fi
        kind=$(__quictund_positional "$path")
    fi
    case $kind in
        file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
        dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")) ;;
        words:*) COMPREPLY=($(compgen -W "${kind#words:}" -- "$cur")) ;;
        *) COMPREPLY=() ;;
    esac
}
complete -F _quictund quictund
"""


def bash_script() -> str:
    """The whole completion script (see the module rules)."""
    commands = _commands()
    values = {
        f"{path}|{option}": kind
        for path, command in commands.items()
        for option, kind in command.options.items()
    }
    subcommands = {path: " ".join(c.commands) for path, c in commands.items() if c.commands}
    options = {path: " ".join(c.options) for path, c in commands.items()}
    positionals = {p: c.positional for p, c in commands.items() if c.positional != "none"}
    return "\n".join(
        [
            "# bash completion for quictund -- generated from its argparse definitions by",
            "# `python -m quictund.cli.completion` (quictund/cli/completion.py); do not edit.",
            "",
            "__quictund_commands() {",
            _case(subcommands, "$1"),
            "}",
            "__quictund_options() {",
            _case(options, "$1"),
            "}",
            "__quictund_value() {",
            _case(values, "$1|$2", "none"),
            "}",
            "__quictund_positional() {",
            _case(positionals, "$1", "none"),
            "}",
            _MAIN,
        ]
    )


if __name__ == "__main__":
    sys.stdout.write(bash_script())
