"""Bad networks: goodput and request latency over an emulated lossy 100 Mbit/s, 50 ms link.

    python bench/scenarios/lossy.py [--quick] [--runs N] [--seconds S] [--loss 0,1,5]
                                    [--paths tcp-cubic,quictund-bbr,...] [--out FILE]

Builds the link of bench/netem/link.py (namespaces qa | qm | qb; needs root), then for each
loss level (0, 0.1, 1, 2, 5 %), each reordering case (no loss; 1 % of packets jump 25 ms
ahead, 1 % held back 20 ms: ``--reorder 1:-25,1:20``) and each path measures, side by side in
one invocation:

* ``goodput_mbit``: one bulk stream qa -> qb for ``--seconds`` (>= 10 s), timed at the sink
  from its first byte;
* ``rr_p50_ms`` / ``rr_p99_ms``: 1-byte request/response over an existing connection;
* ``first_byte_ms`` (loss 0 only): ``connect()`` of a new connection to its first echoed byte
  (for quictund: a new tunnel over the existing QUIC connection; ``extra.rtts`` in link RTTs).

Paths: ``tcp-cubic`` and ``tcp-bbr`` (direct TCP, congestion control set per socket) and
``quictund-<cc>`` for each congestion controller (server daemon in qb, client daemon in qa,
both started from TOML with ``congestion-control = <cc>``; ``quictund-qh3`` runs the qh3
engine with its built-in controller).  Runs are interleaved (run 1 of
every path, then run 2, ...) and each metric is reported as the median over runs.

In the suite (``bench/run.py --only lossy``) the environment variable ``QUICTUND_LOSSY_ARGS``
holds these options, e.g. ``--paths tcp-cubic,tcp-bbr,quictund-bbr --loss 1,5``.

Suite contract: ``run(ctx) -> list[Row]`` with ``ctx.quick`` (bool); a Row is
``{scenario, path, metric, value, unit, extra}``.  Standalone it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "netem"))

from _toml_daemons import start_config  # noqa: E402
from link import NS_A, NS_B, SERVER_IP, Link, netns_cmd  # noqa: E402

Row = dict[str, Any]
SCENARIO = "lossy"
TITLE = "Lossy links"
LOSSES = (0.0, 0.1, 1.0, 2.0, 5.0)
REORDERS = ((1.0, -25.0), (1.0, 20.0))  # (% of packets, extra one-way delay in ms)
PATHS = ("tcp-cubic", "tcp-bbr", "quictund-cubic", "quictund-bbr")
APP = str(BENCH / "netem" / "tcpapp.py")
SINK_PORT, ECHO_PORT = 5201, 5202
TUNNEL_PORTS = {"bulk": 6501, "echo": 6502}
UDP_PORT = 7500


def _app(ns: str, *args: str) -> list[str]:
    return netns_cmd(ns, sys.executable, APP, *args)


def _json_run(cmd: list[str], timeout: float) -> dict[str, float]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()[-500:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class Quictund:
    """A server daemon in qb and a client daemon in qa for one congestion controller."""

    def __init__(self, cc: str, workdir: Path, index: int) -> None:
        self.cc = cc
        self.workdir = workdir / cc
        self.udp_port = UDP_PORT + index
        self.ports = {what: port + 10 * index for what, port in TUNNEL_PORTS.items()}
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # quictund-qh3: the qh3 engine, whose congestion control is built into its core
        knobs = (
            'quic-engine = "qh3"\n' if self.cc == "qh3" else f'congestion-control = "{self.cc}"\n'
        )
        server = self.workdir / "server.toml"
        server.write_text(
            f'[[server]]\nname = "lossy"\n'
            f'listen-on = "{SERVER_IP}:{self.udp_port}"\nstate-dir = "{self.workdir / "state"}"\n'
            f'allow = ["tcp:127.0.0.1:{SINK_PORT}", "tcp:127.0.0.1:{ECHO_PORT}"]\n{knobs}'
        )
        client = self.workdir / "client.toml"
        sections = [
            f'[[client]]\nname = "{name}"\nlisten-on = "tcp:127.0.0.1:{port}"\n'
            f'server-endpoint = "{SERVER_IP}:{self.udp_port}"\n'
            f'token-source = "tcp:127.0.0.1:{SINK_PORT if name == "bulk" else ECHO_PORT}"\n'
            f"verify-remote-endpoint = false\n{knobs}"
            for name, port in self.ports.items()
        ]
        # an API socket, so `quictund status --api …/client-api.sock` can show cwnd and RTT
        api = f'[api]\nsocket = "{self.workdir / "client-api.sock"}"\n'
        client.write_text(api + "\n".join(sections))
        for config, ns in ((server, NS_B), (client, NS_A)):
            proc, _ = await start_config(config, ns)
            self.procs.append(proc)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def _kind(path: str) -> tuple[str, str]:
    kind, _, cc = path.partition("-")
    return kind, cc


_TUNNELS: dict[str, Quictund] = {}


def _target(path: str, what: str) -> str:
    kind, cc = _kind(path)
    if kind == "tcp":
        return f"{SERVER_IP}:{SINK_PORT if what == 'bulk' else ECHO_PORT}"
    return f"127.0.0.1:{_TUNNELS[cc].ports[what]}"


def measure_bulk(path: str, seconds: float) -> float:
    _, cc = _kind(path)
    tcp_cc = cc if path.startswith("tcp") else ""
    sink = subprocess.Popen(
        _app("qb", "sink", "--port", str(SINK_PORT), "--seconds", str(seconds), "--cc", tcp_cc),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.3)
        subprocess.run(
            _app(
                "qa",
                "send",
                "--to",
                _target(path, "bulk"),
                "--seconds",
                str(seconds + 20),
                "--cc",
                tcp_cc,
            ),
            capture_output=True,
            timeout=seconds + 60,
        )
        out, _ = sink.communicate(timeout=30)
        return float(json.loads(out)["mbit"])
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def measure_echo(path: str, count: int, mode: str) -> dict[str, float]:
    _, cc = _kind(path)
    tcp_cc = cc if path.startswith("tcp") else ""
    echo = subprocess.Popen(_app("qb", "echo", "--port", str(ECHO_PORT), "--cc", tcp_cc))
    try:
        time.sleep(0.3)
        return _json_run(
            _app("qa", mode, "--to", _target(path, "echo"), "--count", str(count), "--cc", tcp_cc),
            timeout=600,
        )
    finally:
        echo.terminate()
        echo.wait()


Key = tuple[str, str, float, tuple[float, float]]  # path, metric, loss %, reorder (%, ms)


def condition(loss: float, reorder: tuple[float, float] | list[float]) -> str:
    """The row label of one link condition: "1 % loss" or "1 % 25 ms ahead"."""
    pct, ms = reorder
    if not pct:
        return f"{loss:g} % loss"
    return f"{pct:g} % {abs(ms):g} ms " + ("ahead" if ms < 0 else "late")


async def _measure_one(
    args: argparse.Namespace,
    path: str,
    run: int,
    loss: float,
    reorder: tuple[float, float],
    samples: dict[Key, list[float]],
) -> None:
    def add(metric: str, value: float) -> None:
        samples.setdefault((path, metric, loss, reorder), []).append(value)

    mbit = await asyncio.to_thread(measure_bulk, path, args.seconds)
    add("goodput_mbit", mbit)
    rr = await asyncio.to_thread(measure_echo, path, args.requests, "rr")
    add("rr_p50_ms", rr["p50_ms"])
    add("rr_p99_ms", rr["p99_ms"])
    line = f"run {run + 1} {condition(loss, reorder):>16} {path:<15} {mbit:7.1f} Mbit/s"
    line += f"  rr p50 {rr['p50_ms']:6.1f} ms  p99 {rr['p99_ms']:7.1f} ms"
    if loss == 0 and not reorder[0]:
        fb = await asyncio.to_thread(measure_echo, path, 10, "connect")
        add("first_byte_ms", fb["p50_ms"])
        line += f"  new conn -> first byte {fb['p50_ms']:.1f} ms"
    print(line, flush=True)


async def measure(args: argparse.Namespace) -> list[Row]:
    link = Link(rate_mbit=100.0, rtt_ms=50.0, loss_pct=0.0).up()
    samples: dict[Key, list[float]] = {}
    tunnels = _TUNNELS
    workdir = Path(tempfile.mkdtemp(prefix="lossy-"))
    try:
        for path in args.paths:
            kind, cc = _kind(path)
            if kind == "quictund":
                tunnels[cc] = Quictund(cc, workdir, len(tunnels))
                await tunnels[cc].start()
        rtt = link.ping_rtt_ms()
        print(f"# link: 100 Mbit/s, ping RTT {rtt:.1f} ms", flush=True)
        for run in range(args.runs):
            cases = [(loss, (0.0, 0.0)) for loss in args.loss]
            cases += [(0.0, reorder) for reorder in args.reorder]
            for loss, reorder in cases:
                link.set_loss(loss)
                link.set_reorder(*reorder)
                for path in args.paths:
                    await _measure_one(args, path, run, loss, reorder, samples)
    finally:
        for tunnel in tunnels.values():
            await tunnel.stop()
        link.down()
    rows = []
    for (path, metric, loss, reorder), values in samples.items():
        value = statistics.median(values)
        extra: dict[str, Any] = {"loss_pct": loss, "runs": values, "rate_mbit": 100, "rtt_ms": 50}
        extra["reorder"] = list(reorder)
        extra["condition"] = condition(loss, reorder)
        if metric == "first_byte_ms":
            extra["rtts"] = round(value / rtt, 2)
        unit = "Mbit/s" if metric == "goodput_mbit" else "ms"
        rows.append(
            {
                "scenario": SCENARIO,
                "path": path,
                "metric": metric,
                "value": value,
                "unit": unit,
                "extra": extra,
            }
        )
    return rows


def _args(quick: bool, argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--loss", default=None, help="comma-separated percentages")
    ap.add_argument("--reorder", default=None, help="PCT:MS,... (MS < 0: jump ahead)")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--out", default=str(BENCH / "results" / "lossy.json"))
    args = ap.parse_args(argv if argv is not None else [])
    args.runs = args.runs or (1 if args.quick else 3)  # three, so a median means something
    args.seconds = args.seconds or 10.0
    args.requests = args.requests or (100 if args.quick else 150)
    args.loss = [float(x) for x in args.loss.split(",")] if args.loss else list(LOSSES)
    cases = [c.split(":") for c in args.reorder.split(",") if c] if args.reorder else None
    args.reorder = [(float(p), float(m)) for p, m in cases] if cases is not None else REORDERS
    args.paths = [p for p in args.paths.split(",") if p]
    return args


def run(ctx: Any) -> list[Row]:
    """Suite entry point: ``ctx.quick`` picks 1 run instead of 3 (10 s each)."""
    if os.geteuid() != 0:
        return []  # namespaces need root; the suite reports the scenario as skipped
    argv = shlex.split(os.environ.get("QUICTUND_LOSSY_ARGS", ""))
    return suite_rows(asyncio.run(measure(_args(bool(getattr(ctx, "quick", False)), argv))))


LABELS = {
    "goodput_mbit": "goodput",
    "rr_p50_ms": "request/response p50",
    "rr_p99_ms": "request/response p99",
    "first_byte_ms": "new tunnel: connect to first echoed byte",
}


def suite_rows(rows: list[Row]) -> list[Row]:
    """The suite's view of ``measure``'s rows: one metric per loss level (the suite's tables
    are path x metric), plus rows that carry issue 7's targets (bench/targets.py lists them):
    goodput at 1 % and 5 % loss >= 10x TCP cubic and >= 0.8x Linux TCP BBR, and a new
    tunnel's first echoed byte within 1.1 link RTTs."""
    out = [{**r, "metric": f"{LABELS[r['metric']]}, {_cond(r)}"} for r in rows]
    get = {(r["path"], r["metric"], _cond(r)): r for r in rows}
    for path in dict.fromkeys(r["path"] for r in rows):
        if not path.startswith("quictund"):
            continue
        out.extend(_reorder_targets(path, rows, get))
        for loss in (1.0, 5.0):
            mine, cubic, bbr = (
                get.get((p, "goodput_mbit", f"{loss:g} % loss"))
                for p in (path, "tcp-cubic", "tcp-bbr")
            )
            if not (mine and cubic and bbr and cubic["value"] and bbr["value"]):
                continue
            x_cubic, x_bbr = mine["value"] / cubic["value"], mine["value"] / bbr["value"]
            text = (
                f"lossy link {loss:g} % loss: goodput >= 10x TCP cubic and >= 0.8x Linux TCP BBR"
                f" (here {x_cubic:.0f}x and {x_bbr:.2f}x)"
            )
            extra = {
                "loss_pct": loss,
                "x_cubic": x_cubic,
                "target": {"text": text, "met": x_cubic >= 10 and x_bbr >= 0.8},
            }
            out.append(
                {
                    **mine,
                    "metric": f"goodput / Linux TCP BBR, {loss:g} % loss",
                    "value": x_bbr,
                    "unit": "x",
                    "extra": extra,
                }
            )
        first = get.get((path, "first_byte_ms", "0 % loss"))
        if first and "rtts" in first["extra"]:
            rtts = first["extra"]["rtts"]
            target = {
                "text": "new tunnel: first echoed byte within 1.1 RTT (50 ms link)",
                "met": rtts <= 1.1,
            }
            out.append(
                {
                    **first,
                    "metric": "new tunnel: first echoed byte, link RTTs",
                    "value": rtts,
                    "unit": "RTT",
                    "extra": {**first["extra"], "target": target},
                }
            )
    return out


