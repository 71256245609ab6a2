"""The compiled packet builder and protection (quictund/quic/_aioquic_builder.pyx,
_aioquic_protect.pyx) against aioquic's own.

Both builders are driven through the same calls -- packet types, frames of every kind, the
congestion and anti-amplification limits aioquic sets, key updates, ChaCha20 keys, a qlog
trace -- and must return the same datagrams byte for byte, the same packet records and raise
at the same calls.  Hypothesis writes most of the call sequences; the named cases pin the
rules one by one (padding of Initial datagrams and of path validation, the header-protection
sample, a packet left empty, coalescing).  The real engines run the compiled builder in the
rest of the suite and aioquic's under ``QUICTUND_PURE_PYTHON=1`` (``make test``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.logger import QuicLoggerTrace
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicPacketBuilderStop
from aioquic.tls import CipherSuite
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_profiles import budget

if os.environ.get("CI") == "true":  # CI installs a compiler: the modules must have been built
    from quictund.quic import _aioquic_builder as compiled
    from quictund.quic import _aioquic_protect as protect
else:
    compiled = pytest.importorskip(
        "quictund.quic._aioquic_builder", reason="the compiled builder is not built"
    )
    protect = pytest.importorskip(
        "quictund.quic._aioquic_protect", reason="the compiled protection is not built"
    )
PacketBuilder = compiled.PacketBuilder

PEER_CID = bytes(range(8))
HOST_CID = bytes(range(10, 18))
VERSION = 1

# (packet type, a CryptoPair factory) per epoch
Keys = Callable[[], CryptoPair]


def _initial(is_client: bool = True) -> CryptoPair:
    pair = CryptoPair()
    pair.setup_initial(PEER_CID, is_client=is_client, version=VERSION)
    return pair


def _suite(suite: CipherSuite, *, update: bool = False) -> Keys:
    def make() -> CryptoPair:
        pair = CryptoPair()
        for ctx in (pair.send, pair.recv):
            ctx.setup(cipher_suite=suite, secret=bytes(range(32, 64))[: 32], version=VERSION)
        if update:
            pair.update_key()
        return pair

    return make


AES = _suite(CipherSuite.AES_128_GCM_SHA256)
AES256 = _suite(CipherSuite.AES_256_GCM_SHA384)
CHACHA = _suite(CipherSuite.CHACHA20_POLY1305_SHA256)
AES_KEY_UPDATE = _suite(CipherSuite.AES_128_GCM_SHA256, update=True)

KEYS: dict[str, Keys] = {
    "initial": _initial,
    "initial-server": lambda: _initial(is_client=False),
    "aes": AES,
    "aes256": AES256,
    "chacha": CHACHA,
    "aes-key-update": AES_KEY_UPDATE,
}
TYPES = {
    "initial": QuicPacketType.INITIAL,
    "handshake": QuicPacketType.HANDSHAKE,
    "zero_rtt": QuicPacketType.ZERO_RTT,
    "one_rtt": QuicPacketType.ONE_RTT,
}
FRAMES = [
    QuicFrameType.PADDING,
    QuicFrameType.PING,
    QuicFrameType.ACK,
    QuicFrameType.CRYPTO,
    QuicFrameType.STREAM_BASE,
    QuicFrameType.MAX_DATA,
    QuicFrameType.PATH_CHALLENGE,
    QuicFrameType.PATH_RESPONSE,
    QuicFrameType.TRANSPORT_CLOSE,
    QuicFrameType.APPLICATION_CLOSE,
    QuicFrameType.DATAGRAM_WITH_LENGTH,
]


def _handler(*args: Any) -> None:
    pass


Op = tuple[Any, ...]


def _run(cls: type, ops: list[Op], *, keys: dict[str, CryptoPair], **kwargs: Any) -> list[Any]:
    """Drive one builder through ``ops``; what every call returned or raised, then flush()."""
    builder = cls(
        host_cid=HOST_CID,
        peer_cid=PEER_CID,
        version=VERSION,
        is_client=kwargs.pop("is_client", True),
        max_datagram_size=kwargs.pop("max_datagram_size", 1280),
        packet_number=kwargs.pop("packet_number", 0),
        **kwargs,
    )
    seen: list[Any] = []
    for op in ops:
        try:
            if op[0] == "limits":
                builder.max_flight_bytes, builder.max_total_bytes = op[1], op[2]
                seen.append("limits")
            elif op[0] == "packet":
                builder.start_packet(TYPES[op[1]], keys[op[2]])
                seen.append(("packet", builder.packet_is_empty, builder.packet_number))
            else:
                _, frame_type, capacity, payload, with_handler = op
                buf = builder.start_frame(
                    frame_type,
                    capacity=capacity,
                    handler=_handler if with_handler else None,
                    handler_args=(1, 2),
                )
                buf.push_bytes(payload)
                seen.append(
                    (
                        "frame",
                        builder.packet_is_empty,
                        builder.remaining_buffer_space,
                        builder.remaining_flight_space,
                    )
                )
        except QuicPacketBuilderStop:
            seen.append("stop")
        except AssertionError:
            seen.append("assert")
    datagrams, packets = builder.flush()
    seen.append([bytes(d) for d in datagrams])
    seen.append(
        [
            (
                p.epoch,
                p.in_flight,
                p.is_ack_eliciting,
                p.is_crypto_packet,
                p.packet_number,
                p.packet_type,
                p.sent_bytes,
                p.sent_time,
                len(p.delivery_handlers),
                p.quic_logger_frames,
            )
            for p in packets
        ]
    )
    seen.append(builder.packet_number)
    return seen


def _both(ops: list[Op], key_names: set[str] | None = None, **kwargs: Any) -> list[Any]:
    """Run ``ops`` on aioquic's builder and the compiled one; assert they agree."""
    names = key_names or set(KEYS)
    logged = kwargs.pop("logged", False)
    results = []
    for cls in (QuicPacketBuilder, PacketBuilder):
        extra = dict(kwargs)
        if logged:
            extra["quic_logger"] = QuicLoggerTrace(is_client=True, odcid=PEER_CID)
        results.append(_run(cls, ops, keys={n: KEYS[n]() for n in names}, **extra))
    assert results[1] == results[0]
    return results[0]


