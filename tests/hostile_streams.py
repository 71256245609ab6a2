"""Hostile stream peers for receive-memory tests, built on a raw aioquic client (test helper).

``gap_attack`` is issue 13's attack: on each of many streams, a bad 512-byte token at offset 0
and then one byte far inside the stream's window (leaving a gap the receiver must not pay for),
never a FIN or RESET_STREAM.  The client never buffers the gap: after the token is acknowledged,
its sender jumps to the far offset (aioquic counts the jump against the connection's credit
itself, as a real peer's frame would).
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import QuicConnection

from quictund.quic.engine import events
from tests.engine_pair import Pair

TOKEN = b"not a token".ljust(512, b"\0")
BAD_TOKEN_ACK = b"\x02"


def refuse_tokens(pair: Pair, stream_id: int, data: bytes) -> None:
    """The server side of a failed handshake, as server_endpoint does it: ack 0x02 + FIN,
    STOP_SENDING, then forget the stream (``release``)."""
    if pair.received[stream_id] >= len(TOKEN) and not pair.server.is_released(stream_id):
        pair.server.send_stream_data(stream_id, BAD_TOKEN_ACK, end_stream=True)
        pair.server.stop_stream(stream_id, 0x102)
        pair.server.release(stream_id)


class HostileClient(QuicConnection):
    """A raw aioquic client that never answers STOP_SENDING (its streams stay open)."""

    def _handle_stop_sending_frame(self, context: Any, frame_type: int, buf: Any) -> None:
        buf.pull_uint_var()  # stream id
        buf.pull_uint_var()  # error code


def send_at(client: QuicConnection, stream_id: int, offset: int, data: bytes) -> None:
    """Queue ``data`` at ``offset`` of ``stream_id`` without buffering what lies before it
    (everything queued earlier must have been acknowledged)."""
    stream: Any = client._get_or_create_stream_for_send(stream_id)
    sender = stream.sender
    assert sender._buffer_start == sender._buffer_stop, "earlier data not acknowledged yet"
    sender._buffer = bytearray()
    sender._buffer_start = sender._buffer_stop = offset
    sender.write(data)
    if stream not in client._streams_queue:
        client._streams_queue.append(stream)


def gap_attack(pair: Pair, streams: int, batch: int = 6) -> list[int]:
    """Run the attack on ``streams`` streams, ``batch`` at a time: the far byte first (at the
    last offset the server's stream window allows), then the bad token (the server refuses it
    and forgets the stream), never FIN or RESET_STREAM.  Returns the streams attacked; it stops
    early once the server grants no more credit."""
    pair.on_server_data = refuse_tokens
    client = pair.client
    offset = client._remote_max_stream_data_bidi_remote - 1
    done: list[int] = []
    while len(done) < streams and not pair.client_got(events.ConnectionTerminated):
        sids = []
        for _ in range(min(batch, streams - len(done))):
            sids.append(sid := client.get_next_available_stream_id())
            send_at(client, sid, offset, b"x")
        if not _settles(pair, lambda sids=sids: _all_acked(client, sids, offset + 1)):
            break  # the server grants no more credit: the attack is contained
        for sid in sids:
            send_at(client, sid, 0, TOKEN)
        if not _settles(pair, lambda sids=sids: _all_acked(client, sids, len(TOKEN))):
            break
        done += sids
    return done


def _settles(pair: Pair, done: Any, rounds: int = 100) -> bool:
    """Step (1 ms each, no clock jumps: the connection must not idle out) until ``done()``."""
    for _ in range(rounds):
        if done():
            return True
        pair.step()
    return bool(done())


def _all_acked(client: QuicConnection, stream_ids: list[int], upto: int) -> bool:
    return all(stream_acked(client, s, upto) for s in stream_ids)


def stream_acked(client: QuicConnection, stream_id: int, upto: int) -> bool:
    stream = client._streams.get(stream_id)
    return stream is None or stream.sender._buffer_start >= upto


def aioquic_buffered(conn: Any) -> int:
    """Bytes an aioquic connection holds in its streams' receive buffers (gaps included)."""
    return sum(len(s.receiver._buffer) for s in conn._streams.values())
