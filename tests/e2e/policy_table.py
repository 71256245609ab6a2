"""The destination-policy truth table, run through a real server in a private network namespace.

``test_policy_table.py`` runs this module under ``unshare --net --mount`` so that it may give
loopback the cloud-metadata address 169.254.169.254 and two "own" addresses, and bind-mount
its own ``/etc/hosts`` (names that resolve to loopback and metadata), none of which touches the
host.  Wildcard listeners on port ``TRAP`` count every connection attempt to any local address
of the namespace; a denied destination must see none.

Two clients with certificates from one CA ("CN=dev" gets the listener's ``allow``, "CN=ops"
its ``allow-for``) open one stream per case with a raw aioquic connection and record the ack
byte.  Prints one JSON object: the cases, their acks and trap hits, and the server's log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TRAP, ALLOWED, OPS = 7001, 7002, 7003
STAGE = ["start"]  # where we are, for the timeout message
UDP = 7500
OWN4, OWN6 = "10.200.0.1", "fd00:200::1"

HOSTS = f"""127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
127.0.0.1 evil.test
169.254.169.254 metadata.test
::1 evil6.test
{OWN4} me.test
"""

LOOPBACK = [
    "127.0.0.1", "127.1", "127.0.1", "0x7f.0.0.1", "0x7f.1", "0x7f000001", "2130706433",
    "017700000001", "0177.0.0.1", "0177.1", "127.000.000.001", "127.0.0.2", "127.255.255.254",
    "127.1.2.3", "0", "0.0.0.0", "0x0", "[::1]", "[0:0:0:0:0:0:0:1]", "[::0:1]",
    "[0000:0000:0000:0000:0000:0000:0000:0001]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]", "[::]", "localhost", "ip6-localhost", "ip6-loopback",
    "evil.test", "evil6.test",
]  # fmt: skip
METADATA = [
    "169.254.169.254", "169.254.43518", "0xa9.0xfe.0xa9.0xfe", "0xa9fea9fe", "2852039166",
    "0251.0376.0251.0376", "025177524776", "169.254.0xa9fe", "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]", "metadata.test", "[fe80::1]",
]  # fmt: skip
OWN = [OWN4, f"[{OWN6}]", "me.test", "0x0a.200.0.1"]


def cases(unix_dir: Path) -> list[dict[str, object]]:
    """(identity, token, expected ack) — 0x01 allowed, 0x03 denied."""
    out: list[dict[str, object]] = [
        {"who": who, "token": f"tcp:{host}:{TRAP}", "ack": 3, "group": "denied"}
        for host in LOOPBACK + METADATA + OWN
        for who in ("dev", "ops")
    ]
    out += [
        {"who": "dev", "token": f"tcp:127.0.0.1:{ALLOWED}", "ack": 1, "group": "named rule"},
        {"who": "dev", "token": f"tcp:localhost:{ALLOWED}", "ack": 3, "group": "name not ip"},
        {"who": "dev", "token": f"tcp:127.0.0.1:{OPS}", "ack": 3, "group": "ops only"},
        {"who": "ops", "token": f"tcp:127.0.0.1:{OPS}", "ack": 1, "group": "ops only"},
        {"who": "ops", "token": f"tcp:127.0.0.1:{ALLOWED}", "ack": 3, "group": "dev only"},
        {"who": "dev", "token": f"unix:{unix_dir}/allowed-1.sock", "ack": 1, "group": "unix"},
        {"who": "dev", "token": f"unix:{unix_dir}/secret.sock", "ack": 3, "group": "unix"},
        {"who": "dev", "token": f"unix:{unix_dir}/allowed-../secret.sock", "ack": 3,
         "group": "unix"},
        {"who": "dev", "token": f"unix:{unix_dir}/sub/allowed-2.sock", "ack": 3, "group": "unix"},
        {"who": "ops", "token": f"unix:{unix_dir}/allowed-1.sock", "ack": 3, "group": "unix"},
    ]  # fmt: skip
    return out


class Peer(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acks: dict[int, asyncio.Future[int]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.data:
            fut = self.acks.get(event.stream_id)
            if fut is not None and not fut.done():
                fut.set_result(event.data[0])

    async def tunnel(self, token: str) -> int:
        sid = self._quic.get_next_available_stream_id()
        fut = self.acks[sid] = asyncio.get_running_loop().create_future()
        self._quic.send_stream_data(sid, token.encode().ljust(512, b"\0"))
        self.transmit()
        try:
            return await asyncio.wait_for(fut, 15)
        finally:
            try:
                self._quic.send_stream_data(sid, b"", end_stream=True)
            except (RuntimeError, ValueError):
                # The server's STOP_SENDING already reset our side (RuntimeError), and once the
                # server acknowledged that reset aioquic forgot the stream (ValueError): which
                # one depends on how fast the ack came back.
                pass
            self.transmit()


class Trap:
    """Counts accepted connections on a listening socket."""

    def __init__(self, family: int, addr: tuple[str, int] | str) -> None:
        self.count = 0
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind(addr)
        self.sock.listen(64)
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock, self._accept)

    def _accept(self) -> None:
        conn, _ = self.sock.accept()
        self.count += 1
        conn.close()


def issue(tmp: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          ) -> tuple[Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[0].subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
        .sign(ca[1] if ca else key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert, key


def setup_namespace(tmp: Path) -> None:
    """Only inside ``unshare --net --mount``: lo up, extra addresses, private /etc/hosts."""
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"],
        ["ip", "addr", "add", f"{OWN4}/32", "dev", "lo"],
        ["ip", "-6", "addr", "add", f"{OWN6}/128", "dev", "lo", "nodad"],
    ):
        subprocess.run(cmd, check=True)
    hosts = tmp / "hosts"
    hosts.write_text(HOSTS)
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)


async def main(tmp: Path) -> dict[str, object]:
    setup_namespace(tmp)
    unix_dir = tmp / "u"
    (unix_dir / "sub").mkdir(parents=True)
    traps = {
        "v4": Trap(socket.AF_INET, ("0.0.0.0", TRAP)),
        "v6": Trap(socket.AF_INET6, ("::", TRAP)),
        "allowed": Trap(socket.AF_INET, ("127.0.0.1", ALLOWED)),
        "ops": Trap(socket.AF_INET, ("127.0.0.1", OPS)),
        "unix-allowed": Trap(socket.AF_UNIX, str(unix_dir / "allowed-1.sock")),
        "unix-sub": Trap(socket.AF_UNIX, str(unix_dir / "sub" / "allowed-2.sock")),
        "unix-secret": Trap(socket.AF_UNIX, str(unix_dir / "secret.sock")),
    }
    ca_pem, _, ca_cert, ca_key = issue(tmp, "ca", None)
    certs = {who: issue(tmp, who, (ca_cert, ca_key)) for who in ("dev", "ops")}
    broad = ["tcp:0.0.0.0/0:*", "tcp:[::/0]:*"]
    allow = [*broad, f"tcp:127.0.0.1:{ALLOWED}", f"unix:{unix_dir}/allowed-*.sock"]
    ops = [*broad, f"tcp:127.0.0.1:{OPS}"]
    conf = tmp / "server.toml"
    conf.write_text(
        '[log]\nformat = "json"\n'
        f'[[server]]\nname = "edge"\nlisten-on = "127.0.0.1:{UDP}"\nstate-dir = "{tmp}"\n'
        f"allow = {json.dumps(allow)}\nverify-remote-endpoint = true\nca-file = \"{ca_pem}\"\n"
        f'[[server.allow-for]]\nidentity = "CN=ops"\nallow = {json.dumps(ops)}\n'
    )
    STAGE.append("starting the server")
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quictund", "run", "--config", str(conf),
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,  # our stdout is the JSON answer; it must not hold it
    )  # fmt: skip
    assert server.stderr is not None
    log: list[dict[str, object]] = []
    while True:
        line = await asyncio.wait_for(server.stderr.readline(), 30)
        if not line:
            raise SystemExit(f"server exited: {log}")
        log.append(_entry(line.decode()))
        if str(log[-1].get("msg", "")).startswith("ready"):
            break
    # The traps must be able to see what the policy denies, or zero hits would prove nothing.
    selfcheck = {}
    for host in ("127.0.0.1", "127.1.2.3", "169.254.169.254", OWN4, "::1", OWN6):
        before = traps["v4"].count + traps["v6"].count
        _, writer = await asyncio.open_connection(host, TRAP)
        writer.close()
        await asyncio.sleep(0.02)
        selfcheck[host] = traps["v4"].count + traps["v6"].count - before
    STAGE.append("connecting the clients")
    results = []
    peers: dict[str, Peer] = {}
    stack = []
    for who, (cert, key, _, _) in certs.items():
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["quic-tun"], verify_mode=ssl.CERT_NONE
        )
        config.load_cert_chain(cert, key)
        cm = connect("127.0.0.1", UDP, configuration=config, create_protocol=Peer)
        peer = await cm.__aenter__()
        assert isinstance(peer, Peer)
        stack.append(cm)
        peers[who] = peer
    for case in cases(unix_dir):
        STAGE.append(f"case {case}")
        before = {k: t.count for k, t in traps.items()}
        ack = await peers[str(case["who"])].tunnel(str(case["token"]))
        await asyncio.sleep(0.02)  # an attempt after the ack would still be counted
        hits = {k: t.count - before[k] for k, t in traps.items() if t.count != before[k]}
        results.append({**case, "got": ack, "hits": hits})
    for cm in stack:
        await cm.__aexit__(None, None, None)
    STAGE.append("stopping the server")
    server.terminate()
    rest = await server.stderr.read()
    await server.wait()
    log += [_entry(x) for x in rest.decode().splitlines()]
    return {"results": results, "log": log, "selfcheck": selfcheck}


def _entry(line: str) -> dict[str, object]:
    try:
        entry = json.loads(line)
    except ValueError:
        return {"msg": line.rstrip(), "level": "raw"}
    return entry if isinstance(entry, dict) else {"msg": line}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="qt-pol-") as d:
        os.chmod(d, 0o755)
        try:
            print(json.dumps(asyncio.run(asyncio.wait_for(main(Path(d)), 90))))
        except TimeoutError:
            sys.exit(f"policy table: stuck at {STAGE[-1]!r} after 90 s")
