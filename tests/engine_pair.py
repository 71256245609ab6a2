"""An in-memory client/server pair of engine connections (no sockets, fake clock).

The pair follows aioquic's ``tests/test_connection.py`` ``client_and_server``: datagrams from one
connection are fed straight into the other, events are drained after every receive (as
``QuicSession`` does), and the clock moves 1 ms per round so ACKs flow and RTTs are sane.  Used by
tests/test_engine.py (aioquic internals) and tests/test_engines.py (both engines).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.connection import QuicConnection
from aioquic.tls import Epoch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quictund.policy import tls
from quictund.quic import engine
from quictund.quic.engine import EngineSettings, events
from quictund.quic.engine_aioquic import AioquicConnection

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)
KIB = 1024

ENGINES = [
    "aioquic",
    pytest.param(
        "qh3",
        marks=pytest.mark.skipif(
            not engine.engine_available("qh3"), reason="qh3 is not installed"
        ),
    ),
]


# ------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Certs:
    server_cert: Path
    server_key: Path
    ca: Path  # the CA the server trusts for client certificates
    client_cert: Path  # issued by ``ca``
    client_key: Path
    rogue_cert: Path  # self-signed, same subject as client_cert
    rogue_key: Path
    other_ca_cert: Path  # issued by an unrelated CA
    other_ca_key: Path
    expired_cert: Path  # issued by ``ca``, expired
    expired_key: Path
    sub_cert: Path  # leaf + a non-CA "intermediate" issued by ``ca``
    sub_key: Path


NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    days: tuple[int, int] = (-1, 10),
) -> x509.Certificate:
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signer = issuer[1] if issuer else key
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=days[0]))
        .not_valid_after(NOW + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(signer, hashes.SHA256())
    )


def _write(
    directory: Path, name: str, certs: list[x509.Certificate], key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_certs(d: Path) -> Certs:
    """Server, CA, client, rogue, other-CA, expired and bad-chain certificates in ``d``."""
    server_cert, server_key = tls.ensure_self_signed(d / "server", ["localhost"])

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    ca_key = key()
    ca_cert = _issue("quictund test CA", ca_key, None, ca=True)
    ca_path, _ = _write(d, "ca", [ca_cert], ca_key)

    client_key = key()
    client = _write(
        d, "client", [_issue("client-1", client_key, (ca_cert, ca_key), ca=False)], client_key
    )
    rogue_key = key()
    rogue = _write(d, "rogue", [_issue("client-1", rogue_key, None, ca=False)], rogue_key)

    other_ca_key = key()
    other_ca = _issue("quictund test CA", other_ca_key, None, ca=True)  # same name, other key
    other_key = key()
    other = _write(
        d, "other", [_issue("client-1", other_key, (other_ca, other_ca_key), ca=False)], other_key
    )

    expired_key = key()
    expired = _write(
        d,
        "expired",
        [_issue("client-1", expired_key, (ca_cert, ca_key), ca=False, days=(-10, -1))],
        expired_key,
    )

    # A leaf "issued" by another CA-signed leaf that is not allowed to sign certificates.
    mid_key = key()
    mid = _issue("not-a-ca", mid_key, (ca_cert, ca_key), ca=False)
    sub_key = key()
    sub = _write(d, "sub", [_issue("client-2", sub_key, (mid, mid_key), ca=False), mid], sub_key)

    return Certs(server_cert, server_key, ca_path, *client, *rogue, *other, *expired, *sub)


# ------------------------------------------------------------------------------ the pair


@dataclass
class Pair:
    client: Any  # an engine connection, or a plain aioquic QuicConnection as a control
    server: Any
    now: float = 1.0
    rounds: int = 0
    received: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # server side
    consumed: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    client_events: list[events.QuicEvent] = field(default_factory=list)
    server_events: list[events.QuicEvent] = field(default_factory=list)
    # called with (pair, stream_id, data) for each server StreamDataReceived
    on_server_data: Callable[[Pair, int, bytes], None] | None = None
    # checked after every round
    invariant: Callable[[Pair], None] | None = None

    @property
    def engine_client(self) -> Any:
        assert not isinstance(self.client, QuicConnection) or isinstance(
            self.client, AioquicConnection
        )
        return self.client

    def consume(self, stream_id: int, count: int) -> None:
        self.server.consume(stream_id, count)
        self.consumed[stream_id] += count

    def drain(self) -> None:
        while (ev := self.client.next_event()) is not None:
            self.client_events.append(ev)
        while (ev := self.server.next_event()) is not None:
            self.server_events.append(ev)
            if isinstance(ev, events.StreamDataReceived):
                self.received[ev.stream_id] += len(ev.data)
                if self.on_server_data is not None:
                    self.on_server_data(self, ev.stream_id, ev.data)

    def step(self) -> int:
        """One round: client -> server, server -> client, then 1 ms passes."""
        moved = 0
        for sender, receiver, source in (
            (self.client, self.server, CLIENT_ADDR),
            (self.server, self.client, SERVER_ADDR),
        ):
            for data, _addr in sender.datagrams_to_send(now=self.now):
                receiver.receive_datagram(data, source, now=self.now)
                moved += 1
            self.drain()
        self.now += 0.001
        self.rounds += 1
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(now=self.now)
        self.drain()
        if self.invariant is not None:
            self.invariant(self)
        return moved

    def pump(self, max_rounds: int = 500) -> None:
        """Exchange datagrams until three rounds in a row move nothing and no ACK is pending
        (an aioquic endpoint holds a lone packet's ACK up to 20 ms for data to ride with:
        quictund/quic/engine_aioquic_acks.py; the clock jumps to it)."""
        quiet = 0
        for _ in range(max_rounds):
            quiet = quiet + 1 if self.step() == 0 else 0
            if quiet >= 3:
                pending = [at for c in (self.client, self.server) if (at := _ack_at(c))]
                if not pending:
                    return
                self.now = max(self.now, min(pending))
                quiet = 0
        raise AssertionError(f"still busy after {max_rounds} rounds")

    def run_until(self, done: Callable[[], bool], max_rounds: int = 2000) -> None:
        """Step, jumping the clock to the next timer when idle, until ``done()``."""
        for _ in range(max_rounds):
            if done():
                return
            if self.step() == 0:
                timers = [t for c in (self.client, self.server) if (t := c.get_timer())]
                if timers and min(timers) > self.now:
                    self.now = min(timers)
        raise AssertionError("condition not reached")

    def server_got(self, kind: type[events.QuicEvent]) -> bool:
        return any(isinstance(e, kind) for e in self.server_events)

    def client_got(self, kind: type[events.QuicEvent]) -> bool:
        return any(isinstance(e, kind) for e in self.client_events)


def _ack_at(conn: Any) -> float | None:
    """When an aioquic connection's pending 1-RTT ACK is due (None: none pending, or qh3)."""
    spaces = getattr(conn, "_spaces", None)
    if not isinstance(spaces, dict):
        return None
    space = spaces.get(Epoch.ONE_RTT)
    return None if space is None else space.ack_at


