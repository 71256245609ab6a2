"""Which application protocol a tunnel carries, from its first bytes (sans-IO).

The tunnel data path hands every chunk it forwards to ``Classifier.feed_client`` (bytes the
client application sent) or ``Classifier.feed_server`` (bytes the server application sent) until
``Classifier.done`` is true.  The classifier never makes the data path wait: it copies at most
``lookahead`` bytes per direction, answers synchronously, reads no clock and does no I/O.  The
API reads ``protocol`` and ``properties`` whenever it likes (quic-tun's ``protocol`` and
``protocolProperties`` fields).

Rules the classifier keeps:

1. Bounded: each direction's buffer holds at most ``lookahead`` bytes (default 4096; quic-tun
   keeps 1024).  Bytes past that are not copied, and feeding is a no-op once ``done``.
2. Append-only: a detector sees the same two buffers grow, one call per chunk, so it may remember
   how far it has parsed (``examine`` never re-reads a prefix it has consumed).
3. Never raises: malformed input is a ``DENY``; an exception escaping a detector (a bug) is
   logged and counted as ``DENY`` for that detector only.  The tunnel is never affected.
4. Monotonic: once ``protocol`` is non-empty it never changes.  The first detector that says
   ``PARTIAL`` claims the tunnel; the others stop being asked.  If the claimant later says
   ``DENY`` the result is final with the properties it had published.
5. Final (``done``) when a detector says ``AFFIRM``, when every detector said ``DENY``, when
   both buffers are full, or when the data path calls ``finish()`` (the tunnel ended).

Detectors are one small class each (``Detector``): ``examine(client, server)`` returns
``Verdict.DENY``, ``MAYBE`` (need more bytes), ``PARTIAL`` (it is this protocol, here are the
properties so far, more may follow) or ``AFFIRM`` (final), and keeps ``properties`` up to date.
A detector knows the look-ahead (``self.lookahead``): when what it still needs can never fit,
it decides with what it has instead of waiting for ``finish()``.

Built-in detectors: ``SpiceDetector`` (quic-tun's discriminator, see
reference/quic-tun-behaviour.md section 4.2), ``SshDetector`` (RFC 4253 section 4.2
identification strings) and ``TlsDetector`` (the ClientHello's SNI and ALPN).

quic-tun bugs this module does not copy (its ``pkg/classifier/spice.go``):

* channel type 11 is reported as ``"webdav"`` (quic-tun: ``"webdev"``) and unknown types as
  ``"unknown"`` (quic-tun: ``"unknow"``);
* SPICE_MSG_MAIN_NAME with ``name_len == 0`` panics quic-tun's goroutine; here the name is
  absent (Go's ``omitempty`` would drop an empty name anyway);
* quic-tun stops at the first main-channel message that is not INIT, NAME or UUID; here unknown
  messages are skipped and the search goes on within the look-ahead;
* quic-tun polls every 500 ms, re-parses from scratch, and can poll for ever on an incomplete
  main channel; here each chunk is examined once, parsing resumes where it stopped, and a
  message that cannot fit in the look-ahead ends the search with what is known.

Known limitation kept from quic-tun: the Spice parser assumes the mini data header
(SPICE_COMMON_CAP_MINI_HEADER, which every spice-server since 0.12 negotiates).
"""

from __future__ import annotations

import enum
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import ClassVar

from quictund.errors import ConfigError

logger = logging.getLogger(__name__)

LOOKAHEAD = 4096


class Verdict(enum.Enum):
    DENY = "deny"  # not this protocol; never ask again
    MAYBE = "maybe"  # cannot tell yet
    PARTIAL = "partial"  # it is this protocol; ``properties`` so far, more may follow
    AFFIRM = "affirm"  # it is this protocol; ``properties`` are final


