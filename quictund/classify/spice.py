"""Spice: quic-tun's discriminator (reference/quic-tun-behaviour.md section 4.2), the main
channel's INIT, NAME and UUID messages; what this module does not copy of quic-tun's bugs is
in the package docstring."""

from __future__ import annotations

import uuid

from quictund.classify.base import Detector, Verdict

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
