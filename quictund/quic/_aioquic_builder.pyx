# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A compiled packet builder for the aioquic engine (issue 15): the per-packet half of sending.

aioquic builds every packet through ``QuicPacketBuilder``, pure Python: per packet it makes a
``QuicSentPacket``, works out the header, copies the payload out of its buffer three times
around the AEAD and protects the header byte by byte in Python -- about a third of the CPU a
sender spends per packet (docs/performance.md, "Where the default engine's time goes").
:class:`PacketBuilder` is a drop-in with the same interface (what aioquic's connection calls:
``start_packet``, ``start_frame``, ``flush``, the ``packet_*``/``remaining_*`` properties and
``max_flight_bytes``/``max_total_bytes``/``quic_logger_frames``), written for C: its state is
C fields, frame types are checked as integers, and an AES-GCM packet is protected with one
AEAD call and one header-protection call, the nonce and the header mask done here.  Frames
are still written by aioquic's own code into aioquic's ``Buffer``, which :meth:`start_frame`
returns.

Packets whose keys are ChaCha20 or that carry a pending key update go through aioquic's
``CryptoPair.encrypt_packet`` unchanged (its ordering of the key update matters there).  The
rules this follows (RFC 9000 sections 12.2, 14.1, 17; RFC 9001 section 5.4; RFC 9002 section
2) are those of aioquic 1.7's builder, which tests/test_engine_builder.py compares byte for
byte.  ``engine_aioquic_build`` installs it; ``QUICTUND_PURE_PYTHON=1`` keeps aioquic's own.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

from aioquic.quic.packet import QuicPacketType, encode_long_header_first_byte
from aioquic.quic.packet_builder import QuicPacketBuilderStop, QuicSentPacket
from aioquic.tls import Epoch

from aioquic.buffer import Buffer, size_uint_var

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
    SAMPLE_SIZE = 16
    TAG_SIZE = 16
    FIXED_BIT = 0x40
    NEW_DATAGRAM_BELOW = 128  # room left in a datagram under which a packet starts a new one

cdef bytes _ZEROS = bytes(2048)


cdef inline bint _ack_eliciting(long frame_type):
    return not (
        frame_type == FRAME_ACK
        or frame_type == FRAME_ACK_ECN
        or frame_type == FRAME_PADDING
        or frame_type == FRAME_TRANSPORT_CLOSE
        or frame_type == FRAME_APPLICATION_CLOSE
    )


cdef inline bint _in_flight(long frame_type):
    return not (
        frame_type == FRAME_ACK
        or frame_type == FRAME_ACK_ECN
        or frame_type == FRAME_TRANSPORT_CLOSE
        or frame_type == FRAME_APPLICATION_CLOSE
    )


cdef class _Keys:
    """What protecting a packet with one AES-GCM send key needs, taken from aioquic once."""

    cdef object aead_obj     # aioquic's AEAD wrapper these were read from (changes on key update)
    cdef object encrypt      # AESGCM.encrypt
    cdef object mask         # the header-protection cipher's update (AES-ECB of the sample)
    cdef unsigned char iv[12]

    def __cinit__(self, object aead_obj, object hp):
        cdef bytes iv = int(aead_obj._iv).to_bytes(12, "big")
        self.aead_obj = aead_obj
        self.encrypt = aead_obj._aead.encrypt
        self.mask = hp._encryptor.update
        memcpy(self.iv, <const char*>iv, 12)

    cdef bytes nonce(self, unsigned long long packet_number):
        cdef unsigned char out[12]
        cdef int i
        memcpy(out, self.iv, 12)
        for i in range(8):
            out[11 - i] ^= (packet_number >> (8 * i)) & 0xFF
        return out[:12]


cdef object _fast_keys(object crypto, _Keys cached):
    """The AES-GCM keys of ``crypto``'s send side, or None if aioquic must protect the packet."""
    if crypto._update_key_requested:
        return None  # aioquic applies the key update inside encrypt_packet: keep its order
    send = crypto.send
    aead_obj = send.aead
    if cached is not None and cached.aead_obj is aead_obj:
        return cached
    hp = send.hp
    if hp._is_chacha20 or type(aead_obj._aead).__name__ != "AESGCM":
        return None
    return _Keys(aead_obj, hp)


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
    cdef _Keys _keys

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
        keys = _fast_keys(crypto, self._keys)
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
                token_buf = Buffer(8)
                token_buf.push_uint_var(len(self._peer_token))
                parts += [token_buf.data, self._peer_token]
            parts += [(length | 0x4000).to_bytes(2, "big"), (pn & 0xFFFF).to_bytes(2, "big")]
            header = b"".join(parts)

        payload = buf.data_slice(start + header_size, start + size)
        buf.seek(start)
        if keys is None:
            buf.push_bytes(crypto.encrypt_packet(header, payload, pn))
        else:
            self._keys = <_Keys>keys
            self._protect(<_Keys>keys, header, payload, pn)

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

    cdef _protect(self, _Keys keys, bytes header, object payload, long long pn):
        """AEAD and header protection of one packet, written at the buffer's position."""
        cdef bytes sealed = keys.encrypt(keys.nonce(pn), payload, header)
        # the sample starts PN_MAX_SIZE bytes after the packet number, which is PN_SEND_SIZE
        # long and ends the header
        cdef bytes mask = keys.mask(sealed[PN_MAX_SIZE - PN_SEND_SIZE:
                                           PN_MAX_SIZE - PN_SEND_SIZE + SAMPLE_SIZE])
        cdef Py_ssize_t hlen = len(header)
        # a fresh bytes object nobody else holds yet, so it may still be written to
        cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen)
        cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
        memcpy(p, <const char*>header, hlen)
        cdef const unsigned char* m = mask
        if p[0] & 0x80:
            p[0] ^= m[0] & 0x0F
        else:
            p[0] ^= m[0] & 0x1F
        p[hlen - 2] ^= m[1]
        p[hlen - 1] ^= m[2]
        self._buffer.push_bytes(out)
        self._buffer.push_bytes(sealed)

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