class Detector(ABC):
    """Recognises one protocol from the first bytes of both directions.

    One instance per tunnel.  ``examine`` is called after every chunk with the whole buffers so
    far (each only ever grows, rule 2) and must never raise on any input.
    """

    name: ClassVar[str]

    def __init__(self, lookahead: int) -> None:
        self.lookahead = lookahead
        self.properties: dict[str, str] | None = None

    @abstractmethod
    def examine(self, client: bytes, server: bytes) -> Verdict:
        """Look at the bytes so far; update ``properties`` when returning PARTIAL or AFFIRM."""


class Classifier:
    """Feeds both directions of one tunnel to the detectors; see the module docstring."""

    LOOKAHEAD: ClassVar[int] = LOOKAHEAD

    def __init__(
        self,
        detectors: Sequence[type[Detector]] | None = None,
        *,
        lookahead: int | None = None,
    ) -> None:
        self._lookahead = self.LOOKAHEAD if lookahead is None else lookahead
        if self._lookahead < 1:
            raise ValueError(f"lookahead must be positive (got {self._lookahead})")
        classes = DEFAULT_DETECTORS if detectors is None else detectors
        self._pending: list[Detector] = [cls(self._lookahead) for cls in classes]
        self._claimant: Detector | None = None
        self._client = b""
        self._server = b""
        self._done = not self._pending
        self._protocol = ""
        self._properties: dict[str, str] | None = None

    # public API

    @property
    def done(self) -> bool:
        """True once the result is final; the data path stops feeding."""
        return self._done

    @property
    def protocol(self) -> str:
        """The protocol's name (``"spice"``, ``"ssh"``, ``"tls"``), or ``""`` while unknown."""
        return self._protocol

    @property
    def properties(self) -> dict[str, str] | None:
        """A copy of the protocol's properties, ``None`` while the protocol is unknown."""
        return None if self._properties is None else dict(self._properties)

    def feed_client(self, data: bytes | bytearray | memoryview) -> None:
        """Note bytes the client application sent (any chunk size; never raises)."""
        if self._done:
            return
        room = self._lookahead - len(self._client)
        if room <= 0 or not data:
            return
        self._client += bytes(data[:room])
        self._examine()

    def feed_server(self, data: bytes | bytearray | memoryview) -> None:
        """Note bytes the server application sent (any chunk size; never raises)."""
        if self._done:
            return
        room = self._lookahead - len(self._server)
        if room <= 0 or not data:
            return
        self._server += bytes(data[:room])
        self._examine()

    def finish(self) -> None:
        """No more bytes will come (the tunnel ended): make what is known final."""
        if not self._done:
            self._settle(self._claimant)

    # private

    def _examine(self) -> None:
        for detector in list(self._pending):
            verdict = self._ask(detector)
            if verdict is Verdict.AFFIRM:
                self._settle(detector)
                return
            if verdict is Verdict.PARTIAL:
                self._claimant = detector
                self._pending = [detector]
                self._publish(detector)
                break
            if verdict is Verdict.DENY:
                if detector is self._claimant:  # rule 4: keep what it published
                    self._settle(detector)
                    return
                self._pending.remove(detector)
        if not self._pending:
            self._settle(None)
        elif len(self._client) >= self._lookahead and len(self._server) >= self._lookahead:
            self._settle(self._claimant)

    def _ask(self, detector: Detector) -> Verdict:
        try:
            return detector.examine(self._client, self._server)
        except Exception:  # a detector bug must not break the tunnel (rule 3)
            logger.exception("classifier %r failed; ignoring it for this tunnel", detector.name)
            return Verdict.DENY

    def _publish(self, detector: Detector) -> None:
        self._protocol = detector.name
        self._properties = None if detector.properties is None else dict(detector.properties)

    def _settle(self, detector: Detector | None) -> None:
        if detector is not None:
            self._publish(detector)
        self._done = True
        self._pending = []
        self._claimant = None
        self._client = self._server = b""  # idle tunnels keep no look-ahead bytes


# ------------------------------------------------------------------------------ Spice

