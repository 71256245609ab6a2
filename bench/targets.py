"""Issue 7's targets (and issue 15's, against quic-tun), checked against the rows of one run:
(target, measured, status).

A scenario can state its own targets without touching this file: a row with
``extra["target"] = {"text": "...", "met": bool}`` is listed as is (the lossy-link scenario
does this for its goodput and first-byte targets).
"""

from __future__ import annotations

from context import Row
from report import REFERENCE, fmt, vs_reference

# issue 15: the rows where quictund is held against quic-tun, and the floors (x quic-tun)
VS_QUICTUN = (
    "upload, 1 tunnel", "download, 1 tunnel", "upload, 100 tunnels (sum)",
    "CPU per GiB, upload, client side", "CPU per GiB, upload, server side",
    "CPU per GiB, download, client side", "CPU per GiB, download, server side",
    "SET ops/s", "GET ops/s", "echo 1 B, p50", "new tunnel: connect to first echoed byte, p50",
)  # fmt: skip
FLOORS = {"aioquic": 1.0, "qh3": 1.5}


def _get(rows: list[Row], scenario: str, path: str, metric: str) -> float | None:
    for r in rows:
        if (r.scenario, r.path, r.metric) == (scenario, path, metric):
            return r.value
    return None


def _status(value: float | None, ok: bool) -> str:
    return "not measured" if value is None else ("met" if ok else "**not met**")


def check_vs_quictun(
    rows: list[Row], engines: dict[str, str], link: str
) -> list[tuple[str, str, str]]:
    """Issue 15: each standard quictund path against quic-tun in the same run, on one link
    (aioquic >= 1.0x, qh3 >= 1.5x; for times and CPU the inverse ratio)."""
    ref = {r.metric: r for r in rows if r.path == REFERENCE and r.value is not None}
    out = []
    for path, engine in engines.items():
        floor = FLOORS.get(engine)
        for r in rows:
            if floor is None or r.path != path or r.metric not in VS_QUICTUN:
                continue
            q = ref.get(r.metric)
            x = vs_reference(r.unit, r.value, q.value if q else None)
            if x is None or q is None:
                continue
            out.append(
                (
                    f"{link}: {r.metric} >= {floor:g}x quic-tun ({path})",
                    f"{x:.2f}x ({fmt(r)} vs {fmt(q)} {r.unit})",
                    _status(x, x >= floor),
                )
            )
    return out


def check(rows: list[Row], engines: dict[str, str]) -> list[tuple[str, str, str]]:
    """``engines`` maps each quictund path to the QUIC engine it ran ("aioquic", "qh3")."""
    out: list[tuple[str, str, str]] = []
    bulk = "throughput"
    for engine, floor in (("aioquic", 350.0), ("fastest engine", 900.0)):
        paths = [p for p, e in engines.items() if engine in (e, "fastest engine")]
        for metric in ("upload, 1 tunnel", "download, 1 tunnel", "upload, 100 tunnels (sum)"):
            vals = [(v, p) for p in paths if (v := _get(rows, bulk, p, metric)) is not None]
            if not vals:
                continue
            best, where = max(vals)
            out.append(
                (
                    f"loopback {metric} >= {floor:.0f} Mbit/s ({engine})",
                    f"{best:,.0f} Mbit/s ({where})",
                    _status(best, best >= floor),
                )
            )
    for p in engines:
        for side in ("client", "server"):
            v = _get(rows, "idle", p, f"memory per idle tunnel, {side} side")
            n = _get(rows, "idle", p, "tunnels opened")
            if v is not None:
                out.append(
                    (
                        f"idle tunnels < 40 KiB each, {side} daemon ({p})",
                        f"{v:.1f} KiB ({n:,.0f} tunnels)",
                        _status(v, v < 40),
                    )
                )
    for p in engines:
        for test in ("SET", "GET"):
            v = _get(rows, "redis", p, f"{test}, % of direct")
            if v is not None:
                out.append(
                    (
                        f"redis-benchmark {test} >= 18 % of direct (quic-tun), aim 30 % ({p})",
                        f"{v:.0f} %",
                        _status(v, v >= 18) + (" (aim met)" if v >= 30 else ""),
                    )
                )
    for r in rows:
        t = r.extra.get("target") if isinstance(r.extra, dict) else None
        if isinstance(t, dict) and "text" in t:
            value = "failed" if r.value is None else f"{r.value:,.3g} {r.unit}"
            status = _status(r.value, bool(t.get("met")))
            out.append((str(t["text"]), f"{value} ({r.path})", status))
    return out
