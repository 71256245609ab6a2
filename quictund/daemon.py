"""The daemon: runs listeners from a validated configuration, reloads, shuts down gracefully.

Everything that can be wrong with a definition (syntax, plugins, certificates, policy) is
checked by ``build`` -- before anything binds, and before a reload touches anything -- and
reported as one line per problem, prefixed with the file and listener (``client.toml:
client[1]: …``).

Reload (SIGHUP; several in a row coalesce): load and build everything first; on any problem
keep running the old configuration untouched and say why.  Otherwise apply the difference by
listener name: unchanged listeners keep running and keep their tunnels (they get the freshly
loaded TLS material for new connections; File token maps re-read themselves); added ones start;
removed ones stop accepting and their tunnels drain; changed ones are replaced the same way
(a server whose UDP address is unchanged adopts the new settings in place instead).  It is
all or nothing: new listeners bind before old ones let go, and one that cannot bind (a port
taken since) refuses the whole reload with nothing changed.
Each outcome is recorded in ``reload_state`` (shown by the API's ``/healthz``), which is how
``quictund reload`` -- systemd's ``ExecReload`` -- knows when its SIGHUP was handled and whether
the new configuration was accepted.

Shutdown order (uvicorn's, with hypercorn's refusal of new QUIC connections):
1. ``STOPPING=1``; stop accepting app connections and new QUIC connections;
2. let open tunnels finish for the grace period (a second signal skips the wait);
3. close every QUIC connection (CONNECTION_CLOSE) -- what is left is reset, never FINed;
4. remove UNIX socket files and return.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from quictund import tls
from quictund._tasks import first_of, spawn
from quictund.addresses import parse_host_port
from quictund.api.app import Router
from quictund.api.http import ApiServer, start_tcp, start_unix
from quictund.api.provider import DaemonApi
from quictund.client_endpoint import ClientEndpoint
from quictund.config import ClientSettings, ServerSettings
from quictund.config_files import Config, ConfigProblems
from quictund.errors import ConfigError, os_reason
from quictund.metrics import Metrics
from quictund.policy import Policy, local_addresses
from quictund.quic import engine
from quictund.server_endpoint import ServerEndpoint
from quictund.systemd import Notifier
from quictund.tokens import make_parser, make_source
from quictund.tunnels import TunnelTable
from quictund.wire import ErrorCode

logger = logging.getLogger(__name__)

Endpoint = ClientEndpoint | ServerEndpoint


@dataclass
class ReloadState:
    """Reload bookkeeping for ``quictund reload`` (see ``reload_cli.py``).

    ``requested`` counts reload requests (SIGHUPs) received; ``answered`` is the value
    ``requested`` had when the most recently *finished* reload began.  A client that read
    ``requested == n`` and then sent SIGHUP knows its request was handled -- by a reload
    that read the files after its signal -- once ``answered > n``.  Signals coalesce, so one
    reload may answer several requests.
    """

    requested: int = 0
    answered: int = 0
    ok: bool | None = None  # None: no reload finished yet
    message: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "answered": self.answered,
            "ok": self.ok,
            "message": self.message,
        }


@dataclass
class Built:
    """Endpoints built (not started) from one configuration, keyed by listener name."""

    config: Config
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        loader: Callable[[], Config] | None = None,
        open_by_default: bool = False,
        notifier: Notifier | None = None,
        dry_run: bool = False,
        worker: tuple[int, int] | None = None,
        worker_api: str | None = None,
    ) -> None:
        # One of several workers (quictund/workers.py): share ports, serve UNIX listeners only
        # in worker 0, and answer the API on the supervisor's private socket only.
        self.worker = worker
        self.worker_api = worker_api
        self.metrics = Metrics()
        self.table = TunnelTable(self.metrics)
        self.metrics.add_state(
            self.table.active_by_listener,
            lambda: {c.settings.name: c.connector.reconnects for c in self.clients},
            lambda: {
                (srv.settings.name, str(limit)): count
                for srv in self.servers
                for limit, count in srv.limit_log.hits.items()
            },
        )
        self.reload_state = ReloadState()
        self.api = DaemonApi(
            self.table,
            self.metrics,
            lambda: list(self.endpoints.values()),
            self.status_line,
            reload=self.reload_state.as_json,
        )
        self._api_servers: list[ApiServer] = []
        self.loader = loader
        self.open_by_default = open_by_default
        self.dry_run = dry_run  # validate only: write no certificate
        self.notifier = notifier or Notifier()
        self.ready = asyncio.Event()
        self.reloaded = asyncio.Event()  # set after each reload attempt (tests wait on it)
        self.last_reload = ""
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._reload = asyncio.Event()
        built = self.build(config)
        for warning in built.warnings:
            logger.warning("%s", warning)
        self.config = config
        self.endpoints: dict[str, Endpoint] = built.endpoints
        self._draining: set[Endpoint] = set()

    @property
    def grace_s(self) -> float:
        return self.config.daemon.shutdown_grace_s

    @property
    def clients(self) -> list[ClientEndpoint]:
        return [e for e in self.endpoints.values() if isinstance(e, ClientEndpoint)]

    @property
    def servers(self) -> list[ServerEndpoint]:
        return [e for e in self.endpoints.values() if isinstance(e, ServerEndpoint)]

    # ---- building (no sockets; reads certificate and token files) --------------------------

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
                    built.endpoints[settings.name] = self._build_client(settings)
                elif (server := self._build_server(settings, self.open_by_default)) is not None:
                    built.endpoints[settings.name] = server
            except ConfigError as exc:
                problems.append(f"{origin}: {exc}" if config.origins else str(exc))
        if problems:
            raise ConfigProblems(problems)
        for endpoint in built.endpoints.values():
            endpoint.reuse_port = self.worker is not None
        return built

    def _build_client(self, s: ClientSettings) -> ClientEndpoint:
        source = make_source(
            s.token_source_plugin,
            s.token_source,
            mapping=s.token_map,
            timeout_s=s.token_timeout_s,
            secret_file=s.token_secret_file,
            audience=s.token_audience or "",
            ttl_s=s.token_ttl_s,
        )
        if s.cert_file or s.key_file:
            if not (s.cert_file and s.key_file):
                raise ConfigError(f"client '{s.name}': cert-file and key-file go together")
            tls.load_certificate_chain(s.cert_file, s.key_file)
        if s.ca_file:
            _check_ca(s.ca_file)
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

    def _build_server(self, s: ServerSettings, open_by_default: bool) -> ServerEndpoint | None:
        parser = make_parser(
            s.token_parser_plugin, s.token_parser_key, audience=s.token_audience or ""
        )
        if getattr(parser, "audience", None) == "" and s.token_parser_plugin.lower() == "signed":
            raise ConfigError(
                f"server '{s.name}': the Signed parser needs token-audience "
                "(the name clients sign their tokens for)"
            )
        allow = s.allow
        own = local_addresses()  # this host's addresses: reachable only when named
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
            _check_ca(s.ca_file)
        if s.cert_file or s.key_file:
            if not (s.cert_file and s.key_file):
                raise ConfigError(f"server '{s.name}': cert-file and key-file go together")
            certfile, keyfile = s.cert_file, s.key_file
            tls.load_certificate_chain(certfile, keyfile)
        else:
            state = Path(s.state_dir) if s.state_dir else tls.default_state_dir()
            names = [socket.gethostname()]
            if s.listen_on.host not in ("0.0.0.0", "::", ""):
                names.insert(0, s.listen_on.host)
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

    # ---- running -------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop.is_set():
            logger.warning("second stop signal: closing every tunnel now")
            self._force.set()
        self._stop.set()

    def request_reload(self) -> None:
        self.reload_state.requested += 1
        self._reload.set()

    async def run(self, shutdown_trigger: Callable[[], Awaitable[object]] | None = None) -> None:
        loop = asyncio.get_running_loop()
        signals = shutdown_trigger is None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                # Signals first: a SIGTERM that arrives while binding must not kill us.
                if signals:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.add_signal_handler(sig, self.request_stop)
                    loop.add_signal_handler(signal.SIGHUP, self.request_reload)
                else:
                    assert shutdown_trigger is not None
                    tg.create_task(self._trigger(shutdown_trigger), name="shutdown-trigger")
                for endpoint in self.servers + self.clients:
                    await endpoint.start(tg)
                await self._start_api()
                watchdog = tg.create_task(self.notifier.run_watchdog(), name="watchdog")
                ticker = tg.create_task(self._tick(), name="rate-tick")
                self.ready.set()
                self.notifier.ready(self.status_line())
                logger.info("ready: %s", self.status_line())
                while not self._stop.is_set():
                    await first_of(self._stop.wait(), self._reload.wait())
                    if self._reload.is_set() and not self._stop.is_set():
                        self._reload.clear()
                        await self._do_reload(tg)
                self.notifier.stopping(self.status_line())
                await self._shutdown()
                watchdog.cancel()
                ticker.cancel()
        finally:
            for client in self.clients:
                client.stop_accepting()
            if signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
                    # We are on our way out: a late SIGTERM must not turn exit 0 into -15.
                    signal.signal(sig, signal.SIG_IGN)

    def status_line(self) -> str:
        line = (
            f"{len(self.clients)} client and {len(self.servers)} server listener(s), "
            f"{len(self.table)} tunnel(s) open"
        )
        return f"{line}; last reload: {self.last_reload}" if self.last_reload else line

    async def _trigger(self, trigger: Callable[[], Awaitable[object]]) -> None:
        await trigger()
        self.request_stop()

    # ---- reload ----------------------------------------------------------------------------

    async def _do_reload(self, tg: asyncio.TaskGroup) -> None:
        self.notifier.reloading()
        answers = self.reload_state.requested
        stamp = time.strftime("%H:%M:%S")
        try:
            if self.loader is None:
                raise ConfigProblems(["started from the command line: nothing to reload"])
            config = self.loader()
            built = self.build(config)
            for warning in built.warnings:
                logger.warning("%s", warning)
            summary = await self._apply(built, tg)
        except ConfigError as exc:
            lines = exc.lines if isinstance(exc, ConfigProblems) else [str(exc)]
            for line in lines:
                logger.error("reload rejected, keeping the running configuration: %s", line)
            self.last_reload = f"FAILED at {stamp}: {lines[0]}"
            more = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
            self._answer(
                answers, False, f"rejected, still running the old configuration: {lines[0]}{more}"
            )
            self.metrics.reloads.labels("failed").inc()
        else:
            if config.api != self.config.api:
                logger.warning("reload: [api] changed; it takes effect at the next restart")
            self.config = config
            self.last_reload = f"ok at {stamp} ({summary})"
            self._answer(answers, True, summary)
            self.metrics.reloads.labels("ok").inc()
            logger.info("reloaded: %s", summary)
        self.notifier.ready(self.status_line())
        self.reloaded.set()

    def _answer(self, answers: int, ok: bool, message: str) -> None:
        # One assignment per field, no await in between: the API never sees a mix.
        state = self.reload_state
        state.answered, state.ok, state.message = answers, ok, message

    async def _apply(self, built: Built, tg: asyncio.TaskGroup) -> str:
        """Switch to ``built``, all or nothing: raises ``ConfigError`` with nothing changed.

        Binding is the one step ``build`` cannot check (a port taken since, a directory
        gone), so the new listeners start first.  A listener being replaced on the same
        address stops accepting just before its successor binds; if any new listener fails,
        the ones started are closed, the paused ones accept again, and the reload is refused.
        """
        old, new = self.endpoints, built.endpoints
        kept: dict[str, Endpoint] = {}
        for name, fresh in new.items():
            current = old.get(name)
            if current is not None and (
                current.settings == fresh.settings
                or (
                    isinstance(current, ServerEndpoint)
                    and isinstance(fresh, ServerEndpoint)
                    and current.settings.listen_on == fresh.settings.listen_on
                )
            ):
                kept[name] = current
        leaving = {name: ep for name, ep in old.items() if name not in kept}
        started: list[Endpoint] = []
        paused: list[Endpoint] = []
        for name, fresh in new.items():
            if name in kept:
                continue
            for other in leaving.values():
                if other not in paused and other.settings.listen_on == fresh.settings.listen_on:
                    other.stop_accepting()
                    paused.append(other)
            try:
                await fresh.start(tg)
            except ConfigError as exc:
                for ep in started:
                    ep.close(ErrorCode.SHUTDOWN, "reload refused")
                for ep in paused:
                    await ep.resume_accepting()
                raise ConfigError(f"listener {name} cannot start: {exc}") from None
            started.append(fresh)
        # Committed: nothing below can fail.
        for name, current in kept.items():
            fresh = new[name]
            if current.settings == fresh.settings:
                current.quic_config = fresh.quic_config  # new certificates, new connections
            else:
                assert isinstance(current, ServerEndpoint) and isinstance(fresh, ServerEndpoint)
                current.adopt(fresh)
        for current in leaving.values():
            current.stop_accepting()
            self._drain(current, tg)
        self.endpoints = {name: kept[name] if name in kept else ep for name, ep in new.items()}
        added = [name for name in new if name not in kept]
        return (
            f"kept {len(kept)}, started {', '.join(added) or 'none'}, "
            f"stopped {', '.join(leaving) or 'none'}"
        )

    def _drain(self, endpoint: Endpoint, tg: asyncio.TaskGroup) -> None:
        async def drain() -> None:
            try:
                async with asyncio.timeout(self.grace_s):
                    await endpoint.wait_idle()
            except TimeoutError:
                logger.warning(
                    "%d tunnel(s) of a removed listener still open after %g s; resetting them",
                    len(endpoint.splices),
                    self.grace_s,
                )
            endpoint.close(ErrorCode.SHUTDOWN, "listener removed")
            self._draining.discard(endpoint)

        self._draining.add(endpoint)
        tg.create_task(drain(), name="drain-listener")

    # ---- shutdown --------------------------------------------------------------------------

    async def _start_api(self) -> None:
        api = self.config.api
        router = Router(self.api)
        if self.worker_api is not None:  # the supervisor serves the configured API
            self._api_servers.append(await start_unix(self.worker_api, router, mode=0o600))
            return
        if api.socket:
            server = await start_unix(api.socket, router, group=api.group)
            self._api_servers.append(server)
        if api.listen_on:
            hp = parse_host_port(api.listen_on)
            if hp.host in ("0.0.0.0", "::", ""):
                logger.warning(
                    "the tunnel API listens on %s: anyone who can reach it can list "
                    "and close tunnels; prefer a UNIX socket",
                    api.listen_on,
                )
            server = await start_tcp(hp.host, hp.port, router, allow_any=True)
            self._api_servers.append(server)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.api.tick()

    async def _shutdown(self) -> None:
        logger.info(
            "shutting down: %d tunnel(s) open, waiting up to %g s", len(self.table), self.grace_s
        )
        everything = [*self.endpoints.values(), *self._draining]
        for endpoint in everything:
            endpoint.stop_accepting()
        if len(self.table) and not self._force.is_set():
            waiters = [
                spawn(self.table.wait_empty(), name="drain-wait"),
                spawn(self._force.wait(), name="force-wait"),
            ]
            await asyncio.wait(waiters, timeout=self.grace_s, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        left = len(self.table)
        if left:
            logger.warning("resetting %d tunnel(s) still open after the grace period", left)
        for endpoint in everything:
            endpoint.close(ErrorCode.SHUTDOWN, "shutdown")
        for api in self._api_servers:
            api.close()
            await api.wait_closed()


def _check_ca(path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"ca-file {path}: {os_reason(exc)}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"ca-file {path}: no PEM certificate in it")