def _cond(row: Row) -> str:
    """A row's link condition (rows from before the reordering cases carry only a loss)."""
    extra = row["extra"]
    return str(extra.get("condition") or condition(extra["loss_pct"], (0.0, 0.0)))


def _reorder_targets(path: str, rows: list[Row], get: dict[Any, Row]) -> list[Row]:
    """Issue 15: under reordering, goodput >= 0.9x the better of Linux TCP cubic and BBR."""
    out = []
    for cond in dict.fromkeys(_cond(r) for r in rows if r["extra"].get("reorder", (0,))[0]):
        mine, cubic, bbr = (get.get((p, "goodput_mbit", cond)) for p in (path, *TCP))
        if not (mine and cubic and bbr and max(cubic["value"], bbr["value"]) > 0):
            continue
        best = max(cubic["value"], bbr["value"])
        x = mine["value"] / best
        text = f"reordering {cond}: goodput >= 0.9x the better Linux TCP (here {x:.2f}x)"
        extra = {**mine["extra"], "target": {"text": text, "met": x >= 0.9}}
        metric = f"goodput / better Linux TCP, {cond}"
        out.append({**mine, "metric": metric, "value": x, "unit": "x", "extra": extra})
    return out


TCP = ("tcp-cubic", "tcp-bbr")


