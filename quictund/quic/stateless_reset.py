"""Stateless resets (RFC 9000 §10.3): a restarted server tells clients at once that their
connection is gone, instead of letting them find out at ``dead-after``.

A server that lost a connection's state (killed, restarted, its machine rebooted) still receives
that connection's 1-RTT packets.  Without an answer, the client keeps sending for ``dead-after``
(15 s) before it resets its tunnels.  With a stateless reset it resets them in one round trip.
Rules, all from RFC 9000:

1. **Tokens come from a persisted key.**  Every connection id a server issues carries the token
   ``HMAC-SHA256(key, cid)[:16]`` (§10.3.2), so a process that never saw the id can compute it.
   The key (32 random octets, ``stateless-reset.key``, mode 0600) lives in the server's state
   directory and survives restarts.  Servers must never share a key: a packet routed to the
   wrong server would then reset a live connection, and anyone who copies a client's packet
   from another address would get a valid reset back, enough to end that connection (RFC
   9000 §10.3.2).  So each endpoint derives its own from the file (``derive_key``: this
   machine, its bound address, its worker number): servers given a copy of one state
   directory (to share a self-signed certificate) and workers sharing one still differ.
2. **Only short-header packets with an unknown connection id are answered** (a long header
   belongs to a handshake; a known id to a live connection).
3. **Never an amplifier, never a loop** (§10.3.3): the reset is at least one octet shorter than
   the packet that triggered it, and none is sent for a packet under ``MIN_TRIGGER`` octets
   (the answer would be below the 21-octet minimum).  A reset answering a reset is therefore
   shorter each time and the exchange dies out.
4. **Rate-limited**: a token bucket (``RATE`` per second, ``BURST``) for the whole endpoint, so
   a flood of junk short-header packets costs at most that many HMACs and sends per second;
   beyond it packets are dropped silently and their clients fall back to ``dead-after``.
5. It looks like any short-header packet: first octet ``01xxxxxx``, random octets, the token.

A client compares the last 16 octets of a datagram it could not process with the token of the
connection id it sends to, in constant time (``is_reset``; engine glue in the adapters).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "stateless-reset.key"
KEY_SIZE = 32
TOKEN_SIZE = 16
MIN_RESET = 21  # 1 + 4 unpredictable octets (at least 38 bits) + the token
MIN_TRIGGER = MIN_RESET + 1
MAX_RESET = 43  # longer triggers get a reset of 43 octets or fewer: looks like a small packet
RATE = 100.0  # resets per second, whole endpoint
BURST = 100.0


def token(key: bytes, cid: bytes) -> bytes:
    """The stateless reset token of connection id ``cid`` under ``key``."""
    return hmac.new(key, cid, hashlib.sha256).digest()[:TOKEN_SIZE]


def derive_key(key: bytes, scope: str) -> bytes:
    """The key one server endpoint uses: the state directory's ``key`` bound to this machine
    (``/etc/machine-id``, else the host name) and ``scope`` (its address and worker), so that
    servers sharing a copied state directory, or workers sharing one, never share a key
    (rule 1); a restart of the same endpoint on the same machine gets the same one."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    machine = machine or socket.gethostname()
    return hmac.new(key, f"{machine}|{scope}".encode(), hashlib.sha256).digest()


def is_reset(datagram: bytes, expected: bytes | None) -> bool:
    """Whether ``datagram`` ends with ``expected`` (constant time; False without a token)."""
    if expected is None or len(datagram) < MIN_RESET:
        return False
    return hmac.compare_digest(datagram[-TOKEN_SIZE:], expected)


def load_key(state_dir: Path) -> bytes:
    """The endpoint's reset key from ``state_dir``, created (0600) if it is not there yet.

    Raises ``OSError`` when the directory cannot be read or written; a file of the wrong size
    is replaced (it can only come from an interrupted write or a mistake, and a new key costs
    nothing but the resets of connections open before it)."""
    path = state_dir / KEY_FILE_NAME
    replace = False
    with contextlib.suppress(FileNotFoundError):
        data = path.read_bytes()
        if len(data) == KEY_SIZE:
            return data
        logger.warning("%s: not a %d-octet key; writing a new one", path, KEY_SIZE)
        replace = True
    key = os.urandom(KEY_SIZE)
    tmp = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # never replaces a key another process wrote meanwhile
    except FileExistsError:
        key = path.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    return key


class Responder:
    """Decides and builds the server's stateless resets (sans-IO: the caller passes ``now``)."""

    def __init__(
        self, key: bytes, *, cid_length: int, rate: float = RATE, burst: float = BURST
    ) -> None:
        self._key = key
        self._cid_length = cid_length
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at: float | None = None
        self.sent = 0
        self.dropped = 0

    def answer(self, datagram: bytes, now: float) -> bytes | None:
        """The reset for ``datagram`` (a packet for a connection id nobody here knows), or
        ``None``: not a short header, too short to answer safely, or over the rate."""
        if len(datagram) < MIN_TRIGGER or datagram[0] & 0xC0 != 0x40:
            return None
        if self._at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            self.dropped += 1
            return None
        self._tokens -= 1
        self.sent += 1
        cid = datagram[1 : 1 + self._cid_length]
        size = min(len(datagram) - 1, MAX_RESET)
        head = bytearray(os.urandom(size - TOKEN_SIZE))
        head[0] = 0x40 | (head[0] & 0x3F)
        return bytes(head) + token(self._key, cid)
