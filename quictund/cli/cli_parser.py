"""The ``quictund`` command line: every command, option and help text.

Kept apart from ``cli.py`` (which runs the commands) because packaging/deb/mkman.py writes the
man page from it: what ``--help`` says and what ``man quictund`` says are the same text.
"""

from __future__ import annotations

import argparse

from quictund import __version__
from quictund.cli import inspect_cli, reload_cli

DESCRIPTION = (
    "QUIC tunnels for TCP and UNIX-socket applications, wire-compatible with quic-tun: a "
    "client endpoint carries each local connection over QUIC to a server endpoint, which "
    "connects it to the destination its token names (if its policy allows it)."
)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="FILE",
        help="a TOML file (repeatable)",
    )
    p.add_argument(
        "--config-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="every *.toml in DIR, sorted (repeatable); default /etc/quictun",
    )
    p.add_argument(
        "--drop-in-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="like --config-dir, but DIR may be missing (systemd-style NAME.d drop-ins)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``quictund`` command line (also read by packaging/deb/mkman.py for the man page)."""
    parser = argparse.ArgumentParser(
        prog="quictund",
        description=DESCRIPTION,
        epilog="Start with `quictund demo`; configuration: /etc/quictun/*.toml "
        "(man quictund, /usr/share/doc/quictund).",
    )
    parser.add_argument("--version", action="version", version=f"quictund {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the listeners defined in TOML files (the daemon)")
    _config_args(run)
    run.add_argument(
        "--api-socket",
        default=None,
        metavar="PATH",
        help="serve the tunnel API on this UNIX socket (overrides [api] socket)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run N worker processes sharing the listening ports (default: [daemon] workers)",
    )
    run.add_argument(
        "--api-group",
        default=None,
        metavar="GROUP",
        help="group owner of the API socket unless [api] group names one (the packaged units "
        "use quictun-api)",
    )
    run.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # I/N, set by the supervisor
    run.add_argument("--worker-api", default=None, help=argparse.SUPPRESS)
    # ADDRESS=FD: a server socket the supervisor bound for this worker (quic/steering.py)
    run.add_argument("--udp-socket", action="append", default=[], help=argparse.SUPPRESS)
    reload = sub.add_parser(
        "reload",
        help="reload a running daemon and wait for the verdict: exit 0 if the new "
        "configuration was accepted, 78 with the reason if it was rejected (systemd ExecReload)",
    )
    reload_cli.add_arguments(reload)
    check = sub.add_parser(
        "check", help="validate TOML files: exit 0, or 78 with one line per problem"
    )
    _config_args(check)
    dump = sub.add_parser(
        "dump-config", help="print the effective configuration as TOML, defaults filled in"
    )
    _config_args(dump)
    sub.add_parser(
        "convert",
        help="print the TOML for a quic-tun command line: quictund "
        "convert -- quictun-client --listen-on ...",
        usage="quictund convert -- quictun-client|quictun-server [FLAGS...]",
        add_help=False,
    )
    sub.add_parser(
        "server",
        add_help=False,
        usage="quictund server [--listen-on HOST:PORT] [--allow DEST...] [FLAGS...]",
        help="run a quic-tun compatible server endpoint (flags as quictun-server)",
    )
    sub.add_parser(
        "client",
        add_help=False,
        usage="quictund client --server-endpoint HOST:PORT --token-source TOKEN "
        "[--listen-on ADDR] [FLAGS...]",
        help="run a quic-tun compatible client endpoint (flags as quictun-client)",
    )
    fingerprint = sub.add_parser(
        "fingerprint",
        help="print the public-key fingerprint of a PEM "
        "certificate, for server-fingerprint / client-fingerprints",
    )
    fingerprint.add_argument("file", metavar="FILE", help="a PEM certificate")
    token = sub.add_parser(
        "token", help="signed tokens: quictund token sign --secret-file F --audience A DEST"
    )
    token_sub = token.add_subparsers(dest="token_command", required=True)
    sign = token_sub.add_parser(
        "sign", help="print a signed token for DEST (tcp:HOST:PORT or unix:/path)"
    )
    sign.add_argument(
        "destination", metavar="DEST", help="what the token allows: tcp:HOST:PORT or unix:/path"
    )
    sign.add_argument(
        "--secret-file",
        required=True,
        metavar="FILE",
        help="the shared secret (>= 32 bytes, not readable by others): the server's "
        "token-parser-key, the client's token-secret-file",
    )
    sign.add_argument("--audience", required=True, help="the server's token-audience")
    sign.add_argument(
        "--ttl", type=float, default=300.0, metavar="SECONDS", help="how long the token is valid"
    )
    tunnels = sub.add_parser("tunnels", help="list the open tunnels (from the API socket)")
    inspect_cli.add_arguments(tunnels)
    status = sub.add_parser("status", help="listeners and QUIC connections (from the API socket)")
    inspect_cli.add_arguments(status)
    demo = sub.add_parser(
        "demo",
        help="run a server, a client and an echo app on loopback, prove the tunnel, and keep "
        "running for you to try it",
    )
    demo.add_argument(
        "--client-port", type=int, default=6500, metavar="PORT", help="the client's TCP listener"
    )
    demo.add_argument(
        "--server-port", type=int, default=7500, metavar="PORT", help="the server's UDP port"
    )
    demo.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep the demo certificate here (default: a temporary directory, removed at exit)",
    )
    demo.add_argument("--once", action="store_true", help="exit after proving the tunnel")
    return parser
