"""The daemon: runs listeners from a validated configuration, reloads, shuts down gracefully.

Everything that can be wrong with a definition (syntax, plugins, certificates, policy) is
checked by ``build`` (``quictund/daemon/build.py``) -- before anything binds, and before a reload
touches anything -- and reported as one line per problem, prefixed with the file and listener
(``client.toml: client[1]: …``).

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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from quictund._tasks import first_of, spawn
from quictund.api.app import Router
from quictund.api.http import ApiServer, start_tcp, start_unix
from quictund.api.metrics_listener import exposure_warning, start_metrics
from quictund.api.provider import DaemonApi
from quictund.config.files import Config, ConfigProblems
from quictund.daemon._signals import ignore_from_now
from quictund.daemon.build import Builder, Built, Endpoint
from quictund.daemon.systemd import Notifier
from quictund.errors import ConfigError
from quictund.metrics import Metrics
from quictund.policy.addresses import parse_host_port
from quictund.quic.steering import SharedSockets
from quictund.tunnel.client_endpoint import ClientEndpoint
from quictund.tunnel.server_endpoint import ServerEndpoint
from quictund.tunnel.tunnels import TunnelTable
from quictund.wire import ErrorCode

logger = logging.getLogger(__name__)


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
        shared: SharedSockets | None = None,
    ) -> None:
        # One of several workers (quictund/daemon/workers.py): share ports, serve UNIX listeners
        # only in worker 0, and answer the API on the supervisor's private socket only.
        self.worker = worker
        self.worker_api = worker_api
        self.metrics = Metrics()
        self.table = TunnelTable(self.metrics)
        self.metrics.add_state(
            lambda: dict.fromkeys(self.endpoints, 0) | self.table.active_by_listener(),
            lambda: {c.settings.name: c.connector.reconnects for c in self.clients},
            lambda: {
                (srv.settings.name, str(limit)): count
                for srv in self.servers
                for limit, count in srv.limit_log.hits.items()
            },
            lambda: {c.settings.name: c.connector.state == "connected" for c in self.clients},
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
        self.notifier = notifier or Notifier()
        self.ready = asyncio.Event()
        self.reloaded = asyncio.Event()  # set after each reload attempt (tests wait on it)
        self.last_reload = ""
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._reload = asyncio.Event()
        self.builder = Builder(
            self.table,
            worker=worker,
            shared=shared,
            open_by_default=open_by_default,
            dry_run=dry_run,
        )
        self.build = self.builder.build
        built = self.build(config)
        for warning in built.warnings:
            logger.warning("%s", warning)
        if dry_run and (exposed := exposure_warning(config.metrics.listen_on)):
            logger.warning("%s", exposed)  # `check` says it too; a real start says it on bind
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

    # ---- running -------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop.is_set() and not self._force.is_set():
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
            if signals:  # on our way out: a late SIGTERM must not turn exit 0 into -15
                ignore_from_now(loop, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))

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
            self.metrics.reload_finished(False)
        else:
            if config.api != self.config.api or config.metrics != self.config.metrics:
                logger.warning("reload: [api] or [metrics] changed; it takes effect at restart")
            self.config = config
            self.last_reload = f"ok at {stamp} ({summary})"
            self._answer(answers, True, summary)
            self.metrics.reload_finished(True)
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
        summary = _summary(old, new)  # before adopt() makes a changed server look unchanged
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
        return summary

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
        if self.config.metrics.listen_on:  # read-only, for Prometheus
            self._api_servers.append(await start_metrics(self.config.metrics.listen_on, router))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for _ in self.api.tick_steps():
                await asyncio.sleep(0)  # one batch of meters per loop turn

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


def _summary(old: dict[str, Endpoint], new: dict[str, Endpoint]) -> str:
    """``kept 2, changed edge, started web2, stopped none``: by name, what a person edited
    (a changed listener was replaced or, for a server on the same address, adopted in place)."""
    changed = [n for n in new if n in old and old[n].settings != new[n].settings]
    added = [n for n in new if n not in old]
    gone = [n for n in old if n not in new]
    unchanged = len(new) - len(changed) - len(added)
    return (
        f"kept {unchanged}, changed {', '.join(changed) or 'none'}, "
        f"started {', '.join(added) or 'none'}, stopped {', '.join(gone) or 'none'}"
    )