SPICE_MAGIC = b"REDQ"
SPICE_CHANNELS = {
    1: "main",
    2: "display",
    3: "inputs",
    4: "cursor",
    5: "playback",
    6: "record",
    7: "tunnel",
    8: "smartcard",
    9: "usbredir",
    10: "port",
    11: "webdav",
}
SPICE_CHANNEL_MAIN = 1
SPICE_MSG_MAIN_INIT = 103
SPICE_MSG_MAIN_NAME = 113
SPICE_MSG_MAIN_UUID = 114
_SPICE_WANTED = frozenset({SPICE_MSG_MAIN_INIT, SPICE_MSG_MAIN_NAME, SPICE_MSG_MAIN_UUID})


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


class SpiceDetector(Detector):
    """quic-tun's Spice discriminator: link message, then the main channel's INIT/NAME/UUID.

    Properties, in quic-tun's JSON order: ``version``, ``sessionId``, ``channelType`` and, for
    the main channel when seen, ``serverName`` and ``serverUUID``.
    """

    name = "spice"

    def __init__(self, lookahead: int) -> None:
        super().__init__(lookahead)
        self._fields: dict[str, str] = {}
        self._channel: int | None = None
        self._pos = 0  # server bytes parsed; 0 until the link header, reply and result are
        self._seen: set[int] = set()

    def examine(self, client: bytes, server: bytes) -> Verdict:
        if self._channel is None:
            if client[:4] != SPICE_MAGIC[: len(client)]:
                return Verdict.DENY
            if len(client) < 21:
                return Verdict.MAYBE
            self._channel = client[20]
            self._fields = {
                "version": f"{client[4]:x}.{client[8]:x}",
                "sessionId": client[16:20].hex(),
                "channelType": SPICE_CHANNELS.get(self._channel, "unknown"),
            }
        self.properties = dict(self._fields)
        if self._channel != SPICE_CHANNEL_MAIN:
            return Verdict.AFFIRM
        verdict = self._examine_server(server)
        self.properties = dict(self._fields)
        return verdict

    def _examine_server(self, server: bytes) -> Verdict:
        if self._pos == 0:
            if server[:4] != SPICE_MAGIC[: len(server)]:
                return Verdict.AFFIRM  # not a Spice server: report the client side
            if len(server) < 16:
                return Verdict.PARTIAL
            end = 16 + _u32(server, 12) + 4  # header, SpiceLinkReply, link result
            if end > len(server):
                return self._wait(end)
            if _u32(server, end - 4) != 0:  # link refused (not SPICE_LINK_ERR_OK)
                return Verdict.AFFIRM
            self._pos = end
        while len(server) - self._pos >= 6:  # SpiceMiniDataHeader: type u16, size u32
            kind = int.from_bytes(server[self._pos : self._pos + 2], "little")
            start = self._pos + 6
            end = start + _u32(server, self._pos + 2)
            if end > len(server):
                return self._wait(end)
            self._on_message(kind, server[start:end])
            self._pos = end
            if self._seen >= _SPICE_WANTED:
                return Verdict.AFFIRM
        return self._wait(self._pos + 6)

    def _wait(self, end: int) -> Verdict:
        # Bytes up to ``end`` are needed; past the look-ahead they will never be seen.
        return Verdict.AFFIRM if end > self.lookahead else Verdict.PARTIAL

    def _on_message(self, kind: int, body: bytes) -> None:
        if kind == SPICE_MSG_MAIN_INIT and len(body) >= 4:
            self._fields["sessionId"] = body[:4].hex()
        elif kind == SPICE_MSG_MAIN_NAME and len(body) >= 4:
            name = body[4 : 4 + _u32(body, 0)]
            if name.endswith(b"\0"):
                name = name[:-1]
            if name:  # name_len == 0 panics quic-tun; omitempty drops "" anyway
                self._fields["serverName"] = name.decode("utf-8", "replace")
        elif kind == SPICE_MSG_MAIN_UUID and len(body) == 16:
            self._fields["serverUUID"] = str(uuid.UUID(bytes=body))
        elif kind not in _SPICE_WANTED:
            return  # quic-tun gives up here; we keep looking
        self._seen.add(kind)
        # Keep quic-tun's key order whatever order the messages came in.
        for key in ("serverName", "serverUUID"):
            if key in self._fields:
                self._fields[key] = self._fields.pop(key)


