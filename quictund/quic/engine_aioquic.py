"""The aioquic 1.7 engine adapter (``quic-engine = "aioquic"``), chosen through ``engine.py``.

Everything here reaches into aioquic beyond its public API; nothing else in quictund may (the
header parser in ``engine.py`` uses only aioquic's public wire functions).

What aioquic lacks and this adapter adds (see docs/design.md, "Engine gaps"):

* **Receive credit follows consumption, within a per-connection budget** (issue 13).  aioquic
  doubles MAX_STREAM_DATA / MAX_DATA whenever the peer's highest offset passes half the limit,
  i.e. it grants credit for bytes nobody has read, and keeps a zero-filled buffer up to a
  stream's highest offset until the peer sends FIN or RESET_STREAM.  Here a stream's limit is
  ``consumed + its window`` (``credit.StreamWindows``: 32 KiB first, grown while its tunnel
  consumes), MAX_DATA is ``credit.connection_limit`` (a window in flight, the budget in
  memory, gaps counted as what they span), and ``release`` drops a stream's buffers at once
  and credits only bytes that arrived until aioquic discarded it.  *Held* counts bytes handed
  to a tunnel but not yet drained into its TCP/UNIX socket.  Out-of-window offsets are a
  FLOW_CONTROL_ERROR instead of a huge sparse allocation.
* **Send backlog is observable** (``unsent``), so a tunnel can pause reading its socket.
* **The peer may open ``max_streams`` bidirectional streams at once** (aioquic hard-codes 128).
* **Idle streams cost nothing per packet.**  aioquic walks every stream of the connection for
  every packet it builds; with 10,000 open but idle tunnels that is milliseconds per packet and
  setting up 10,000 tunnels took minutes.  Only streams with something to do stay in the send
  queue (``_streams_queue``); anything that can give a stream work re-queues it.
* **A pacer that survives a 1 ms clock.**  aioquic's pacer is useless on uvloop's 1 ms timer
  (it collapses a bulk transfer to ~18 Mbit/s).  It is replaced by a token bucket of ~4 ms of
  data (quictund/quic/pacing.py) that paces only controllers publishing a ``pacing_rate``:
  ``bbr`` (quictund/quic/bbr.py, for lossy links); cubic and reno stay unpaced, their
  congestion window bounding bursts.  The glue is in quictund/quic/aioquic_cc.py.
* **mTLS** (``engine_aioquic_tls.py``): a client certificate is required and verified in the
  handshake (``ClientAuthContext``; the checks are shared with qh3 in ``peer_checks.py``), a
  server may be pinned, and the server's chain is checked by ``peer_checks`` as for qh3
  (``ServerCheckContext``).  No session tickets are ever issued.
"""

from __future__ import annotations

import ssl
from typing import Any

from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnectionState,
)
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from quictund.identity import ANONYMOUS, Identity
from quictund.quic import aioquic_cc  # registers "bbr" with aioquic
from quictund.quic import engine_aioquic_paths as paths
from quictund.quic import engine_aioquic_reset as resets
from quictund.quic.aioquic_recovery import install as install_reordering
from quictund.quic.credit import (
    ReceiveLedger,
    StreamWindows,
    connection_limit,
    initial_stream_window,
    raised_limit,
)
from quictund.quic.engine_aioquic_cids import install as install_quic_lb
from quictund.quic.engine_aioquic_sched import SlicedSending
from quictund.quic.engine_aioquic_tls import ClientAuthContext, ServerCheckContext
from quictund.quic.settings import ALPNS, DATAGRAM_QUEUE, MAX_DATAGRAM_FRAME, EngineSettings

__all__ = ["AioquicConnection", "QuicConfiguration", "events", "make_configuration"]