cdef class _OpenKeys:
    """What removing one AES-GCM receive key's protection needs, taken from aioquic once."""

    cdef object aead_obj
    cdef object decrypt      # AESGCM.decrypt
    cdef object mask
    cdef unsigned char iv[12]

    def __cinit__(self, object aead_obj, object hp):
        cdef bytes iv = int(aead_obj._iv).to_bytes(12, "big")
        self.aead_obj = aead_obj
        self.decrypt = aead_obj._aead.decrypt
        self.mask = hp._encryptor.update
        memcpy(self.iv, <const char*>iv, 12)


cdef class PacketOpener:
    """``CryptoPair.decrypt_packet`` for one pair, compiled for AES-GCM keys (issue 15).

    Set as the pair's ``decrypt_packet`` (an instance attribute) by the adapter; aioquic calls
    it per packet received.  Header protection is removed and the packet number decoded here
    (RFC 9001 section 5.4, RFC 9000 appendix A.3), the payload opened with one AEAD call.  A
    missing or non-AES key, a short packet, a key-phase change and every error go to
    aioquic's own method unchanged, which raises what aioquic expects.
    """

    cdef object pair
    cdef object fallback
    cdef _OpenKeys keys
    cdef object crypto_error
    cdef object invalid_tag

    def __init__(self, pair, fallback, crypto_error, invalid_tag):
        self.pair = pair
        self.fallback = fallback      # aioquic's CryptoPair.decrypt_packet, bound to the pair
        self.crypto_error = crypto_error
        self.invalid_tag = invalid_tag
        self.keys = None

    def __call__(self, packet, Py_ssize_t encrypted_offset, long long expected):
        if self.pair._update_key_requested:
            return self.fallback(packet, encrypted_offset, expected)
        recv = self.pair.recv
        aead_obj = recv.aead
        cdef _OpenKeys keys = self.keys
        if keys is None or keys.aead_obj is not aead_obj:
            if aead_obj is None:
                return self.fallback(packet, encrypted_offset, expected)
            hp = recv.hp
            if hp._is_chacha20 or type(aead_obj._aead).__name__ != "AESGCM":
                return self.fallback(packet, encrypted_offset, expected)
            keys = _OpenKeys(aead_obj, hp)
            self.keys = keys

        cdef bytes data = packet if type(packet) is bytes else bytes(packet)
        cdef Py_ssize_t size = len(data)
        cdef Py_ssize_t sample_at = encrypted_offset + PN_MAX_SIZE
        if encrypted_offset < 1 or sample_at + SAMPLE_SIZE > size:
            return self.fallback(packet, encrypted_offset, expected)
        cdef bytes mask_bytes = keys.mask(data[sample_at:sample_at + SAMPLE_SIZE])
        cdef const unsigned char* m = mask_bytes
        cdef const unsigned char* p = data
        cdef unsigned char first = p[0]
        cdef bint long_header = first & 0x80
        if long_header:
            first ^= m[0] & 0x0F
        else:
            first ^= m[0] & 0x1F
            if ((first & 4) >> 2) != recv.key_phase:
                return self.fallback(packet, encrypted_offset, expected)  # key update
        cdef int pn_length = (first & 0x03) + 1
        cdef Py_ssize_t header_length = encrypted_offset + pn_length
        cdef bytes header = PyBytes_FromStringAndSize(NULL, header_length)
        cdef unsigned char* h = <unsigned char*>PyBytes_AS_STRING(header)
        memcpy(h, p, header_length)
        h[0] = first
        cdef long long truncated = 0
        cdef int i
        for i in range(pn_length):
            h[encrypted_offset + i] ^= m[1 + i]
            truncated = (truncated << 8) | h[encrypted_offset + i]

        # RFC 9000 appendix A.3
        cdef long long window = 1LL << (pn_length * 8)
        cdef long long half = window // 2
        cdef long long pn = (expected & ~(window - 1)) | truncated
        if pn <= expected - half and pn < (1LL << 62) - window:
            pn += window
        elif pn > expected + half and pn >= window:
            pn -= window

        cdef unsigned char nonce[12]
        memcpy(nonce, keys.iv, 12)
        for i in range(8):
            nonce[11 - i] ^= (pn >> (8 * i)) & 0xFF
        try:
            payload = keys.decrypt(nonce[:12], memoryview(data)[header_length:], header)
        except self.invalid_tag as exc:
            raise self.crypto_error(str(exc)) from None
        return header, payload, pn
