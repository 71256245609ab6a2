"""UDP flows over a lossy link (issue 16): two namespaces of our own (``udp-lc`` client side,
``udp-ls`` server side) joined by a veth pair, 1 % random loss each way (nftables ``numgen``;
this kernel has no netem).  ``iperf3 -u`` at a fixed rate directly across the link and through
a quictund UDP flow: a DATAGRAM frame is lost with its packet and never retransmitted, so the
tunnel's loss should track the link's, with no head-of-line blocking.  Needs root, nft, iperf3.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from context import BenchContext, Row
from paths import wait_tcp
from scenarios import udp as plain  # the iperf3 runner and its rows

TITLE = "UDP flows over a lossy link"
NAME = "udp_lossy"
CLIENT_NS, SERVER_NS = "udp-lc", "udp-ls"
CLIENT_IP, SERVER_IP = "10.98.7.1", "10.98.7.2"
LOSS_PCT = 1
IPERF_PORT, WIRE_PORT, LISTEN_PORT = 5201, 7500, 5300  # our own namespaces: nothing else binds


def run(ctx: BenchContext) -> list[Row]:
    if not (shutil.which("nft") and shutil.which("iperf3") and shutil.which("ip")):
        raise SystemExit("needs nft, ip and iperf3 (apt-get install nftables iproute2 iperf3)")
    _down()
    try:
        _up()
        return _measure(ctx)
    finally:
        _down()


def _sh(*argv: str, check: bool = True) -> None:
    subprocess.run(argv, check=check, capture_output=True, timeout=30)


def _up() -> None:
    _sh("ip", "netns", "add", CLIENT_NS)
    _sh("ip", "netns", "add", SERVER_NS)
    _sh("ip", "link", "add", "udp-c0", "netns", CLIENT_NS, "type", "veth",
        "peer", "udp-s0", "netns", SERVER_NS)  # fmt: skip
    for ns, dev, ip in ((CLIENT_NS, "udp-c0", CLIENT_IP), (SERVER_NS, "udp-s0", SERVER_IP)):
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        for rule in (
            "add table inet udp_loss",
            "add chain inet udp_loss in { type filter hook input priority -200; }",
            (
                f'add rule inet udp_loss in iifname "{dev}" '
                f"numgen random mod 1000 < {LOSS_PCT * 10} drop"
            ),
        ):
            _sh("ip", "netns", "exec", ns, "nft", rule)


def _down() -> None:
    for ns in (CLIENT_NS, SERVER_NS):
        _sh("ip", "netns", "del", ns, check=False)  # takes its veth end and nft table along


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
        ctx.log(f"iperf3 -u -b {rate}M via {name}, {LOSS_PCT} % loss each way")
        data: dict[str, Any] = plain.iperf(ctx, host, port, rate, ns=CLIENT_NS)
        label = f"{rate} Mbit/s offered, {LOSS_PCT} % loss each way"
        rows.extend(plain.make_rows(NAME, name, label, rate, data))
    return rows
