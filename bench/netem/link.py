"""An emulated bad link between two network namespaces (this kernel has no netem).

    python bench/netem/link.py up [--rate-mbit 100] [--rtt-ms 50] [--loss 1]
    python bench/netem/link.py set --loss 5        # change the loss rate of a running link
    python bench/netem/link.py set --reorder-pct 1 --reorder-ms -25   # 1 % jump 25 ms ahead
    python bench/netem/link.py drops               # nft drop counter: packets, bytes, mean
    python bench/netem/link.py check               # ping RTT and TCP goodput across it
    python bench/netem/link.py down                # idempotent

Topology (all addresses exist only inside the namespaces created here)::

    qa (client side)           qm (the link)                         qb (server side)
    qa0 10.99.1.2  <-veth->  qm-a 10.99.1.1   [forwarding]  qm-b 10.99.2.1  <-veth->  qb0 10.99.2.2

Everything that crosses ``qm`` in either direction, TCP and UDP alike, gets

* **random loss**: nftables ``numgen random mod 100000 < loss*1000`` drops in the forward hook
  (priority -200, before anything else);
* **delay**: iptables ``NFQUEUE`` to ``delayq`` (bench/netem/delayq.c), a process in ``qm``
  that holds each packet for RTT/2 and then accepts it;
* **reordering** (optional): ``delayq --reorder-pct P --reorder-ms D`` gives a random P % of
  packets RTT/2 + D instead: D = -25 makes them jump 25 ms ahead of the packets sent before
  them, D = +20 holds them back behind 20 ms of later packets;
* **rate**: ``tbf`` on both egress veths of ``qm`` (rate, a 1 BDP queue limit, a burst of a few
  packets).

Segmentation offloads are off on every veth -- tso, gso, gro and ``tx-udp-segmentation``, the
UDP GSO offload: with it on, a UDP GSO train (up to 64 datagrams sent with one ``sendmsg``)
crossed ``qm`` as one skb, so one random drop took out the whole train.  ``link.py drops``
reads the drop rule's counter: its mean dropped unit is now one datagram (~1.4 KB).

``QUICTUND_NETEM_PREFIX`` (default empty) prefixes the namespace names and the state directory,
so two benches on one machine do not tear down each other's link.  The delay helper's PID is
kept in ``STATE_DIR`` and killed by PID on ``down``.

Importable: ``Link(rate_mbit, rtt_ms, loss_pct).up()``, ``.set_loss()``, ``.down()``,
``netns_cmd(ns, *argv)``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = os.environ.get("QUICTUND_NETEM_PREFIX", "")
STATE_DIR = Path(f"/run/{PREFIX}quictund-netem")
DELAYQ_BIN = STATE_DIR / "delayq"
NS_A, NS_M, NS_B = f"{PREFIX}qa", f"{PREFIX}qm", f"{PREFIX}qb"
NAMESPACES = (NS_A, NS_M, NS_B)
OFFLOADS = ("tso", "gso", "gro", "tx-udp-segmentation")
CLIENT_IP = "10.99.1.2"
SERVER_IP = "10.99.2.2"
QUEUE_NUM = 7
APT_PACKAGES = ("libnetfilter-queue-dev", "nftables", "iptables", "ethtool", "iputils-ping", "gcc")


def sh(*argv: str, check: bool = True, input_text: str | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, input=input_text)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def netns_cmd(ns: str, *argv: str) -> list[str]:
    """``ip netns exec`` in one of the link's namespaces, named "qa", "qm" or "qb"."""
    ns = {"qa": NS_A, "qm": NS_M, "qb": NS_B}.get(ns, ns)
    return ["ip", "netns", "exec", ns, *argv]


def ns(name: str, *argv: str, check: bool = True) -> str:
    return sh(*netns_cmd(name, *argv), check=check)


def ensure_tools() -> None:
    """Install the Debian packages the link needs when any is missing (we are root)."""
    missing = not Path("/usr/include/libnetfilter_queue/libnetfilter_queue.h").exists() or any(
        shutil.which(tool) is None for tool in ("nft", "iptables", "ethtool", "ping", "gcc")
    )
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", *APT_PACKAGES]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
            subprocess.run(cmd, env=env, capture_output=True, check=True)


def build_delayq() -> Path:
    src = HERE / "delayq.c"
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    if not DELAYQ_BIN.exists() or DELAYQ_BIN.stat().st_mtime < src.stat().st_mtime:
        sh(
            "gcc",
            "-O2",
            "-Wall",
            "-o",
            str(DELAYQ_BIN),
            str(src),
            "-lnetfilter_queue",
            "-lnfnetlink",
        )
    return DELAYQ_BIN


