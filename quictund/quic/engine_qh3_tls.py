"""qh3 TLS gaps: client certificates on the server, pinning or verification on the client.

Part of the qh3 engine adapter (``engine_qh3.py``; only ``engine_*`` modules touch engine
internals).  qh3's TLS server cannot ask for a client certificate at all:
``ClientAuthContext`` sends a CertificateRequest, reads the client's Certificate and
CertificateVerify, and applies the checks shared with aioquic (``peer_checks.py``) before
accepting its Finished.  ``ServerCheckContext`` pins the server's key or verifies its chain
with the same OpenSSL-based check as aioquic (qh3's webpki verifier refuses a self-signed
server certificate given as its own CA, which is how quictund distributes its generated one).
"""

from __future__ import annotations

import types
from typing import Any

from cryptography import x509
from qh3 import tls as qtls
from qh3._hazmat import Buffer as QBuffer
from qh3._hazmat import Certificate as QCertificate
from qh3._hazmat import SignatureError, verify_with_public_key

from quictund.policy.identity import ANONYMOUS, Identity
from quictund.quic.peer_checks import (
    PeerRejected,
    check_client_certificate,
    check_server_certificate,
    check_server_pin,
)

__all__ = ["ClientAuthContext", "ServerCheckContext"]

# ---- TLS: client certificates on the server, key pinning on the client ---------------------

_SIG_ALGS = [
    qtls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
    qtls.SignatureAlgorithm.ECDSA_SECP384R1_SHA384,
    qtls.SignatureAlgorithm.ECDSA_SECP521R1_SHA512,
    qtls.SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
    qtls.SignatureAlgorithm.RSA_PSS_RSAE_SHA384,
    qtls.SignatureAlgorithm.RSA_PSS_RSAE_SHA512,
    qtls.SignatureAlgorithm.ED25519,
]
_IDLE, _EXPECT_CERTIFICATE, _EXPECT_VERIFY = 0, 1, 2


def _push_certificate_request_and_certificate(buf: QBuffer, certificate: Any) -> None:
    """Our server flight: a CertificateRequest right before the server's Certificate."""
    buf.push_uint8(qtls.HandshakeType.CERTIFICATE_REQUEST)
    with qtls.push_block(buf, 3):
        qtls.push_opaque(buf, 1, b"")
        with (
            qtls.push_block(buf, 2),
            qtls.push_extension(buf, qtls.ExtensionType.SIGNATURE_ALGORITHMS),
        ):
            qtls.push_list(buf, 2, buf.push_uint16, _SIG_ALGS)
    qtls.push_certificate(buf, certificate)


class _RecordingKeySchedule(qtls.KeySchedule):
    """Remembers the transcript before its last update (to undo qh3's guess of our Finished)."""

    before_last: Any = None

    def update_hash(self, data: bytes) -> None:
        self.before_last = self.hash.copy()
        super().update_hash(data)


def _with_globals(fn: Any, **names: Any) -> Any:
    scope = dict(fn.__globals__, **names)
    return types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)


_server_hello_with_request = _with_globals(
    qtls.Context._server_handle_hello,
    push_certificate=_push_certificate_request_and_certificate,
    KeySchedule=_RecordingKeySchedule,
)


