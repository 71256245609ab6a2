"""quic-tun's per-stream handshake, as pure functions (sans-IO).

The wire format, byte for byte what quic-tun v0.0.2+ sends (see docs/design.md):

1. client -> server: exactly ``TOKEN_LENGTH`` (512) bytes, the token's UTF-8 bytes padded with
   NUL.  No length prefix.  Any byte after the 512th is already tunnel payload.
2. server -> client: exactly one ack byte (``Ack``).  On success the raw bytes of the tunnel
   follow; on failure the server ends the stream (FIN) after that single byte.

Rules kept here, which quic-tun's own server gets wrong:

* The 512 bytes may arrive split over any number of STREAM frames; ``TokenDecoder`` accumulates
  them (quic-tun keeps only the last chunk).
* Only trailing NULs are padding.  A NUL inside the token, invalid UTF-8, or an empty token is
  a bad token (ack 0x02), not something to silently strip.
* A token longer than 512 bytes is refused by the encoder instead of being truncated.

Beyond quic-tun, aborted streams carry a QUIC application error code (``ErrorCode``), so a
quictund peer can tell a reset app connection from a refused destination; quic-tun peers ignore
the codes and simply see the stream end.
"""

from __future__ import annotations

import enum

TOKEN_LENGTH = 512


class Ack(enum.IntEnum):
    OK = 0x01
    BAD_TOKEN = 0x02
    UNREACHABLE = 0x03


class ErrorCode(enum.IntEnum):
    """QUIC application error codes for RESET_STREAM / STOP_SENDING / CONNECTION_CLOSE."""

    NO_ERROR = 0x0
    APP_RESET = 0x100  # the TCP/UNIX peer reset its connection (RST)
    POLICY_DENIED = 0x101
    REFUSED = 0x102
    TIMEOUT = 0x103
    UNREACHABLE = 0x104
    BAD_TOKEN = 0x105
    RATE_LIMITED = 0x106
    SHUTDOWN = 0x107  # the endpoint is shutting down
    INTERNAL = 0x108  # a bug in quictund; only that tunnel is affected
    CONNECTION_LOST = 0x109
    CLOSED_BY_OPERATOR = 0x10A  # DELETE /tunnels/{uuid}
    # its app drained nothing for reclaim-stalled-after while other tunnels needed the memory
    # its parked bytes held (docs/design.md, "Reclaiming stalled tunnels' memory")
    RECLAIMED = 0x10B


class TokenTooLong(ValueError):
    pass


def encode_token(token: str) -> bytes:
    """Return the 512-byte NUL-padded form of ``token``.

    Raises ``TokenTooLong`` rather than truncating (quic-tun truncates silently, which sends
    the app to a wrong or unparsable destination).
    """
    raw = token.encode("utf-8")
    if len(raw) > TOKEN_LENGTH:
        raise TokenTooLong(f"token is {len(raw)} bytes; the wire format allows {TOKEN_LENGTH}")
    return raw.ljust(TOKEN_LENGTH, b"\x00")


class BadToken(ValueError):
    pass


class TokenDecoder:
    """Accumulates the 512-byte token from any number of chunks.

    ``feed`` returns ``None`` while more bytes are needed, then ``(token, rest)`` exactly once,
    where ``rest`` is the tunnel payload that followed the token in the same chunk.  Raises
    ``BadToken`` once the 512 bytes are complete but do not form a valid token.
    """

    __slots__ = ("_buf", "_done")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False

    @property
    def received(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[str, bytes] | None:
        if self._done:
            raise RuntimeError("token already decoded")
        need = TOKEN_LENGTH - len(self._buf)
        self._buf += data[:need]
        if len(self._buf) < TOKEN_LENGTH:
            return None
        self._done = True
        rest = data[need:]
        return decode_token(bytes(self._buf)), rest


def decode_token(block: bytes) -> str:
    """Decode one complete 512-byte token block (pure; raises ``BadToken``)."""
    if len(block) != TOKEN_LENGTH:
        raise BadToken(f"token block is {len(block)} bytes, expected {TOKEN_LENGTH}")
    raw = block.rstrip(b"\x00")
    if not raw:
        raise BadToken("empty token")
    if b"\x00" in raw:
        raise BadToken("NUL byte inside the token")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadToken("token is not valid UTF-8") from None
