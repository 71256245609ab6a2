"""Run every atheris harness for a time budget and record runs, coverage and findings.

    python bench/fuzz/run.py --seconds 120   # each harness 120 s x its weight, results into docs
    python bench/fuzz/run.py --only signed,config --seconds 30 --no-docs

Each harness runs as its own process (libFuzzer owns the process) at nice 19 under
``-max_total_time``, reading the committed seeds in bench/fuzz/corpus/<name>/ (never written to)
and growing a working corpus in bench/fuzz/work/<name>/ (not committed), so a second run goes on
from where the first stopped (``--fresh`` starts from the seeds in a temporary directory).
A crash stops that harness; its input is kept in bench/fuzz/findings/ and the exception is
reported.  The table goes into docs/security.md between the ``fuzz-results`` markers of the
"Fuzzing" section.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOC = ROOT / "docs" / "security.md"
BEGIN, END = "<!-- fuzz-results:begin -->", "<!-- fuzz-results:end -->"

# harness -> what it feeds (for the table)
HARNESSES = {
    "wire": "512-byte token block + decoder (wire.py)",
    "cleartext": "Cleartext token parser, plain/base64",
    "signed": "Signed token parser (+ mutated valid tokens)",
    "token_file": "File token source lines",
    "http_reply": "Http token source reply bodies (JSON)",
    "config": "TOML config load + dump/load round trip",
    "api": "API requests: h11 + limits + Router",
    "classify": "Spice/SSH/TLS classifiers",
    "addresses": "host:port and tcp:/unix: addresses",
    "policy": "policy rules and allow decisions",
    "quic_datagram": "server datagram entry (demux, aioquic, session)",
}


# Budget multipliers: the larger the parser (and the slower an execution), the more time.
WEIGHTS = {
    "quic_datagram": 4.0,
    "config": 3.0,
    "api": 2.0,
    "classify": 2.0,
    "signed": 1.5,
    "policy": 1.5,
}


@dataclass
class Result:
    name: str
    runs: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    cov: str = ""
    corpus: str = ""
    finding: str = ""
    artifact: str = ""


def run_one(name: str, seconds: int, findings: Path, work_root: Path | None) -> Result:
    result = Result(name)
    with contextlib.ExitStack() as stack:
        if work_root is None:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"qt-fuzz-{name}-"))
        else:
            work = str(work_root / name)
            os.makedirs(work, exist_ok=True)
        cmd = [
            sys.executable,
            str(HERE / f"fuzz_{name}.py"),
            work,
            str(HERE / "corpus" / name),
            f"-max_total_time={seconds}",
            f"-artifact_prefix={findings}/{name}-",
            "-print_final_stats=1",
            "-timeout=20",
            "-rss_limit_mb=2048",
            "-max_len=4096",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = dt.datetime.now()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False)
        result.seconds = (dt.datetime.now() - started).total_seconds()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log = proc.stderr + proc.stdout
    (findings / f"{name}.log").write_text(log[-200_000:])
    if m := re.search(r"stat::number_of_executed_units:\s*(\d+)", log):
        result.runs = int(m.group(1))
    elif m := re.search(r"Done (\d+) runs", log):
        result.runs = int(m.group(1))
    status = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", log)
    if status:
        cov, ft, files, size = status[-1]
        result.cov, result.corpus = f"{cov} / {ft}", f"{files} ({size})"
    if proc.returncode != 0:
        result.finding = _exception(log) or f"exit {proc.returncode}"
        if m := re.search(r"Test unit written to (\S+)", log):
            result.artifact = os.path.relpath(m.group(1), ROOT)
    return result


def _exception(log: str) -> str:
    """The last line of the uncaught exception's traceback (``Type: message``)."""
    lines = log.split("=== Uncaught Python exception: ===", 1)[-1].splitlines()
    for line in lines:
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Warning)\b", line):
            return line.strip()[:200]
    return ""


def table(results: list[Result], seconds: int) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = sum(r.runs for r in results)
    cpu = sum(r.cpu_s for r in results)
    head = [
        (
            f"Last run: {when}, `bench/fuzz/run.py --seconds {seconds}` (times the weights in "
            f"run.py), atheris {version('atheris')} on Python {platform.python_version()}, at "
            f"nice 19 on a shared 2-core machine: {runs:,} inputs in {cpu / 60:.1f} CPU minutes."
        ),
        "",
        "| harness | parser | runs | wall s | exec/s | cov / features | corpus | findings |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    rows = []
    for r in results:
        rate = r.runs / r.seconds if r.seconds else 0
        finding = "none" if not r.finding else f"**{r.finding}** (`{r.artifact}`)"
        rows.append(
            f"| `fuzz_{r.name}` | {HARNESSES[r.name]} | {r.runs:,} | {r.seconds:.0f} | "
            f"{rate:,.0f} | {r.cov} | {r.corpus} | {finding} |"
        )
    return "\n".join(head + rows)


def update_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Security\n"
    if BEGIN not in doc:
        doc = doc.rstrip("\n") + f"\n\n## Fuzzing\n\n{BEGIN}\n{END}\n"
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOC.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=int, default=60, help="base time per harness (times its weight)"
    )
    parser.add_argument("--only", default="", help="comma-separated harness names")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    parser.add_argument("--no-nice", action="store_true", help="do not run at nice 19")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start from the seeds only (default: continue bench/fuzz/work/, kept between runs)",
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(HARNESSES)
    unknown = set(names) - set(HARNESSES)
    if unknown:
        parser.error(f"unknown harness(es): {', '.join(sorted(unknown))}")
    if not args.no_nice:
        os.nice(19)
    findings = HERE / "findings"
    findings.mkdir(exist_ok=True)
    results = []
    for name in names:
        seconds = round(args.seconds * WEIGHTS.get(name, 1.0))
        print(f"fuzz_{name}: {seconds} s ...", flush=True)
        result = run_one(name, seconds, findings, None if args.fresh else HERE / "work")
        print(f"  {result.runs:,} runs, cov {result.cov}, {result.finding or 'no finding'}")
        results.append(result)
    text = table(results, args.seconds)
    print(text)
    if not args.no_docs:
        update_doc(text)
        print(f"wrote {os.path.relpath(DOC, ROOT)}")
    if not any(r.finding for r in results):
        shutil.rmtree(findings / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
