"""The aioquic 1.7 engine adapter (``quic-engine = "aioquic"``), chosen through ``engine.py``.

Everything here reaches into aioquic beyond its public API; nothing else in quictund may (the
header parser in ``engine.py`` uses only aioquic's public wire functions).

What aioquic lacks and this adapter adds (see docs/design.md, "Engine gaps"):

* **Receive credit follows consumption.**  aioquic doubles MAX_STREAM_DATA / MAX_DATA whenever
  the peer's highest offset passes half the limit, i.e. it grants credit for bytes nobody has
  read.  Here a stream's limit is ``consumed + stream_window`` and the connection's is
  ``received - held + connection_window``, where *held* counts bytes handed to a tunnel but not
  yet drained into its TCP/UNIX socket.  A slow reader therefore costs at most one stream window
  (plus the socket's write buffer), and out-of-window offsets are a FLOW_CONTROL_ERROR instead
  of a huge sparse allocation.
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
* **mTLS**: a client certificate is required and verified in the handshake
  (``_ClientAuthContext``; the checks are shared with qh3 in ``peer_checks.py``), a server may
  be pinned, and the server's chain is checked by ``peer_checks`` as for qh3
  (``_ServerCheckContext``).  No session tickets are ever issued.
"""

from __future__ import annotations

import ssl
from typing import Any

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
)
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from quictund.identity import ANONYMOUS, Identity
from quictund.quic import aioquic_cc  # registers "bbr" with aioquic
from quictund.quic.aioquic_recovery import install as install_reordering
from quictund.quic.credit import ReceiveLedger, raised_limit
from quictund.quic.engine_aioquic_cids import install as install_quic_lb
from quictund.quic.peer_checks import (
    PeerRejected,
    check_client_certificate,
    check_server_certificate,
    check_server_pin,
)
from quictund.quic.settings import ALPN, EngineSettings