def test_an_initial_datagram_is_padded_and_coalesces_the_handshake_packet() -> None:
    out = _both(
        [
            ("packet", "initial", "initial"),
            ("frame", QuicFrameType.CRYPTO, 1, b"c" * 300, True),
            ("packet", "handshake", "aes"),
            ("frame", QuicFrameType.CRYPTO, 1, b"h" * 100, True),
            ("packet", "one_rtt", "aes"),
            ("frame", QuicFrameType.STREAM_BASE, 1, b"s" * 50, True),
        ],
        peer_token=b"token!",
    )
    datagrams = out[-3]
    assert len(datagrams) == 1 and len(datagrams[0]) == 1280  # one padded datagram


def test_a_tiny_packet_is_padded_for_the_header_protection_sample() -> None:
    out = _both([("packet", "one_rtt", "aes"), ("frame", QuicFrameType.PING, 1, b"", False)])
    assert len(out[-3][0]) == 1 + len(PEER_CID) + 2 + 2 + 16  # header, PING + 1 padding, tag


def test_path_validation_expands_the_datagram() -> None:
    out = _both(
        [
            ("packet", "one_rtt", "aes"),
            ("frame", QuicFrameType.PATH_CHALLENGE, 9, b"12345678", False),
        ]
    )
    assert len(out[-3][0]) == 1280


def test_an_empty_packet_is_not_sent_and_short_packets_each_end_a_datagram() -> None:
    out = _both(
        [
            ("packet", "one_rtt", "aes"),
            ("packet", "one_rtt", "aes"),
            ("frame", QuicFrameType.STREAM_BASE, 1, b"a" * 10, True),
            ("packet", "one_rtt", "aes"),
            ("frame", QuicFrameType.STREAM_BASE, 1, b"b" * 10, True),
        ]
    )
    assert len(out[-3]) == 2 and out[-1] == 2


def test_the_congestion_window_and_the_amplification_limit_stop_frames() -> None:
    out = _both(
        [
            ("limits", 1500, 2000),
            ("packet", "one_rtt", "aes"),
            ("frame", QuicFrameType.STREAM_BASE, 1, b"x" * 1200, True),
            ("packet", "one_rtt", "aes"),
            ("frame", QuicFrameType.STREAM_BASE, 400, b"y" * 10, True),
            ("frame", QuicFrameType.ACK, 4, b"\x00\x00\x00\x00", False),  # not in flight
        ]
    )
    assert "stop" in out


@pytest.mark.parametrize("name", ["chacha", "aes-key-update", "aes256"])
def test_keys_aioquic_protects_itself_give_the_same_bytes(name: str) -> None:
    _both(
        [
            ("packet", "one_rtt", name),
            ("frame", QuicFrameType.STREAM_BASE, 1, b"z" * 700, True),
            ("packet", "one_rtt", name),
            ("frame", QuicFrameType.STREAM_BASE, 1, b"w" * 700, True),
        ],
        spin_bit=True,
        packet_number=70_000,  # the 2-byte packet number wraps
    )


def test_a_qlog_trace_gets_the_same_padding_frames() -> None:
    _both(
        [("packet", "initial", "initial"), ("frame", QuicFrameType.CRYPTO, 1, b"c", False)],
        logged=True,
    )


_op = st.one_of(
    st.tuples(
        st.just("limits"),
        st.one_of(st.none(), st.integers(0, 4000)),
        st.one_of(st.none(), st.integers(0, 6000)),
    ),
    st.tuples(st.just("packet"), st.sampled_from(sorted(TYPES)), st.sampled_from(sorted(KEYS))),
    st.tuples(
        st.just("frame"),
        st.sampled_from(FRAMES),
        st.integers(1, 1400),
        st.binary(max_size=1300),
        st.booleans(),
    ),
)


