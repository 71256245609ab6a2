"""Three quictund servers behind real nginx (UDP, ``hash $remote_addr consistent``).

Two network namespaces this module creates and removes (names start with ``lb``, the branch
that added them, plus the PID so parallel runs never meet):

* ``lb<pid>c`` -- the client host: one ``quictund run`` with 30 client listeners, each its own
  QUIC connection from its own UDP socket.  nftables gives each new flow the next of 30 source
  addresses (``snat to numgen inc mod 30``), so 30 clients look like 30 machines to the
  balancer, whose hash spreads them over the servers.
* ``lb<pid>b`` -- the balancer host: nginx on ``10.77.0.1:7500/udp`` and the three server
  daemons on ``127.0.0.1:7501..7503`` behind it.

Backends are UNIX sockets in the test's own process (paths cross namespaces); the echo reads
the connecting server's PID (SO_PEERCRED), which tells which server carries which tunnel.
``NGINX_CONF`` is the recipe docs/scaling.md shows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.e2e.daemons import LOG_TOML, run_daemon
from tests.e2e.harness import ENGINE_TOML, Endpoint

VIP = "10.77.0.1"
PORT = 7500
SERVER_PORTS = (7501, 7502, 7503)  # in the pool from the start
SPARE_PORT = 7504  # a fourth server, running, that a reload adds to the pool
CLIENTS = 30
GRACE_S = 1.0  # servers' shutdown-grace: a planned stop resets what is left after this
MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

NGINX_CONF = """\
load_module {module};
worker_processes 2;
pid {run}/nginx.pid;
events {{ worker_connections 4096; }}

stream {{
    upstream quictund {{
        # One client address -> one server; "consistent" (ketama) moves only the clients of a
        # server that leaves or joins.  A server that answers with ICMP port-unreachable (its
        # daemon is gone) counts as failed and is skipped for fail_timeout.
        hash $remote_addr consistent;
        zone quictund 64k;  # failure marks shared by all workers, not learned once per worker
{servers}    }}
    server {{
        listen {vip}:{port} udp reuseport;
        proxy_pass quictund;
        # A QUIC connection is one long UDP "session": keep it while the client is alive.
        # keep-alive (5 s) PINGs well inside it; longer than idle-timeout (30 s) is enough.
        proxy_timeout 60s;
        # proxy_responses is left unset (unlimited): QUIC has no fixed number of answers per
        # datagram, and a limit would end the session and re-open it from a new port.
    }}
}}
"""


# nginx and nft live in /usr/sbin, which a non-login PATH may lack.
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def tool(name: str) -> str:
    """The full path of ``name`` (so ``ip netns exec`` needs no PATH), or the bare name."""
    return shutil.which(name, path=_PATH) or name


def available() -> str:
    """Empty if this machine can run the test, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in ("ip", "nft", "nginx") if shutil.which(t, path=_PATH) is None]
    if not Path(MODULE).exists():
        missing.append("libnginx-mod-stream")
    return f"needs {', '.join(missing)}" if missing else ""


def _sh(*args: str, stdin: str | None = None) -> None:
    args = (tool(args[0]), *args[1:])
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True, timeout=20)


