"""SSH: the identification strings of RFC 4253 section 4.2, each side's software version."""

from __future__ import annotations

from quictund.classify.base import Detector, Verdict

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
