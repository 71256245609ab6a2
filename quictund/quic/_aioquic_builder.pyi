"""Types of the compiled packet builder (_aioquic_builder.pyx): aioquic's builder interface."""

from collections.abc import Sequence
from typing import Any

from aioquic._buffer import Buffer
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicDeliveryHandler, QuicSentPacket

class PacketBuilder:
    max_flight_bytes: int | None
    max_total_bytes: int | None
    quic_logger_frames: list[dict[str, Any]] | None
    def __init__(
        self,
        *,
        host_cid: bytes,
        peer_cid: bytes,
        version: int,
        is_client: bool,
        max_datagram_size: int,
        packet_number: int = 0,
        peer_token: bytes = b"",
        quic_logger: Any = None,
        spin_bit: bool = False,
    ) -> None: ...
    @property
    def packet_is_empty(self) -> bool: ...
    @property
    def packet_number(self) -> int: ...
    @property
    def remaining_buffer_space(self) -> int: ...
    @property
    def remaining_flight_space(self) -> int: ...
    def flush(self) -> tuple[list[bytes], list[QuicSentPacket]]: ...
    def start_frame(
        self,
        frame_type: int,
        capacity: int = 1,
        handler: QuicDeliveryHandler | None = None,
        handler_args: Sequence[Any] = (),
    ) -> Buffer: ...
    def start_packet(self, packet_type: QuicPacketType, crypto: CryptoPair) -> None: ...