class Topology:
    """The two namespaces, their veth pair and the client host's SNAT; ``close`` removes all."""

    def __init__(self) -> None:
        tag = f"lb{os.getpid() % 100000}"
        self.client_ns, self.balancer_ns = f"{tag}c", f"{tag}b"
        self._veth = (f"{tag}c0", f"{tag}b0")

    def create(self) -> None:
        c, b = self.client_ns, self.balancer_ns
        vc, vb = self._veth
        _sh("ip", "netns", "add", c)
        _sh("ip", "netns", "add", b)
        _sh("ip", "link", "add", vc, "netns", c, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, addr in ((c, vc, "10.77.0.2/24"), (b, vb, f"{VIP}/24")):
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        batch = "".join(f"address add 10.77.1.{i}/32 dev {vc}\n" for i in range(1, CLIENTS + 1))
        _sh("ip", "-n", c, "-batch", "-", stdin=batch)
        _sh("ip", "-n", b, "route", "add", "10.77.1.0/24", "dev", vb)
        pool = ", ".join(f"{i} : 10.77.1.{i + 1}" for i in range(CLIENTS))
        rules = (
            "table ip lbsnat {\n chain post {\n"
            "  type nat hook postrouting priority srcnat; policy accept;\n"
            f"  ip daddr {VIP} udp dport {PORT} snat to numgen inc mod {CLIENTS} map {{ {pool} }}\n"
            " }\n}\n"
        )
        _sh("ip", "netns", "exec", c, tool("nft"), "-f", "-", stdin=rules)

    def close(self) -> None:
        for ns in (self.client_ns, self.balancer_ns):  # removes the veth pair too
            subprocess.run([tool("ip"), "netns", "del", ns], capture_output=True, check=False)


def write_nginx_conf(run: Path, pool: tuple[int, ...]) -> Path:
    servers = "".join(
        f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;\n" for port in pool
    )
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=MODULE, run=run, vip=VIP, port=PORT, servers=servers))
    return conf


async def start_nginx(topo: Topology, run: Path) -> asyncio.subprocess.Process:
    conf = write_nginx_conf(run, SERVER_PORTS)
    proc = await asyncio.create_subprocess_exec(
        tool("ip"), "netns", "exec", topo.balancer_ns,
        tool("nginx"), "-c", str(conf), "-p", str(run), "-e", str(run / "error.log"),
        "-g", "daemon off;",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(15):  # bound: the pid file appears once it listens
        while not (run / "nginx.pid").exists():
            if proc.returncode is not None:
                raise AssertionError(f"nginx exited: {(run / 'error.log').read_text()[-2000:]}")
            await asyncio.sleep(0.05)
    return proc


def reload_nginx(proc: asyncio.subprocess.Process, run: Path, pool: tuple[int, ...]) -> None:
    """``nginx -s reload`` with a new pool: new workers take over, old ones finish."""
    write_nginx_conf(run, pool)
    proc.send_signal(signal.SIGHUP)


def stop_nginx(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)  # "ip netns exec" execs nginx: this is its master


# ENGINE_TOML: ``make test``'s second pass (QUICTUND_TEST_ENGINE=qh3) runs it all on qh3.
QUIC_TOML = (
    ENGINE_TOML + "keep-alive = {keep_alive}\ndead-after = {dead_after}\nidle-timeout = 30\n"
)


async def start_servers(
    topo: Topology, run: Path, state: Path, echo_path: str, *, keep_alive: float, dead_after: float
) -> list[Endpoint]:
    knobs = QUIC_TOML.format(keep_alive=keep_alive, dead_after=dead_after)
    confs = []
    for n, port in enumerate((*SERVER_PORTS, SPARE_PORT), 1):
        conf = run / f"server{n}.toml"
        conf.write_text(
            f"{LOG_TOML}[daemon]\nshutdown-grace = {GRACE_S:g}\n"
            f'[[server]]\nname = "s{n}"\nlisten-on = "127.0.0.1:{port}"\n'
            f'state-dir = "{state}"\nallow = ["unix:{echo_path}"]\n{knobs}'
        )
        confs.append(conf)
    return list(await asyncio.gather(*(run_daemon(c, netns=topo.balancer_ns) for c in confs)))


async def start_clients(
    topo: Topology, run: Path, ca: Path, echo_path: str, *, keep_alive: float, dead_after: float
) -> Endpoint:
    knobs = QUIC_TOML.format(keep_alive=keep_alive, dead_after=dead_after)
    blocks = [
        f'[[client]]\nname = "c{i}"\nlisten-on = "unix:{run}/c{i}.sock"\n'
        f'server-endpoint = "{VIP}:{PORT}"\nserver-name = "localhost"\nca-file = "{ca}"\n'
        f'token-source = "unix:{echo_path}"\n{knobs}'
        for i in range(CLIENTS)
    ]
    conf = run / "clients.toml"
    conf.write_text(LOG_TOML + "\n".join(blocks))
    return await run_daemon(conf, netns=topo.client_ns, listeners=CLIENTS)
