"""Write quictund(8), quictun-server(1) and quictun-client(1) from the argparse definitions.

Generated at package build time (debian/rules), so the man pages list exactly the commands and
flags the installed code accepts.  Usage: ``python mkman.py OUTDIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quictund import __version__
from quictund.cli.cli_parser import build_parser
from quictund.config.compat import client_parser, server_parser

DATE = "quictund " + __version__


def esc(text: str) -> str:
    """Escape for roff: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        skip = (argparse._SubParsersAction, argparse._HelpAction)
        if isinstance(action, skip) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + (action.metavar or action.dest.upper())
            names = ", ".join(f"\\fB{esc(o)}\\fR{esc(str(metavar))}" for o in action.option_strings)
        else:
            names = f"\\fI{esc(action.metavar or action.dest)}\\fR"
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text:
            if action.option_strings and action.nargs != 0 and "default" not in text:
                text = f"{text} (default: {action.default})".strip()
        out += [".TP", names, esc(text % {"prog": parser.prog, "default": action.default})]
    return out


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    out: list[str] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            full = f"{prefix} {name}"
            out += [".SS " + esc(full), esc(helps.get(name, "")) + "."]
            usage = " ".join(sub.format_usage().split()[1:])  # drop "usage:"
            out += [".PP", ".nf", f"\\fB{esc(usage)}\\fR", ".fi"]
            if name in ("server", "client"):
                out += [".PP", f"Takes the flags of \\fBquictun\\-{name}\\fR(1)."]
            opts = _options(sub)
            if opts:
                out += [".RS", *opts, ".RE"]
            out += _commands(sub, full)
    return out


def quictund_page() -> str:
    parser = build_parser()
    lines = [
        f'.TH QUICTUND 8 "" "{DATE}" "System Administration"',
        ".SH NAME",
        "quictund \\- QUIC tunnel daemon for TCP and UNIX\\-socket applications",
        ".SH SYNOPSIS",
        "\\fBquictund\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        (
            "quictund carries each local TCP or UNIX\\-socket connection accepted by a \\fIclient "
            "endpoint\\fR over one QUIC stream to a \\fIserver endpoint\\fR, which connects it to "
            "the destination named by the tunnel's token.  It speaks the wire protocol of "
            "quic\\-tun.  \\fBquictund run\\fR is the daemon; the other commands check, convert "
            "and inspect configurations and running daemons."
        ),
        ".SH COMMANDS",
        *_commands(parser, "quictund"),
        ".SH FILES",
        ".TP",
        "\\fI/etc/quictun/NAME.toml\\fR, \\fI/etc/quictun/NAME.d/*.toml\\fR",
        (
            "Configuration of the instance \\fBquictun@NAME.service\\fR.  "
            "\\fBquictund.service\\fR runs every \\fI/etc/quictun/*.toml\\fR instead."
        ),
        ".TP",
        "\\fI/run/quictun/NAME.sock\\fR",
        (
            "The tunnel API of instance NAME (\\fBquictund tunnels\\fR, \\fBstatus\\fR, "
            "\\fBreload\\fR)."
        ),
        ".TP",
        "\\fI/var/lib/quictund\\fR",
        "The self\\-signed server certificate, when no cert\\-file is configured.",
        ".TP",
        "\\fI/usr/lib/sysctl.d/60\\-quictund.conf\\fR",
        "Raises net.core.rmem_max and wmem_max to the daemon's UDP buffer size.",
        ".SH EXIT STATUS",
        (
            "0 on success (and after a clean shutdown), 78 (EX_CONFIG) for a configuration "
            "problem (one line per problem on standard error), 2 for bad usage, 1 otherwise."
        ),
        ".SH SIGNALS",
        (
            "SIGHUP reloads the configuration (unchanged listeners keep their tunnels; a broken "
            "file is rejected and the old configuration keeps running).  SIGTERM stops accepting, "
            "lets open tunnels finish for shutdown\\-grace seconds, then exits 0; a second SIGTERM "
            "resets them at once."
        ),
        ".SH SEE ALSO",
        (
            "\\fBquictun\\-server\\fR(1), \\fBquictun\\-client\\fR(1), \\fBsystemctl\\fR(1), "
            "/usr/share/doc/quictund/operations.md.gz, /usr/share/doc/quictund/configuration.md.gz"
        ),
    ]
    return "\n".join(lines) + "\n"


def compat_page(role: str, parser: argparse.ArgumentParser) -> str:
    usage = " ".join(parser.format_usage().split()[1:])
    other = "client" if role == "server" else "server"
    lines = [
        f'.TH QUICTUN\\-{role.upper()} 1 "" "{DATE}" "User Commands"',
        ".SH NAME",
        f"quictun\\-{role} \\- quic\\-tun compatible {role} endpoint (quictund)",
        ".SH SYNOPSIS",
        ".nf",
        f"\\fB{esc(usage)}\\fR",
        ".fi",
        ".SH DESCRIPTION",
        f"Runs one quic\\-tun {role} endpoint with quic\\-tun's flags and their meanings "
        "(insecure defaults included, each with a WARNING saying how to turn the protection "
        "on).  The same as \\fBquictund " + role + "\\fR.",
        ".SH OPTIONS",
        *_options(parser),
        ".SH SEE ALSO",
        f"\\fBquictun\\-{other}\\fR(1), \\fBquictund\\fR(8)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "quictund.8").write_text(quictund_page())
    (out / "quictun-server.1").write_text(compat_page("server", server_parser()))
    (out / "quictun-client.1").write_text(compat_page("client", client_parser()))


if __name__ == "__main__":
    main()
