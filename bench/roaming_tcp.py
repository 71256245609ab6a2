"""stunnel, ``ssh -L`` and quic-tun through the roaming test's changes (issue 17 §1: show
they fail).

Runs the same traffic as tests/e2e/test_roaming.py (a paced download and a 50 ms echo, from
tests/e2e/roam_app.py) through another tunnel between the same three namespaces, changes the
client's path the same way, and prints what the app saw.  Needs root, stunnel4,
openssh-server/-client, and for quic-tun its Go binaries in ``QUICTUN_BIN`` (as for
bench/run.py); a measurement for docs/design.md, not a CI test.

    sudo .venv/bin/python bench/roaming_tcp.py stunnel|ssh|quictun none|nat-rebind|new-address
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from bench.paths import quictun_go_bins  # noqa: E402
from tests.e2e.roam_ssh import start_sshd  # noqa: E402
from tests.e2e.test_roaming import S_ADDR, C, S, change, roam_net  # noqa: E402

PORT_APP, PORT_SRV, PORT_BACK = 18080, 18443, 18081  # inside private namespaces only
WAIT_S = float(os.environ.get("ROAM_WAIT_S", "30"))  # for the app's end after the change


def quictun(tmp: Path) -> list[subprocess.Popen[bytes]]:
    """quic-tun's own server and client (UDP, so the NAT's udp rule applies)."""
    server_bin, client_bin = quictun_go_bins()
    if server_bin is None or client_bin is None:
        raise SystemExit("QUICTUN_BIN is not set (a directory with quictun-server/-client)")
    ns = ("ip", "netns", "exec")
    server = subprocess.Popen([
        *ns, S, server_bin, "--listen-on", f"{S_ADDR}:{PORT_SRV}",
        "--httpd-listen-on", "127.0.0.1:18086", "--log-level", "warn",
    ])  # fmt: skip
    time.sleep(0.5)
    client = subprocess.Popen([
        *ns, C, client_bin, "--listen-on", f"tcp:127.0.0.1:{PORT_APP}",
        "--server-endpoint", f"{S_ADDR}:{PORT_SRV}",
        "--token-source", f"tcp:127.0.0.1:{PORT_BACK}",
        "--httpd-listen-on", "127.0.0.1:18087", "--log-level", "warn",
    ])  # fmt: skip
    return [server, client]


def tunnel(kind: str, tmp: Path) -> list[subprocess.Popen[bytes]]:
    ns = ("ip", "netns", "exec")
    if kind == "quictun":
        return quictun(tmp)
    if kind == "stunnel":
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=roam", "-keyout",
                        f"{tmp}/k.pem", "-out", f"{tmp}/c.pem", "-days", "1"],
                       check=True, capture_output=True)  # fmt: skip
        (tmp / "s.conf").write_text(
            f"foreground=yes\npid=\n[s]\naccept={S_ADDR}:{PORT_SRV}\n"
            f"connect=127.0.0.1:{PORT_BACK}\ncert={tmp}/c.pem\nkey={tmp}/k.pem\n"
        )
        (tmp / "c.conf").write_text(
            f"foreground=yes\npid=\n[c]\nclient=yes\naccept=127.0.0.1:{PORT_APP}\n"
            f"connect={S_ADDR}:{PORT_SRV}\n"
        )
        return [
            subprocess.Popen([*ns, S, "stunnel4", f"{tmp}/s.conf"]),
            subprocess.Popen([*ns, C, "stunnel4", f"{tmp}/c.conf"]),
        ]
    procs = [start_sshd(S, tmp, PORT_SRV, S_ADDR)]
    time.sleep(0.5)
    procs.append(subprocess.Popen([
        *ns, C, "ssh", "-N", "-i", f"{tmp}/id", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-p", str(PORT_SRV),
        "-L", f"127.0.0.1:{PORT_APP}:127.0.0.1:{PORT_BACK}", f"root@{S_ADDR}",
    ]))  # fmt: skip
    return procs


BACKEND = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.e2e.roam_app import Source
async def main():
    server = await asyncio.start_server(Source(64 << 20, 16 << 20).handle, "127.0.0.1", {PORT_BACK})
    await server.serve_forever()
asyncio.run(main())
"""


def start(kind: str, tmp: Path) -> list[subprocess.Popen[bytes]]:
    backend = subprocess.Popen(["ip", "netns", "exec", S, sys.executable, "-c", BACKEND])
    procs = [backend, *tunnel(kind, tmp)]
    time.sleep(1.5)
    return procs


async def run(kind: str, case: str) -> None:
    with roam_net(), tempfile.TemporaryDirectory() as tmp:
        procs = start(kind, Path(tmp))
        app = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", C, sys.executable, "-m", "tests.e2e.roam_app",
            f"tcp:127.0.0.1:{PORT_APP}", stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert app.stdout is not None
        print(kind, case, (await app.stdout.readline()).decode().strip())
        await asyncio.sleep(1.5)
        if case != "none":  # none: the tunnel works without a change
            change(case)
        started = time.monotonic()
        try:
            line = await asyncio.wait_for(app.stdout.readline(), WAIT_S)
            print(kind, case, f"after {time.monotonic() - started:.1f} s:", line.decode().strip())
        except TimeoutError:
            print(kind, case, f"no end within {WAIT_S:g} s after the change (hung)")
            app.kill()
        for p in procs:
            p.kill()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2]))
