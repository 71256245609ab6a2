"""Run every benchmark scenario against every path, side by side, in one invocation.

    python bench/run.py [--quick] [--only throughput,latency] [--paths direct,quictund]
                        [--variant 'quictund-bbr=congestion-control = "bbr"']
                        [--quictund-extra 'max-datagram-size = 1452'] [--no-docs]
                        [--link loopback,veth]

Prints a table per scenario, and (unless --no-docs) writes the generated section of
docs/performance.md, docs/bench-results.json and docs/img/bench/*.png.  Logs and configs of
every process go to --out (a new directory under /tmp by default).  Every child process is
stopped at the end, also on Ctrl-C or SIGTERM.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, NoReturn

import machine
import pressure
import report
import targets
from context import BENCH, REPO, BenchContext, Procs, Row
from paths import ALL_BASE, quictun_go_bins
from topology import LINKS, LOOPBACK, Topology, veth

ORDER = ["throughput", "latency", "redis", "idle", "hostile", "lossy"]
PATH_NOTES = {
    "direct": "no tunnel",
    "stunnel": "stunnel4 client+server, TLS 1.3 AES-128-GCM",
    "ssh": "`ssh -N -L` to our own sshd, aes128-gcm@openssh.com",
    "quictun-go": "quic-tun (Go) from `QUICTUN_BIN`",
    "python-floor": "bench/floor_relay.py: a uvloop UDP relay with no QUIC (a floor, not a tunnel)",
}


def discover() -> dict[str, ModuleType]:
    names = sorted(p.stem for p in (BENCH / "scenarios").glob("*.py") if not p.stem.startswith("_"))
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {n: importlib.import_module(f"scenarios.{n}") for n in names}


def _check_engine(python: str, engine: str, source: Path = REPO) -> bool:
    """Does this quictund accept ``quic-engine = ENGINE`` (and is the engine importable)?"""
    env = {"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"}
    if subprocess.run([python, "-c", f"import {engine}"], capture_output=True).returncode:
        return False
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "s.toml"
        cfg.write_text(
            '[[server]]\nname = "x"\nlisten-on = "127.0.0.1:0"\nallow = ["tcp:127.0.0.1:1"]\n'
            f'state-dir = "{d}"\nquic-engine = "{engine}"\n'
        )
        probe = subprocess.run(
            [python, "-m", "quictund", "check", "--config", str(cfg)],
            capture_output=True,
            cwd=BENCH,
            env=env,
        )
        return probe.returncode == 0


def variants(
    args: argparse.Namespace,
) -> tuple[dict[str, list[str]], dict[str, str], dict[str, Path]]:
    """quictund variants (name -> extra TOML lines), the engine each runs, and the source
    tree of those that run another checkout (``NAME@DIR=...``)."""
    found: dict[str, list[str]] = {"quictund": []}
    has_engines = _check_engine(args.python, "aioquic")
    if has_engines and _check_engine(args.python, "qh3"):
        found["quictund-qh3"] = ['quic-engine = "qh3"']
        found["quictund"] = ['quic-engine = "aioquic"']
    sources: dict[str, Path] = {}
    for spec in args.variant:
        name, eq, lines = spec.partition("=")
        name, at, src = name.partition("@")
        if not name.startswith("quictund") or not eq:
            raise SystemExit(
                f"--variant {spec!r}: want quictund-NAME[@SRC_DIR]=[TOML_LINE[;TOML_LINE...]]"
            )
        if at:
            sources[name] = Path(src).resolve()
            if not (sources[name] / "quictund" / "__init__.py").exists():
                raise SystemExit(f"--variant {spec!r}: no quictund package in {src}")
        found[name] = [x.strip() for x in lines.split(";") if x.strip()]
    for name in found:
        found[name] = found[name] + list(args.quictund_extra)
    engines = {}
    for name, lines in found.items():
        engine = "aioquic"
        for line in lines:
            key, _, value = line.partition("=")
            if key.strip().split(":")[-1].strip() == "quic-engine":
                engine = value.strip().strip("\"'")
        engines[name] = engine
    return found, engines, sources


class Result(NamedTuple):
    """One scenario's rows on one link, and the link's description for headings."""

    link: Topology
    scenario: str
    rows: list[Row]
    warning: str | None = None  # the host's TCP memory was under pressure meanwhile


def quictun_note(paths: list[str]) -> str:
    """Say whether quic-tun runs side by side, and if not why (in the output and the docs)."""
    if "quictun-go" in paths:
        return f"quic-tun (Go) side by side: {quictun_go_bins()[0]}"
    why = "not in --paths" if quictun_go_bins()[0] else "QUICTUN_BIN is not set"
    return (
        f"quic-tun (Go) NOT measured: {why} (bench/quictun-go/build.sh builds it; "
        "see bench/README.md)"
    )


def run_link(
    link: str, ctx: BenchContext, scenarios: dict[str, ModuleType], chosen: list[str]
) -> list[Result]:
    """Every chosen scenario on one link: loopback, or a fresh veth pair (its namespaces are
    deleted afterwards, also when a scenario fails or the run is interrupted)."""
    topo_cm = veth() if link == "veth" else contextlib.nullcontext(LOOPBACK)
    with topo_cm as topo:
        ctx.topo = topo
        try:
            return _run_scenarios(ctx, scenarios, chosen)
        finally:
            ctx.topo = LOOPBACK


def _run_scenarios(
    ctx: BenchContext, scenarios: dict[str, ModuleType], chosen: list[str]
) -> list[Result]:
    out = []
    topo = ctx.topo
    for name in chosen:
        if topo.name not in getattr(scenarios[name], "LINKS", ("loopback",)):
            print(f"\n== {name}: skipped on {topo.title} (this scenario runs on loopback only)")
            continue
        print(f"\n== {name} on {topo.title}", flush=True)
        t0 = time.monotonic()
        with ctx.procs.scope(), pressure.TcpMemoryWatch() as watch:
            try:
                # a Row, or a dict with Row's fields (a scenario that also runs alone)
                rows = [r if isinstance(r, Row) else Row(**r) for r in scenarios[name].run(ctx)]
            except (Exception, SystemExit) as exc:  # one broken scenario must not end the run
                traceback.print_exc()
                rows = [Row(name, "-", "scenario", None, "", {"error": repr(exc)})]
        for r in rows:
            r.extra["link"] = topo.name
            r.extra["tcp_pressure_s"] = watch.pressure_s
        out.append(Result(topo, name, rows, watch.warning()))
        print(f"-- {name} ({time.monotonic() - t0:.0f} s)\n{report.text_table(rows)}")
        if watch.warning():
            print(watch.warning())
    return out


def warn_tcp_memory(desc: dict[str, str]) -> None:
    """Say so when the host's TCP memory was under pressure at the start or the end (each
    scenario also watches it while it runs: bench/pressure.py says why it matters)."""
    for key in ("TCP memory at start", "TCP memory at end"):
        if "UNDER PRESSURE" in desc.get(key, ""):
            print(f"WARNING: {key}: {desc[key]}; TCP drops packets, these figures stall")


def _sigterm(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run each, fewer tunnels")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--skip", default="", help="comma-separated scenario names")
    ap.add_argument("--paths", default="", help="comma-separated path names to compare")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[@SRC]=TOML[;TOML]",
        help="another quictund path: extra TOML lines, and optionally another checkout",
    )
    ap.add_argument("--quictund-extra", action="append", default=[], metavar="TOML_LINE")
    ap.add_argument("--duration", type=float, default=None, help="seconds per bulk run")
    ap.add_argument("--reps", type=int, default=None, help="runs per measurement")
    ap.add_argument("--out", type=Path, default=None, help="logs and configs (default /tmp)")
    ap.add_argument(
        "--docs", type=Path, default=None,
        help="where the tables go (default docs/, and only for a run of every scenario)",
    )  # fmt: skip
    ap.add_argument("--no-docs", action="store_true", help="print only; write nothing to docs/")
    ap.add_argument("--python", default=sys.executable, help="the Python that runs quictund")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply request counts by this")
    ap.add_argument(
        "--link",
        default="loopback",
        help="comma-separated: loopback, veth (two namespaces joined by a 1500-byte-MTU veth "
        "pair; bench/topology.py); each gets its own tables",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    scenarios = discover()
    only = [s for s in args.only.split(",") if s]
    skip = {s for s in args.skip.split(",") if s}
    unknown = [s for s in [*only, *skip] if s not in scenarios]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; have {list(scenarios)}")
    chosen = [s for s in (only or scenarios) if s not in skip]
    links = [x for x in args.link.split(",") if x]
    if not links or any(x not in LINKS for x in links):
        raise SystemExit(f"--link {args.link!r}: want a comma-separated list of {LINKS}")
    found, engines, sources = variants(args)
    paths = [*ALL_BASE, *found]
    if quictun_go_bins()[0]:
        paths.append("quictun-go")
    if args.paths:
        wanted = args.paths.split(",")
        missing = [p for p in wanted if p not in [*paths, "python-floor"]]
        if missing:
            raise SystemExit(f"unknown path(s) {missing}; have {paths}")
        paths = wanted
    out = args.out or Path(tempfile.mkdtemp(prefix="quictund-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    duration = args.duration or 10.0
    reps = args.reps or (1 if args.quick else 3)
    procs = Procs(out / "logs")
    ctx = BenchContext(
        args.quick, duration, reps, out, procs, paths, found,
        python=args.python, scale=args.scale, sources=sources,
    )  # fmt: skip
    desc = machine.describe()
    print(f"quictund bench: {', '.join(chosen)} over {', '.join(paths)} on {', '.join(links)}")
    print(f"  logs in {out}; " + "; ".join(f"{k} {v}" for k, v in desc.items()))
    print(f"  {quictun_note(paths)}")
    warn_tcp_memory(desc)
    results: list[Result] = []
    started = time.monotonic()
    try:
        for link in links:
            results += run_link(link, ctx, scenarios, chosen)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process we started", file=sys.stderr)
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()
    desc["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    desc["TCP memory at end"] = pressure.describe()[0]
    desc["bench duration"] = f"{time.monotonic() - started:.0f} s"
    all_rows = [r for res in results for r in res.rows]
    notes = dict(PATH_NOTES)
    for v, lines in found.items():
        src = f"; from {sources[v]}" if v in sources else ""
        notes[v] = f"quictund run ({engines[v]}{src}" + "".join(f"; `{x}`" for x in lines) + ")"
    config = {
        "command": "python bench/run.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "duration": duration,
        "reps": reps,
        "paths": paths,
        "variants": found,
        "engines": engines,
        "sources": {k: str(v) for k, v in sources.items()},
        "path_notes": {p: notes.get(p, "") for p in paths},
        "links": {r.link.name: r.link.title for r in results},
        "notes": [
            "Links: " + "; ".join(dict.fromkeys(r.link.title for r in results)),
            quictun_note(paths),
            *([report.RATIO_NOTE] if "quictun-go" in paths else []),
        ],
    }
    # targets speak of quictund as configured by default, not of experimental variants
    standard = {p: engines[p] for p in ("quictund", "quictund-qh3") if p in paths}
    checked = targets.check([r for r in all_rows if r.extra["link"] == "loopback"], standard)
    for link in dict.fromkeys(r.link for r in results):
        link_rows = [r for r in all_rows if r.extra["link"] == link.name]
        checked += targets.check_vs_quictun(link_rows, standard, link.name)
    print("\n== summary")
    for res in results:
        print(f"-- {res.scenario} on {res.link.title}\n{report.text_table(res.rows)}\n")
        if res.warning:
            print(f"{res.warning}\n")
    for target, measured, status in checked:
        print(f"target: {target}: {measured} -> {status}")
    for err in report.errors(all_rows):
        print(f"FAILED: {err}")
    print(quictun_note(paths))
    warn_tcp_memory(desc)
    docs = args.docs
    if docs is None and not (args.only or args.skip):
        docs = REPO / "docs"
    if args.no_docs:
        pass
    elif docs is None:
        # A partial run's tables would replace every other scenario's in docs/.
        print("docs/ not written: --only/--skip ran part of the suite (--docs DIR writes it)")
    else:
        write_docs(docs, desc, config, scenarios, results, checked)
    report.write_json(out / "results.json", desc, config, all_rows)
    print(f"\nraw results: {out / 'results.json'}")
    return 1 if report.errors(all_rows) else 0


def write_docs(
    docs: Path,
    desc: dict[str, str],
    config: dict[str, Any],
    scenarios: dict[str, ModuleType],
    results: list[Result],
    checked: list[tuple[str, str, str]],
) -> None:
    sections = []
    several = len({res.link for res in results}) > 1
    for link, name, rows, warning in results:
        # loopback keeps the figures' old names; another link gets its own directory
        img = docs / "img" / "bench" / ("" if link.name == "loopback" else link.name)
        mod = scenarios[name]
        figs: list[Path] = []
        try:
            if hasattr(mod, "plot"):
                figs = mod.plot(rows, img)
            else:
                for unit in dict.fromkeys(r.unit for r in rows if r.value is not None):
                    sub = [r for r in rows if r.unit == unit]
                    figs += report.bar_chart(sub, img / f"{name}-{len(figs)}.png", name)
        except Exception:  # a figure must not lose the numbers
            traceback.print_exc()
        intro = (mod.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if warning:
            intro += f"\n\n**{warning}**"
        title = getattr(mod, "TITLE", name)
        if several or link.name != "loopback":
            title += f", {link.title}"
        sections.append((title, intro, rows, figs))
    all_rows = [r for res in results for r in res.rows]
    report.write_json(docs / "bench-results.json", desc, config, all_rows)
    report.splice_doc(
        docs / "performance.md",
        report.generated_section(desc, config, sections, checked, docs),
    )
    print(f"wrote {docs / 'performance.md'}, {docs / 'bench-results.json'}, {docs / 'img'}/")


if __name__ == "__main__":
    sys.exit(main())