@settings(max_examples=budget(300), deadline=None)
@given(
    ops=st.lists(_op, max_size=25),
    is_client=st.booleans(),
    spin_bit=st.booleans(),
    max_datagram_size=st.sampled_from([1200, 1280, 1452, 9000]),
    packet_number=st.integers(0, 2**20),
    peer_token=st.binary(max_size=80),
)
def test_any_sequence_of_calls_gives_the_same_datagrams_and_packets(
    ops: list[Op],
    is_client: bool,
    spin_bit: bool,
    max_datagram_size: int,
    packet_number: int,
    peer_token: bytes,
) -> None:
    _both(
        ops,
        is_client=is_client,
        spin_bit=spin_bit,
        max_datagram_size=max_datagram_size,
        packet_number=packet_number,
        peer_token=peer_token,
    )


# ---- receiving: PacketOpener against aioquic's CryptoPair.decrypt_packet


def _sealed(keys: str, packet_type: str, packet_number: int, payload: bytes) -> bytes:
    """One packet as aioquic's builder protects it with a fresh pair of ``keys``."""
    builder = QuicPacketBuilder(
        host_cid=HOST_CID,
        peer_cid=PEER_CID,
        version=VERSION,
        is_client=True,
        max_datagram_size=1452,
        packet_number=packet_number,
    )
    builder.start_packet(TYPES[packet_type], KEYS[keys]())
    builder.start_frame(QuicFrameType.PING).push_bytes(payload)
    datagrams, _ = builder.flush()
    return bytes(datagrams[0])


def _open_both(keys: str, packet: bytes, offset: int, expected: int) -> list[Any]:
    """What aioquic's ``decrypt_packet`` and the compiled opener give (or raise) for one packet."""
    from aioquic._crypto import CryptoError
    from cryptography.exceptions import InvalidTag

    results: list[Any] = []
    for fast in (False, True):
        pair = KEYS[keys]()
        if keys == "aes-key-update":
            pair._update_key_requested = False  # the *peer* updated: its packets carry phase 1
        opener = protect.PacketOpener(
            pair, CryptoPair.decrypt_packet.__get__(pair), CryptoError, InvalidTag
        )
        try:
            got = opener(packet, offset, expected) if fast else pair.decrypt_packet(
                packet, offset, expected
            )
            results.append(("ok", got, pair.recv.key_phase))
        except Exception as exc:  # the two must raise the same
            results.append((type(exc), str(exc)))
    assert results[1] == results[0]
    return results[0]


def _header_length(packet_type: str) -> int:
    if packet_type == "one_rtt":
        return 1 + len(PEER_CID)
    return 1 + 4 + 1 + len(PEER_CID) + 1 + len(HOST_CID) + 2  # no token: not an Initial


@pytest.mark.parametrize("keys", ["aes", "aes256", "chacha", "initial"])
@pytest.mark.parametrize("packet_type", ["one_rtt", "handshake", "zero_rtt"])
def test_a_packet_opens_the_same(keys: str, packet_type: str) -> None:
    packet = _sealed(keys, packet_type, 1000, b"payload" * 20)
    opening = "initial-server" if keys == "initial" else keys  # the other side's keys
    got = _open_both(opening, packet, _header_length(packet_type), 1000)
    assert got[0] == "ok" and got[1][2] == 1000


def test_a_tampered_packet_raises_the_same_crypto_error() -> None:
    packet = bytearray(_sealed("aes", "one_rtt", 5, b"x" * 100))
    packet[-1] ^= 1
    got = _open_both("aes", bytes(packet), _header_length("one_rtt"), 5)
    assert got[0].__name__ == "CryptoError"


def test_a_packet_too_short_to_sample_raises_the_same() -> None:
    packet = _sealed("aes", "one_rtt", 5, b"x" * 100)[:20]
    got = _open_both("aes", packet, _header_length("one_rtt"), 5)
    assert got[0].__name__ == "CryptoError"


def test_a_key_update_by_the_peer_is_left_to_aioquic() -> None:
    packet = _sealed("aes-key-update", "one_rtt", 9, b"x" * 100)
    got = _open_both("aes", packet, _header_length("one_rtt"), 9)
    assert got[0] == "ok" and got[2] == 1  # both moved to key phase 1


@settings(max_examples=budget(200), deadline=None)
@given(
    sent=st.integers(0, 2**40),
    expected_delta=st.integers(-40_000, 40_000),
    payload=st.binary(min_size=0, max_size=1200),
    packet_type=st.sampled_from(["one_rtt", "handshake"]),
)
def test_any_packet_number_decodes_the_same(
    sent: int, expected_delta: int, payload: bytes, packet_type: str
) -> None:
    packet = _sealed("aes", packet_type, sent, payload)
    _open_both("aes", packet, _header_length(packet_type), max(0, sent + expected_delta))
