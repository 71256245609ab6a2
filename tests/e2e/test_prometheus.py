"""The shipped monitoring files against a real Prometheus (issue 14 §7).

Debian's ``prometheus`` package (which also provides ``promtool``) scrapes two running daemons
through their read-only ``[metrics]`` listeners -- a server, and a client with two workers (so
the supervisor's merged metrics are what is scraped) -- with the shipped alert rules loaded.
Then every PromQL expression of the shipped Grafana dashboard is run against its HTTP API and
must return data, the rules must be loaded and healthy, and stopping the server must put the
client's ``QuictundNoServerConnection`` alert in ``pending``.  ``promtool`` checks the rules
and runs their unit tests (tests/prometheus/).

Skipped, saying why, only when Prometheus is not installed; ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import connect, echo
from tests.e2e.test_daemon import Run, client_toml, free_udp_port, server_toml
from tests.e2e.test_workers import free_tcp_port

ROOT = Path(__file__).resolve().parents[2]
SHARE = ROOT / "packaging" / "share"
RULES = SHARE / "prometheus" / "quictund-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "quictund-rules.test.yml"
DASHBOARD = SHARE / "grafana" / "quictund-dashboard.json"

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="needs Debian's prometheus package (apt-get install prometheus; .ci/run installs it)",
)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, with Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".+")
            assert "$" not in expr, f"{panel['title']}: unknown Grafana variable in {expr}"
            queries.append((panel["title"], expr))
    variables = dashboard["templating"]["list"]
    for var in variables:
        if var["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+), *(\w+)\)", var["query"]["query"])
            assert metric is not None, var["query"]
            queries.append((f"variable {var['name']}", metric.group(1)))
    return queries


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout
    done = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_dashboard_is_grafana_json_with_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "quictund" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = dashboard_queries()
    assert len(queries) >= 14
    metrics = {m for _, q in queries for m in re.findall(r"quictund_\w+", q)}
    for name in (
        "quictund_tunnels_active", "quictund_tunnels_opened_total",
        "quictund_tunnels_failed_total", "quictund_bytes_total",
        "quictund_tunnel_setup_seconds_bucket", "quictund_reconnects_total",
        "quictund_server_connected", "quictund_last_reload_successful",
        "quictund_reloads_total", "quictund_limit_hits_total",
    ):  # fmt: skip
        assert name in metrics, name


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
        self.proc, self.address, self.log = proc, address, log

    async def get(self, path: str, **params: str) -> Any:
        url = f"http://{self.address}{path}?{urllib.parse.urlencode(params)}"

        def fetch() -> Any:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return json.loads(answer.read())

        body = await asyncio.to_thread(fetch)
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=expr)
        return list(data["result"])

    async def wait(self, expr: str, count: int = 1, within: float = 60) -> list[dict[str, Any]]:
        """The result of ``expr`` once it has ``count`` series."""
        deadline = time.monotonic() + within
        while len(result := await self.query(expr)) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = self.log.read_text()[-2000:]
                raise AssertionError(f"{expr}: no data in {within} s; prometheus log: {tail}")
            await asyncio.sleep(0.5)
        return result


@pytest.fixture
async def prometheus_factory(short_tmp: Path) -> AsyncIterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    async def start(targets: list[str]) -> Prometheus:
        assert PROMETHEUS is not None
        config = short_tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: quictund\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        address = f"127.0.0.1:{free_tcp_port()}"
        log = short_tmp / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220 -- a handle we kill, no wait here
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={short_tmp / 'tsdb'}",
                    f"--web.listen-address={address}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        procs.append(proc)
        prometheus = Prometheus(proc, address, log)
        deadline = time.monotonic() + 60
        while True:
            try:
                await prometheus.get("/api/v1/status/buildinfo")
                return prometheus
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    tail = log.read_text()[-2000:]
                    raise AssertionError(f"prometheus did not start: {tail}") from None
                await asyncio.sleep(0.3)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def metrics_address(run: Run) -> str:
    line = await run.wait_log("metrics listening on tcp:", within=60)
    return line.split("metrics listening on tcp:", 1)[1].split()[0]


async def traffic(address: str, tunnels: int) -> None:
    for i in range(tunnels):
        reader, writer = await connect(address)
        writer.write(b"x" * (1000 + i))
        assert len(await reader.readexactly(1000 + i)) == 1000 + i
        writer.close()


async def refused(address: str) -> None:
    reader, writer = await connect(address)
    writer.write(b"nope")
    try:  # the server refused it: the app connection is closed or reset, never echoed
        assert await asyncio.wait_for(reader.read(), 15) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed before our write went out: the refusal came first
    writer.close()


async def http_status(address: str, method: str, target: str) -> int:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(data.split()[1])


async def test_prometheus_scrapes_daemons_and_dashboard_queries_return_data(
    short_tmp: Path, state_dir: Path, ca: Path, prometheus_factory: Any
) -> None:
    backend = await echo().tcp()
    udp, tcp = free_udp_port(), free_tcp_port()
    sconf, cconf = short_tmp / "s.toml", short_tmp / "c.toml"
    metrics = '[metrics]\nlisten-on = "127.0.0.1:0"\n'
    # retry-threshold = 0: every new QUIC connection gets a Retry, so limit hits exist
    sconf.write_text(
        metrics + server_toml("edge", udp, state_dir, [backend.address]) + "retry-threshold = 0\n"
    )
    cconf.write_text(
        metrics
        + "[daemon]\nworkers = 2\n"
        + client_toml("app", f"tcp:127.0.0.1:{tcp}", udp, ca, backend.address)
        + client_toml("denied", f"unix:{short_tmp}/d.sock", udp, ca, "tcp:127.0.0.1:9")
    )
    server = await Run.start("--config", str(sconf))
    client: Run | None = None
    try:
        smetrics = await metrics_address(server)
        await server.wait_log("ready:")
        client = await Run.start("--config", str(cconf))
        cmetrics = await metrics_address(client)
        await client.wait_log("ready: 2 workers", within=60)
        # read-only, for real: no tunnel list, no DELETE
        assert await http_status(cmetrics, "GET", "/metrics") == 200
        assert await http_status(cmetrics, "POST", "/metrics") == 405
        assert await http_status(cmetrics, "GET", "/tunnels") == 404
        assert await http_status(cmetrics, "DELETE", "/tunnels/x") == 404

        await traffic(f"tcp:127.0.0.1:{tcp}", 6)
        await refused(f"unix:{short_tmp}/d.sock")
        prometheus = await prometheus_factory([smetrics, cmetrics])
        await prometheus.wait('count_over_time(up{job="quictund"}[1m]) >= 2', count=2)
        # more of everything between scrapes, so rates are not all zero
        await traffic(f"tcp:127.0.0.1:{tcp}", 6)
        await refused(f"unix:{short_tmp}/d.sock")
        await prometheus.wait('count_over_time(up{job="quictund"}[1m]) >= 5', count=2)
        assert {r["value"][1] for r in await prometheus.query('up{job="quictund"}')} == {"1"}

        empty = []
        for title, expr in dashboard_queries():
            if not await prometheus.query(expr):
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        # what the panels show is right, not only present
        workers = await prometheus.query(
            f'sum by (worker) (quictund_tunnels_opened_total{{instance="{cmetrics}"}})'
        )
        assert sum(float(r["value"][1]) for r in workers) == 12
        assert {r["metric"].get("worker") for r in workers} <= {"0", "1"}
        failed = await prometheus.query(
            "sum by (instance, listener, reason) (quictund_tunnels_failed_total)"
        )
        by_instance = {r["metric"]["instance"]: r for r in failed}
        assert len(failed) == 2 and by_instance.keys() == {smetrics, cmetrics}
        assert by_instance[cmetrics]["metric"]["listener"] == "denied"
        assert by_instance[smetrics]["metric"]["reason"] == "policy_denied"
        assert {r["value"][1] for r in failed} == {"2"}
        connected = await prometheus.query("max without (worker) (quictund_server_connected)")
        assert {(r["metric"]["listener"], r["value"][1]) for r in connected} == {
            ("app", "1"),
            ("denied", "1"),
        }

        rules = await prometheus.get("/api/v1/rules")
        loaded = {r["name"]: r["health"] for g in rules["groups"] for r in g["rules"]}
        assert loaded == {
            "QuictundTunnelFailureRate": "ok",
            "QuictundReconnects": "ok",
            "QuictundNoServerConnection": "ok",
            "QuictundReloadFailed": "ok",
        }

        # The server goes away: the client's alert becomes pending (it fires after 2 min).
        assert await server.stop() == 0
        deadline = time.monotonic() + 60
        while True:
            alerts = (await prometheus.get("/api/v1/alerts"))["alerts"]
            pending = {
                a["labels"]["listener"]
                for a in alerts
                if a["labels"]["alertname"] == "QuictundNoServerConnection"
            }
            if pending == {"app", "denied"}:
                break
            assert time.monotonic() < deadline, alerts
            await asyncio.sleep(0.5)
    finally:
        if client is not None:
            assert await client.stop() == 0
        if server.proc.returncode is None:
            await server.stop()
        backend.close()
