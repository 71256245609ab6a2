"""Craft QUIC Initial packets for fuzzing the server's datagram entry point (test helper).

Mutating a sealed Initial mostly tests AEAD (the server drops it after a failed decrypt), so
besides raw mutation this seals *arbitrary plaintext frames* under the real Initial keys (they
derive from the destination connection id, RFC 9001 section 5.2): the server then parses our
frames and our ClientHello, which is where the interesting code is.

Used by tests/e2e/test_fuzz_datagrams.py and bench/fuzz/fuzz_quic_datagram.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicProtocolVersion, pull_quic_header

VERSION_1 = int(QuicProtocolVersion.VERSION_1)
_PN_LENGTH = 2


@dataclass(frozen=True, slots=True)
class Initial:
    """A client Initial packet, opened: its connection ids and plaintext frames."""

    dcid: bytes
    scid: bytes
    version: int
    payload: bytes  # frames: CRYPTO(ClientHello) then PADDING


@cache
def client_initial_datagram() -> bytes:
    """A real first datagram of aioquic's client (ALPN quic-tun), made once per process."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["quic-tun"], server_name="localhost")
    conn = QuicConnection(configuration=config)
    conn.connect(("127.0.0.1", 4433), now=0.0)
    return conn.datagrams_to_send(now=0.0)[0][0]


def open_initial(datagram: bytes) -> Initial:
    """Decrypt a client Initial as the server would (ValueError if it is not one)."""
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf, host_cid_length=8)
    if header.version is None:
        raise ValueError("not a long header")
    pair = CryptoPair()
    pair.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    # packet_length is where this packet ends in the datagram (coalesced packets may follow)
    _, payload, _ = pair.decrypt_packet(datagram[: header.packet_length], buf.tell(), 0)
    return Initial(header.destination_cid, header.source_cid, header.version, payload)


def seal_initial(
    payload: bytes,
    *,
    dcid: bytes,
    scid: bytes = b"\x01" * 8,
    version: int = VERSION_1,
    packet_number: int = 0,
    pad_to: int = 1200,
) -> bytes:
    """Encrypt ``payload`` (frames) as a client Initial; PADDING brings it to ``pad_to`` bytes."""
    header_len = 1 + 4 + 1 + len(dcid) + 1 + len(scid) + 1 + 2 + _PN_LENGTH
    room = pad_to - header_len - 16 - len(payload)
    payload = payload + b"\x00" * max(room, 0)
    payload += b"\x00" * max(0, 4 - len(payload))  # header protection samples 16 bytes
    length = _PN_LENGTH + len(payload) + 16
    buf = Buffer(capacity=header_len + 8)
    buf.push_uint8(0xC0 | (_PN_LENGTH - 1))  # long header, Initial, 2-byte packet number
    buf.push_uint32(version)
    buf.push_uint8(len(dcid))
    buf.push_bytes(dcid)
    buf.push_uint8(len(scid))
    buf.push_bytes(scid)
    buf.push_uint_var(0)  # no token
    buf.push_uint16(0x4000 | length)  # 2-byte varint
    buf.push_uint16(packet_number & 0xFFFF)
    pair = CryptoPair()
    pair.setup_initial(cid=dcid, is_client=True, version=version)
    return pair.encrypt_packet(buf.data, payload, packet_number)


def crypto_frame(data: bytes, offset: int = 0) -> bytes:
    """A CRYPTO frame carrying ``data`` at ``offset``."""
    buf = Buffer(capacity=16 + len(data))
    buf.push_uint_var(0x06)
    buf.push_uint_var(offset)
    buf.push_uint_var(len(data))
    buf.push_bytes(data)
    return buf.data


@cache
def client_hello() -> bytes:
    """The ClientHello (TLS handshake message) of :func:`client_initial_datagram`."""
    initial = open_initial(client_initial_datagram())
    buf = Buffer(data=initial.payload)
    while True:
        kind = buf.pull_uint_var()
        if kind == 0x06:
            buf.pull_uint_var()  # offset (0)
            return buf.pull_bytes(buf.pull_uint_var())
        if kind != 0x00:
            raise ValueError(f"unexpected frame {kind:#x} in aioquic's Initial")
