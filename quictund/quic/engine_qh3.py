"""The qh3 2.x engine adapter (``quic-engine = "qh3"``), chosen through ``engine.py``.

qh3 2.x keeps aioquic's Python API but runs packets, streams, loss recovery, congestion control
and flow control in a Rust core (``QuicConnectionCore``); TLS stays in Python (``qh3.tls``).
Everything here reaches into qh3 beyond its public API; nothing else in quictund may.  How each
gap (docs/design.md, "Engine gaps") is closed, and where qh3 already closes it (evidence in
tests/test_engines.py, run against both engines):

* **Receive credit follows consumption** (``engine_qh3_gate.py``): events leave the core only
  while the tunnels keep up, so a peer may send at most ``consumed + stream_window``; the
  price is head-of-line blocking of the whole connection while one tunnel is over its window
  (qh3 2.1 has no per-stream credit hook), until that tunnel drains or is reclaimed.
* **Out-of-window data** is a FLOW_CONTROL_ERROR and out-of-order data is capped per stream at
  one core window (``max_stream_reassembly``): qh3 closes both itself.
* **Send backlog** is qh3's own ``get_send_buffer_size`` (bytes not yet sent once).
* **Peer streams**: qh3 hard-codes 100 bidirectional (+103 unidirectional); ``_create_core``
  and the transport parameters say ``max_streams`` and 0 unidirectional instead.
* **Idle streams** cost nothing per packet: the core keeps a send queue of streams with work
  (qh3 closes this itself).
* **Pacer**: the core's token bucket holds one congestion window and refills by elapsed time,
  so a late (1 ms) timer is never a collapse (qh3 closes this itself).
* **Gaps and refused streams** (issue 13): the core never credits a gap (credit follows bytes
  that left it) and frees a stream after our STOP_SENDING/RESET_STREAM, so a connection's
  receive memory stays within its windows (tests/test_receive_memory.py).  Only partly
  closed: a stalled tunnel holds up the others (the gate above) until it is reclaimed; see
  docs/design.md, "The qh3 engine", for why a parked buffer cannot fix it.
* **mTLS** (``engine_qh3_tls.py``): qh3's TLS server cannot ask for a client certificate at all.
  ``ClientAuthContext`` sends a CertificateRequest, reads the client's Certificate and
  CertificateVerify, and applies the checks shared with aioquic (``peer_checks.py``) before
  accepting its Finished.  No session tickets are issued (no ticket handler is ever set).
  On the client, ``ServerCheckContext`` pins the server's key or verifies its chain with the
  same OpenSSL-based check as aioquic (qh3's webpki verifier refuses a self-signed server
  certificate given as its own CA, which is how quictund distributes its generated one).
* Events are handed out as aioquic's event classes (``engine_qh3_events.py``), so the session
  handles both engines alike.
"""

from __future__ import annotations

import collections
import ssl
from typing import Any

from cryptography import x509
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError

from quictund.policy.identity import ANONYMOUS, Identity
from quictund.quic.engine_qh3_core import announce_transport_parameters, new_core
from quictund.quic.engine_qh3_events import FROM_QH3
from quictund.quic.engine_qh3_gate import LIVE_STATES, GatedEvents
from quictund.quic.engine_qh3_tls import ClientAuthContext, ServerCheckContext
from quictund.quic.settings import ALPNS, DATAGRAM_QUEUE, MAX_DATAGRAM_FRAME, EngineSettings
from quictund.quic.stateless_reset import token

