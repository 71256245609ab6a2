"""The aioquic 1.7 engine adapter (``quic-engine = "aioquic"``), chosen through ``engine.py``.

Everything here reaches into aioquic beyond its public API; nothing else in quictund may (the
header parser in ``engine.py`` uses only aioquic's public wire functions).

What aioquic lacks and this adapter adds (see docs/design.md, "Engine gaps"):

* **Receive credit follows consumption, within a per-connection budget** (issue 13;
  ``engine_aioquic_credit.py``): credit for bytes a tunnel drained, never for bytes parked or
  for gaps; out-of-window offsets are a FLOW_CONTROL_ERROR instead of a huge sparse
  allocation.
* **A pending ACK rides with the next stream data** (issue 15): aioquic writes an ACK only
  once its delay ran out, so each answer on a request/response tunnel cost a second datagram.
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
* **A compiled packet path** (issue 15; ``_aioquic_builder.pyx``, ``_aioquic_protect.pyx``
  and ``_aioquic_receive.pyx``, installed by ``engine_aioquic_build.py``): aioquic's packet
  builder, packet protection and common receive case in C, the same bytes and rules for a
  quarter less CPU per packet each way; aioquic's own code stays the fallback, tested too.
* **Late packets are not duplicates** (``received.py``): aioquic takes any packet more than
  128 packet numbers late for a duplicate and drops it; a window of 16,384 lets reordering at
  any rate through to be acknowledged.
* **mTLS** (``engine_aioquic_tls.py``): a client certificate is required and verified in the
  handshake (``ClientAuthContext``; the checks are shared with qh3 in ``peer_checks.py``), a
  server may be pinned, and the server's chain is checked by ``peer_checks`` as for qh3
  (``ServerCheckContext``).  No session tickets are ever issued.
"""

from __future__ import annotations

import ssl
from typing import Any

from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    QuicConnectionState,
)
from aioquic.quic.stream import QuicStream

from quictund.policy.identity import ANONYMOUS, Identity
from quictund.quic import aioquic_cc  # registers "bbr" with aioquic
from quictund.quic import engine_aioquic_build as build
from quictund.quic import engine_aioquic_paths as paths
from quictund.quic import engine_aioquic_reset as resets
from quictund.quic.aioquic_recovery import install as install_reordering
from quictund.quic.credit import (
    initial_stream_window,
)
from quictund.quic.engine_aioquic_acks import LoneAck
from quictund.quic.engine_aioquic_cids import install as install_quic_lb
from quictund.quic.engine_aioquic_credit import ConsumptionCredit
from quictund.quic.engine_aioquic_tls import ClientAuthContext, ServerCheckContext
from quictund.quic.received import ReceivedWindow
from quictund.quic.settings import ALPNS, DATAGRAM_QUEUE, MAX_DATAGRAM_FRAME, EngineSettings

__all__ = ["AioquicConnection", "QuicConfiguration", "events", "make_configuration"]

build.install()  # the compiled packet builder, unless QUICTUND_PURE_PYTHON=1 or not built


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
    build.warn_if_pure()
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