class ClientAuthContext(qtls.Context):
    """Server TLS context that asks for, and verifies, a client certificate in the handshake."""

    quictund_identity: Identity = ANONYMOUS  # what check_client_certificate verified

    def _qt_init(self, cafile: str | None, pins: frozenset[str]) -> None:
        self._qt_cafile = cafile
        self._qt_pins = pins
        self._qt_expect = _IDLE

    def _server_handle_hello(self, input_buf: Any, initial_buf: Any, *bufs: Any) -> None:
        _server_hello_with_request(self, input_buf, initial_buf, *bufs)
        if not self._alps_negotiated:
            # qh3 pre-computed the client's Finished without a client certificate in the
            # transcript: drop that guess, the real one is checked in _server_handle_finished.
            schedule = self.key_schedule
            assert isinstance(schedule, _RecordingKeySchedule)
            schedule.hash = schedule.before_last
            self._expected_verify_data = None
        self._qt_expect = _EXPECT_CERTIFICATE

    def handle_message(self, input_data: bytes, output_buf: Any, epoch: int = -1) -> None:
        if self._qt_expect == _IDLE:
            super().handle_message(input_data, output_buf, epoch)
            return
        self._receive_buffer += input_data
        while self._qt_expect != _IDLE and len(self._receive_buffer) >= 4:
            length = 4 + int.from_bytes(self._receive_buffer[1:4], byteorder="big")
            if len(self._receive_buffer) < length:
                return
            message = bytes(self._receive_buffer[:length])
            self._receive_buffer = self._receive_buffer[length:]
            if epoch >= 0 and epoch != qtls.Epoch.HANDSHAKE:
                raise qtls.AlertUnexpectedMessage
            if self._qt_expect == _EXPECT_CERTIFICATE:
                self._qt_certificate(message)
            else:
                self._qt_certificate_verify(message)
        if self._qt_expect == _IDLE:
            super().handle_message(b"", output_buf, epoch)

    def _qt_certificate(self, message: bytes) -> None:
        if message[0] != qtls.HandshakeType.CERTIFICATE:
            raise _alert(PeerRejected(40, "client certificate required"))
        certificate = qtls.pull_certificate(QBuffer(data=message))
        self._schedule().update_hash(message)
        if not certificate.certificates:
            raise _alert(PeerRejected(40, "client certificate required"))
        ders = [entry[0] for entry in certificate.certificates]
        self._peer_certificate = QCertificate(ders[0])
        self._peer_certificate_chain = [QCertificate(d) for d in ders[1:]]
        self._qt_ders = ders
        self._qt_expect = _EXPECT_VERIFY

    def _qt_certificate_verify(self, message: bytes) -> None:
        if message[0] != qtls.HandshakeType.CERTIFICATE_VERIFY:
            raise qtls.AlertUnexpectedMessage
        verify = qtls.pull_certificate_verify(QBuffer(data=message))
        if verify.algorithm not in _SIG_ALGS:
            raise qtls.AlertIllegalParameter("CertificateVerify uses an algorithm not offered")
        assert self._peer_certificate is not None
        try:
            verify_with_public_key(
                self._peer_certificate.public_key(),
                verify.algorithm,
                self._schedule().certificate_verify_data(b"TLS 1.3, client CertificateVerify"),
                verify.signature,
            )
        except SignatureError as exc:
            raise qtls.AlertDecryptError(str(exc)) from None
        certs = [x509.load_der_x509_certificate(der) for der in self._qt_ders]
        try:
            self.quictund_identity = check_client_certificate(
                certs[0], certs[1:], cafile=self._qt_cafile, pins=self._qt_pins
            )
        except PeerRejected as exc:
            raise _alert(exc) from None
        self._schedule().update_hash(message)
        self._qt_expect = _IDLE

    def _server_handle_finished(self, input_buf: Any, output_buf: Any) -> None:
        guessed = self._expected_verify_data is not None or self._alps_negotiated
        if not guessed:
            assert self._dec_key is not None
            self._expected_verify_data = self._schedule().finished_verify_data(self._dec_key)
        super()._server_handle_finished(input_buf, output_buf)
        if not guessed:
            self._schedule().update_hash(input_buf.data)

    def _schedule(self) -> qtls.KeySchedule:
        assert self.key_schedule is not None
        return self.key_schedule


class ServerCheckContext(qtls.Context):
    """Client TLS context: the server by its pinned key, or by a chain verified as aioquic does."""

    _pins: frozenset[str]

    def _client_handle_certificate_verify(self, input_buf: Any) -> None:
        super()._client_handle_certificate_verify(input_buf)  # signature (chain check is off)
        assert self._peer_certificate is not None
        cert, *chain = (
            x509.load_der_x509_certificate(c.public_bytes())
            for c in [self._peer_certificate, *self._peer_certificate_chain]
        )
        try:
            if self._pins:
                check_server_pin(cert, self._pins)
            else:
                check_server_certificate(
                    cert, chain, server_name=self._server_name, cafile=self._cafile
                )
        except PeerRejected as exc:
            raise _alert(exc) from None


def _alert(exc: PeerRejected) -> qtls.Alert:
    alert = qtls.Alert(exc.reason)
    alert.description = qtls.AlertDescription(exc.alert)
    return alert