def table(rows: list[Row]) -> str:
    losses = list(dict.fromkeys(_cond(r) for r in rows))
    paths = list(dict.fromkeys(r["path"] for r in rows))
    get = {(r["path"], r["metric"], _cond(r)): r["value"] for r in rows}
    out = []
    for metric, label in (
        ("goodput_mbit", "goodput Mbit/s"),
        ("rr_p50_ms", "rr p50 ms"),
        ("rr_p99_ms", "rr p99 ms"),
    ):
        out.append(f"| {label} | " + " | ".join(losses) + " |")
        out.append("|---" * (len(losses) + 1) + "|")
        for path in paths:
            cells = [get.get((path, metric, loss)) for loss in losses]
            out.append(
                f"| {path} | " + " | ".join("" if c is None else f"{c:.1f}" for c in cells) + " |"
            )
        out.append("")
    fb = [
        (r["path"], r["value"], r["extra"].get("rtts"))
        for r in rows
        if r["metric"] == "first_byte_ms"
    ]
    if fb:
        out.append("| new connection -> first echoed byte (loss 0) | ms | RTTs |")
        out.append("|---|---|---|")
        out.extend(f"| {p} | {v:.1f} | {n} |" for p, v, n in fb)
    return "\n".join(out)


def main() -> None:
    args = _args(False, sys.argv[1:])
    rows = asyncio.run(measure(args))
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
