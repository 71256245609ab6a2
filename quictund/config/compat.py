"""quic-tun's command lines: its flags, their meanings, and the configuration they stand for.

``quictun-server`` / ``quictun-client`` (and ``quictund server|client``) parse these flags;
``quictund convert`` turns the same command lines into TOML.  Pure: argparse in, ``Config`` out.
"""

from __future__ import annotations

import argparse

from quictund import __version__
from quictund.config.files import ApiSection, Config, DaemonSection, LogSection
from quictund.config.settings import ClientSettings, ServerSettings


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes", "on"):
        return True
    if value in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (got {text!r})")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s (quictund) {__version__}")
    p.add_argument("--cert-file", help="PEM certificate (chain) of this endpoint")
    p.add_argument("--key-file", help="PEM private key of this endpoint")
    p.add_argument("--ca-file", help="PEM CA bundle used to verify the remote endpoint")
    p.add_argument(
        "--verify-remote-endpoint",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="verify the remote endpoint's certificate (default false,"
        " as in quic-tun; the TOML format verifies by default)",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument("--log-format", default="console", help="console or json")
    p.add_argument(
        "--httpd-listen-on",
        default=None,
        help="also serve the tunnel API (quic-tun's GET /tunnels and more) on this TCP "
        "host:port; quic-tun listens on 0.0.0.0:8086 unasked, quictund only when asked",
    )
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument(
        "--udp-idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close a UDP flow that carried nothing for this long (quictund only)",
    )
    p.add_argument(
        "--quic-engine",
        default="aioquic",
        choices=["aioquic", "qh3"],
        help="QUIC implementation (a quictund extension; qh3 is an optional extra)",
    )
    p.add_argument(
        "--congestion-control",
        default="bbr",
        choices=["bbr", "cubic", "reno"],
        help="congestion controller, aioquic engine only (a quictund extension)",
    )
    p.add_argument(
        "--keep-alive",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="PING interval when idle; 0 disables",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long open tunnels may finish after SIGTERM",
    )


def server_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quictun-server", description="quic-tun compatible server endpoint (quictund)"
    )
    p.add_argument("--listen-on", default="0.0.0.0:7500", help="UDP host:port to listen on")
    p.add_argument("--token-parser-plugin", default="Cleartext")
    p.add_argument(
        "--token-parser-key",
        default="",
        help="'base64' to base64-decode tokens; empty for plain tokens",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="RULE",
        help="destination this server may reach (repeatable): tcp:CIDR|HOST:PORTS, "
        "udp:CIDR|HOST:PORTS, unix:PATH-GLOB or *; default: anything (quic-tun's open "
        "proxy, warned)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="where the self-signed certificate is kept when no --cert-file",
    )
    p.add_argument(
        "--token-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a new stream may take to deliver its 512-byte token",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long connecting to a destination may take",
    )
    p.add_argument(
        "--client-fingerprint",
        action="append",
        default=None,
        metavar="sha256:…",
        help="accept a client certificate by its public key (repeatable)",
    )
    _common(p)
    return p


def client_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quictun-client", description="quic-tun compatible client endpoint (quictund)"
    )
    p.add_argument(
        "--listen-on",
        default="tcp:127.0.0.1:6500",
        help="tcp:HOST:PORT or unix:/path to accept app connections on",
    )
    p.add_argument("--server-endpoint", required=True, help="UDP host:port of the server")
    p.add_argument(
        "--server-name",
        default=None,
        help="TLS name to verify (default: the host of --server-endpoint)",
    )
    p.add_argument("--token-source-plugin", default="Fixed", help="Fixed, File or Http")
    p.add_argument(
        "--token-source",
        default=None,
        help="the token (Fixed), a token file (File) or a URL (Http)",
    )
    p.add_argument(
        "--connect-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long an app connection waits for the QUIC connection to the "
        "server before it is refused",
    )
    p.add_argument(
        "--server-fingerprint",
        default=None,
        metavar="sha256:…",
        help="accept the server only by this public key (quictund fingerprint FILE)",
    )
    _common(p)
    return p


def _knobs(args: argparse.Namespace) -> dict[str, object]:
    return {
        "cert-file": args.cert_file or None,
        "key-file": args.key_file or None,
        "ca-file": args.ca_file or None,
        "verify-remote-endpoint": args.verify_remote_endpoint,
        "idle-timeout": args.idle_timeout,
        "udp-idle-timeout": args.udp_idle_timeout,
        "keep-alive": args.keep_alive,
        "quic-engine": args.quic_engine,
        "congestion-control": args.congestion_control,
    }


def compat_config(role: str, args: argparse.Namespace) -> Config:
    """The configuration a quic-tun command line means (its insecure defaults included)."""
    if role == "server":
        servers = [
            ServerSettings.model_validate(
                {
                    "listen-on": args.listen_on,
                    "token-parser-plugin": args.token_parser_plugin,
                    "token-parser-key": args.token_parser_key or None,
                    "allow": args.allow,
                    "state-dir": args.state_dir,
                    "token-timeout": args.token_timeout,
                    "connect-timeout": args.connect_timeout,
                    "client-fingerprints": args.client_fingerprint,
                    **_knobs(args),
                }
            )
        ]
        clients: list[ClientSettings] = []
    else:
        servers = []
        clients = [
            ClientSettings.model_validate(
                {
                    "listen-on": args.listen_on,
                    "server-endpoint": args.server_endpoint,
                    "server-name": args.server_name,
                    "token-source-plugin": args.token_source_plugin,
                    "token-source": args.token_source,
                    "connect-wait": args.connect_wait,
                    "server-fingerprint": args.server_fingerprint,
                    **_knobs(args),
                }
            )
        ]
    return Config(
        clients=clients,
        servers=servers,
        log=LogSection(level=_level(args.log_level), format=args.log_format),
        daemon=DaemonSection(**{"shutdown-grace": args.shutdown_grace}),
        api=ApiSection(**{"listen-on": args.httpd_listen_on}),
    )


def _level(text: str) -> str:
    level = text.strip().lower()
    return {"warn": "warning"}.get(level, level)
