"""``quictund tunnels`` and ``quictund status``: the API's data as tables for a person.

They talk HTTP/1.1 to the daemon's UNIX socket (``--api PATH``; default ``$QUICTUND_API``, or
the only ``*.sock`` in /run/quictun).  ``--json`` prints the API's JSON unchanged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

# where the packaged units put API sockets; QUICTUND_RUN_DIR moves it (tests)
RUN_DIR = Path(os.environ.get("QUICTUND_RUN_DIR") or "/run/quictun")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api_path(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("QUICTUND_API"):
        return os.environ["QUICTUND_API"]
    socks = sorted(RUN_DIR.glob("*.sock")) if RUN_DIR.is_dir() else []
    if len(socks) == 1:
        return str(socks[0])
    found = ", ".join(str(s) for s in socks) or f"none in {RUN_DIR}"
    raise SystemExit(f"quictund: which API socket? give --api PATH (found: {found})")


def get(path: str, target: str) -> Any:
    conn = _UnixConnection(path)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise SystemExit(f"quictund: cannot reach the API at {path}: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise SystemExit(f"quictund: {target}: HTTP {response.status}: {body[:200]!r}")
    return json.loads(body)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=None, metavar="PATH", help="the daemon's API socket")
    p.add_argument("--json", action="store_true", help="print the raw JSON")


def tunnels(args: argparse.Namespace) -> int:
    data = get(api_path(args.api), "/tunnels")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    rows = [
        [
            "UUID",
            "LISTENER",
            "SIDE",
            "STREAM",
            "APP",
            "PEER",
            "PROTOCOL",
            "CLIENT B",
            "SERVER B",
            "CLIENT RATE",
            "SERVER RATE",
            "AGE",
        ]
    ]
    now = datetime.now().astimezone()
    for t in sorted(data, key=lambda t: (t["listener"], t["streamId"])):
        app = t.get("clientAppAddr") or t.get("serverAppAddr") or ""
        age = now - datetime.fromisoformat(t["createdAt"])
        proto = t["protocol"]
        if t.get("protocolProperties") and proto == "spice":
            proto += f"/{t['protocolProperties'].get('channelType', '')}"
        rows.append(
            [
                t["uuid"],
                t["listener"],
                t["endpoint"],
                str(t["streamId"]),
                app,
                t["remoteEndpointAddr"],
                proto or "-",
                str(t["clientTotalBytes"]),
                str(t["serverTotalBytes"]),
                t["clientSendRate"],
                t["serverSendRate"],
                _age(age.total_seconds()),
            ]
        )
    _print_table(rows)
    print(f"{len(data)} tunnel(s); close one with DELETE /tunnels/UUID on the API socket")
    return 0


def status(args: argparse.Namespace) -> int:
    path = api_path(args.api)
    listeners = get(path, "/listeners")
    health = get(path, "/healthz")
    if args.json:
        print(json.dumps({"health": health, "listeners": listeners}, indent=2))
        return 0
    print(health.get("summary", health.get("status", "")))
    rows = [["NAME", "ROLE", "LISTEN ON", "STATE", "TUNNELS", "QUIC"]]
    for item in listeners:
        quic = item.get("quic") or {}
        if item["role"] == "client":
            detail = f"{quic.get('state', '?')} to {item.get('serverEndpoint', '')}"
            if "rttMs" in quic:
                detail += (
                    f", rtt {quic['rttMs']} ms, cwnd {quic['congestionWindow']}, "
                    f"lost {quic['packetsLost']}"
                )
            if quic.get("reconnects"):
                detail += f", {quic['reconnects']} reconnect(s)"
        else:
            detail = f"{item.get('connections', 0)} connection(s)"
        rows.append(
            [
                item["name"],
                item["role"],
                item["listenOn"],
                item["state"],
                str(item["tunnels"]),
                detail,
            ]
        )
    _print_table(rows)
    _print_server_endpoints(listeners)
    return 0


def _print_server_endpoints(listeners: list[dict[str, Any]]) -> None:
    """Each server endpoint of the clients that have several (issue 17 §2)."""
    rows = [["LISTENER", "MODE", "SERVER ENDPOINT", "STATE", "TUNNELS", "LAST ERROR"]]
    for item in listeners:
        endpoints = item.get("serverEndpoints") or []
        if len(endpoints) < 2:
            continue
        for ep in endpoints:
            state = ep["state"] + (" (active)" if ep.get("active") else "")
            rows.append(
                [
                    item["name"],
                    item.get("serverEndpointMode", ""),
                    ep["address"],
                    state,
                    str(ep["tunnels"]),
                    ep.get("lastError") or "-",
                ]
            )
    if len(rows) > 1:
        print()
        _print_table(rows)


def _age(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