# ------------------------------------------------------------------------------ SSH

_SSH_PREFIX = b"SSH-"
_SSH_MAX_LINE = 255  # RFC 4253 section 4.2, including CR LF
_NOT_SSH = ""  # a side decided as "not SSH"; a decided SSH side holds its software version


def _ssh_software(line: bytes) -> str:
    """The softwareversion of ``SSH-protoversion-softwareversion [SP comments]``, or ""."""
    proto, sep, rest = line[len(_SSH_PREFIX) :].rstrip(b"\r").partition(b"-")
    software = rest.split(b" ", 1)[0]
    if not sep or not proto or proto.strip(b"0123456789.") or not software:
        return _NOT_SSH
    if any(byte < 0x21 or byte > 0x7E for byte in software):
        return _NOT_SSH
    return software.decode("ascii")


class SshDetector(Detector):
    """SSH identification strings; properties ``clientVersion`` and ``serverVersion``.

    The client's banner must be its first line; the server may send other lines first.  Final
    once both banners are seen, or one is seen and the other side turns out not to be SSH.
    """

    name = "ssh"

    def __init__(self, lookahead: int) -> None:
        super().__init__(lookahead)
        self._client: str | None = None  # None: undecided; _NOT_SSH; or the software version
        self._server: str | None = None
        self._line = 0  # start of the server's next unread line

    def examine(self, client: bytes, server: bytes) -> Verdict:
        if self._client is None:
            self._client = self._client_banner(client)
        if self._server is None:
            self._server = self._server_banner(server)
        props: dict[str, str] = {}
        if self._client:
            props["clientVersion"] = self._client
        if self._server:
            props["serverVersion"] = self._server
        if props:
            self.properties = props
        if self._client == _NOT_SSH and not self._server:
            return Verdict.DENY  # an undecided server is not worth waiting for
        if self._client is not None and self._server is not None:
            return Verdict.AFFIRM if props else Verdict.DENY
        return Verdict.PARTIAL if props else Verdict.MAYBE

    def _client_banner(self, client: bytes) -> str | None:
        if client[:4] != _SSH_PREFIX[: len(client)]:
            return _NOT_SSH
        eol = client.find(b"\n", 0, _SSH_MAX_LINE)
        if eol < 0:
            return _NOT_SSH if len(client) >= _SSH_MAX_LINE else None
        return _ssh_software(client[:eol])

    def _server_banner(self, server: bytes) -> str | None:
        while True:
            eol = server.find(b"\n", self._line)
            line = server[self._line : None if eol < 0 else eol]
            if b"\0" in line:
                return _NOT_SSH  # binary data before any banner
            if line.startswith(_SSH_PREFIX) and len(line) >= _SSH_MAX_LINE:
                return _NOT_SSH  # an over-long banner, with or without its end of line
            if eol < 0:
                return _NOT_SSH if len(server) >= self.lookahead else None
            if line.startswith(_SSH_PREFIX):
                return _ssh_software(line)
            self._line = eol + 1


# ------------------------------------------------------------------------------ TLS

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


# ------------------------------------------------------------------------------ registry

DEFAULT_DETECTORS: tuple[type[Detector], ...] = (SpiceDetector, SshDetector, TlsDetector)
DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in DEFAULT_DETECTORS}


def detectors_named(names: Iterable[str]) -> tuple[type[Detector], ...]:
    """The detector classes for configured names, in order; ``ConfigError`` for an unknown one."""
    chosen = []
    for name in names:
        if name not in DETECTORS:
            known = ", ".join(sorted(DETECTORS))
            raise ConfigError(f"unknown protocol classifier {name!r}; known: {known}")
        chosen.append(DETECTORS[name])
    return tuple(chosen)