# What aioquic sees per packet-building pass (_write_application): at least SEND_SLICE busy
# streams, and more while together they have less than SLICE_BYTES to send -- so many streams
# with a few bytes each still share packets.
SEND_SLICE = 8
SLICE_BYTES = 16 * 1024

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
    """Build the engine configuration for one endpoint (TLS 1.3, ALPN ``quic-tun``)."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=settings.idle_timeout_s,
        max_datagram_size=settings.max_datagram_size,
        congestion_control_algorithm=settings.congestion_control,
        max_data=settings.connection_window,
        max_stream_data=settings.stream_window,
        server_name=server_name,
    )
    if is_client:
        config.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if cafile:
            config.load_verify_locations(cafile=cafile)
    if certfile and keyfile:
        config.load_cert_chain(certfile, keyfile)
    return config


class AioquicConnection(QuicConnection):
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
        self._client_cafile = client_cafile
        self._client_pins = client_pins
        self._server_pins = server_pins
        self._stream_window = settings.stream_window
        self._connection_window = settings.connection_window
        self._ledger = ReceiveLedger()
        # Connection credit: bytes of the peer's total that may be granted again.  Live
        # streams add what the tunnel consumed; released streams add everything they received
        # (their highest offset, tracked in _released_hw until aioquic discards them).  So
        # received - credit_base = (held + not yet delivered) on live streams <= the window,
        # however many streams a peer fills with gaps.
        self._credit_base = 0
        self._released_hw: dict[int, int] = {}
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
        if isinstance(event, (events.StreamDataReceived, events.StreamReset)):
            sid = event.stream_id
            if sid in self._released_hw:
                self._settle(sid)
            elif isinstance(event, events.StreamDataReceived) and event.data:
                self._ledger.delivered(sid, len(event.data))
        return event

    def consume(self, stream_id: int, count: int) -> None:
        """``count`` bytes of ``stream_id`` have been drained: the peer may send that many more."""
        if not self._ledger.tracks(stream_id):
            return
        self._activate(stream_id)
        self._credit_base += self._ledger.consume(stream_id, count)
        self._credit_dirty.add(stream_id)

    def release(self, stream_id: int) -> None:
        """Stop tracking ``stream_id``: what it received no longer counts against the connection."""
        if stream_id in self._released_hw:
            return
        held, consumed = self._ledger.forget(stream_id)
        self._credit_dirty.discard(stream_id)
        stream = self._streams.get(stream_id)
        # A stream aioquic already discarded had delivered everything it received.
        highest = stream.receiver.highest_offset if stream is not None else consumed + held
        self._credit_base += highest - consumed
        self._released_hw[stream_id] = highest
        if len(self._released_hw) > 4096:
            # Streams aioquic discarded can never receive again: forget them.
            self._released_hw = {
                sid: hw for sid, hw in self._released_hw.items() if sid in self._streams
            }

    def _settle(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            highest = stream.receiver.highest_offset
            self._credit_base += highest - self._released_hw[stream_id]
            self._released_hw[stream_id] = highest

    def is_released(self, stream_id: int) -> bool:
        return stream_id in self._released_hw

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
            # an empty one, and never verifies the chain: _ClientAuthContext closes both gaps
            # so a bad client fails *inside* the handshake with a TLS alert.
            self.tls.__class__ = _ClientAuthContext
            self.tls._request_client_certificate = True
            self.tls._client_cafile = self._client_cafile  # type: ignore[attr-defined]
            self.tls._pins = self._client_pins  # type: ignore[attr-defined]
        elif self._is_client and (self._server_pins or self.tls._verify_mode != ssl.CERT_NONE):
            # The server by its pinned key (make_configuration turned CA verification off) or
            # by its chain: peer_checks does either, so a refusal reads the same on both
            # engines and the client's log can say what to do (tls_advice.py).
            self.tls.__class__ = _ServerCheckContext
            self.tls._pins = self._server_pins  # type: ignore[attr-defined]
            self.tls._verify_mode = ssl.CERT_NONE  # aioquic then checks the signature only

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        max_data = self._local_max_data
        raised = raised_limit(
            self._credit_base + self._connection_window, max_data.value, self._connection_window
        )
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
                raised = raised_limit(
                    self._ledger.consumed.get(sid, 0) + self._stream_window,
                    stream.max_stream_data_local,
                    self._stream_window,
                )
                if raised is not None:
                    stream.max_stream_data_local = raised
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

    def _write_application(self, builder: QuicPacketBuilder, network_path: Any, now: float) -> None:
        # aioquic walks ``_streams`` (for limits) and ``_streams_queue`` (for data) once per
        # packet it builds, so a packet costs O(streams).  Show it only streams that have work
        # (see _stays_queued), and those a slice at a time (_slice_end): the next slice only
        # once this one has nothing left to send, so 100 busy tunnels cost what 8 do.
        # Fairness across calls is aioquic's own rule applied to the whole queue: streams that
        # sent new data go to the back, behind those not reached and those that had nothing.
        every = self._streams
        queue = self._streams_queue
        waited: list[QuicStream] = []
        sent: list[QuicStream] = []
        pos = 0
        try:
            while True:
                end = _slice_end(queue, pos)
                batch = queue[pos:end]
                pos = end
                before = {s.stream_id: s.sender.highest_offset for s in batch}
                self._streams = {s.stream_id: s for s in batch}  # type: ignore[misc]
                self._streams_queue = batch
                try:
                    super()._write_application(builder, network_path, now)
                finally:
                    for stream in batch:
                        if stream.stream_id not in self._streams:  # aioquic discarded it
                            every.pop(stream.stream_id, None)  # type: ignore[arg-type]
                    for stream in self._streams_queue:
                        moved = stream.sender.highest_offset != before[stream.stream_id]
                        (sent if moved else waited).append(stream)
                if pos >= len(queue) or self._pacing_at is not None:
                    break
        finally:
            self._streams = every
            self._streams_queue = [
                s for s in queue[pos:] + waited + sent if self._stays_queued(s)
            ]

    # ---- private ------------------------------------------------------------------------

    def _activate(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not getattr(stream, "_qt_queued", True):
            stream._qt_queued = True  # type: ignore[attr-defined]
            self._streams_queue.append(stream)

    def _mark_new_streams(self) -> None:
        # aioquic appends new streams to the queue; they carry no mark yet.
        for stream in reversed(self._streams_queue):
            if hasattr(stream, "_qt_queued"):
                break
            stream._qt_queued = True  # type: ignore[attr-defined]

    def _stays_queued(self, stream: QuicStream) -> bool:
        """False (and unmark) for a stream with nothing to send, resend, ack or announce."""
        sender, receiver = stream.sender, stream.receiver
        idle = (
            sender.buffer_is_empty
            and sender._buffer_start == sender._buffer_stop  # everything sent was acked
            and sender._buffer_fin is None
            and sender._reset_error_code is None
            and not sender.reset_pending
            and not stream.is_blocked
            and receiver._stop_error_code is None
            and not receiver.is_finished
            and stream.max_stream_data_local_sent == stream.max_stream_data_local
            and stream.stream_id not in self._credit_dirty
        )
        if idle:
            stream._qt_queued = False  # type: ignore[attr-defined]
        return not idle


def _slice_end(queue: list[QuicStream], pos: int) -> int:
    """End of the slice starting at ``pos``: SEND_SLICE streams, more while they are small."""
    end = min(pos + SEND_SLICE, len(queue))
    pending = sum(s.sender._buffer_stop - s.sender.highest_offset for s in queue[pos:end])
    while end < len(queue) and pending < SLICE_BYTES:
        sender = queue[end].sender
        pending += sender._buffer_stop - sender.highest_offset
        end += 1
    return end


class _ClientAuthContext(tls.Context):
    """Server TLS context that requires a client certificate: pinned key or CA-verified chain."""

    _client_cafile: str | None
    _pins: frozenset[str]
    quictund_identity: Identity = ANONYMOUS  # what check_client_certificate verified

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        start = input_buf.tell()
        certificate = tls.pull_certificate(input_buf)
        if not certificate.certificates:
            raise _alert(PeerRejected(40, "client certificate required"))
        input_buf.seek(start)
        super()._server_handle_certificate(input_buf)

    def _server_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate_verify(input_buf)  # checks the signature
        try:
            self.quictund_identity = check_client_certificate(
                self._peer_certificate,
                self._peer_certificate_chain,
                cafile=self._client_cafile,
                pins=self._pins,
            )
        except PeerRejected as exc:
            raise _alert(exc) from None


class _ServerCheckContext(tls.Context):
    """Client TLS context: the server by its pinned key, or by its chain (``peer_checks``)."""

    _pins: frozenset[str]

    def _client_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._client_handle_certificate_verify(input_buf)  # signature (chain check is off)
        try:
            if self._pins:
                check_server_pin(self._peer_certificate, self._pins)
            else:
                check_server_certificate(
                    self._peer_certificate,
                    self._peer_certificate_chain,
                    server_name=self._server_name,
                    cafile=self._cafile,
                )
        except PeerRejected as exc:
            raise _alert(exc) from None


def _alert(exc: PeerRejected) -> tls.Alert:
    alert = tls.Alert(exc.reason)
    alert.description = tls.AlertDescription(exc.alert)
    return alert


def _peek_stream_id(buf: Buffer) -> int:
    """The stream id that starts a stream-related frame, without consuming it."""
    pos = buf.tell()
    stream_id = buf.pull_uint_var()
    buf.seek(pos)
    return int(stream_id)
