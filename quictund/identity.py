"""Who is on the other end: a client certificate's subject and alternative names (pure).

Attached to every tunnel a server carries (logged, shown in the API) and used to choose the
destination policy: an ``allow-for`` entry's ``identity`` matches the full subject
(``CN=ops,O=Example``), one of its attributes (``CN=ops``), or one alternative name
(``DNS:ops.example.com``, ``IP:10.0.0.7``, ``URI:spiffe://example/ops``, ``email:ops@example``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str = ""
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "; ".join(filter(None, (self.subject, ", ".join(self.names))))

    def matches(self, pattern: str) -> bool:
        pattern = pattern.strip()
        if not pattern or not self.subject and not self.names:
            return False
        if pattern == self.subject or pattern in self.names:
            return True
        return pattern in _attributes(self.subject)


ANONYMOUS = Identity()


def identity_of(cert: x509.Certificate | None) -> Identity:
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
    return Identity(cert.subject.rfc4514_string(), tuple(names))


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
