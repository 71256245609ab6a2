# cython: language_level=3, boundscheck=False, wraparound=False
"""Packet protection for the aioquic engine, compiled (issue 15): sealing and opening.

aioquic protects each packet in Python: a nonce from a big integer, the payload copied around
the AEAD, and the header mask applied byte by byte (RFC 9001 section 5.4) -- several
microseconds a packet each way.  Here an AES-GCM packet costs one AEAD call and one
header-mask call, the nonce and the mask done in C:

* :meth:`AesKeys.seal` protects what ``_aioquic_builder.PacketBuilder`` builds
  (:func:`send_keys` picks or reuses the keys of a ``CryptoPair``);
* :class:`PacketOpener` is set as a ``CryptoPair``'s ``decrypt_packet`` by the adapter
  (``engine_aioquic_build.open_fast``).

ChaCha20 keys, a pending or incoming key update, a missing key and every error are left to
aioquic's own ``CryptoPair`` methods, unchanged.  tests/test_engine_builder.py compares both
directions with aioquic's byte for byte.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

cdef enum:
    PN_SEND_SIZE = 2      # the packet number length aioquic's builder always uses
    PN_MAX_SIZE = 4       # the header-protection sample starts 4 bytes past the pn's start
    SAMPLE_SIZE = 16


cdef inline void _nonce(const unsigned char* iv, unsigned long long packet_number,
                        unsigned char* out):
    """RFC 9001 section 5.3: the IV with the packet number XORed into its last 8 bytes."""
    cdef int i
    memcpy(out, iv, 12)
    for i in range(8):
        out[11 - i] ^= (packet_number >> (8 * i)) & 0xFF


cdef bint _is_aes(object aead_obj, object hp):
    return not hp._is_chacha20 and type(aead_obj._aead).__name__ == "AESGCM"


cdef class AesKeys:
    """One AES-GCM key's parts (either direction), taken from aioquic's objects once."""

    cdef object aead_obj     # aioquic's AEAD wrapper these came from (replaced on key update)
    cdef object aead         # its cryptography AESGCM
    cdef object mask         # the header-protection cipher's update (AES-ECB of the sample)
    cdef unsigned char iv[12]

    def __cinit__(self, object aead_obj, object hp):
        cdef bytes iv = int(aead_obj._iv).to_bytes(12, "big")
        self.aead_obj = aead_obj
        self.aead = aead_obj._aead
        self.mask = hp._encryptor.update
        memcpy(self.iv, <const char*>iv, 12)

    def seal(self, bytes header, payload, unsigned long long packet_number):
        """(protected header, ciphertext + tag) of one packet whose header ends with a
        ``PN_SEND_SIZE``-byte packet number."""
        cdef unsigned char nonce[12]
        _nonce(self.iv, packet_number, nonce)
        cdef bytes sealed = self.aead.encrypt(nonce[:12], payload, header)
        cdef bytes mask = self.mask(sealed[PN_MAX_SIZE - PN_SEND_SIZE:
                                           PN_MAX_SIZE - PN_SEND_SIZE + SAMPLE_SIZE])
        cdef Py_ssize_t hlen = len(header)
        # a fresh bytes object nobody else holds yet, so it may still be written to
        cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen)
        cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
        cdef const unsigned char* m = mask
        memcpy(p, <const char*>header, hlen)
        if p[0] & 0x80:
            p[0] ^= m[0] & 0x0F
        else:
            p[0] ^= m[0] & 0x1F
        p[hlen - 2] ^= m[1]
        p[hlen - 1] ^= m[2]
        return out, sealed


def send_keys(crypto, cached):
    """:class:`AesKeys` for ``crypto``'s send key (``cached`` if it still fits), or None if
    aioquic must protect the packet itself."""
    if crypto._update_key_requested:
        return None  # aioquic applies the key update inside encrypt_packet: keep its order
    send = crypto.send
    aead_obj = send.aead
    if cached is not None and (<AesKeys>cached).aead_obj is aead_obj:
        return cached
    if aead_obj is None or not _is_aes(aead_obj, send.hp):
        return None
    return AesKeys(aead_obj, send.hp)


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
    cdef AesKeys keys
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
        cdef AesKeys keys = self.keys
        if keys is None or keys.aead_obj is not aead_obj:
            if aead_obj is None:
                return self.fallback(packet, encrypted_offset, expected)
            hp = recv.hp
            if not _is_aes(aead_obj, hp):
                return self.fallback(packet, encrypted_offset, expected)
            keys = AesKeys(aead_obj, hp)
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
        _nonce(keys.iv, pn, nonce)
        try:
            payload = keys.aead.decrypt(nonce[:12], memoryview(data)[header_length:], header)
        except self.invalid_tag as exc:
            raise self.crypto_error(str(exc)) from None
        return header, payload, pn
