"""The server's QUIC-LB settings (``quic-lb-*`` keys), kept apart from config.py's shared knobs.

A server with ``quic-lb-server-id`` issues only connection ids that carry that id in the
QUIC-LB plaintext format (quictund/quic/quic_lb.py), so a balancer that routes by connection
id keeps every packet of a connection -- also after the client's address changed -- on this
server.  Rules checked here, each with a one-line error naming the key:

1. ``quic-lb-config-id`` and ``quic-lb-nonce-length`` mean nothing without a server id.
2. quictund's connection ids are 8 octets (its server demux parses short headers with that
   length), so server id + nonce = 7: the server id has 1 to 3 octets and the nonce the rest
   (at least the draft's 4).  ``quic-lb-nonce-length`` may be given to cross-check the
   balancer's configuration; it must then equal 7 minus the server id's length.
3. Only the aioquic engine lets quictund choose the ids of NEW_CONNECTION_ID frames; qh3's
   Rust core draws them itself, so the setting is refused with ``quic-engine = "qh3"``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quictund.quic.quic_lb import CidCodec, QuicLbError, parse_server_id
from quictund.quic.settings import EngineSettings

CID_LENGTH = 8  # quictund/quic/server.py parses short headers with 8-octet connection ids


class QuicLbKnobs(BaseModel):
    """Mixed into ServerSettings: the ``quic-lb-*`` keys and the codec they make."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    quic_lb_server_id: Annotated[str | None, Field(alias="quic-lb-server-id")] = None
    quic_lb_config_id: Annotated[int, Field(alias="quic-lb-config-id", ge=0, le=6)] = 0
    quic_lb_nonce_length: Annotated[int | None, Field(alias="quic-lb-nonce-length")] = None

    @model_validator(mode="after")
    def _check_quic_lb(self) -> QuicLbKnobs:
        self.quic_lb_codec()
        return self

    def quic_lb_codec(self) -> CidCodec | None:
        """The codec for this server's connection ids, or None (random ids, the default)."""
        if self.quic_lb_server_id is None:
            if self.quic_lb_config_id or self.quic_lb_nonce_length is not None:
                raise ValueError(
                    "quic-lb-config-id and quic-lb-nonce-length need quic-lb-server-id, this "
                    f'server\'s id in hex like "0x0a01" (got quic-lb-config-id = '
                    f"{self.quic_lb_config_id}, quic-lb-nonce-length = {self.quic_lb_nonce_length})"
                )
            return None
        try:
            server_id = parse_server_id(self.quic_lb_server_id)
        except QuicLbError as exc:
            raise ValueError(f"quic-lb-server-id: {exc}") from None
        room = CID_LENGTH - 1 - len(server_id)
        if room < 4:
            raise ValueError(
                f"quic-lb-server-id: quictund's connection ids are {CID_LENGTH} octets, which "
                f"leaves room for a server id of 1 to 3 octets (got {len(server_id)})"
            )
        nonce = self.quic_lb_nonce_length if self.quic_lb_nonce_length is not None else room
        if nonce != room:
            raise ValueError(
                f"quic-lb-nonce-length: with a {len(server_id)}-octet server id it makes "
                f"{1 + len(server_id) + nonce}-octet connection ids, quictund's are {CID_LENGTH}; "
                f"use {room} (or leave it out) and configure the balancer alike (got {nonce})"
            )
        if getattr(self, "quic_engine", "aioquic") == "qh3":
            raise ValueError(
                'quic-lb-server-id needs quic-engine = "aioquic": qh3\'s core chooses the '
                "connection ids it announces in NEW_CONNECTION_ID itself, so they would not "
                'carry the server id (got quic-engine = "qh3")'
            )
        return CidCodec(self.quic_lb_config_id, server_id, nonce)

    def engine_settings(self) -> EngineSettings:
        base: EngineSettings = super().engine_settings()  # type: ignore[misc]
        return dataclasses.replace(base, quic_lb=self.quic_lb_codec())
