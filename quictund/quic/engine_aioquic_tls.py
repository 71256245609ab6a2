"""aioquic TLS gaps: client certificates verified in the handshake, the server checked by us.

Part of the aioquic engine adapter (``engine_aioquic.py``; only ``engine_*`` modules touch
engine internals).  aioquic requests a client certificate only through a private flag, accepts
an empty one and never verifies the chain: ``ClientAuthContext`` closes both gaps so a bad
client fails *inside* the handshake with a TLS alert, and records the ``Identity`` that was
verified (a pinned client is its key, never the subject it wrote).  ``ServerCheckContext``
checks the server by its pinned key or by its chain with the same code as qh3, so a refusal
reads the same on both engines and the client's log can say what to do (``tls_advice.py``).
The checks themselves are shared with qh3 (``peer_checks.py``).
"""

from __future__ import annotations

from aioquic import tls
from aioquic._buffer import Buffer

from quictund.policy.identity import ANONYMOUS, Identity
from quictund.quic.peer_checks import (
    PeerRejected,
    check_client_certificate,
    check_server_certificate,
    check_server_pin,
)

__all__ = ["ClientAuthContext", "ServerCheckContext"]


class ClientAuthContext(tls.Context):
    """Server TLS context that requires a client certificate: pinned key or CA-verified chain."""

    _client_cafile: str | None
    _pins: frozenset[str]
    quictund_identity: Identity = ANONYMOUS  # what check_client_certificate verified

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
            self.quictund_identity = check_client_certificate(
                self._peer_certificate,
                self._peer_certificate_chain,
                cafile=self._client_cafile,
                pins=self._pins,
            )
        except PeerRejected as exc:
            raise _alert(exc) from None


class ServerCheckContext(tls.Context):
    """Client TLS context: the server by its pinned key, or by its chain (``peer_checks``)."""

    _pins: frozenset[str]

    def _client_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._client_handle_certificate_verify(input_buf)  # signature (chain check is off)
        try:
            if self._pins:
                check_server_pin(self._peer_certificate, self._pins)
            else:
                check_server_certificate(
                    self._peer_certificate,
                    self._peer_certificate_chain,
                    server_name=self._server_name,
                    cafile=self._cafile,
                )
        except PeerRejected as exc:
            raise _alert(exc) from None


def _alert(exc: PeerRejected) -> tls.Alert:
    alert = tls.Alert(exc.reason)
    alert.description = tls.AlertDescription(exc.alert)
    return alert
