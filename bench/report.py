"""Turning rows into a printed table, raw JSON, PNG figures and the generated part of
docs/performance.md (between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``; the
hand-written text around it is kept)."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from context import Row

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
FORMATS = {"Mbit/s": "{:,.0f}", "µs": "{:,.0f}", "ops/s": "{:,.0f}", "%": "{:.0f} %",
           "KiB": "{:.1f}", "CPU s/GiB": "{:.2f}", "tunnels": "{:,.0f}", "s": "{:.2f}"}  # fmt: skip


def fmt(row: Row | None) -> str:
    if row is None:
        return ""
    if row.value is None:
        return "failed"
    return FORMATS.get(row.unit, "{:.3g}").format(row.value)


def grid(rows: list[Row]) -> tuple[list[str], list[str], dict[tuple[str, str], Row]]:
    """(metrics in first-seen order, paths in first-seen order, (metric, path) -> row)."""
    metrics: list[str] = []
    paths: list[str] = []
    cells: dict[tuple[str, str], Row] = {}
    for r in rows:
        if r.metric == "start":
            continue
        if r.metric not in metrics:
            metrics.append(r.metric)
        if r.path not in paths:
            paths.append(r.path)
        cells[(r.metric, r.path)] = r
    return metrics, paths, cells


def _unit(metric: str, paths: list[str], cells: dict[tuple[str, str], Row]) -> str:
    return next((cells[(metric, p)].unit for p in paths if (metric, p) in cells), "")


# quic-tun is what quictund replaces: when it ran, each other tunnel gets a ratio column
REFERENCE = "quictun-go"
LOWER_IS_BETTER = {"µs", "ms", "s", "CPU s/GiB", "KiB", "MiB"}
RATIO_NOTE = (
    "`P vs quic-tun`: how many times better than quic-tun (> 1 = better; for times and CPU "
    "seconds the inverse ratio)"
)


def vs_reference(unit: str, value: float | None, ref: float | None) -> float | None:
    """How many times better ``value`` is than ``ref`` (> 1 = better, whatever the unit)."""
    if not value or not ref:
        return None
    return ref / value if unit in LOWER_IS_BETTER else value / ref


def _ratio_paths(paths: list[str]) -> list[str]:
    if REFERENCE not in paths:
        return []
    return [p for p in paths if p not in (REFERENCE, "direct")]


def _table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and body: metric, unit, one column per path, then one ``P vs quic-tun`` ratio
    column per tunnel when quic-tun ran."""
    metrics, paths, cells = grid(rows)
    ratios = _ratio_paths(paths)
    head = ["metric", "unit", *paths, *(f"{p} vs quic-tun" for p in ratios)]
    body = []
    for m in metrics:
        unit = _unit(m, paths, cells)
        line = [m, unit, *(fmt(cells.get((m, p))) for p in paths)]
        ref = cells.get((m, REFERENCE))
        for p in ratios:
            mine = cells.get((m, p))
            x = vs_reference(unit, mine and mine.value, ref and ref.value)
            line.append("" if x is None else f"{x:.2f}x")
        body.append(line)
    return head, body


def text_table(rows: list[Row]) -> str:
    head, body = _table(rows)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    for line in body:
        cells_txt = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells_txt += [c.rjust(w) for c, w in zip(line[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells_txt))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    head, body = _table(rows)
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    out += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(out)


def link_of(rows: list[Row]) -> str:
    """Which path the rows crossed, for figure titles (run.py stamps ``extra["link"]``)."""
    link = next((r.extra.get("link") for r in rows if r.extra.get("link")), "loopback")
    return "veth pair, MTU 1500" if link == "veth" else "loopback"


def errors(rows: Iterable[Row]) -> list[str]:
    return [
        f"{r.scenario} / {r.path} / {r.metric}: {str(r.extra.get('error'))[:300]}"
        for r in rows
        if r.value is None
    ]


# -- figures ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(rows: list[Row], out: Path, title: str, log: bool = False) -> list[Path]:
    """Grouped bars: one group per metric, one bar per path."""
    plt = _pyplot()
    metrics, paths, cells = grid([r for r in rows if r.value is not None])
    if plt is None or not metrics:
        return []
    width = 0.8 / len(paths)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) + 2), 4.2))
    for i, p in enumerate(paths):
        xs = [j + i * width for j, m in enumerate(metrics) if (m, p) in cells]
        ys = [cells[(m, p)].value for m in metrics if (m, p) in cells]
        bars = ax.bar(xs, ys, width, label=p)
        ax.bar_label(bars, labels=[fmt(cells[(m, p)]) for m in metrics if (m, p) in cells],
                     fontsize=6, rotation=90, padding=2)  # fmt: skip
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))])
    ax.set_xticklabels([textwrap.fill(m, 22) for m in metrics], fontsize=7)
    ax.set_ylabel(_unit(metrics[0], paths, cells))
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.25)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]


def line_chart(
    series: dict[str, list[float]], out: Path, title: str, xlabel: str, ylabel: str,
    xs: list[float] | None = None, log: bool = False,
) -> list[Path]:  # fmt: skip
    plt = _pyplot()
    if plt is None or not series:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in series.items():
        ax.plot(xs if xs is not None else range(1, len(ys) + 1), ys, marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]


# -- docs ---------------------------------------------------------------------------------------


def write_json(
    path: Path, machine: dict[str, Any], config: dict[str, Any], rows: list[Row]
) -> None:
    payload = {"machine": machine, "config": config, "rows": [r.to_json() for r in rows]}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


def generated_section(
    machine: dict[str, Any],
    config: dict[str, Any],
    sections: list[tuple[str, str, list[Row], list[Path]]],
    targets: list[tuple[str, str, str]],
    doc_dir: Path,
) -> str:
    """The markdown between the markers: how it was run, the machine, targets, one part per
    scenario (its docstring's first paragraph, table, figures)."""
    lines = [
        BEGIN,
        "<!-- generated by `make bench` (bench/run.py); edit around the markers, not inside -->",
        "",
        f"## Benchmark results ({'quick' if config['quick'] else 'full'} run, {machine['date']})",
        "",
        (
            f"`{config['command']}` — every scenario runs every path side by side in one "
            f"invocation; bulk values are medians of {config['reps']} interleaved run(s) of "
            f"{config['duration']:g} s (plus 1 s warm-up).  Raw numbers: "
            f"[`bench-results.json`](bench-results.json)."
        ),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "Paths: " + "; ".join(f"`{p}` {d}" for p, d in config["path_notes"].items()) + ".",
        "",
        *(f"{note}.\n" for note in config.get("notes", [])),
    ]
    if targets:
        lines += ["### Targets (issues 7 and 15)", ""]
        lines += ["| target | measured | status |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {s} |" for t, m, s in targets]
        lines.append("")
    for title, intro, rows, figs in sections:
        lines += [f"### {title}", ""]
        if intro:
            lines += [intro, ""]
        lines += [markdown_table(rows), ""]
        lines += [f"![{f.stem}]({os.path.relpath(f, doc_dir)})" for f in figs]
        if figs:
            lines.append("")
        errs = errors(rows)
        if errs:
            lines += ["Failures:", "", *(f"* {e}" for e in errs), ""]
    lines.append(END)
    return "\n".join(lines)


def splice_doc(doc: Path, section: str) -> None:
    """Replace the generated section of ``doc`` (or put it after the title)."""
    text = doc.read_text() if doc.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        first, _, rest = text.partition("\n")
        text = f"{first}\n\n{section}\n\n{rest.lstrip()}"
    doc.write_text(text.rstrip() + "\n")
