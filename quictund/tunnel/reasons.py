"""Why a client's tunnel failed, in words for the person reading the client's log.

The server tells the client why it ended a tunnel with a QUIC application error code
(``wire.ErrorCode``) on RESET_STREAM / STOP_SENDING, or -- quic-tun's way -- with an ack byte.
The splice reports those as ``peer stopped reading (policy_denied)``: exact, but a person has
to know our wire codes to read it.  This table says the same in plain words, naming the
destination the client asked for, and keeps the words the failure metric's categories look
for (``tunnels.failure_category``: "not allowed", "timed out", "could not reach", …).

Pure functions; the client endpoint calls :func:`client_reason` once per failed tunnel.
"""

from __future__ import annotations

import re

from quictund.wire import Ack, ErrorCode

# {dest} is "destination tcp:10.0.0.5:22" (or "its destination" when the token is opaque).
_CODE_WORDS: dict[ErrorCode, str] = {
    ErrorCode.NO_ERROR: "the server ended the tunnel to {dest}",
    ErrorCode.APP_RESET: "{dest} reset the connection (the server's side saw an RST)",
    ErrorCode.POLICY_DENIED: "the server refused {dest}: not allowed by its policy "
    "(its `allow` list)",
    ErrorCode.REFUSED: "the server refused the tunnel to {dest}",
    ErrorCode.TIMEOUT: "the server timed out connecting to {dest}",
    ErrorCode.UNREACHABLE: "the server could not reach {dest} (connection refused, "
    "no route, or no such socket)",
    ErrorCode.BAD_TOKEN: "the server rejected the token for {dest} as a bad token: do this "
    "client's token-source-plugin and the server's token-parser-plugin / token-parser-key "
    "agree?",
    ErrorCode.RATE_LIMITED: "the server is limiting new tunnels from this client "
    "(its source-tunnel-rate or max-tunnels); {dest} was not tried",
    ErrorCode.SHUTDOWN: "the server is shutting down (a restart or an upgrade); the client "
    "reconnects",
    ErrorCode.INTERNAL: "the server hit an internal error on the tunnel to {dest} "
    "(see the server's log)",
    ErrorCode.CONNECTION_LOST: "the server reported connection lost for the tunnel to {dest}",
    ErrorCode.CLOSED_BY_OPERATOR: "an operator on the server closed the tunnel to {dest} "
    "(DELETE /tunnels/UUID)",
    ErrorCode.RECLAIMED: "the server reclaimed the tunnel to {dest}: {dest} read nothing "
    "while other tunnels needed the memory its data held (the server's "
    "reclaim-stalled-after and connection-receive-budget)",
}

_ACK_WORDS: dict[int, str] = {
    Ack.BAD_TOKEN: "the server could not parse the token for {dest} (bad token): do this "
    "client's token-source-plugin and the server's token-parser-plugin / token-parser-key "
    "agree?",
    Ack.UNREACHABLE: "the server could not reach (or may not reach) {dest}",
}

# what splice.py writes: "peer reset the stream (policy_denied)", "peer stopped reading (0x1ff)"
_SPLICE_RE = re.compile(
    r"^peer (?:reset the stream|stopped reading) \((?P<code>[a-z_]+|0x[0-9a-f]+)\)$"
)


def destination(token: str | None) -> str:
    """How to name the destination: the token itself when it is one (quic-tun's plain
    ``tcp:HOST:PORT`` / ``unix:/path`` tokens), else vaguely (base64 or signed tokens)."""
    if token and token.startswith(("tcp:", "tcp4:", "tcp6:", "unix:")) and token.isprintable():
        return f"destination {token}"
    return "its destination"


def for_code(code: int, token: str | None) -> str:
    """Plain words for an error code the server sent on the tunnel's stream."""
    dest = destination(token)
    try:
        words = _CODE_WORDS[ErrorCode(code)]
    except ValueError:
        return f"the server ended the tunnel to {dest} with unknown error code 0x{code:x}"
    return words.format(dest=dest)


def for_ack(ack: int, token: str | None) -> str:
    """Plain words for a refusing ack byte (quic-tun servers send only this)."""
    dest = destination(token)
    if ack in _ACK_WORDS:
        return _ACK_WORDS[ack].format(dest=dest)
    if ack < 0:
        return f"the server ended the stream before answering for {dest}"
    return f"the server refused {dest} with unknown ack 0x{ack:02x}"


def client_reason(reason: str, token: str | None) -> str:
    """Rewrite the splice's ``peer ... (code_name)`` reasons; others are already words."""
    m = _SPLICE_RE.match(reason)
    if m is None:
        return reason
    name = m["code"]
    if name.startswith("0x"):
        return for_code(int(name, 16), token)
    try:
        return for_code(ErrorCode[name.upper()], token)
    except KeyError:
        return reason
