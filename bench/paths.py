"""The paths the bench compares, each started by one launcher from a ``PathSpec``:

* ``direct``      no tunnel: the app connects to the target itself;
* ``stunnel``     a stunnel4 client + server pair, TLS 1.3 TLS_AES_128_GCM_SHA256, the client
                  verifying the server's certificate;
* ``ssh``         ``ssh -N -L`` to our own sshd (generated host and user keys, no system
                  configuration), aes128-gcm@openssh.com;
* ``quictund*``   ``quictund run`` server and client from generated TOML files; each variant
                  (``quictund``, ``quictund-qh3``, ...) adds its own TOML lines to both
                  listeners (a line ``server:key = v`` or ``client:key = v`` goes to one);
* ``quictun-go``  quic-tun's Go binaries, when ``QUICTUN_BIN`` names them (a directory with
                  quictun-server and quictun-client, or one of the two files);
* ``python-floor`` only when named in ``--paths``: ``bench/floor_relay.py``, a uvloop relay
                  pair with no QUIC (no encryption, no reliability): what the shape of a Python
                  tunnel costs by itself.  Request/response rows only; it loses data in bulk.

A ``PathSpec`` says where the app connects (``listen``), where the server end listens and the
client end connects (``wire``) and where the traffic goes (``target``), and the network
namespace of each end (``client_ns``/``server_ns``; None = this one).  Port 0 means "pick a
free one".  IPv4 addresses only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from context import BENCH, REPO, Procs, netns_argv

ALL_BASE = ["direct", "stunnel", "ssh"]


@dataclass(frozen=True)
class PathSpec:
    target: tuple[str, int]
    listen: tuple[str, int] = ("127.0.0.1", 0)
    wire: tuple[str, int] = ("127.0.0.1", 0)
    client_ns: str | None = None
    server_ns: str | None = None
    also_allow: tuple[str, ...] = ()  # more destinations a quictund server allows


@dataclass
class RunningPath:
    """A started path: apps connect to ``host:port``; ``pids`` maps a side ("client",
    "server") to the process whose CPU and memory (with its descendants) that side costs."""

    name: str
    host: str
    port: int
    pids: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class PathError(RuntimeError):
    pass


# -- helpers --------------------------------------------------------------------------------


def free_port(host: str, ns: str | None = None, kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on right now (there is a race; launchers retry)."""
    if ns is None:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    code = (
        f"import socket;s=socket.socket(socket.AF_INET,{int(kind)});s.bind(({host!r},0));"
        "print(s.getsockname()[1])"
    )
    out = subprocess.run(
        netns_argv(ns, ["python3", "-c", code]), capture_output=True, check=True, timeout=10
    )
    return int(out.stdout)


def _fill(spec: PathSpec, wire_kind: int = socket.SOCK_STREAM) -> PathSpec:
    listen, wire = spec.listen, spec.wire
    if listen[1] == 0:
        listen = (listen[0], free_port(listen[0], spec.client_ns))
    if wire[1] == 0:
        wire = (wire[0], free_port(wire[0], spec.server_ns, wire_kind))
    return replace(spec, listen=listen, wire=wire)


