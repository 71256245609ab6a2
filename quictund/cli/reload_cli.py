"""``quictund reload``: signal a running daemon to reload, wait for the verdict, report it.

Why it exists: Debian 12 ships systemd 252, which has no ``Type=notify-reload``.  The usual
``ExecReload=kill -HUP $MAINPID`` returns as soon as the signal is sent, so ``systemctl reload``
neither waits for the reload nor fails when the new configuration is rejected (and ``kill`` is
only there with procps).  This command is the unit's ``ExecReload=``:

1. read ``reload.requested`` (``n``) from the daemon's ``GET /healthz``;
2. send SIGHUP to the daemon (``--pid``, default: the process serving the API socket);
3. poll ``/healthz`` until ``reload.answered > n`` -- a reload that *began after* our signal
   has finished, so it read the files as they are now (see ``daemon.ReloadState``);
4. exit 0 if it was accepted, 78 (EX_CONFIG) with the daemon's one-line reason on stderr if it
   was rejected (the daemon keeps running the old configuration), 1 on a timeout or when the
   daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from quictund.cli.inspect_cli import RUN_DIR, api_path, get
from quictund.errors import os_reason

EX_CONFIG = 78
POLL_S = 0.05  # a reload takes milliseconds to seconds; this is a CLI, not the daemon


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=None, metavar="PATH", help="the daemon's API socket")
    p.add_argument(
        "--pid",
        type=int,
        default=None,
        help="the daemon's PID (systemd: $MAINPID); default: the process serving --api. "
        "Alone, it finds the daemon's API socket in /run/quictun",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="give up after this long (default 90)",
    )


def reload(args: argparse.Namespace) -> int:
    if args.api is None and args.pid is not None and not os.environ.get("QUICTUND_API"):
        path = _socket_of(args.pid)
    else:
        path = api_path(args.api)
    before = _reload_state(path)
    pid = args.pid if args.pid is not None else _peer_pid(path)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"quictund reload: cannot signal PID {pid}: {os_reason(exc)}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while True:
        state = _reload_state(path)
        if state["answered"] > before["requested"]:
            break
        if time.monotonic() >= deadline:
            print(
                f"quictund reload: no answer from PID {pid} within {args.timeout:g} s",
                file=sys.stderr,
            )
            return 1
        time.sleep(POLL_S)
    if state["ok"]:
        print(f"quictund reload: accepted: {state['message']}")
        return 0
    print(f"quictund reload: {state['message']}", file=sys.stderr)
    return EX_CONFIG


def _reload_state(path: str) -> dict[str, Any]:
    health = get(path, "/healthz")
    state = health.get("reload") if isinstance(health, dict) else None
    if not isinstance(state, dict) or not {"requested", "answered", "ok"} <= state.keys():
        raise SystemExit(f"quictund reload: the daemon at {path} does not report reloads")
    return state


def _peer_pid(path: str) -> int:
    """The PID of the process listening on the UNIX socket ``path`` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as exc:
            raise SystemExit(f"quictund reload: cannot reach the API at {path}: {exc}") from None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def _socket_of(pid: int) -> str:
    """The API socket of process ``pid`` (``reload --pid PID`` alone): the ``--api-socket`` on
    its command line, else the one ``*.sock`` in /run/quictun it listens on (SO_PEERCRED).
    Several (its UNIX listeners live there too) are ambiguous: ask for ``--api``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == b"--api-socket":
            return os.fsdecode(value)
    socks = sorted(RUN_DIR.glob("*.sock")) if RUN_DIR.is_dir() else []
    mine = []
    for sock in socks:
        try:
            if _peer_pid(str(sock)) == pid:
                mine.append(str(sock))
        except SystemExit:  # a stale or foreign socket: not the one
            continue
    if len(mine) == 1:
        return mine[0]
    found = ", ".join(mine) or f"none in {RUN_DIR}"
    raise SystemExit(
        f"quictund reload: which API socket does PID {pid} serve? (found: {found}); "
        "give --api PATH (the daemon's --api-socket or [api] socket)"
    )
