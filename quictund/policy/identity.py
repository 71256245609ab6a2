"""Who is on the other end: what the server *verified* about a client's certificate (pure).

Attached to every tunnel a server carries (logged, shown in the API) and used to choose the
destination policy and the ``max-tunnels-per-identity`` quota.  The rule (docs/security.md,
"Client identities"):

1. A client accepted because its chain verifies against ``ca-file`` is named by what that CA
   vouched for: its subject and alternative names -- and its key.  An ``allow-for`` entry's
   ``identity`` then matches the full subject (``CN=ops,O=Example``), one of its attributes
   (``CN=ops``), one alternative name (``DNS:ops.example.com``, ``IP:10.0.0.7``,
   ``URI:spiffe://example/ops``, ``email:ops@example``) or the key (``sha256:...``).
2. A client accepted only because its key is one of ``client-fingerprints`` is its key and
   nothing else: the subject of a certificate nobody signed is whatever the client typed, so
   it never names, selects a policy or shares a quota.  Only ``sha256:...`` matches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from quictund.policy.certload import fingerprint


@dataclass(frozen=True, slots=True)
class Identity:
    """``subject`` and ``names`` as a CA vouched for them; ``key`` as the handshake proved it."""

    subject: str = ""
    names: tuple[str, ...] = ()
    key: str = ""  # "sha256:..." of the public key the client signed the handshake with

    def __str__(self) -> str:
        named = "; ".join(filter(None, (self.subject, ", ".join(self.names))))
        return named or self.key

    def matches(self, pattern: str) -> bool:
        pattern = pattern.strip()
        if not pattern:
            return False
        if self.key and pattern == self.key:
            return True
        if not self.subject and not self.names:
            return False
        if pattern == self.subject or pattern in self.names:
            return True
        return pattern in _attributes(self.subject)


ANONYMOUS = Identity()


def identity_of(cert: x509.Certificate | None) -> Identity:
    """The identity of a certificate whose chain *was verified* against a CA (rule 1)."""
    if cert is None:
        return ANONYMOUS
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        san = None
    if san is not None:
        names += [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
        names += [f"URI:{n}" for n in san.get_values_for_type(x509.UniformResourceIdentifier)]
        names += [f"email:{n}" for n in san.get_values_for_type(x509.RFC822Name)]
    return Identity(cert.subject.rfc4514_string(), tuple(names), fingerprint(cert))


def pinned_identity(cert: x509.Certificate) -> Identity:
    """The identity of a certificate accepted by its pinned key alone (rule 2): the key."""
    return Identity(key=fingerprint(cert))


def _attributes(subject: str) -> set[str]:
    # RFC 4514 escapes a literal comma as "\,"; split on unescaped commas and plus signs.
    parts, current, escaped = [], "", False
    for ch in subject:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            current += ch
            escaped = True
        elif ch in ",+":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return {p.strip() for p in parts if p.strip()}
