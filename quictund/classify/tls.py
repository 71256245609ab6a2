"""TLS: the ClientHello's server name (SNI) and ALPN protocols."""

from __future__ import annotations

from quictund.classify.base import Detector, Verdict

_TLS_HANDSHAKE = 22
_TLS_CLIENT_HELLO = 1
_TLS_MAX_FRAGMENT = 1 << 14
_TLS_MIN_HELLO = 2 + 32 + 1 + 2 + 2 + 1 + 1  # version, random, and minimal vectors
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class _Truncated(Exception):
    """The bytes end before the structure does (more may come)."""


class _Malformed(Exception):
    """The lengths are inconsistent: not TLS."""


class _Reader:
    def __init__(self, data: bytes, *, truncated: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.truncated = truncated

    def take(self, n: int, limit: int | None = None) -> bytes:
        end = self.pos + n
        if limit is not None and end > limit:
            raise _Malformed
        if end > len(self.data):
            raise _Truncated if self.truncated else _Malformed
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, width: int, limit: int | None = None) -> int:
        return int.from_bytes(self.take(width, limit), "big")

    def vector(self, width: int, limit: int | None = None) -> bytes:
        return self.take(self.uint(width, limit), limit)


def _parse_client_hello(body: bytes, length: int, props: dict[str, str]) -> None:
    """Fill ``props`` from a ClientHello body of declared ``length``; ``body`` may be shorter.

    Raises ``_Malformed``, or ``_Truncated`` when ``body`` ends first.
    """
    reader = _Reader(body, truncated=len(body) < length)
    reader.take(2 + 32)  # legacy_version (3.x, checked by the caller) and random
    if len(reader.vector(1)) > 32:  # legacy_session_id
        raise _Malformed
    suites = reader.vector(2)
    if not suites or len(suites) % 2:
        raise _Malformed
    if not reader.vector(1):  # legacy_compression_methods
        raise _Malformed
    if reader.pos == length:
        return  # no extensions (SSL 3.0 style)
    size = reader.uint(2)
    end = reader.pos + size
    if end != length:
        raise _Malformed
    while reader.pos < end:
        kind = reader.uint(2, end)
        data = reader.vector(2, end)
        if kind == _EXT_SERVER_NAME:
            props["sni"] = _parse_sni(data)
        elif kind == _EXT_ALPN:
            props["alpn"] = _parse_alpn(data)


def _parse_sni(data: bytes) -> str:
    reader = _Reader(data)
    names = _Reader(reader.vector(2))
    if reader.pos != len(data):
        raise _Malformed
    host = ""
    while names.pos < len(names.data):
        kind = names.uint(1)
        name = names.vector(2)
        if kind == 0 and not host:  # host_name
            host = name.decode("ascii", "replace")
    return host


def _parse_alpn(data: bytes) -> str:
    reader = _Reader(data)
    protocols = _Reader(reader.vector(2))
    if reader.pos != len(data) or not protocols.data:
        raise _Malformed
    names = []
    while protocols.pos < len(protocols.data):
        name = protocols.vector(1)
        if not name:
            raise _Malformed
        names.append(name.decode("ascii", "replace"))
    return ",".join(names)


class TlsDetector(Detector):
    """A TLS ClientHello (possibly over several records); properties ``sni`` and ``alpn``."""

    name = "tls"

    def __init__(self, lookahead: int) -> None:
        super().__init__(lookahead)
        self._record = 0  # start of the next record header in the client's bytes
        self._handshake = b""  # fragments of the complete handshake records so far

    def examine(self, client: bytes, server: bytes) -> Verdict:
        fragment = b""
        while len(client) > self._record:
            header = client[self._record : self._record + 5]
            if header[0] != _TLS_HANDSHAKE or header[1:2] not in (b"", b"\x03"):
                return Verdict.DENY
            if len(header) < 5:
                break
            size = int.from_bytes(header[3:5], "big")
            if not 0 < size <= _TLS_MAX_FRAGMENT:
                return Verdict.DENY
            start = self._record + 5
            if start + size > len(client):
                fragment = client[start:]
                break
            self._handshake += client[start : start + size]
            self._record = start + size
        return self._examine_handshake(self._handshake + fragment, len(client))

    def _examine_handshake(self, data: bytes, seen: int) -> Verdict:
        if data[:1] not in (b"", bytes([_TLS_CLIENT_HELLO])):
            return Verdict.DENY
        if len(data) < 4:
            return Verdict.MAYBE if seen < self.lookahead else Verdict.DENY
        length = int.from_bytes(data[1:4], "big")
        if length < _TLS_MIN_HELLO or data[4:5] not in (b"", b"\x03"):
            return Verdict.DENY
        complete = len(data) >= 4 + length
        if not complete and seen < self.lookahead:
            return Verdict.MAYBE
        props: dict[str, str] = {}
        try:
            _parse_client_hello(data[4 : 4 + length], length, props)
        except _Malformed:
            return Verdict.DENY
        except _Truncated:
            pass  # larger than the look-ahead: keep what the visible part says
        self.properties = props
        return Verdict.AFFIRM
