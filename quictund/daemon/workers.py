"""``workers = N``: one supervisor and N worker processes, so a daemon uses every core.

Python runs one event loop per core at best, and a QUIC endpoint in Python is CPU-bound long
before the network is (docs/performance.md).  So the daemon can run as N processes:

* Every worker runs the whole configuration.  TCP listeners and server UDP sockets are bound
  with ``SO_REUSEPORT``: the kernel spreads new app connections over the workers (each worker's
  client endpoint has its own QUIC connection).  An aioquic server's sockets are bound here,
  one per worker in a fixed order, and the kernel steers each datagram to the worker its
  connection id names (``quic/steering.py``), so a server-side QUIC connection stays on one
  process whatever address its client comes from; a qh3 server's workers bind their own and
  the kernel hashes client addresses.  A UNIX listener cannot be shared that way; worker 0
  alone serves it.  Ports must therefore be fixed (not 0).
* The supervisor owns what must be single: the public API socket (it fans each request out to
  the workers' private API sockets and merges the answers: tunnels of all workers, metrics with
  a ``worker`` label), sd_notify (READY once every worker is; a reload is finished when every
  worker has answered it), signals (forwarded), restarting a worker that died (on the sockets
  it had), and the steered server sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import h11
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from quictund._tasks import first_of
from quictund.api.app import JSON, Request, Response, error_response, json_response
from quictund.api.http import ApiServer, start_tcp, start_unix
from quictund.api.metrics_listener import start_metrics
from quictund.config.files import Config
from quictund.daemon._signals import ignore_from_now
from quictund.daemon.systemd import Notifier
from quictund.errors import ConfigError, os_reason
from quictund.quic.steering import DEFAULT_CID_LENGTH, bind_group

__all__ = ["Supervisor", "check_workers"]

logger = logging.getLogger(__name__)

RESTART_MAX_S = 30.0


def check_workers(config: Config, count: int) -> None:
    """Workers share ports through SO_REUSEPORT, which needs ports fixed in advance."""
    if count <= 1:
        return
    for c in config.clients:
        if not c.listen_on.is_unix and c.listen_on.port == 0:
            raise ConfigError(f"client '{c.name}': listen-on port 0 cannot be shared by workers")
    for s in config.servers:
        if s.listen_on.port == 0:
            raise ConfigError(f"server '{s.name}': listen-on port 0 cannot be shared by workers")


def steered_groups(config: Config, count: int) -> dict[str, list[socket.socket]]:
    """Bind every aioquic server's ``SO_REUSEPORT`` group of ``count`` sockets, steered by
    connection id (quic/steering.py), by listen address.  qh3 cannot issue ids that name a
    worker: its workers bind their own sockets, shared by client address (they warn)."""
    groups: dict[str, list[socket.socket]] = {}
    try:
        for s in config.servers:
            if s.quic_engine != "aioquic" or str(s.listen_on) in groups:
                continue
            codec = s.quic_lb_codec()
            try:
                infos = socket.getaddrinfo(
                    s.listen_on.host or None,
                    s.listen_on.port,
                    type=socket.SOCK_DGRAM,
                    flags=socket.AI_PASSIVE,
                )
                family, _, _, _, address = infos[0]
                groups[str(s.listen_on)] = bind_group(
                    family,
                    address,
                    count,
                    DEFAULT_CID_LENGTH if codec is None else codec.cid_length,
                )
            except OSError as exc:
                raise ConfigError(
                    f"server '{s.name}': listen-on {s.listen_on}: {os_reason(exc)}"
                ) from None
    except ConfigError:
        for socks in groups.values():
            for sock in socks:
                sock.close()
        raise
    return groups


async def api_call(path: str, method: str, target: str, within: float = 5.0) -> Response:
    """One HTTP/1.1 request to a worker's private API socket."""
    conn = h11.Connection(h11.CLIENT)
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(
                conn.send(h11.Request(method=method, target=target, headers=[("Host", "w")]))
                + conn.send(h11.EndOfMessage())
            )
            status, body, content_type = 0, bytearray(), JSON
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        if name == b"content-type":
                            content_type = value.decode()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return Response(status, bytes(body), content_type)
        finally:
            writer.close()


class Worker:
    def __init__(self, index: int, api: str) -> None:
        self.index = index
        self.api = api
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0


