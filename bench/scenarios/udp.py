"""UDP over QUIC DATAGRAM frames (issue 16): ``iperf3 -u`` at a fixed offered rate, 1200-byte
datagrams, directly and through a quictund UDP flow on loopback; datagrams/s and Mbit/s
received, loss and jitter next to direct UDP.  iperf3 also needs its TCP control connection,
so the client carries both: a ``tcp:`` and a ``udp:`` listener on the same port number.
Debian package iperf3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any

from context import REPO, BenchContext, Row, netns_argv
from paths import free_port, wait_tcp

TITLE = "UDP flows (iperf3 -u)"
NAME = "udp"
LENGTH = 1200  # bytes per datagram: below the 1400 an app should keep to (docs)
ENGINES = {"quictund": "aioquic", "quictund-qh3": "qh3"}


def run(ctx: BenchContext) -> list[Row]:
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed (apt-get install iperf3)")
    rates = (20, 100) if ctx.quick else (20, 100, 300)
    port = free_port("127.0.0.1")
    iperf = ctx.procs.spawn("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)])
    wait_tcp("127.0.0.1", port, None, [iperf])
    rows: list[Row] = []
    paths: dict[str, int] = {"direct": port}
    for name, engine in ENGINES.items():
        paths[name] = _start_tunnel(ctx, name, engine, port)
    for rate in rates:
        for name, listen in paths.items():
            ctx.log(f"iperf3 -u -b {rate}M via {name}")
            result = iperf(ctx, "127.0.0.1", listen, rate)
            rows.extend(make_rows(NAME, name, f"{rate} Mbit/s offered", rate, result))
    return rows


def _start_tunnel(ctx: BenchContext, name: str, engine: str, dest_port: int) -> int:
    """A quictund server + client pair carrying TCP and UDP to ``dest_port``; the client's
    port (the same number for both listeners)."""
    work = ctx.workdir(f"udp-{name}")
    wire = free_port("127.0.0.1", kind=2)  # SOCK_DGRAM
    listen = free_port("127.0.0.1")
    dest = f"127.0.0.1:{dest_port}"
    knobs = f'quic-engine = "{engine}"\n'
    conf = work / "pair.toml"
    conf.write_text(
        f'[[server]]\nname = "s"\nlisten-on = "127.0.0.1:{wire}"\nstate-dir = "{work}"\n'
        f'allow = ["tcp:{dest}", "udp:{dest}"]\n{knobs}'
        + "".join(
            f'[[client]]\nname = "{proto}"\nlisten-on = "{proto}:127.0.0.1:{listen}"\n'
            f'server-endpoint = "127.0.0.1:{wire}"\ntoken-source = "{proto}:{dest}"\n'
            f"verify-remote-endpoint = false\n{knobs}"
            for proto in ("tcp", "udp")
        )
    )
    proc = ctx.procs.spawn(
        f"quictund-{name}",
        [ctx.python, "-m", "quictund", "run", "--config", str(conf)],
        env=quictund_env(),
    )
    wait_tcp("127.0.0.1", listen, None, [proc])
    return listen


def quictund_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NOTIFY_SOCKET", None)
    return env


def iperf(
    ctx: BenchContext, host: str, port: int, rate: int, ns: str | None = None
) -> dict[str, Any]:
    """``iperf3 -u`` at ``rate`` Mbit/s to ``host:port`` (from namespace ``ns``), its JSON."""
    argv = netns_argv(ns, [
        "iperf3", "-c", host, "-p", str(port), "-u", "-b", f"{rate}M",
        "-l", str(LENGTH), "-t", str(ctx.duration), "-J",
    ])  # fmt: skip
    for attempt in range(3):  # the server may still be busy with the previous test
        proc = subprocess.run(argv, capture_output=True, timeout=ctx.duration + 60)
        data: dict[str, Any] = json.loads(proc.stdout or b"{}")
        if "error" not in data and "end" in data:
            return data
        time.sleep(1 + attempt)
    return data


def make_rows(scenario: str, name: str, label: str, rate: int, data: dict[str, Any]) -> list[Row]:
    """Received Mbit/s, datagrams/s, loss and jitter of one iperf3 run (``label``: the
    conditions, e.g. "20 Mbit/s offered")."""
    if "end" not in data:
        error = {"error": str(data)[:200]}
        return [Row(scenario, name, f"received, {label}", None, "Mbit/s", error)]
    s = data["end"]["sum"]  # the server's view of the UDP stream
    seconds = float(s["seconds"]) or 1.0
    received = int(s["packets"]) - int(s["lost_packets"])
    extra = {"offered_mbit": rate, "length": LENGTH, "packets": s["packets"]}
    return [
        Row(scenario, name, f"received, {label}", s["bits_per_second"] / 1e6, "Mbit/s", extra),
        Row(scenario, name, f"datagrams/s, {label}", received / seconds, "datagrams/s", extra),
        Row(scenario, name, f"loss, {label}", float(s["lost_percent"]), "%", extra),
        Row(scenario, name, f"jitter, {label}", float(s["jitter_ms"]), "ms", extra),
    ]
