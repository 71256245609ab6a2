"""Certificates for the QUIC endpoints: one import for what the rest of quictund needs.

The work is split by job: ``certload.py`` loads and checks the operator's certificate and key
and computes key fingerprints; ``selfsigned.py`` makes and keeps the generated server
certificate.  Callers keep writing ``tls.fingerprint`` or ``tls.ensure_self_signed``.
"""

from __future__ import annotations

from quictund.policy.certload import fingerprint, fingerprint_file, is_ca, load_certificate_chain
from quictund.policy.selfsigned import (
    CERT_FILE_NAME,
    KEY_FILE_NAME,
    default_state_dir,
    ensure_self_signed,
    server_names,
)

__all__ = [
    "CERT_FILE_NAME",
    "KEY_FILE_NAME",
    "default_state_dir",
    "ensure_self_signed",
    "fingerprint",
    "fingerprint_file",
    "is_ca",
    "load_certificate_chain",
    "server_names",
]
