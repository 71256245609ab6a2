"""QUIC datagrams reaching the server: the demultiplexer (quic/server.py), the engine's header
parsing and connection (quic/engine.py on aioquic) and the session (quic/session.py).

Three kinds of input, chosen by the first byte:

0. raw datagrams from one source address (garbage, short headers, any version);
1. arbitrary frames sealed under the real Initial keys (so aioquic parses them, not just AEAD);
2. a mutated ClientHello in a CRYPTO frame, sealed likewise (TLS and transport parameters).

Each input is split into up to four datagrams sent in order to the same server, then every
connection it opened is closed, so inputs stay independent.  Findings: an exception out of
``datagram_received`` or into the event loop's exception handler, and any "failed; closing it"
(an exception inside one connection: handled by closing that connection, but still a bug to
record).  At the end of a run a real aioquic client must still complete a handshake.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile

from _common import FuzzedDataProvider, instrument_imports, main

with instrument_imports():
    import aioquic.quic.connection
    import aioquic.tls  # noqa: F401

    from quictund.quic import engine
    from quictund.quic.server import QuicServerProtocol
    from quictund.quic.session import QuicSession

from quictund.policy import tls
from tests.quic_packets import (
    client_hello,
    client_initial_datagram,
    crypto_frame,
    open_initial,
    seal_initial,
)

_inputs = 0  # each input comes from its own source address: per-source limits stay out of the way
DCID = bytes.fromhex("c0ffee00c0ffee00")
SCID = open_initial(
    client_initial_datagram()
).scid  # the ClientHello's transport parameters name it


class _Transport:
    """Counts what the server sends; stands in for its UDP socket (sendto, or a batch)."""

    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sent += 1

    def send(self, *args: object) -> None:  # QuicSession's send callable, either signature
        self.sent += 1


class _Owner:
    def __init__(self) -> None:
        self.proto: QuicServerProtocol | None = None

    def stream_opened(self, session: QuicSession, stream_id: int) -> None:
        return None

    def session_closed(self, session: QuicSession, reason: str) -> None:
        assert self.proto is not None
        self.proto.session_closed(session)


class _Raise(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise AssertionError(f"{record.name}: {record.getMessage()}")


_state = tempfile.mkdtemp(prefix="qt-fuzz-quic-")
_cert, _key = tls.ensure_self_signed(__import__("pathlib").Path(_state), ["localhost"])
SETTINGS = engine.EngineSettings()
CONFIG = engine.make_configuration(
    is_client=False, settings=SETTINGS, certfile=str(_cert), keyfile=str(_key)
)
LOOP = asyncio.new_event_loop()
TRANSPORT = _Transport()
OWNER = _Owner()
LOOP_ERRORS: list[str] = []
LOOP.set_exception_handler(lambda loop, ctx: LOOP_ERRORS.append(str(ctx.get("message"))))


def _make_connection(
    config: engine.QuicConfiguration, odcid: bytes, retry_scid: bytes | None = None
) -> engine.EngineConnection:
    return engine.EngineConnection(
        configuration=config,
        settings=SETTINGS,
        original_destination_connection_id=odcid,
        retry_source_connection_id=retry_scid,
    )


def _new_session(
    conn: engine.EngineConnection, peer: tuple[str, int], on_cid: object
) -> QuicSession:
    return QuicSession(
        conn,
        TRANSPORT.send,
        OWNER,
        peer=peer,
        keepalive_s=5,
        dead_after_s=30,
        on_cid=on_cid,  # type: ignore[arg-type]
    )


PROTO = QuicServerProtocol(
    configuration=lambda: CONFIG, make_connection=_make_connection, new_session=_new_session
)
OWNER.proto = PROTO
PROTO.transport = TRANSPORT  # type: ignore[assignment]
logging.getLogger("quic").setLevel(logging.CRITICAL)  # aioquic logs every protocol error
for name in ("quictund.quic.server", "quictund.quic.session"):
    logging.getLogger(name).addHandler(_Raise(logging.ERROR))
    logging.getLogger(name).propagate = False


def _datagrams(fdp: FuzzedDataProvider) -> list[bytes]:
    mode = fdp.ConsumeIntInRange(0, 2)
    count = fdp.ConsumeIntInRange(1, 4)
    out = []
    for i in range(count):
        size = fdp.ConsumeIntInRange(0, 1400)
        if mode == 0:
            out.append(fdp.ConsumeBytes(size))
        elif mode == 1:
            out.append(seal_initial(fdp.ConsumeBytes(size), dcid=DCID, packet_number=i))
        else:
            hello = bytearray(client_hello())
            for _ in range(fdp.ConsumeIntInRange(0, 8)):
                at = fdp.ConsumeIntInRange(0, len(hello) - 1)
                hello[at] = fdp.ConsumeIntInRange(0, 255)
            if fdp.ConsumeBool():
                del hello[fdp.ConsumeIntInRange(0, len(hello)) :]
            offset = fdp.ConsumeIntInRange(0, 3) * 100 if i else 0
            frame = crypto_frame(bytes(hello), offset)
            out.append(seal_initial(frame, dcid=DCID, scid=SCID, packet_number=i))
    return out


async def _deliver(datagrams: list[bytes]) -> None:
    global _inputs
    _inputs += 1
    peer = (f"10.{_inputs >> 16 & 255}.{_inputs >> 8 & 255}.{_inputs & 255}", 40000)
    for data in datagrams:
        PROTO.datagram_received(data, peer)
        await asyncio.sleep(0)  # let the sessions' coalesced transmits run
    PROTO.close_all(0, "next input")
    await asyncio.sleep(0)


def test_one(data: bytes) -> None:
    LOOP.run_until_complete(_deliver(_datagrams(FuzzedDataProvider(data))))
    assert not LOOP_ERRORS, LOOP_ERRORS
    assert not PROTO.sessions, "a connection outlived close_all"


if __name__ == "__main__":
    main(test_one)