class AioquicConnection(ConsumptionCredit):
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
        self._init_credit(settings)
        self._init_sending()
        if settings.quic_lb is not None:  # QUIC-LB routable ids (engine_aioquic_cids.py)
            install_quic_lb(self, settings.quic_lb)
        if settings.reset_key is not None and not self._is_client:  # stateless resets
            resets.derive_tokens(self, settings.reset_key)
        self._client_cafile = client_cafile
        self._client_pins = client_pins
        self._server_pins = server_pins
        # aioquic hard-codes 128 peer-opened streams of each kind; tunnels need thousands.
        # Both ``value`` and ``sent`` so the transport parameters announce it up front.
        self._local_max_streams_bidi.value = settings.max_streams
        self._local_max_streams_bidi.sent = settings.max_streams
        # quic-tun uses no unidirectional streams; refuse them outright.
        self._local_max_streams_uni.value = 0
        self._local_max_streams_uni.sent = 0
        self.packets_lost = 0
        self._one_rtt: tuple[Any, Any, Any, Any] | None = None  # _initialize sets it
        self._lone_ack = LoneAck(self._ack_delay)
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

    def sent_streams(self) -> set[int] | None:
        """Streams whose ``unsent`` may have changed since the last call (sent from, or
        discarded): the caller re-reads only those."""
        moved = self._moved
        if moved:  # most calls find nothing moved: no new set for those
            self._moved = set()
        return moved

    def open_stream(self) -> int:
        """Reserve the next client bidirectional stream (it may wait for peer credit)."""
        stream_id = self.get_next_available_stream_id()
        self._get_or_create_stream_for_send(stream_id)
        return stream_id

    @property
    def is_closed(self) -> bool:
        return self._state not in (QuicConnectionState.FIRSTFLIGHT, QuicConnectionState.CONNECTED)

    @property
    def bytes_in_flight(self) -> int:
        """Bytes sent and neither acknowledged nor declared lost: when a datagram lowers it,
        the peer has just acknowledged something of ours (the session's proof it hears us).
        Read twice per datagram: the congestion controller's own int, not two properties."""
        return self._loss._cc.bytes_in_flight

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
        """aioquic delivers every event at once (credit is what it withholds); only a send
        pass adds one outside a datagram or a timer: a reclaimed tunnel (``reclaim_if_pressed``)."""
        return bool(self._events)

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
        self._ledger.now = now  # the stall clock of the streams it delivers to
        before = paths.active_path(self)
        one_rtt = self._one_rtt
        space = None if one_rtt is None else one_rtt[1]
        seen = None if space is None else self._lone_ack.before(space)
        fast = build.fast_receive
        if fast is None or not fast(self, data, addr, now):
            super().receive_datagram(data, addr, now)
        if seen is not None:
            self._lone_ack.after(space, seen, now)  # a lone packet's ACK may wait for data
        paths.after_receive(self, before)  # a client moved: challenge it now (roaming)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        self.reclaim_if_pressed(now)
        fast = build.fast_transmit
        datagrams = None if fast is None else fast(self, now)
        if datagrams is None:
            datagrams = super().datagrams_to_send(now)
        if self._pacing_at is None:  # stopped for want of data, not by the pacer
            aioquic_cc.note_app_limited(self._loss, self._max_datagram_size)
        return datagrams

    def get_timer(self) -> float | None:
        fast = build.fast_timer
        at = None if fast is None else fast(self)
        return super().get_timer() if at is None else at

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self._activate(stream_id)
        # A pending ACK rides with this data instead of leaving alone when its delay runs
        # out: aioquic writes an ACK only once due, so each request/response round trip
        # cost every side a separate ACK datagram (built, sent, received, processed).
        one_rtt = self._one_rtt
        space = self._spaces[tls.Epoch.ONE_RTT] if one_rtt is None else one_rtt[1]
        if space.ack_at is not None:
            space.ack_at = 0.0

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

    def _handle_ack_frame(self, context: Any, frame_type: int, buf: Any) -> None:
        fast = build.fast_ack
        if fast is None or not fast(self, context, frame_type, buf):
            super()._handle_ack_frame(context, frame_type, buf)

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        # Every frame that concerns a stream (STREAM, RESET_STREAM, STOP_SENDING,
        # MAX_STREAM_DATA, STREAM_DATA_BLOCKED) fetches it here: the one place to put a stream
        # back in the send queue, once per frame and without re-parsing the frame.
        known = stream_id in self._streams
        stream = super()._get_or_create_stream(frame_type, stream_id)
        if not known:
            self._mark_new_streams()
        elif not getattr(stream, "_qt_queued", True):
            stream._qt_queued = True  # type: ignore[attr-defined]
            self._streams_queue.append(stream)
        return stream

    def _get_or_create_stream_for_send(self, stream_id: int) -> QuicStream:
        stream = super()._get_or_create_stream_for_send(stream_id)
        self._mark_new_streams()
        return stream

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        # What the compiled paths look up per packet, once: aioquic's dictionaries are keyed
        # by tls.Epoch, whose hash is Python code (ten calls per request/response per side).
        # Only _initialize creates these entries (a version change replaces INITIAL's alone).
        one = tls.Epoch.ONE_RTT
        self._one_rtt = (
            self._cryptos[one],
            self._spaces[one],
            self._crypto_streams[one],
            self._cryptos[tls.Epoch.ZERO_RTT],
        )
        build.open_fast([*self._cryptos.values(), *self._cryptos_initial.values()])
        for space in self._spaces.values():  # 128 packet numbers were not enough: received.py
            space.received_packets = ReceivedWindow()  # type: ignore[assignment]
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