class Supervisor:
    def __init__(
        self,
        config: Config,
        run_args: Sequence[str],
        count: int,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.run_args = list(run_args)
        self.notifier = notifier or Notifier()
        self._dir = Path(tempfile.mkdtemp(prefix="quictund-workers-"))
        os.chmod(self._dir, 0o700)
        self.workers = [Worker(i, str(self._dir / f"w{i}.sock")) for i in range(count)]
        # Each aioquic server's N sockets, bound here in order and kept for our lifetime, so
        # that worker i (restarted or not) always holds index i of the group (steering.py).
        self.groups: dict[str, list[socket.socket]] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._stopping = False
        self._api: list[ApiServer] = []
        self.reload_state: dict[str, object] = {
            "requested": 0, "answered": 0, "ok": None, "message": "",
        }  # fmt: skip

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        codes: list[int] = []
        try:
            self.groups = steered_groups(self.config, len(self.workers))
            async with asyncio.TaskGroup() as tg:
                watchers = []
                for worker in self.workers:
                    await self._spawn(worker)
                    watchers.append(
                        tg.create_task(self._watch(worker), name=f"worker-{worker.index}")
                    )
                await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
                await self._start_api()
                watchers.append(tg.create_task(self.notifier.run_watchdog(), name="watchdog"))
                self.notifier.ready(self._status())
                logger.info("ready: %s", self._status())
                while not self._stop.is_set():
                    await first_of(self._stop.wait(), self._reload.wait())
                    if self._reload.is_set() and not self._stop.is_set():
                        self._reload.clear()
                        await self._do_reload()
                self._stopping = True
                self.notifier.stopping("stopping workers")
                for api in self._api:
                    api.close()
                codes = await self._stop_workers()
                for task in watchers:
                    task.cancel()
        finally:  # on our way out, as the daemon (quictund/daemon/_signals.py)
            ignore_from_now(loop, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
            for worker in self.workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    worker.proc.kill()
            for socks in self.groups.values():
                for sock in socks:
                    sock.close()
            for path in self._dir.glob("*"):
                path.unlink(missing_ok=True)
            self._dir.rmdir()
        return max(codes, default=0)

    def _status(self) -> str:
        return f"{len(self.workers)} workers"

    async def _spawn(self, worker: Worker) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        fds = {key: socks[worker.index].fileno() for key, socks in self.groups.items()}
        sockets = [x for key, fd in fds.items() for x in ("--udp-socket", f"{key}={fd}")]
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quictund", "run", *self.run_args,
            "--worker", f"{worker.index}/{len(self.workers)}", "--worker-api", worker.api,
            *sockets, pass_fds=list(fds.values()),
            env=env, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def _wait_ready(self, worker: Worker, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while True:
            assert worker.proc is not None
            if worker.proc.returncode is not None:
                raise ConfigError(f"worker {worker.index} exited {worker.proc.returncode}")
            try:
                if (await api_call(worker.api, "GET", "/healthz", 1.0)).status == 200:
                    return
            except (OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"worker {worker.index} not ready in {within:g} s")
            await asyncio.sleep(0.05)

    async def _watch(self, worker: Worker) -> None:
        """Restart a worker that dies while we are not stopping (back-off up to 30 s)."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self._stopping or self._stop.is_set():
                return
            worker.restarts += 1
            delay = min(RESTART_MAX_S, 0.5 * 2 ** min(worker.restarts, 6))
            logger.error("worker %d exited %d; restarting in %g s", worker.index, code, delay)
            await asyncio.sleep(delay)
            if self._stopping or self._stop.is_set():
                return
            await self._spawn(worker)

    async def _stop_workers(self, within: float = 60.0) -> list[int]:
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(within):
                return list(await asyncio.gather(*(p.wait() for p in procs)))
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
            return [1]

    # ---- reload --------------------------------------------------------------------------

    def _on_hup(self) -> None:
        self.reload_state["requested"] = int(str(self.reload_state["requested"])) + 1
        self._reload.set()

    async def _do_reload(self) -> None:
        """Forward SIGHUP; the reload is done when every worker has answered it."""
        self.notifier.reloading()
        answers = self.reload_state["requested"]
        before = [await self._reload_of(w) for w in self.workers]
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGHUP)
        results = []
        for worker, seen in zip(self.workers, before, strict=True):
            try:
                async with asyncio.timeout(60):
                    while not self._stop.is_set():
                        state = await self._reload_of(worker)
                        answered = int(str(state.get("answered", 0)))
                        if answered > int(str(seen.get("requested", 0))):
                            results.append(state)
                            break
                        await asyncio.sleep(0.05)
            except TimeoutError:
                results.append({"ok": False, "message": f"worker {worker.index}: no answer"})
        failed = [r for r in results if not r.get("ok")]
        self.reload_state.update(
            answered=answers,
            ok=not failed,
            message=str((failed or results)[0].get("message", "")) if results else "",
        )
        self.notifier.ready(f"{self._status()}; last reload: {self.reload_state['message']}")

    async def _reload_of(self, worker: Worker) -> dict[str, object]:
        try:
            body = json.loads((await api_call(worker.api, "GET", "/healthz")).body)
        except (OSError, TimeoutError, ValueError):
            return {}
        state = body.get("reload", {}) if isinstance(body, dict) else {}
        return state if isinstance(state, dict) else {}

    # ---- the public API ------------------------------------------------------------------

    async def _start_api(self) -> None:
        api = self.config.api
        if api.socket:
            self._api.append(await start_unix(api.socket, _Proxy(self), group=api.group))
        if api.listen_on:
            host, _, port = api.listen_on.rpartition(":")
            self._api.append(await start_tcp(host.strip("[]"), int(port), _Proxy(self)))
        if self.config.metrics.listen_on:  # read-only: the workers' metrics, merged
            listen_on = self.config.metrics.listen_on  # its WARNING came from the pre-check
            self._api.append(await start_metrics(listen_on, _Proxy(self), warn=False))


class _Proxy:
    """The public API of a daemon with workers: each request fanned out, answers merged."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor

    async def handle(self, request: Request) -> Response:
        path = request.target.split("?", 1)[0]
        workers = self.sup.workers
        if path in ("/tunnels", "/listeners") and request.method in ("GET", "HEAD"):
            merged: list[object] = []
            for worker, answer in zip(workers, await self._all(request), strict=True):
                if answer is not None and answer.status == 200:
                    items = json.loads(answer.body)
                    if path == "/listeners":
                        items = [{**item, "worker": worker.index} for item in items]
                    merged.extend(items)
            return json_response(200, merged)
        if path == "/healthz" and request.method in ("GET", "HEAD"):
            answers = await self._all(request)
            alive = [a is not None and a.status == 200 for a in answers]
            return json_response(
                200 if all(alive) else 503,
                {
                    "status": "ok" if all(alive) else "degraded",
                    "summary": f"{sum(alive)} of {len(alive)} workers answering",
                    "workers": [json.loads(a.body) if a else None for a in answers],
                    "reload": self.sup.reload_state,
                },
            )
        if path == "/metrics" and request.method in ("GET", "HEAD"):
            return _merge_metrics(await self._all(request))
        if path.startswith("/tunnels/"):
            last: Response | None = None
            for answer in await self._all(request):
                if answer is not None and answer.status != 404:
                    return answer
                last = answer or last
            return last or error_response(404, f"no tunnel {path.rsplit('/', 1)[1]}")
        answer = (await self._all(request, only_first=True))[0]
        return answer or error_response(503, "worker 0 is not answering")

    async def _all(self, request: Request, only_first: bool = False) -> list[Response | None]:
        workers = self.sup.workers[:1] if only_first else self.sup.workers

        async def one(path: str) -> Response | None:
            try:
                return await api_call(path, request.method, request.target)
            except (OSError, TimeoutError, h11.ProtocolError):
                return None

        return list(await asyncio.gather(*(one(w.api) for w in workers)))


def _merge_metrics(answers: list[Response | None]) -> Response:
    """Every worker's samples, labelled ``worker``, one family per metric name."""
    families: dict[str, Metric] = {}
    for index, answer in enumerate(answers):
        if answer is None or answer.status != 200:
            continue
        for family in text_string_to_metric_families(answer.body.decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.add_sample(
                    sample.name, {**sample.labels, "worker": str(index)}, sample.value
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return Response(200, generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8")


class _Fixed:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics
