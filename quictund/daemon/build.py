"""Listener definitions -> endpoints, checked before anything binds.

``Builder.build`` constructs (but does not start) one endpoint per listener of a ``Config``:
token plugins, certificates, CA files and policies are all checked here, so a broken
definition is reported -- one line per problem, prefixed with its file and listener -- before
the daemon binds a socket, and before a reload touches the running configuration.  Warnings
about protections a definition turns off are collected, not logged, so a rejected reload says
nothing about listeners that will never run.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path

from quictund.config.files import Config, ConfigProblems
from quictund.config.settings import ClientSettings, ServerSettings
from quictund.errors import ConfigError
from quictund.policy import cafile, tls
from quictund.policy.hostaddrs import host_addresses
from quictund.policy.policy import Policy
from quictund.quic import engine
from quictund.quic.steering import SharedSockets
from quictund.tokens import make_parser, make_source
from quictund.tunnel.client_endpoint import ClientEndpoint
from quictund.tunnel.server_endpoint import ServerEndpoint
from quictund.tunnel.tunnels import TunnelTable

logger = logging.getLogger(__name__)

Endpoint = ClientEndpoint | ServerEndpoint


@dataclass
class Built:
    """Endpoints built (not started) from one configuration, keyed by listener name."""

    config: Config
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Builder:
    """Builds endpoints for one daemon (its tunnel table, worker slot and start-up mode)."""

    def __init__(
        self,
        table: TunnelTable,
        *,
        worker: tuple[int, int] | None = None,
        shared: SharedSockets | None = None,
        open_by_default: bool = False,
        dry_run: bool = False,
    ) -> None:
        self.table = table
        self.worker = worker
        self.shared = shared  # the server sockets the supervisor bound for this worker
        self.open_by_default = open_by_default
        self.dry_run = dry_run  # validate only: write no certificate
        self._warnings: list[str] = []

    def build(self, config: Config) -> Built:
        """Validate plugins, certificates and policies of every listener; raise one line each."""
        built = Built(config)
        self._warnings = built.warnings
        problems: list[str] = []
        listeners: list[ClientSettings | ServerSettings] = [*config.clients, *config.servers]
        for settings in listeners:
            origin = config.origins.get(settings.name, f"{settings.name}")
            if (
                self.worker is not None
                and self.worker[0] != 0
                and isinstance(settings, ClientSettings)
                and settings.listen_on.is_unix
            ):
                continue  # a UNIX socket cannot be shared: worker 0 serves it
            try:
                if isinstance(settings, ClientSettings):
                    built.endpoints[settings.name] = self._client(settings)
                elif (server := self._server(settings, self.open_by_default)) is not None:
                    built.endpoints[settings.name] = server
            except ConfigError as exc:
                problems.append(f"{origin}: {exc}" if config.origins else str(exc))
        if problems:
            raise ConfigProblems(problems)
        for endpoint in built.endpoints.values():
            endpoint.reuse_port = self.worker is not None
            endpoint.worker = None if self.worker is None else self.worker[0]
            if isinstance(endpoint, ServerEndpoint):
                endpoint.shared = self.shared
        return built

    def _engine_warnings(self, s: ClientSettings | ServerSettings) -> None:
        if s.reclaim_stalled_after_s == 0:
            self._warnings.append(
                f"[{s.name}] reclaim-stalled-after = 0: tunnels whose app stops reading are "
                "never reset, so enough of them on one QUIC connection freeze its other "
                "tunnels until they read again (docs/security.md, 'Receive memory per "
                "connection'). Remove the setting to reclaim after 1 s of stall under pressure"
            )

    def _client(self, s: ClientSettings) -> ClientEndpoint:
        self._engine_warnings(s)
        source = make_source(
            s.token_source_plugin,
            s.token_source,
            mapping=s.token_map,
            timeout_s=s.token_timeout_s,
            secret_file=s.token_secret_file,
            audience=s.token_audience or "",
            ttl_s=s.token_ttl_s,
        )
        self._client_files(s)
        if not s.verify_remote_endpoint and not s.server_fingerprint:
            self._warnings.append(
                f"[{s.name}] NOT verifying the server's certificate: anyone on the path can "
                f"impersonate {s.server_endpoint}. Turn verification on with "
                "--verify-remote-endpoint --ca-file FILE (TOML: verify-remote-endpoint = true, "
                "ca-file = ...)"
            )
        server_name = s.server_name or s.server_endpoint.host
        config = engine.make_configuration(
            is_client=True,
            settings=s.engine_settings(),
            server_name=server_name,
            # A pinned key replaces CA verification (checked in the engine's handshake).
            verify=s.verify_remote_endpoint and not s.server_fingerprint,
            cafile=s.ca_file,
            certfile=s.cert_file,
            keyfile=s.key_file,
        )
        return ClientEndpoint(s, source=source, quic_config=config, table=self.table)

    def _client_files(self, s: ClientSettings) -> None:
        """The client's own certificate, and its ca-file unless it is still to come."""
        if s.cert_file or s.key_file:
            if not (s.cert_file and s.key_file):
                raise ConfigError(f"client '{s.name}': cert-file and key-file go together")
            leaf, _chain, _key = tls.load_certificate_chain(s.cert_file, s.key_file)
            if tls.is_ca(leaf):
                self._warnings.append(
                    f"[{s.name}] cert-file {s.cert_file} is a CA certificate (CA:TRUE): "
                    "servers that check client certificates refuse it; use a leaf "
                    "(basicConstraints CA:FALSE, see docs/security.md)"
                )
        if s.ca_file and cafile.missing(s.ca_file):
            # Not an error: the endpoint comes up and waits for it (cafile.py says why).
            if self.dry_run:
                self._warnings.append(
                    f"[{s.name}] ca-file {s.ca_file} does not exist (yet): the client will "
                    f"wait for it at start (an ERROR after {cafile.PATIENCE_S:g} s)"
                )
        elif s.ca_file:
            cafile.check_ca(s.ca_file)

    def _server(self, s: ServerSettings, open_by_default: bool) -> ServerEndpoint | None:
        self._engine_warnings(s)
        parser = make_parser(
            s.token_parser_plugin, s.token_parser_key, audience=s.token_audience or ""
        )
        if getattr(parser, "audience", None) == "" and s.token_parser_plugin.lower() == "signed":
            raise ConfigError(
                f"server '{s.name}': the Signed parser needs token-audience "
                "(the name clients sign their tokens for)"
            )
        allow = s.allow
        own = host_addresses()  # this host's addresses, live: reachable only when named
        if allow is None and s.allow_for:
            allow = []  # only the identities listed in allow-for reach anything
        if allow is None:
            if not open_by_default:
                raise ConfigError(
                    f"server '{s.name}': no allow list; say which destinations this server may "
                    'reach, e.g. allow = ["tcp:10.0.0.0/8:22", "unix:/run/app.sock"] '
                    '(allow = ["*"] reproduces quic-tun\'s open proxy)'
                )
            allow = ["*"]
        try:
            policy = Policy(allow, own=own)
        except ValueError as exc:
            raise ConfigError(f"server '{s.name}': allow: {exc}") from None
        policies_for = []
        for i, entry in enumerate(s.allow_for or []):
            try:
                policies_for.append((entry.identity, Policy(entry.allow, own=own)))
            except ValueError as exc:
                raise ConfigError(f"server '{s.name}': allow-for[{i}].allow: {exc}") from None
        if s.allow_for and not (s.verify_remote_endpoint or s.client_fingerprints):
            raise ConfigError(
                f"server '{s.name}': allow-for needs client certificates (verify-remote-endpoint "
                "= true with ca-file, or client-fingerprints): identities come from them"
            )
        self._check_identities(s)
        if policy.open:
            self._warnings.append(
                f"[{s.name}] OPEN PROXY: any client that completes the QUIC handshake may "
                "reach any address this host can reach. Restrict it with --allow RULE "
                "(TOML: allow = [...])"
            )
        authenticated = s.verify_remote_endpoint or bool(s.client_fingerprints)
        if not authenticated and policy.broad and not policy.open:
            self._warnings.append(
                f"[{s.name}] clients are not authenticated and allow reaches whole networks: "
                f"anyone who can reach udp {s.listen_on} may open tunnels there. Require "
                "client certificates with verify-remote-endpoint = true and ca-file = ..., "
                "or client-fingerprints = [...]"
            )
        if s.verify_remote_endpoint:
            if not s.ca_file:
                raise ConfigError(
                    f"server '{s.name}': verify-remote-endpoint needs ca-file "
                    "(the CA that signs client certificates)"
                )
            cafile.check_ca(s.ca_file)
        if s.cert_file or s.key_file:
            if not (s.cert_file and s.key_file):
                raise ConfigError(f"server '{s.name}': cert-file and key-file go together")
            certfile, keyfile = s.cert_file, s.key_file
            tls.load_certificate_chain(certfile, keyfile)
        else:
            state = Path(s.state_dir) if s.state_dir else tls.default_state_dir()
            names = tls.server_names(s.listen_on.host, own.current())
            if self.dry_run:
                return None  # `check` writes no certificate
            cert_path, key_path = tls.ensure_self_signed(state, names)
            certfile, keyfile = str(cert_path), str(key_path)
            logger.info(
                "[%s] no cert-file given: using the self-signed certificate %s "
                "(%s); give it to clients as their ca-file",
                s.name,
                certfile,
                tls.fingerprint_file(certfile),
            )
        config = engine.make_configuration(
            is_client=False, settings=s.engine_settings(), certfile=certfile, keyfile=keyfile
        )
        server = ServerEndpoint(
            s, parser=parser, policy=policy, quic_config=config, table=self.table
        )
        server.policies_for = policies_for
        return server

    def _check_identities(self, s: ServerSettings) -> None:
        """``allow-for`` fingerprints must be well formed; names need a CA to vouch for them."""
        for i, entry in enumerate(s.allow_for or []):
            pattern = entry.identity.strip()
            if pattern.lower().startswith("sha256:"):
                if not _is_fingerprint(pattern):
                    raise ConfigError(
                        f"server '{s.name}': allow-for[{i}].identity {pattern!r}: not a "
                        "sha256:BASE64 key fingerprint as printed by 'quictund fingerprint FILE'"
                    )
            elif not s.verify_remote_endpoint:
                self._warnings.append(
                    f"[{s.name}] allow-for identity {pattern!r} never matches: clients accepted "
                    "by client-fingerprints are known only by their key; name it as "
                    'identity = "sha256:..." (quictund fingerprint CERT), or verify client '
                    "certificates against a ca-file"
                )


def _is_fingerprint(pattern: str) -> bool:
    algo, _, digest = pattern.partition(":")
    try:
        return algo == "sha256" and len(base64.b64decode(digest, validate=True)) == 32
    except ValueError:
        return False
