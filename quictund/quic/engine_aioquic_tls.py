"""aioquic TLS gaps: client certificates verified in the handshake, server key pinning.

Part of the aioquic engine adapter (``engine_aioquic.py``; only ``engine_*`` modules touch
engine internals).  aioquic requests a client certificate only through a private flag, accepts
an empty one and never verifies the chain: ``ClientAuthContext`` closes both gaps so a bad
client fails *inside* the handshake with a TLS alert.  ``PinnedServerContext`` accepts a server
by its pinned public key.  The checks themselves are shared with qh3 (``peer_checks.py``).
"""

from __future__ import annotations

from aioquic import tls
from aioquic._buffer import Buffer

from quictund.quic.peer_checks import PeerRejected, check_client_certificate, check_server_pin

__all__ = ["ClientAuthContext", "PinnedServerContext"]


class ClientAuthContext(tls.Context):
    """Server TLS context that requires a client certificate: pinned key or CA-verified chain."""

    _client_cafile: str | None
    _pins: frozenset[str]

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        start = input_buf.tell()
        certificate = tls.pull_certificate(input_buf)
        if not certificate.certificates:
            raise _alert(PeerRejected(40, "client certificate required"))
        input_buf.seek(start)
        super()._server_handle_certificate(input_buf)

    def _server_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate_verify(input_buf)  # checks the signature
        try:
            check_client_certificate(
                self._peer_certificate,
                self._peer_certificate_chain,
                cafile=self._client_cafile,
                pins=self._pins,
            )
        except PeerRejected as exc:
            raise _alert(exc) from None


class PinnedServerContext(tls.Context):
    """Client TLS context that accepts the server only by its pinned public key."""

    _pins: frozenset[str]

    def _client_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._client_handle_certificate_verify(input_buf)  # signature (chain check is off)
        try:
            check_server_pin(self._peer_certificate, self._pins)
        except PeerRejected as exc:
            raise _alert(exc) from None


def _alert(exc: PeerRejected) -> tls.Alert:
    alert = tls.Alert(exc.reason)
    alert.description = tls.AlertDescription(exc.alert)
    return alert