@dataclass
class Link:
    rate_mbit: float = 100.0
    rtt_ms: float = 50.0
    loss_pct: float = 0.0
    reorder_pct: float = 0.0
    reorder_ms: float = 0.0

    # ---- lifecycle -----------------------------------------------------------------------

    def up(self) -> Link:
        """(Re)build the namespaces, shaping and delay helper from scratch."""
        ensure_tools()
        down()
        delayq = build_delayq()
        for name in NAMESPACES:
            sh("ip", "netns", "add", name)
            ns(name, "ip", "link", "set", "lo", "up")
            for knob in ("all", "default"):
                ns(name, "sysctl", "-qw", f"net.ipv6.conf.{knob}.disable_ipv6=1")
        sh(
            "ip",
            "link",
            "add",
            "qa0",
            "netns",
            NS_A,
            "type",
            "veth",
            "peer",
            "name",
            "qm-a",
            "netns",
            NS_M,
        )
        sh(
            "ip",
            "link",
            "add",
            "qb0",
            "netns",
            NS_B,
            "type",
            "veth",
            "peer",
            "name",
            "qm-b",
            "netns",
            NS_M,
        )
        for name, dev, addr in (
            ("qa", "qa0", f"{CLIENT_IP}/24"),
            ("qm", "qm-a", "10.99.1.1/24"),
            ("qm", "qm-b", "10.99.2.1/24"),
            ("qb", "qb0", f"{SERVER_IP}/24"),
        ):
            ns(name, "ip", "addr", "add", addr, "dev", dev)
            ns(name, "ip", "link", "set", dev, "up")
            for offload in OFFLOADS:  # one at a time: a knob a driver lacks fails only itself
                ns(name, "ethtool", "-K", dev, offload, "off", check=False)
        ns("qa", "ip", "route", "add", "default", "via", "10.99.1.1")
        ns("qb", "ip", "route", "add", "default", "via", "10.99.2.1")
        ns("qm", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for name in ("qa", "qb"):
            # Room for a 50 ms x 100 Mbit/s window (and more) in both TCP and UDP buffers.
            ns(
                name,
                "sysctl",
                "-qw",
                "net.core.rmem_max=67108864",
                "net.core.wmem_max=67108864",
                "net.ipv4.tcp_rmem=4096 131072 33554432",
                "net.ipv4.tcp_wmem=4096 65536 33554432",
                "net.ipv4.tcp_no_metrics_save=1",
            )
        self._shape()
        self._set_loss_rules()
        ns(
            "qm",
            "iptables",
            "-t",
            "mangle",
            "-A",
            "FORWARD",
            "-j",
            "NFQUEUE",
            "--queue-num",
            str(QUEUE_NUM),
        )
        self._start_delayq(delayq)
        (STATE_DIR / "link.json").write_text(json.dumps(self.__dict__))
        self._wait_ready()
        return self

    def _start_delayq(self, delayq: Path) -> None:
        log = open(STATE_DIR / "delayq.log", "ab")  # handed to the child
        argv = [str(delayq), "--queue", str(QUEUE_NUM), "--delay-ms", str(self.rtt_ms / 2)]
        argv += ["--maxlen", "100000"]
        if self.reorder_pct:
            argv += ["--reorder-pct", str(self.reorder_pct), "--reorder-ms", str(self.reorder_ms)]
        proc = subprocess.Popen(
            netns_cmd("qm", *argv), stdout=log, stderr=log, start_new_session=True
        )
        (STATE_DIR / "delayq.pid").write_text(str(proc.pid))

    def set_reorder(self, pct: float, ms: float) -> None:
        """Restart the delay helper so ``pct`` % of packets get RTT/2 + ``ms``."""
        if (pct, ms) == (self.reorder_pct, self.reorder_ms):
            return
        self.reorder_pct, self.reorder_ms = pct, ms
        _stop_delayq()
        self._start_delayq(DELAYQ_BIN)
        (STATE_DIR / "link.json").write_text(json.dumps(self.__dict__))
        self._wait_ready()

    def drops(self) -> tuple[int, int]:
        """(packets, bytes) dropped by the random-loss rule since it was last set."""
        out = ns("qm", "nft", "list", "chain", "inet", "netem", "forward")
        m = re.search(r"counter packets (\d+) bytes (\d+) drop", out)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def set_loss(self, loss_pct: float) -> None:
        self.loss_pct = loss_pct
        self._set_loss_rules()
        (STATE_DIR / "link.json").write_text(json.dumps(self.__dict__))

    def down(self) -> None:
        down()

    # ---- pieces --------------------------------------------------------------------------

    def _shape(self) -> None:
        rate_bps = self.rate_mbit * 1e6
        bdp = int(rate_bps / 8 * self.rtt_ms / 1000)
        limit = max(bdp, 64 * 1024)
        burst = max(int(rate_bps / 8 * 0.0005), 4 * 1514)  # 0.5 ms of traffic, >= 4 packets
        for dev in ("qm-a", "qm-b"):
            ns(
                "qm",
                "tc",
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                f"{int(rate_bps)}bit",
                "burst",
                str(burst),
                "limit",
                str(limit),
            )

    def _set_loss_rules(self) -> None:
        threshold = int(round(self.loss_pct * 1000))  # out of 100000
        rule = f"numgen random mod 100000 < {threshold} counter drop" if threshold else ""
        script = (
            "table inet netem\ndelete table inet netem\n"
            "table inet netem {\n"
            "  chain forward { type filter hook forward priority -200; policy accept;\n"
            f"    {rule}\n  }}\n}}\n"
        )
        sh(*netns_cmd("qm", "nft", "-f", "-"), input_text=script)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            res = subprocess.run(
                netns_cmd("qa", "ping", "-c", "1", "-W", "1", SERVER_IP), capture_output=True
            )
            if res.returncode == 0:
                return
        raise RuntimeError("link did not come up (is delayq running? see /run/quictund-netem)")

    # ---- self-check ----------------------------------------------------------------------

    def ping_rtt_ms(self, count: int = 10) -> float:
        out = ns("qa", "ping", "-q", "-c", str(count), "-i", "0.2", SERVER_IP)
        m = re.search(r"= [\d.]+/([\d.]+)/", out)
        if m is None:
            raise RuntimeError(f"no RTT in ping output: {out}")
        return float(m.group(1))

    def tcp_goodput_mbit(self, seconds: float = 5.0, cc: str = "bbr") -> float:
        """One TCP stream qa -> qb with congestion control ``cc``; receiver-side Mbit/s."""
        app = str(HERE / "tcpapp.py")
        sink = subprocess.Popen(
            netns_cmd(
                "qb",
                sys.executable,
                app,
                "sink",
                "--port",
                "5201",
                "--seconds",
                str(seconds),
                "--cc",
                cc,
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.3)
            sh(
                *netns_cmd(
                    "qa",
                    sys.executable,
                    app,
                    "send",
                    "--to",
                    f"{SERVER_IP}:5201",
                    "--seconds",
                    str(seconds + 5),
                    "--cc",
                    cc,
                ),
                check=False,
            )
            out, _ = sink.communicate(timeout=seconds + 30)
        finally:
            if sink.poll() is None:
                sink.kill()
                sink.wait()
        return float(json.loads(out)["mbit"])


def _stop_delayq() -> None:
    """Kill our delay helper by the PID we recorded (SIGTERM: it accepts what it holds)."""
    pid_file = STATE_DIR / "delayq.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)


def down() -> None:
    """Kill our delay helper (by its PID) and delete the namespaces; fine when already down."""
    _stop_delayq()
    (STATE_DIR / "link.json").unlink(missing_ok=True)
    existing = sh("ip", "netns", "list", check=False)
    for name in NAMESPACES:
        if re.search(rf"^{name}\b", existing, re.M):
            sh("ip", "netns", "del", name, check=False)


def current() -> Link:
    state = STATE_DIR / "link.json"
    if not state.exists():
        raise SystemExit("link is down: run `link.py up` first")
    return Link(**json.loads(state.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", choices=["up", "set", "down", "check", "drops"])
    ap.add_argument("--rate-mbit", type=float, default=100.0)
    ap.add_argument("--rtt-ms", type=float, default=50.0)
    ap.add_argument("--loss", type=float, default=None, help="percent, both directions")
    ap.add_argument("--reorder-pct", type=float, default=0.0, help="percent of packets")
    ap.add_argument("--reorder-ms", type=float, default=0.0, help="their extra delay (< 0: early)")
    args = ap.parse_args()
    if args.command == "up":
        link = Link(args.rate_mbit, args.rtt_ms, args.loss or 0.0)
        link.reorder_pct, link.reorder_ms = args.reorder_pct, args.reorder_ms
        link.up()
        print(f"link up: {link}")
    elif args.command == "set":
        link = current()
        if args.loss is not None:
            link.set_loss(args.loss)
        link.set_reorder(args.reorder_pct, args.reorder_ms)
        print(f"link: {link}")
    elif args.command == "drops":
        packets, size = current().drops()
        mean = size / packets if packets else 0.0
        print(f"dropped {packets} packets, {size} bytes, mean unit {mean:.0f} bytes")
    elif args.command == "down":
        down()
        print("link down")
    else:
        link = current()
        rtt = link.ping_rtt_ms()
        print(f"ping RTT {rtt:.1f} ms (want {link.rtt_ms:.0f})")
        for cc in ("cubic", "bbr"):
            print(
                f"TCP {cc}: {link.tcp_goodput_mbit(cc=cc):.1f} Mbit/s "
                f"(rate {link.rate_mbit:.0f}, loss {link.loss_pct} %)"
            )


if __name__ == "__main__":
    main()
