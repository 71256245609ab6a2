"""The daemon: builds endpoints from validated settings, runs them, shuts down gracefully.

Everything that can be wrong with a definition (plugins, certificates, policy) is checked in
``Daemon.__init__`` -- before anything binds -- and raised as one ``ConfigError`` line.

Shutdown order (uvicorn's, with hypercorn's refusal of new QUIC connections):
1. stop accepting app connections and new QUIC connections;
2. let open tunnels finish for ``grace_s`` (a second signal skips the wait);
3. close every QUIC connection (CONNECTION_CLOSE) -- what is left is reset, never FINed;
4. remove UNIX socket files and return.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from quictund import tls
from quictund._tasks import spawn
from quictund.client_endpoint import ClientEndpoint
from quictund.config import ClientSettings, ServerSettings
from quictund.errors import ConfigError
from quictund.policy import Policy
from quictund.quic import engine
from quictund.server_endpoint import ServerEndpoint
from quictund.tokens import make_parser, make_source
from quictund.tunnels import TunnelTable
from quictund.wire import ErrorCode

logger = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        clients: list[ClientSettings],
        servers: list[ServerSettings],
        *,
        grace_s: float = 10.0,
        open_by_default: bool = False,
    ) -> None:
        self.table = TunnelTable()
        self.grace_s = grace_s
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        # Warnings wait until everything validated: a refused start prints only its error.
        self._warnings: list[str] = []
        self.clients = [self._build_client(c) for c in clients]
        self.servers = [self._build_server(s, open_by_default) for s in servers]
        for warning in self._warnings:
            logger.warning("%s", warning)

    # ---- building (no I/O beyond reading files) ------------------------------------------

    def _build_client(self, s: ClientSettings) -> ClientEndpoint:
        source = make_source(
            s.token_source_plugin, s.token_source, mapping=s.token_map, timeout_s=s.token_timeout_s
        )
        if s.cert_file or s.key_file:
            if not (s.cert_file and s.key_file):
                raise ConfigError(f"client '{s.name}': cert-file and key-file go together")
            tls.load_certificate_chain(s.cert_file, s.key_file)
        if s.ca_file:
            _check_ca(s.ca_file)
        if not s.verify_remote_endpoint:
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
            verify=s.verify_remote_endpoint,
            cafile=s.ca_file,
            certfile=s.cert_file,
            keyfile=s.key_file,
        )
        return ClientEndpoint(s, source=source, configuration=lambda: config, table=self.table)

    def _build_server(self, s: ServerSettings, open_by_default: bool) -> ServerEndpoint:
        parser = make_parser(s.token_parser_plugin, s.token_parser_key)
        allow = s.allow
        if allow is None:
            if not open_by_default:
                raise ConfigError(
                    f"server '{s.name}': no allow list; say which destinations this server may "
                    'reach, e.g. allow = ["tcp:10.0.0.0/8:22", "unix:/run/app.sock"] '
                    '(allow = ["*"] reproduces quic-tun\'s open proxy)'
                )
            allow = ["*"]
        try:
            policy = Policy(allow)
        except ValueError as exc:
            raise ConfigError(f"server '{s.name}': allow: {exc}") from None
        if policy.open:
            self._warnings.append(
                f"[{s.name}] OPEN PROXY: any client that completes the QUIC handshake may "
                "reach any address this host can reach. Restrict it with --allow RULE "
                "(TOML: allow = [...])"
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
        return ServerEndpoint(
            s, parser=parser, policy=policy, configuration=lambda: config, table=self.table
        )

    # ---- running -------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop.is_set():
            logger.warning("second stop signal: closing every tunnel now")
            self._force.set()
        self._stop.set()

    async def run(self, shutdown_trigger: Callable[[], Awaitable[object]] | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                for server in self.servers:
                    await server.start(tg)
                for client in self.clients:
                    await client.start(tg)
                if shutdown_trigger is None:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.add_signal_handler(sig, self.request_stop)
                else:
                    tg.create_task(self._trigger(shutdown_trigger), name="shutdown-trigger")
                self.ready.set()
                await self._stop.wait()
                await self._shutdown()
        finally:
            for client in self.clients:
                client.stop_accepting()
            if shutdown_trigger is None:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _trigger(self, trigger: Callable[[], Awaitable[object]]) -> None:
        await trigger()
        self.request_stop()

    async def _shutdown(self) -> None:
        logger.info(
            "shutting down: %d tunnel(s) open, waiting up to %g s", len(self.table), self.grace_s
        )
        for client in self.clients:
            client.stop_accepting()
        for server in self.servers:
            server.stop_accepting()
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
        for client in self.clients:
            client.close(ErrorCode.SHUTDOWN, "shutdown")
        for server in self.servers:
            server.close(ErrorCode.SHUTDOWN, "shutdown")


def _check_ca(path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"ca-file {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"ca-file {path}: no PEM certificate in it")