def make_pair(
    certs: Certs,
    settings: EngineSettings,
    *,
    client_class: type[QuicConnection] | None = None,
    client_engine: str | None = None,
    client_cafile: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    client_pins: frozenset[str] = frozenset(),
    server_pins: frozenset[str] = frozenset(),
    server_cafile: Path | None = None,
    handshake: bool = True,
) -> Pair:
    """A client of ``client_engine`` (default: the server's) and a server of ``settings.engine``.

    ``client_class`` replaces the client by a plain aioquic class (a control without our fixes).
    """
    if client_class is not None:
        client_engine = "aioquic"
    client_settings = replace(settings, engine=client_engine or settings.engine)
    client_config = engine.make_configuration(
        is_client=True,
        settings=client_settings,
        server_name="localhost",
        verify=server_cafile is not None,
        cafile=str(server_cafile) if server_cafile else None,
    )
    if client_cert is not None:
        client_config.load_cert_chain(client_cert[0], client_cert[1])
    server_config = engine.make_configuration(
        is_client=False,
        settings=settings,
        certfile=str(certs.server_cert),
        keyfile=str(certs.server_key),
    )
    client: Any
    if client_class is None or client_class is AioquicConnection:
        client = engine.new_connection(
            configuration=client_config, settings=client_settings, server_pins=server_pins
        )
    else:
        client = client_class(configuration=client_config)
    server = engine.new_connection(
        configuration=server_config,
        settings=settings,
        client_cafile=str(client_cafile) if client_cafile else None,
        client_pins=client_pins,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    pair = Pair(client, server)
    client.connect(SERVER_ADDR, now=pair.now)
    if handshake:
        pair.pump()
        assert pair.client_got(events.HandshakeCompleted)
        assert pair.server_got(events.HandshakeCompleted)
    return pair