__all__ = ["Qh3Connection", "QuicConfiguration", "make_configuration"]


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
    """qh3's configuration; the core's windows are half of ours (the rest is the gate's)."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=list(ALPNS),
        max_datagram_frame_size=MAX_DATAGRAM_FRAME,
        idle_timeout=settings.idle_timeout_s,
        max_datagram_size=settings.max_datagram_size,
        max_data=settings.connection_window // 2,
        max_stream_data=settings.stream_window // 2,
        server_name=server_name,
        probe_datagram_size=False,  # max-datagram-size is the setting, as with aioquic
    )
    if is_client:
        config.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        if cafile:
            config.load_verify_locations(cafile=cafile)
    if certfile and keyfile:
        config.load_cert_chain(certfile, keyfile)
    return config


class Qh3Connection(GatedEvents):
    """qh3's ``QuicConnection`` with gated event delivery, our stream limits and mTLS."""

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
        super().__init__(configuration=configuration, **kwargs)
        # DATAGRAM frames wait here, not in the core: qh3 2.1's core sends them whatever its
        # congestion window says (tests/test_udpflow_engines.py), so we hand it only what the
        # window has room for, and drop the oldest beyond DATAGRAM_QUEUE.
        self._datagrams: collections.deque[bytes] = collections.deque()
        self._client_cafile = client_cafile
        self._client_pins = client_pins
        self._server_pins = server_pins
        self._max_streams = settings.max_streams
        self._reset_key = settings.reset_key
        self._init_gate(settings, configuration.max_data, configuration.max_stream_data)
        self._peer_cert: x509.Certificate | None = None

    # ---- quictund's engine API ----------------------------------------------------------

    @property
    def is_client(self) -> bool:
        return bool(self._is_client)

    @property
    def is_closed(self) -> bool:
        core = self._core
        if self._close_event is not None:
            return True
        return core is not None and core.state not in LIVE_STATES

    @property
    def bytes_in_flight(self) -> int:
        return 0 if self._core is None else int(self._core.bytes_in_flight)

    def open_stream(self) -> int:
        """Open the next client stream, or raise ``ConnectionRefusedError`` at the peer's limit.

        aioquic queues such a stream until MAX_STREAMS; qh3 refuses it (and would fall out of
        step with its core if asked anyway), so the tunnel is refused instead.
        """
        core = self._core
        if core is not None and self._handshake_complete:
            limit, _, opened, _ = core.stream_limits
            if opened >= limit:
                raise ConnectionRefusedError(f"the peer allows no more than {limit} streams")
        sid = self._open_stream()
        self._live.add(sid)
        return sid

    def unsent(self, stream_id: int) -> int:
        """Bytes queued on ``stream_id`` that have not been sent once yet (qh3's own count)."""
        return int(self.get_send_buffer_size(stream_id))

    def sent_streams(self) -> set[int] | None:
        """None: the core does not say which streams it sent from (re-read them all)."""
        return None

    def send_datagram(self, data: bytes) -> bool:
        """Queue one DATAGRAM frame; beyond ``DATAGRAM_QUEUE`` drop the oldest (False)."""
        self._datagrams.append(data)
        if len(self._datagrams) > DATAGRAM_QUEUE:
            self._datagrams.popleft()
            return False
        return True

    def _feed_datagrams(self, core: Any) -> None:
        """Give the core the queued DATAGRAM frames its congestion window has room for."""
        room = int(core.congestion_window) - int(core.bytes_in_flight)
        queue = self._datagrams
        while queue and room >= len(queue[0]):
            data = queue.popleft()
            room -= len(data) + 40  # the packet around it
            self.send_datagram_frame(data)

    def datagram_room(self) -> int:
        return datagram_room(self, self._configuration.max_datagram_size)

    def stats(self) -> dict[str, float | int]:
        core = self._core
        if core is None:
            return {"rtt_s": 0.0, "cwnd_bytes": 0, "bytes_in_flight": 0, "streams": 0,
                    "packets_lost": 0}  # fmt: skip
        return {
            "rtt_s": float(core.smoothed_rtt or 0.0),
            "cwnd_bytes": int(core.congestion_window),
            "bytes_in_flight": int(core.bytes_in_flight),
            "streams": len(self._live),
            "packets_lost": int(core.loss_total),
        }

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        if self._peer_cert is None:
            cert = self.get_peercert()
            if cert is not None:
                self._peer_cert = x509.load_der_x509_certificate(cert.public_bytes())
        return self._peer_cert

    @property
    def peer_identity(self) -> Identity:
        return getattr(self.tls, "quictund_identity", ANONYMOUS)

    # ---- qh3 overrides ------------------------------------------------------------------

    def next_event(self) -> Any:
        if not self._events:
            return None
        event = self._events.popleft()
        convert = FROM_QH3.get(type(event))
        return event if convert is None else convert(event)

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self._ledger.now = now  # the stall clock of the streams it delivers to (reclaim.py)
        # Fast path for 1-RTT packets once connected: one core call, no Python header parsing
        # or logging bookkeeping (a short-header packet always ends its datagram).
        if self._handshake_complete and data and not data[0] & 0x80 and self._quic_logger is None:
            self._call_core(self._core.receive_datagram, data, addr, now, len(data))  # type: ignore[union-attr]
            self._drain_core()
            return
        try:
            super().receive_datagram(data, addr, now)
        except QuicConnectionError:
            raise
        except Exception as exc:
            if self._handshake_complete:
                raise
            # A malformed ClientHello (say, an invalid P-256 key share) makes qh3's TLS raise
            # a crypto error instead of answering with an alert, as aioquic does.  Answer with
            # the handshake_failure alert (CRYPTO_ERROR 0x100 + 40): hostile input is not a
            # quictund fault to be logged with a traceback.
            self.close(error_code=0x128, reason_phrase=f"handshake failure: {exc}")

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        core = self._core
        if core is None:
            return []
        self._reclaim_if_gated(now)  # engine_qh3_gate.py
        if self._datagrams and self._handshake_complete:
            self._feed_datagrams(core)
        out = []
        try:
            while (transmit := core.poll_transmit(now)) is not None:
                out.append((transmit[0], transmit[1]))
        except RuntimeError as exc:
            # qh3 2.1 counts only the first QUIC packet of a client's Initial datagram toward
            # the anti-amplification budget (aioquic pads with bytes after its packet) and then
            # fails instead of waiting once the budget is spent.  The core rolls that build
            # back; wait for the client's next datagram, which raises the budget.
            if self._handshake_complete or "capacity exhausted" not in str(exc):
                raise QuicConnectionError(0x1, None, str(exc)) from exc
        return out

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        try:
            super().reset_stream(stream_id, error_code)
        except QuicConnectionError as exc:
            raise ValueError(str(exc)) from None  # as aioquic: that direction is already over

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        try:
            super().stop_stream(stream_id, error_code)
        except QuicConnectionError as exc:
            raise ValueError(str(exc)) from None

    def _create_core(self, remote_addr: Any, initial_dcid: bytes, now: float) -> None:
        # qh3's own _create_core with our stream limits (it hard-codes 100 / 103).  We never
        # resume sessions, so there are no remembered transport parameters to carry over.
        self._core = new_core(self, self._max_streams, remote_addr, initial_dcid, now)
        self._applied_transport_parameters = None
        self._pre_handshake_state_replayed = False

    def _create_tls(self, remote_source_cid: bytes | None) -> Any:
        bridge = super()._create_tls(remote_source_cid)
        context = bridge.tls
        reset_token = None
        if self._reset_key is not None and not self._is_client:
            # Only the first id's token: qh3's core draws the others itself (like QUIC-LB ids,
            # docs/design.md), so a restarted qh3 server resets only clients that never moved.
            reset_token = bridge.stateless_reset_token = token(self._reset_key, self.host_cid)
        announce_transport_parameters(context, self._max_streams, reset_token)
        if not self._is_client and (self._client_cafile is not None or self._client_pins):
            context.__class__ = ClientAuthContext
            assert isinstance(context, ClientAuthContext)
            context._qt_init(self._client_cafile, self._client_pins)
        elif self._is_client and (self._server_pins or context._verify_mode != ssl.CERT_NONE):
            # qh3 then checks the signature only; ServerCheckContext pins or verifies.
            context.__class__ = ServerCheckContext
            assert isinstance(context, ServerCheckContext)
            context._pins = self._server_pins
            context._verify_mode = ssl.CERT_NONE
        return bridge


def datagram_room(conn: QuicConnection, max_datagram_size: int) -> int:
    """As ``AioquicConnection.datagram_room``, with the longest connection id (20): qh3's
    core does not tell which one its packets carry."""
    peer = conn._remote_max_datagram_frame_size
    if not peer:
        return 0
    return max(0, min(max_datagram_size - (1 + 20 + 4 + 16 + 3), peer - 3))
