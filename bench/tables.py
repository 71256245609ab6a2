"""Markdown tables, one per link and scenario, from a run's ``results.json``.

    python bench/tables.py /tmp/quictund-bench-XXXX/results.json

For hand-written sections of docs/performance.md that quote a run made with ``--no-docs``
(such as the side-by-side comparison with quic-tun of issue 15): the same tables, ratio
columns and issue 15 targets as the run printed, without re-running anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import report
import targets
from context import Row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="results.json written by bench/run.py")
    data = json.loads(ap.parse_args().results.read_text())
    rows = [Row(**r) for r in data["rows"]]
    config = data["config"]
    titles = config.get("links", {})
    ran = {r.path for r in rows}
    engines = {p: config["engines"][p] for p in ("quictund", "quictund-qh3") if p in ran}
    print(f"`{config['command']}`\n")
    for link in dict.fromkeys(r.extra.get("link", "loopback") for r in rows):
        link_rows = [r for r in rows if r.extra.get("link", "loopback") == link]
        for scenario in dict.fromkeys(r.scenario for r in link_rows):
            print(f"#### {scenario}, {titles.get(link, link)}\n")
            print(report.markdown_table([r for r in link_rows if r.scenario == scenario]) + "\n")
        checked = targets.check_vs_quictun(link_rows, engines, link)
        if checked:
            print(f"#### Issue 15 targets, {titles.get(link, link)}\n")
            print("| target | measured | status |\n|---|---|---|")
            print("\n".join(f"| {t} | {m} | {s} |" for t, m, s in checked) + "\n")


if __name__ == "__main__":
    main()
