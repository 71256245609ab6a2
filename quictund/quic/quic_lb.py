"""QUIC-LB plaintext connection ids: a server id a connection-id-routing balancer can read.

draft-ietf-quic-load-balancers ("QUIC-LB: Generating Routable QUIC Connection IDs"), plaintext
CID algorithm.  A balancer in front of many servers reads the server id out of every
destination connection id and forwards the packet to that server, so a client whose address
changes (roaming, NAT rebinding) still reaches the server that holds its connection -- which a
balancer hashing the client's address cannot do.

Layout of every connection id a configured server issues (``CidCodec.new``)::

    first octet | server id (server_id_len octets) | nonce (nonce_len octets)
    first octet = config rotation (3 high bits, 0..6) | length self-description (5 low bits)

Rules:

1. The config rotation bits name the balancer configuration the id belongs to (0..6); 0b111
   means "not routable, use the 4-tuple" and is never written by a configured server.
2. The 5 low bits self-describe the length: the octets after the first one
   (= server id length + nonce length), as the draft allows; balancers may ignore them.
3. The server id is opaque bytes (1..15), copied verbatim from the configuration.
4. The nonce is at least 4 random octets (the draft's floor); server id + nonce <= 19, so the
   whole id fits QUIC v1's 20 octets.  Random nonces from ``os.urandom`` repeat with negligible
   probability (32+ bits per server per id), which is what the draft asks of a nonce.

Pure: ``encode``/``decode`` take and return bytes, randomness is injected (``CidCodec.new``'s
``rand``), nothing here does I/O or touches an engine.  The aioquic glue is in
``engine_aioquic_cids.py``; qh3 cannot use this (its Rust core picks NEW_CONNECTION_ID ids).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

UNROUTABLE_CONFIG = 0b111
MIN_NONCE = 4
MAX_SERVER_ID = 15
MAX_BODY = 19  # server id + nonce: QUIC v1 connection ids are at most 20 octets
LENGTH_MASK = 0x1F

_HEX = re.compile(r"(?:0x)?([0-9a-f]+)", re.IGNORECASE)


class QuicLbError(ValueError):
    """A QUIC-LB configuration or connection id that breaks the draft's rules."""


@dataclass(frozen=True, slots=True)
class DecodedCid:
    config_id: int
    server_id: bytes
    nonce: bytes
    length_bits: int


def parse_server_id(text: str) -> bytes:
    """``"0x0a01"`` or ``"0a01"`` -> ``b"\\x0a\\x01"``: hex, whole octets, 1..15 of them."""
    match = _HEX.fullmatch(text.strip())
    if match is None or len(match.group(1)) % 2:
        raise QuicLbError(f'not a server id in hex with whole octets, like "0x0a01" (got {text!r})')
    raw = bytes.fromhex(match.group(1))
    if not 1 <= len(raw) <= MAX_SERVER_ID:
        raise QuicLbError(f"a server id has 1 to {MAX_SERVER_ID} octets (got {len(raw)})")
    return raw


def check(config_id: int, server_id: bytes, nonce_len: int) -> None:
    """Raise ``QuicLbError`` unless the triple is a valid plaintext configuration."""
    if not 0 <= config_id < UNROUTABLE_CONFIG:
        raise QuicLbError(
            f"the config id is 0 to 6 (7 = 0b111 marks unroutable ids); got {config_id}"
        )
    if not 1 <= len(server_id) <= MAX_SERVER_ID:
        raise QuicLbError(f"a server id has 1 to {MAX_SERVER_ID} octets (got {len(server_id)})")
    if nonce_len < MIN_NONCE:
        raise QuicLbError(f"the nonce has at least {MIN_NONCE} octets (got {nonce_len})")
    if len(server_id) + nonce_len > MAX_BODY:
        raise QuicLbError(
            f"server id ({len(server_id)}) + nonce ({nonce_len}) octets exceed {MAX_BODY}: "
            "QUIC connection ids are at most 20 octets"
        )


def encode(config_id: int, server_id: bytes, nonce: bytes) -> bytes:
    """The connection id carrying ``server_id`` under configuration ``config_id``."""
    check(config_id, server_id, len(nonce))
    body = server_id + nonce
    first = (config_id << 5) | (len(body) & LENGTH_MASK)  # rule 2: octets after this one
    return bytes([first]) + body


def decode(cid: bytes, server_id_len: int) -> DecodedCid:
    """What a balancer configured with ``server_id_len`` reads from ``cid``.

    Raises ``QuicLbError`` for an id it cannot route: too short, or config bits 0b111.
    """
    if not 1 <= server_id_len <= MAX_SERVER_ID:
        raise QuicLbError(f"a server id has 1 to {MAX_SERVER_ID} octets (got {server_id_len})")
    if len(cid) < 1 + server_id_len + MIN_NONCE or len(cid) > 1 + MAX_BODY:
        raise QuicLbError(f"a {len(cid)}-octet connection id is not routable here")
    config_id = cid[0] >> 5
    if config_id == UNROUTABLE_CONFIG:
        raise QuicLbError("config rotation bits 0b111: an unroutable (4-tuple) id")
    return DecodedCid(
        config_id=config_id,
        server_id=bytes(cid[1 : 1 + server_id_len]),
        nonce=bytes(cid[1 + server_id_len :]),
        length_bits=cid[0] & LENGTH_MASK,
    )


class CidSource(Protocol):
    """What issues a server's connection ids: a ``CidCodec``, or a worker's ids
    (``quic/steering.py``'s ``WorkerCids``, which may wrap one)."""

    @property
    def cid_length(self) -> int: ...

    def new(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class CidCodec:
    """One server's QUIC-LB configuration; ``new()`` makes each connection id it issues."""

    config_id: int
    server_id: bytes
    nonce_len: int

    def __post_init__(self) -> None:
        check(self.config_id, self.server_id, self.nonce_len)

    @property
    def cid_length(self) -> int:
        return 1 + len(self.server_id) + self.nonce_len

    def new(self, rand: Callable[[int], bytes] = os.urandom) -> bytes:
        """A fresh connection id: this server's id and ``nonce_len`` random octets."""
        return encode(self.config_id, self.server_id, rand(self.nonce_len))

    def owns(self, cid: bytes) -> bool:
        """True if ``cid`` routes to this server under this configuration."""
        try:
            decoded = decode(cid, len(self.server_id))
        except QuicLbError:
            return False
        return (
            decoded.config_id == self.config_id
            and decoded.server_id == self.server_id
            and len(decoded.nonce) == self.nonce_len
        )
