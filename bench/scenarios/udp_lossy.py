"""UDP flows over the lossy emulated link (issue 16): bench/netem/link.py's link (namespaces
qa | qm | qb: 100 Mbit/s, 50 ms RTT, 1 % random loss each way, per datagram -- the UDP GSO
offload is off, see link.py).  ``iperf3 -u`` at a fixed rate directly across the link and
through a quictund UDP flow: a DATAGRAM frame is lost with its packet and never retransmitted,
so the tunnel's loss should track the link's, its jitter the link's, with no head-of-line
blocking.  Needs root, and what link.py needs (it says so); iperf3.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from context import BenchContext, Row
from paths import wait_tcp
from scenarios import udp as plain  # the iperf3 runner and its rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "netem"))
from link import NS_A, NS_B, SERVER_IP, Link

TITLE = "UDP flows over a lossy link"
NAME = "udp_lossy"
CLIENT_NS, SERVER_NS = NS_A, NS_B
RATE_MBIT, RTT_MS, LOSS_PCT = 100, 50, 1
IPERF_PORT, WIRE_PORT, LISTEN_PORT = 5201, 7500, 5300  # our own namespaces: nothing else binds


def run(ctx: BenchContext) -> list[Row]:
    if not shutil.which("iperf3"):
        raise SystemExit("needs iperf3 (apt-get install iperf3)")
    link = Link(rate_mbit=RATE_MBIT, rtt_ms=RTT_MS, loss_pct=LOSS_PCT).up()
    try:
        return _measure(ctx)
    finally:
        link.down()


def _measure(ctx: BenchContext) -> list[Row]:
    iperf = ctx.procs.spawn(
        "iperf3-lossy", ["iperf3", "-s", "-B", SERVER_IP, "-p", str(IPERF_PORT)], ns=SERVER_NS
    )
    wait_tcp(SERVER_IP, IPERF_PORT, CLIENT_NS, [iperf])
    work = ctx.workdir("udp-lossy")
    dest = f"{SERVER_IP}:{IPERF_PORT}"
    conf_s, conf_c = work / "server.toml", work / "client.toml"
    conf_s.write_text(
        f'[[server]]\nname = "s"\nlisten-on = "{SERVER_IP}:{WIRE_PORT}"\nstate-dir = "{work}"\n'
        f'allow = ["tcp:{dest}", "udp:{dest}"]\n'
    )
    conf_c.write_text(
        "".join(
            f'[[client]]\nname = "{proto}"\nlisten-on = "{proto}:127.0.0.1:{LISTEN_PORT}"\n'
            f'server-endpoint = "{SERVER_IP}:{WIRE_PORT}"\ntoken-source = "{proto}:{dest}"\n'
            "verify-remote-endpoint = false\n"
            for proto in ("tcp", "udp")
        )
    )
    env = plain.quictund_env()
    procs = [
        ctx.procs.spawn(
            f"quictund-lossy-{role}",
            [ctx.python, "-m", "quictund", "run", "--config", str(conf)],
            ns=ns,
            env=env,
        )  # fmt: skip
        for role, conf, ns in (("server", conf_s, SERVER_NS), ("client", conf_c, CLIENT_NS))
    ]
    wait_tcp("127.0.0.1", LISTEN_PORT, CLIENT_NS, procs)
    rows: list[Row] = []
    rate = 20
    for name, host, port in (("direct", SERVER_IP, IPERF_PORT),
                             ("quictund", "127.0.0.1", LISTEN_PORT)):  # fmt: skip
        ctx.log(f"iperf3 -u -b {rate}M via {name}, {RTT_MS} ms, {LOSS_PCT} % loss each way")
        data: dict[str, Any] = plain.iperf(ctx, host, port, rate, ns=CLIENT_NS)
        label = f"{rate} Mbit/s offered, {RTT_MS} ms, {LOSS_PCT} % loss each way"
        rows.extend(plain.make_rows(NAME, name, label, rate, data))
    return rows