def make_configuration(
    *,
    is_client: bool,
    settings: EngineSettings,
    server_name: str | None = None,
    verify: bool = True,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> QuicConfiguration:
    """Build the engine configuration for one endpoint (TLS 1.3, ALPNs quictund/1, quic-tun)."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=list(ALPNS),
        max_datagram_frame_size=MAX_DATAGRAM_FRAME,
        idle_timeout=settings.idle_timeout_s,
        max_datagram_size=settings.max_datagram_size,
        congestion_control_algorithm=settings.congestion_control,
        max_data=settings.connection_window,
        # Each stream starts small and grows while its tunnel consumes (StreamWindows).
        max_stream_data=initial_stream_window(
            settings.stream_window, settings.initial_stream_window
        ),
        server_name=server_name,
    )
    if is_client:
        config.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if cafile:
            config.load_verify_locations(cafile=cafile)
    if certfile and keyfile:
        config.load_cert_chain(certfile, keyfile)
    return config


class AioquicConnection(SlicedSending):
    """aioquic's ``QuicConnection`` with consumption-based credit and no pacer.

    The tunnel layer must call ``consume(stream_id, n)`` once ``n`` delivered bytes have left
    quictund (written to the socket and drained below its high-water mark), and ``release``
    when it stops caring about a stream.  Call ``session.transmit_soon()`` after either.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        settings: EngineSettings,
        client_cafile: str | None = None,
        client_pins: frozenset[str] = frozenset(),
        server_pins: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        if (client_cafile or client_pins) and (
            kwargs.get("session_ticket_handler") or kwargs.get("session_ticket_fetcher")
        ):
            # A resumed session skips the certificate check; aioquic issues and accepts
            # tickets only through these callbacks, so without them there is no resumption.
            raise ValueError("session tickets would bypass client certificate verification")
        super().__init__(configuration=configuration, **kwargs)
        if settings.quic_lb is not None:  # QUIC-LB routable ids (engine_aioquic_cids.py)
            install_quic_lb(self, settings.quic_lb)
        if settings.reset_key is not None and not self._is_client:  # stateless resets
            resets.derive_tokens(self, settings.reset_key)
        self._client_cafile = client_cafile
        self._client_pins = client_pins
        self._server_pins = server_pins
        self._connection_window = settings.connection_window
        self._budget = max(settings.receive_budget, settings.connection_window)
        self._ledger = ReceiveLedger()
        self._windows = StreamWindows(
            initial=initial_stream_window(settings.stream_window, settings.initial_stream_window),
            maximum=settings.stream_window,
            pool=self._budget - self._budget // 4,
            held=self._ledger.held,
        )
        # Connection credit: bytes that left quictund's memory ("retired").  Live streams add
        # what their tunnel consumed; a released stream adds what it had really received (its
        # buffers are dropped at once), and the rest of its extent -- gaps, late frames -- only
        # once aioquic discarded the stream (_unsettled holds what was credited so far).  So
        # used - credit_base is what this connection holds, gaps included, and MAX_DATA keeps
        # it within the budget (credit.connection_limit).
        self._credit_base = 0
        self._released: dict[int, None] = {}  # insertion-ordered set, bounded
        self._unsettled: dict[int, int] = {}
        self._credit_dirty: set[int] = set()
        # aioquic hard-codes 128 peer-opened streams of each kind; tunnels need thousands.
        # Both ``value`` and ``sent`` so the transport parameters announce it up front.
        self._local_max_streams_bidi.value = settings.max_streams
        self._local_max_streams_bidi.sent = settings.max_streams
        # quic-tun uses no unidirectional streams; refuse them outright.
        self._local_max_streams_uni.value = 0
        self._local_max_streams_uni.sent = 0
        self.packets_lost = 0
        install_reordering(self._loss)  # reordering-tolerant loss detection
        count_losses = self._loss._on_packets_lost

        def on_packets_lost(**kwargs: Any) -> None:
            packets = kwargs["packets"] = list(kwargs.get("packets", ()))  # may be an iterator
            if kwargs.get("congestion_event", True):
                self.packets_lost += len(packets)
            count_losses(**kwargs)

        self._loss._on_packets_lost = on_packets_lost  # type: ignore[method-assign]
        aioquic_cc.install(self._loss, self._max_datagram_size)

    # ---- public API used by the session ------------------------------------------------

    def next_event(self) -> events.QuicEvent | None:
        event = super().next_event()
        if (
            isinstance(event, events.StreamDataReceived)
            and event.data
            and event.stream_id not in self._released
        ):
            self._ledger.delivered(event.stream_id, len(event.data))
        return event

    def consume(self, stream_id: int, count: int) -> None:
        """``count`` bytes of ``stream_id`` have been drained: the peer may send that many more."""
        if not self._ledger.tracks(stream_id):
            return
        self._activate(stream_id)
        self._credit_base += self._ledger.consume(stream_id, count)
        self._credit_dirty.add(stream_id)

    def release(self, stream_id: int) -> None:
        """Stop tracking ``stream_id``: drop its receive buffers, ignore what still comes.

        Its receiving half is marked finished, so aioquic buffers nothing more for it and
        discards the stream once our sending half is done too -- whether or not the peer
        ever answers our STOP_SENDING with a RESET_STREAM.
        """
        if stream_id in self._released:
            return
        self._released[stream_id] = None
        if len(self._released) > 65536:
            del self._released[next(iter(self._released))]
        held, consumed = self._ledger.forget(stream_id)
        self._credit_dirty.discard(stream_id)
        self._windows.forget(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:  # aioquic discarded it: everything it received was delivered
            self._credit_base += held
            return
        receiver = stream.receiver
        received = receiver._buffer_start + sum(len(r) for r in receiver._ranges)
        self._credit_base += received - consumed
        self._unsettled[stream_id] = received
        if not receiver.is_finished:
            receiver._buffer = bytearray()
            receiver._ranges = RangeSet()
            receiver._buffer_start = receiver.highest_offset
            receiver.is_finished = True
        self._activate(stream_id)

    def _settle(self, stream: QuicStream) -> None:
        """aioquic discarded ``stream``: credit the rest of a released stream's extent."""
        credited = self._unsettled.pop(stream.stream_id, None)  # type: ignore[arg-type]
        if credited is not None:
            self._credit_base += stream.receiver.highest_offset - credited

    def is_released(self, stream_id: int) -> bool:
        return stream_id in self._released

    @property
    def receive_buffered(self) -> int:
        """Bytes held in the streams' receive buffers (gaps included), for tests and stats."""
        return sum(len(s.receiver._buffer) for s in self._streams.values())

    @property
    def is_client(self) -> bool:
        return bool(self._is_client)

    def unsent(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` that have not been sent once yet."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender.highest_offset)

    def open_stream(self) -> int:
        """Reserve the next client bidirectional stream (it may wait for peer credit)."""
        stream_id = self.get_next_available_stream_id()
        self._get_or_create_stream_for_send(stream_id)
        return stream_id

    @property
    def held_bytes(self) -> int:
        return self._ledger.held_total

    @property
    def is_closed(self) -> bool:
        return self._state not in (QuicConnectionState.FIRSTFLIGHT, QuicConnectionState.CONNECTED)

    def stats(self) -> dict[str, float | int]:
        loss = self._loss
        return {
            "rtt_s": float(loss._rtt_smoothed),
            "cwnd_bytes": int(loss.congestion_window),
            "bytes_in_flight": int(loss.bytes_in_flight),
            "streams": len(self._streams),
            "packets_lost": self.packets_lost,
        }

    def send_datagram(self, data: bytes) -> bool:
        """Queue one DATAGRAM frame.  aioquic's queue is unbounded and waits for congestion
        window, so beyond ``DATAGRAM_QUEUE`` drop the oldest (returns False): a late UDP
        datagram is worth less than a fresh one, and memory stays bounded."""
        pending = self._datagrams_pending
        pending.append(data)
        if len(pending) > DATAGRAM_QUEUE:
            pending.popleft()
            return False
        return True

    def datagram_room(self) -> int:
        """The largest DATAGRAM frame payload one packet carries; 0 if the peer takes none.

        A bigger one would sit at the head of aioquic's queue forever, so the caller drops
        it.  Overhead: short header (1 + peer cid + 4-byte packet number), AEAD tag (16),
        frame type and a 2-byte length."""
        peer = self._remote_max_datagram_frame_size
        if not peer:
            return 0
        room = self._max_datagram_size - (1 + len(self._peer_cid.cid) + 4 + 16 + 3)
        return max(0, min(room, peer - 3))

    @property
    def events_ready(self) -> bool:
        """Never: aioquic delivers every event at once (credit is what it withholds)."""
        return False

    @property
    def peer_certificate(self) -> Any:
        tls_ctx = getattr(self, "tls", None)
        return None if tls_ctx is None else tls_ctx._peer_certificate

    @property
    def peer_identity(self) -> Identity:
        return getattr(getattr(self, "tls", None), "quictund_identity", ANONYMOUS)

    # ---- aioquic overrides --------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if resets.received_reset(self, data):  # the server lost this connection
            return
        before = paths.active_path(self)
        super().receive_datagram(data, addr, now)
        paths.after_receive(self, before)  # a client moved: challenge it now (roaming)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        datagrams = super().datagrams_to_send(now)
        if self._pacing_at is None:  # stopped for want of data, not by the pacer
            aioquic_cc.note_app_limited(self._loss, self._max_datagram_size)
        return datagrams

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self._activate(stream_id)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        super().reset_stream(stream_id, error_code)
        self._activate(stream_id)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        super().stop_stream(stream_id, error_code)
        self._activate(stream_id)

    def _on_max_stream_data_delivery(self, delivery: Any, stream: QuicStream) -> None:
        super()._on_max_stream_data_delivery(delivery, stream)
        if stream.stream_id is not None:
            self._activate(stream.stream_id)

    def _handle_stream_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        sid = _peek_stream_id(buf)
        super()._handle_stream_frame(context, frame_type, buf)
        self._activate(sid)

    def _handle_reset_stream_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        sid = _peek_stream_id(buf)
        super()._handle_reset_stream_frame(context, frame_type, buf)
        self._activate(sid)

    def _handle_stop_sending_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        sid = _peek_stream_id(buf)
        super()._handle_stop_sending_frame(context, frame_type, buf)
        self._activate(sid)

    def _handle_max_stream_data_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        sid = _peek_stream_id(buf)
        super()._handle_max_stream_data_frame(context, frame_type, buf)
        self._activate(sid)

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        stream = super()._get_or_create_stream(frame_type, stream_id)
        self._mark_new_streams()
        return stream

    def _get_or_create_stream_for_send(self, stream_id: int) -> QuicStream:
        stream = super()._get_or_create_stream_for_send(stream_id)
        self._mark_new_streams()
        return stream

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client and (self._client_cafile is not None or self._client_pins):
            # aioquic requests a client certificate only through this private flag, accepts
            # an empty one, and never verifies the chain: ClientAuthContext closes both gaps
            # so a bad client fails *inside* the handshake with a TLS alert.
            self.tls.__class__ = ClientAuthContext
            self.tls._request_client_certificate = True
            self.tls._client_cafile = self._client_cafile  # type: ignore[attr-defined]
            self.tls._pins = self._client_pins  # type: ignore[attr-defined]
        elif self._is_client and (self._server_pins or self.tls._verify_mode != ssl.CERT_NONE):
            # The server by its pinned key (make_configuration turned CA verification off) or
            # by its chain: peer_checks does either, so a refusal reads the same on both
            # engines and the client's log can say what to do (tls_advice.py).
            self.tls.__class__ = ServerCheckContext
            self.tls._pins = self._server_pins  # type: ignore[attr-defined]
            self.tls._verify_mode = ssl.CERT_NONE  # aioquic then checks the signature only

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        max_data = self._local_max_data
        target = connection_limit(
            used=max_data.used,
            retired=self._credit_base,
            window=self._connection_window,
            budget=self._budget,
        )
        # Batch by a quarter of the window the peer would really get: when parked bytes leave
        # only 3 MiB in flight, waiting for a 4 MiB gain would never raise the limit again.
        window = min(self._connection_window, target - max_data.used)
        raised = raised_limit(target, max_data.value, max(window, 4096))
        if raised is not None:
            max_data.value = raised
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # batch MAX_STREAMS, as aioquic does
            if limit.value != limit.sent:
                buf = builder.start_frame(
                    limit.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=self._on_connection_limit_delivery,
                    handler_args=(limit,),
                )
                buf.push_uint_var(limit.value)
                limit.sent = limit.value

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        sid = stream.stream_id
        if sid in self._credit_dirty:
            self._credit_dirty.discard(sid)
            if stream.max_stream_data_local and not stream.receiver.is_finished:
                stream.max_stream_data_local = self._windows.limit(
                    sid,
                    consumed=self._ledger.consumed.get(sid, 0),
                    advertised=stream.max_stream_data_local,
                )
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            assert sid is not None
            buf.push_uint_var(sid)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    # ---- private ------------------------------------------------------------------------


def _peek_stream_id(buf: Buffer) -> int:
    """The stream id that starts a stream-related frame, without consuming it."""
    pos = buf.tell()
    stream_id = buf.pull_uint_var()
    buf.seek(pos)
    return int(stream_id)