def wait_tcp(
    host: str, port: int, ns: str | None, procs: list[subprocess.Popen[bytes]], within: float = 20
) -> None:
    """Wait until ``host:port`` accepts (probed from ``ns``) or one of ``procs`` died."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise PathError(f"{p.args!r} exited with {p.returncode}")
        if ns is None:
            try:
                socket.create_connection((host, port), timeout=1).close()
                return
            except OSError:
                pass
        else:
            code = f"import socket;socket.create_connection(({host!r},{port}),timeout=1).close()"
            probe = subprocess.run(netns_argv(ns, ["python3", "-c", code]), capture_output=True)
            if probe.returncode == 0:
                return
        time.sleep(0.05)
    raise PathError(f"nothing accepted on {host}:{port} within {within} s")


def wait_log(
    path: Path, needle: str, proc: subprocess.Popen[bytes], within: float = 20, start: int = 0
) -> str:
    """Wait for a line containing ``needle`` in ``path`` (from byte ``start``); return it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_bytes()[start:].decode(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise PathError(f"{proc.args!r} exited with {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    raise PathError(f"no {needle!r} in {path} within {within} s")


# what an aioquic daemon logs when it runs aioquic's own packet path (engine_aioquic_build)
PURE_PATH_LOG = "pure-Python packet path"


def _compiled_or_asked(log: Path) -> None:
    """Refuse a daemon that fell back to aioquic's pure-Python packet path unless the bench was
    asked for it (QUICTUND_PURE_PYTHON): its figures would pass for the compiled path's.  A tree
    edited while the bench ran (a compiled module imported but not built yet) did that once and
    read as a 2x regression."""
    if os.environ.get("QUICTUND_PURE_PYTHON", "") not in ("", "0"):
        return
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        if PURE_PATH_LOG in line:
            why = line.partition("aioquic engine: ")[2].partition(";")[0] or line.strip()
            raise PathError(
                f"the daemon runs {why} (see {log}); rebuild the tree (pip install -e .), "
                "bench a frozen checkout, or set QUICTUND_PURE_PYTHON=1 to bench that path"
            )


def make_cert(directory: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed for ``hosts`` (IP SANs), ECDSA P-256, kept in
    ``directory``: (ca.pem, cert.pem, key.pem).  A real chain, because some verifiers (rustls'
    webpki in qh3) refuse a CA certificate presented as the server's own."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_path, cert_path, key_path = (directory / f for f in ("ca.pem", "cert.pem", "key.pem"))
    if key_path.exists():
        return ca_path, cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: str, public: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        build("bench CA", "bench CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]
    cert = (
        build("bench server", "bench CA", key.public_key())
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


# -- launchers ---------------------------------------------------------------------------------


class PathFactory:
    """Starts paths by name; every process goes into ``procs``; files into ``out_dir``."""

    def __init__(
        self,
        procs: Procs,
        out_dir: Path,
        python: str,
        variants: dict[str, list[str]],
        sources: dict[str, Path] | None = None,
    ) -> None:
        self.procs = procs
        self.out_dir = out_dir
        self.python = python
        self.variants = variants
        self.sources = sources or {}
        self.serial = 0

    def start(self, name: str, spec: PathSpec) -> RunningPath:
        launchers: dict[str, Callable[[PathSpec, str], RunningPath]] = {
            "direct": self._direct,
            "stunnel": self._stunnel,
            "ssh": self._ssh,
            "quictun-go": self._quictun_go,
            "python-floor": self._python_floor,
        }
        if name in self.variants:
            launcher = lambda spec, tag: self._quictund(spec, tag, name)  # noqa: E731
        elif name in launchers:
            launcher = launchers[name]
        else:
            raise PathError(f"unknown path {name!r}")
        last: Exception | None = None
        for _attempt in range(3):  # a free port may be taken between probe and bind
            self.serial += 1
            tag = f"{name}-{self.serial}"
            try:
                return launcher(spec, tag)
            except PathError as exc:
                last = exc
        raise PathError(f"{name}: {last}")

    def _dir(self, tag: str) -> Path:
        d = self.out_dir / "paths" / tag
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _cert(self, spec: PathSpec) -> tuple[Path, Path, Path]:
        hosts = sorted({"127.0.0.1", spec.wire[0]})
        return make_cert(self.out_dir / "cert" / "-".join(hosts), hosts)

    def _direct(self, spec: PathSpec, tag: str) -> RunningPath:
        return RunningPath("direct", spec.target[0], spec.target[1])

    def _stunnel(self, spec: PathSpec, tag: str) -> RunningPath:
        if not shutil.which("stunnel4"):
            raise SystemExit("stunnel4 is not installed (apt-get install stunnel4)")
        spec = _fill(spec)
        d = self._dir(tag)
        ca, cert, key = self._cert(spec)
        common = "foreground = yes\npid =\ndebug = 3\nsyslog = no\n"
        tls = "sslVersionMin = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\n"
        (d / "server.conf").write_text(
            f"{common}[server]\n{tls}cert = {cert}\nkey = {key}\n"
            f"accept = {spec.wire[0]}:{spec.wire[1]}\n"
            f"connect = {spec.target[0]}:{spec.target[1]}\n"
        )
        (d / "client.conf").write_text(
            f"{common}[client]\nclient = yes\n{tls}CAfile = {ca}\nverifyChain = yes\n"
            f"checkIP = {spec.wire[0]}\n"
            f"accept = {spec.listen[0]}:{spec.listen[1]}\n"
            f"connect = {spec.wire[0]}:{spec.wire[1]}\n"
        )
        server = self.procs.spawn(
            f"{tag}-server", ["stunnel4", str(d / "server.conf")], ns=spec.server_ns
        )
        client = self.procs.spawn(
            f"{tag}-client", ["stunnel4", str(d / "client.conf")], ns=spec.client_ns
        )
        running = RunningPath(
            "stunnel", *spec.listen, {"client": client.pid, "server": server.pid}, [server, client]
        )
        self._ready(running, spec, [(spec.wire, spec.server_ns), (spec.listen, spec.client_ns)])
        return running

    def _ssh(self, spec: PathSpec, tag: str) -> RunningPath:
        if not Path("/usr/sbin/sshd").exists() or not shutil.which("ssh"):
            raise SystemExit("OpenSSH is not installed (apt-get install openssh-server)")
        spec = _fill(spec)
        d = self._dir(tag)
        keys = self.out_dir / "ssh-keys"
        if not (keys / "user").exists():
            keys.mkdir(parents=True, exist_ok=True)
            for k in ("host", "user"):
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / k)],
                    check=True,
                )
            shutil.copy(keys / "user.pub", keys / "authorized_keys")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        (d / "sshd_config").write_text(
            f"ListenAddress {spec.wire[0]}:{spec.wire[1]}\n"
            f"HostKey {keys / 'host'}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
            "PidFile none\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding yes\n"
            "MaxStartups 1000\nLogLevel INFO\n"
        )
        server = self.procs.spawn(
            f"{tag}-server",
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
            ns=spec.server_ns,
        )
        wait_log(self.procs.log_path(f"{tag}-server"), "Server listening", server)
        client = self.procs.spawn(
            f"{tag}-client",
            [
                "ssh", "-N", "-F", "/dev/null", "-i", str(keys / "user"),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
                "-o", "LogLevel=ERROR", "-c", "aes128-gcm@openssh.com",
                "-L", f"{spec.listen[0]}:{spec.listen[1]}:{spec.target[0]}:{spec.target[1]}",
                "-p", str(spec.wire[1]), f"{pwd.getpwuid(os.getuid()).pw_name}@{spec.wire[0]}",
            ],  # fmt: skip
            ns=spec.client_ns,
        )
        running = RunningPath(
            "ssh", *spec.listen, {"client": client.pid, "server": server.pid}, [server, client]
        )
        self._ready(running, spec, [(spec.listen, spec.client_ns)])
        return running

    def _quictund(self, spec: PathSpec, tag: str, name: str) -> RunningPath:
        spec = _fill(spec, socket.SOCK_DGRAM)
        d = self._dir(tag)
        ca, cert, key = self._cert(spec)
        extra = {"server": [], "client": []}  # type: dict[str, list[str]]
        for line in self.variants[name]:
            role, sep, rest = line.partition(":")
            if sep and role in extra and "=" in rest and "=" not in role:
                extra[role].append(rest.strip())
            else:
                for lines in extra.values():
                    lines.append(line.strip())
        t_host, t_port = spec.target
        allow = ", ".join(f'"{a}"' for a in (f"tcp:{t_host}:{t_port}", *spec.also_allow))
        (d / "server.toml").write_text(
            "[[server]]\n"
            'name = "bench"\n'
            f'listen-on = "{spec.wire[0]}:{spec.wire[1]}"\n'
            f'cert-file = "{cert}"\nkey-file = "{key}"\n'
            f"allow = [{allow}]\n" + "".join(f"{x}\n" for x in extra["server"])
        )
        (d / "client.toml").write_text(
            "[[client]]\n"
            'name = "bench"\n'
            f'listen-on = "tcp:{spec.listen[0]}:{spec.listen[1]}"\n'
            f'server-endpoint = "{spec.wire[0]}:{spec.wire[1]}"\n'
            f'ca-file = "{ca}"\n'
            f'token-source = "tcp:{t_host}:{t_port}"\n'
            + "".join(f"{x}\n" for x in extra["client"])
        )
        env = dict(os.environ, PYTHONPATH=str(self.sources.get(name, REPO)))
        env.pop("NOTIFY_SOCKET", None)
        procs = []
        for role, ns in (("server", spec.server_ns), ("client", spec.client_ns)):
            proc = self.procs.spawn(
                f"{tag}-{role}",
                [self.python, "-m", "quictund", "run", "--config", str(d / f"{role}.toml")],
                ns=ns,
                env=env,
                cwd=BENCH,
            )
            procs.append(proc)
            try:
                wait_log(self.procs.log_path(f"{tag}-{role}"), "endpoint listening on", proc)
                _compiled_or_asked(self.procs.log_path(f"{tag}-{role}"))
            except PathError:
                for p in procs:
                    self.procs.stop(p)
                raise
        running = RunningPath(
            name, *spec.listen, {"server": procs[0].pid, "client": procs[1].pid}, procs
        )
        self._ready(running, spec, [(spec.listen, spec.client_ns)])
        return running

    def _quictun_go(self, spec: PathSpec, tag: str) -> RunningPath:
        server_bin, client_bin = quictun_go_bins()
        if not server_bin:
            raise SystemExit("QUICTUN_BIN is not set")
        spec = _fill(spec, socket.SOCK_DGRAM)
        api = [free_port("127.0.0.1", ns) for ns in (spec.server_ns, spec.client_ns)]
        return self._pair(
            "quictun-go", tag, spec,
            [server_bin, "--listen-on", f"{spec.wire[0]}:{spec.wire[1]}",
             "--httpd-listen-on", f"127.0.0.1:{api[0]}", "--log-level", "warn"],
            [client_bin, "--listen-on", f"tcp:{spec.listen[0]}:{spec.listen[1]}",
             "--server-endpoint", f"{spec.wire[0]}:{spec.wire[1]}",
             "--token-source", f"tcp:{spec.target[0]}:{spec.target[1]}",
             "--httpd-listen-on", f"127.0.0.1:{api[1]}", "--log-level", "warn"],
            settle=0.5,
        )  # fmt: skip

    def _python_floor(self, spec: PathSpec, tag: str) -> RunningPath:
        spec = _fill(spec, socket.SOCK_DGRAM)
        relay = str(BENCH / "floor_relay.py")
        return self._pair(
            "python-floor", tag, spec,
            [self.python, relay, "server", "--listen", f"{spec.wire[0]}:{spec.wire[1]}",
             "--target", f"{spec.target[0]}:{spec.target[1]}"],
            [self.python, relay, "client", "--listen", f"{spec.listen[0]}:{spec.listen[1]}",
             "--server", f"{spec.wire[0]}:{spec.wire[1]}"],
        )  # fmt: skip

    def _pair(
        self, name: str, tag: str, spec: PathSpec, server_argv: list[str],
        client_argv: list[str], settle: float = 0.0,
    ) -> RunningPath:  # fmt: skip
        """A server process and a client process; ready once the client's listener accepts
        (``settle``: seconds the server needs before its client may start)."""
        server = self.procs.spawn(f"{tag}-server", server_argv, ns=spec.server_ns)
        time.sleep(settle)
        client = self.procs.spawn(f"{tag}-client", client_argv, ns=spec.client_ns)
        running = RunningPath(
            name, *spec.listen, {"client": client.pid, "server": server.pid}, [server, client]
        )
        self._ready(running, spec, [(spec.listen, spec.client_ns)])
        return running

    def _ready(
        self,
        running: RunningPath,
        spec: PathSpec,
        ports: list[tuple[tuple[str, int], str | None]],
    ) -> None:
        try:
            for (host, port), ns in ports:
                wait_tcp(host, port, ns, running.procs)
        except PathError:
            for p in reversed(running.procs):
                self.procs.stop(p)
            raise


def quictun_go_bins() -> tuple[str | None, str | None]:
    """quic-tun's (server, client) binaries from ``QUICTUN_BIN``, or (None, None)."""
    where = os.environ.get("QUICTUN_BIN")
    if not where:
        return None, None
    p = Path(where)
    d = p if p.is_dir() else p.parent
    server, client = d / "quictun-server", d / "quictun-client"
    if not (server.exists() and client.exists()):
        raise SystemExit(f"QUICTUN_BIN={where}: no quictun-server and quictun-client there")
    return str(server), str(client)
