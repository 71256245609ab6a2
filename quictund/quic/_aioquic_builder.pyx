# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A compiled packet builder for the aioquic engine (issue 15): the per-packet half of sending.

aioquic builds every packet through ``QuicPacketBuilder``, pure Python: per packet it makes a
``QuicSentPacket``, works out the header, copies the payload out of its buffer three times
around the AEAD and protects the header byte by byte in Python -- about a third of the CPU a
sender spends per packet (docs/performance.md, "Where the default engine's time goes").
:class:`PacketBuilder` is a drop-in with the same interface (what aioquic's connection calls:
``start_packet``, ``start_frame``, ``flush``, the ``packet_*``/``remaining_*`` properties and
``max_flight_bytes``/``max_total_bytes``/``quic_logger_frames``), written for C: its state is
C fields, frame types are checked as integers, and an AES-GCM packet is protected by
``_aioquic_protect.AesKeys.seal`` (one AEAD call and one header-mask call).  Frames are still
written by aioquic's own code into aioquic's ``Buffer``, which :meth:`start_frame` returns.

Packets whose keys are ChaCha20 or that carry a pending key update go through aioquic's
``CryptoPair.encrypt_packet`` unchanged (its ordering of the key update matters there).  The
rules this follows (RFC 9000 sections 12.2, 14.1, 17; RFC 9001 section 5.4; RFC 9002 section
2) are those of aioquic 1.7's builder, which tests/test_engine_builder.py compares byte for
byte.  ``engine_aioquic_build`` installs it; ``QUICTUND_PURE_PYTHON=1`` keeps aioquic's own.
"""

from aioquic.quic.packet import QuicPacketType, encode_long_header_first_byte
from aioquic.quic.packet_builder import QuicPacketBuilderStop, QuicSentPacket
from aioquic.tls import Epoch

from aioquic.buffer import Buffer, encode_uint_var, size_uint_var

from quictund.quic._aioquic_protect import send_keys

cdef object _INITIAL = QuicPacketType.INITIAL
cdef object _HANDSHAKE = QuicPacketType.HANDSHAKE
cdef object _ZERO_RTT = QuicPacketType.ZERO_RTT
cdef object _ONE_RTT = QuicPacketType.ONE_RTT
cdef object _EPOCH_INITIAL = Epoch.INITIAL
cdef object _EPOCH_HANDSHAKE = Epoch.HANDSHAKE
cdef object _EPOCH_ONE_RTT = Epoch.ONE_RTT

# RFC 9000 frame types this builder looks at (section 19 / table 3).
cdef enum:
    FRAME_PADDING = 0x00
    FRAME_ACK = 0x02
    FRAME_ACK_ECN = 0x03
    FRAME_CRYPTO = 0x06
    FRAME_PATH_CHALLENGE = 0x1A
    FRAME_PATH_RESPONSE = 0x1B
    FRAME_TRANSPORT_CLOSE = 0x1C
    FRAME_APPLICATION_CLOSE = 0x1D

cdef enum:
    PN_SEND_SIZE = 2      # every packet number is sent in 2 bytes (as aioquic does)
    PN_MAX_SIZE = 4       # header protection samples 4 bytes past the packet number's start
    TAG_SIZE = 16
    FIXED_BIT = 0x40
    NEW_DATAGRAM_BELOW = 128  # room left in a datagram under which a packet starts a new one

cdef bytes _ZEROS = bytes(2048)


cdef inline bint _in_flight(long frame_type):
    return not (
        frame_type == FRAME_ACK
        or frame_type == FRAME_ACK_ECN
        or frame_type == FRAME_TRANSPORT_CLOSE
        or frame_type == FRAME_APPLICATION_CLOSE
    )


cdef inline bint _ack_eliciting(long frame_type):
    return frame_type != FRAME_PADDING and _in_flight(frame_type)  # PADDING: in flight only


cdef class PacketBuilder:
    """Drop-in for aioquic 1.7's ``QuicPacketBuilder`` (see the module docstring)."""

    cdef public object max_flight_bytes
    cdef public object max_total_bytes
    cdef public object quic_logger_frames

    cdef bytes _host_cid
    cdef bytes _peer_cid
    cdef bytes _peer_token
    cdef bint _is_client
    cdef int _spin_bit
    cdef object _quic_logger
    cdef object _version

    cdef list _datagrams
    cdef list _packets
    cdef Py_ssize_t _datagram_flight_bytes
    cdef Py_ssize_t _flight_bytes
    cdef Py_ssize_t _total_bytes
    cdef bint _datagram_init
    cdef bint _datagram_needs_padding

    cdef Py_ssize_t _header_size
    cdef object _packet
    cdef object _packet_crypto
    cdef long long _packet_number
    cdef Py_ssize_t _packet_start
    cdef object _packet_type
    cdef bint _packet_ack_eliciting   # mirrors of the current packet's flags, kept in C
    cdef bint _packet_in_flight

    cdef object _buffer
    cdef object _tell
    cdef Py_ssize_t _buffer_capacity
    cdef Py_ssize_t _flight_capacity
    cdef object _keys  # the last _aioquic_protect.AesKeys used (one per send key)

    def __init__(
        self,
        *,
        host_cid,
        peer_cid,
        version,
        is_client,
        max_datagram_size,
        packet_number=0,
        peer_token=b"",
        quic_logger=None,
        spin_bit=False,
    ):
        self.max_flight_bytes = None
        self.max_total_bytes = None
        self.quic_logger_frames = None
        self._host_cid = bytes(host_cid)
        self._peer_cid = bytes(peer_cid)
        self._peer_token = bytes(peer_token)
        self._is_client = is_client
        self._spin_bit = 1 if spin_bit else 0
        self._quic_logger = quic_logger
        self._version = version
        self._datagrams = []
        self._packets = []
        self._datagram_flight_bytes = 0
        self._flight_bytes = 0
        self._total_bytes = 0
        self._datagram_init = True
        self._datagram_needs_padding = False
        self._header_size = 0
        self._packet = None
        self._packet_crypto = None
        self._packet_number = packet_number
        self._packet_start = 0
        self._packet_type = None
        self._buffer = Buffer(max_datagram_size)
        self._tell = self._buffer.tell
        self._buffer_capacity = max_datagram_size
        self._flight_capacity = max_datagram_size
        self._keys = None

    @property
    def packet_is_empty(self):
        """True if the current packet has no frame yet."""
        if self._packet is None:
            raise AssertionError("no packet started")
        return self._tell() - self._packet_start <= self._header_size

    @property
    def packet_number(self):
        """The packet number the next packet gets."""
        return self._packet_number

    @property
    def remaining_buffer_space(self):
        """Bytes the current packet can still take."""
        return self._buffer_capacity - <Py_ssize_t>self._tell() - TAG_SIZE

    @property
    def remaining_flight_space(self):
        """Bytes the current packet can still take within the congestion window."""
        return self._flight_capacity - <Py_ssize_t>self._tell() - TAG_SIZE

    def flush(self):
        """The datagrams built so far and their packets, as aioquic's builder returns them."""
        if self._packet is not None:
            self._end_packet()
        self._flush_current_datagram()
        datagrams, packets = self._datagrams, self._packets
        self._datagrams = []
        self._packets = []
        return datagrams, packets

    def start_frame(self, frame_type, Py_ssize_t capacity=1, handler=None, handler_args=()):
        """Room for a frame of at least ``capacity`` bytes, or QuicPacketBuilderStop."""
        if self._packet is None:
            raise AssertionError("no packet started")
        cdef long ftype = frame_type
        cdef Py_ssize_t used = self._tell()
        if used - self._packet_start <= self._header_size:
            # the first frame leaves room for the padding header protection samples
            if capacity < PN_MAX_SIZE - PN_SEND_SIZE:
                capacity = PN_MAX_SIZE - PN_SEND_SIZE
        cdef bint flight = _in_flight(ftype)
        if self._buffer_capacity - used - TAG_SIZE < capacity or (
            flight and self._flight_capacity - used - TAG_SIZE < capacity
        ):
            raise QuicPacketBuilderStop
        self._buffer.push_uint_var(ftype)
        packet = self._packet
        if not self._packet_ack_eliciting and _ack_eliciting(ftype):
            self._packet_ack_eliciting = True
            packet.is_ack_eliciting = True
        if flight and not self._packet_in_flight:
            self._packet_in_flight = True
            packet.in_flight = True
        if ftype == FRAME_CRYPTO:
            packet.is_crypto_packet = True
        elif ftype == FRAME_PATH_CHALLENGE or ftype == FRAME_PATH_RESPONSE:
            # RFC 9000 sections 8.2.1 and 8.2.2: such datagrams are expanded to 1,200 bytes
            self._datagram_needs_padding = True
        if handler is not None:
            packet.delivery_handlers.append((handler, handler_args))
        return self._buffer

    def start_packet(self, packet_type, crypto):
        """Start a packet of ``packet_type`` protected by ``crypto`` (a ``CryptoPair``)."""
        cdef bint short = packet_type is _ONE_RTT
        if not (short or packet_type is _INITIAL or packet_type is _HANDSHAKE
                or packet_type is _ZERO_RTT):
            raise AssertionError("Invalid packet type")
        if self._packet is not None:
            self._end_packet()

        cdef Py_ssize_t start = self._tell()
        if self._buffer_capacity - start < NEW_DATAGRAM_BELOW:
            self._flush_current_datagram()
            start = 0
        # A 1-RTT packet could only pad its datagram with (congestion-controlled) PADDING
        # frames: if the window cannot cover them, it starts a datagram of its own.
        if short and self._datagram_needs_padding and self._flight_capacity < self._buffer_capacity:
            self._flush_current_datagram()
            start = 0

        cdef Py_ssize_t room
        if self._datagram_init:
            if self.max_total_bytes is not None:
                room = self.max_total_bytes - self._total_bytes
                if room < self._buffer_capacity:
                    self._buffer_capacity = room
            self._flight_capacity = self._buffer_capacity
            if self.max_flight_bytes is not None:
                room = self.max_flight_bytes - self._flight_bytes
                if room < self._flight_capacity:
                    self._flight_capacity = room
            self._datagram_flight_bytes = 0
            self._datagram_init = False
            self._datagram_needs_padding = False

        cdef Py_ssize_t header_size
        if short:
            header_size = 1 + len(self._peer_cid) + PN_SEND_SIZE
            epoch = _EPOCH_ONE_RTT
        else:
            # first byte, version, two CID lengths and CIDs, 2-byte length, packet number
            header_size = 11 + len(self._peer_cid) + len(self._host_cid)
            if packet_type is _INITIAL:
                header_size += size_uint_var(len(self._peer_token)) + len(self._peer_token)
                epoch = _EPOCH_INITIAL
            elif packet_type is _HANDSHAKE:
                epoch = _EPOCH_HANDSHAKE
            else:
                epoch = _EPOCH_ONE_RTT
        if start + header_size >= self._buffer_capacity:
            raise QuicPacketBuilderStop

        packet = QuicSentPacket(
            epoch, False, False, False, self._packet_number, packet_type
        )
        self._header_size = header_size
        self._packet = packet
        self._packet_ack_eliciting = False
        self._packet_in_flight = False
        self._packet_crypto = crypto
        self._packet_start = start
        self._packet_type = packet_type
        self.quic_logger_frames = packet.quic_logger_frames
        self._buffer.seek(start + header_size)

    cdef _end_packet(self):
        buf = self._buffer
        packet = self._packet
        crypto = self._packet_crypto
        cdef Py_ssize_t start = self._packet_start
        cdef Py_ssize_t header_size = self._header_size
        cdef Py_ssize_t size = <Py_ssize_t>self._tell() - start
        cdef bint short = self._packet_type is _ONE_RTT
        cdef Py_ssize_t padding, room
        if size <= header_size:
            buf.seek(start)  # nothing was written: no packet
            self._packet = None
            self.quic_logger_frames = None
            return

        # enough payload for the header-protection sample (RFC 9001 section 5.4.2)
        padding = PN_MAX_SIZE - PN_SEND_SIZE + header_size - size
        if self._packet_type is _INITIAL and (self._is_client or self._packet_ack_eliciting):
            self._datagram_needs_padding = True  # RFC 9000 section 14.1
        if self._datagram_needs_padding and short:
            # a 1-RTT packet ends its datagram, so it pads it itself, with PADDING frames
            room = self._flight_capacity - <Py_ssize_t>self._tell() - TAG_SIZE
            if room > padding:
                padding = room
            self._datagram_needs_padding = False
        if padding > 0:
            buf.push_bytes(_ZEROS[:padding] if padding <= 2048 else bytes(padding))
            size += padding
            packet.in_flight = True
            self._packet_in_flight = True
            if self._quic_logger is not None:
                packet.quic_logger_frames.append(self._quic_logger.encode_padding_frame())

        cdef long long pn = self._packet_number
        cdef bytes header
        keys = send_keys(crypto, self._keys)
        if short:
            first = (FIXED_BIT | (self._spin_bit << 5) | (crypto.key_phase << 2)
                     | (PN_SEND_SIZE - 1))
            header = bytes((first,)) + self._peer_cid + (pn & 0xFFFF).to_bytes(2, "big")
        else:
            length = size - header_size + PN_SEND_SIZE + TAG_SIZE
            parts = [
                bytes((encode_long_header_first_byte(
                    self._version, self._packet_type, PN_SEND_SIZE - 1),)),
                int(self._version).to_bytes(4, "big"),
                bytes((len(self._peer_cid),)), self._peer_cid,
                bytes((len(self._host_cid),)), self._host_cid,
            ]
            if self._packet_type is _INITIAL:
                parts += [encode_uint_var(len(self._peer_token)), self._peer_token]
            parts += [(length | 0x4000).to_bytes(2, "big"), (pn & 0xFFFF).to_bytes(2, "big")]
            header = b"".join(parts)

        payload = buf.data_slice(start + header_size, start + size)
        buf.seek(start)
        if keys is None:
            buf.push_bytes(crypto.encrypt_packet(header, payload, pn))
        else:
            self._keys = keys
            protected_header, sealed = keys.seal(header, payload, pn)
            buf.push_bytes(protected_header)
            buf.push_bytes(sealed)

        sent = <Py_ssize_t>self._tell() - start
        packet.sent_bytes = sent
        self._packets.append(packet)
        if self._packet_in_flight:
            self._datagram_flight_bytes += sent
        if short:
            self._flush_current_datagram()  # short-header packets cannot be coalesced
        self._packet_number = pn + 1
        self._packet = None
        self.quic_logger_frames = None

    cdef _flush_current_datagram(self):
        cdef Py_ssize_t used = self._tell()
        cdef Py_ssize_t extra
        if used:
            if self._datagram_needs_padding:
                # bytes after the last packet: not frames, not in flight, but they count
                # for anti-amplification (RFC 9000 sections 8.2 and 14.1)
                extra = self._buffer_capacity - used
                if extra > 0:
                    self._buffer.push_bytes(bytes(extra))
                    used += extra
            self._datagrams.append(self._buffer.data)
            self._flight_bytes += self._datagram_flight_bytes
            self._total_bytes += used
            self._datagram_init = True
            self._buffer.seek(0)

