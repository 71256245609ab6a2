"""Certificate failures, as the client's log line says them: whose check failed, and the fix.

A refused handshake reaches the client's connector as a close reason: either our own check of
the server's certificate (``peer_checks`` phrases it, and the same reason goes to the server in
the close frame) or the server's refusal of ours.  ``explain`` turns either into one line that
says which side refused, why, and the setting that fixes it: ``server-name``, ``ca-file``, or
``server-fingerprint`` with the ``quictund fingerprint`` command that prints the value to
compare.  Pure; anything it does not recognise is returned unchanged.
"""

from __future__ import annotations

import re

from quictund.quic.peer_checks import (
    KEY_NOT_PINNED,
    NOT_NAMED,
    NOT_TRUSTED,
    OUT_OF_DATE,
    SERVER_REFUSED,
)

__all__ = ["explain"]

_PEER_PREFIX = "closed by peer or engine: "
_OURS = re.compile(
    re.escape(SERVER_REFUSED) + r" \(key (?P<key>sha256:[A-Za-z0-9+/=]+)\): (?P<why>.*)"
)
_THEIRS = ("client certificate", "client key", "pinned client certificate")
_SERVER_CERT = "/var/lib/quictund/server.pem"  # where a packaged server keeps its generated one


def explain(reason: str, *, endpoint: str, cafile: str | None, server_name: str | None) -> str:
    """One line for a failed attempt whose close ``reason`` is ``reason``; else ``reason``."""
    text = reason.removeprefix(_PEER_PREFIX)
    ours = _OURS.search(text)
    if ours is not None:
        why = ours["why"]
        return f"this client refused the server's certificate: {why}; {_fix(why, ours['key'], endpoint, cafile, server_name)}"  # noqa: E501
    if text.startswith("client certificate required"):
        return (
            f"the server refused this client: {text}; set cert-file and key-file (a "
            "certificate signed by the server's ca-file, or one whose key the server pins)"
        )
    if text.startswith("client certificate is a CA certificate"):
        return (
            f"the server refused this client's certificate: {text}; make a leaf one, e.g. "
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 "
            "-subj /CN=NAME -addext basicConstraints=critical,CA:FALSE -addext "
            "extendedKeyUsage=clientAuth -keyout client.key -out client.pem"
        )
    if text.startswith(_THEIRS):
        return (
            f"the server refused this client's certificate: {text}; the server's operator must "
            "accept it (client-fingerprints: 'quictund fingerprint CERT-FILE' prints its key, "
            "or a cert-file signed by the server's ca-file)"
        )
    return reason


def _fix(why: str, key: str, endpoint: str, cafile: str | None, server_name: str | None) -> str:
    pin = (
        f'or pin its key: server-fingerprint = "{key}" once '
        f"'quictund fingerprint {_SERVER_CERT}' (or the server's cert-file) on the server "
        "prints the same"
    )
    if why.startswith(NOT_NAMED):
        return (
            f'set server-name = one of the names above (server-endpoint = "{endpoint}" stays '
            f"the address to dial), or give the server a certificate that names "
            f"{server_name!r}, {pin}"
        )
    if why.startswith(NOT_TRUSTED) and cafile is None:
        return (
            "set ca-file = a copy of the server's certificate (a server without cert-file "
            f"logs the path of its generated one, usually {_SERVER_CERT}), {pin}"
        )
    if why.startswith(NOT_TRUSTED):
        return (
            f"ca-file {cafile} is not the certificate (or CA) this server uses now: copy it "
            f"again from the server, {pin}"
        )
    if why.startswith(OUT_OF_DATE):
        return "renew the server's certificate, or correct the clock that is wrong"
    if why.startswith(KEY_NOT_PINNED):
        return (
            f"if the server's key changed on purpose, set server-fingerprint to what "
            f"'quictund fingerprint {_SERVER_CERT}' (or its cert-file) prints on the server; "
            f"it presented {key}"
        )
    return pin.removeprefix("or ")
