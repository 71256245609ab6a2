"""Types of the compiled packet protection (_aioquic_protect.pyx)."""

from collections.abc import Callable
from typing import Any

from aioquic.quic.crypto import CryptoPair

class AesKeys:
    def __init__(self, aead_obj: Any, hp: Any) -> None: ...
    def seal(self, header: bytes, payload: bytes, packet_number: int) -> tuple[bytes, bytes]: ...

def send_keys(crypto: CryptoPair, cached: AesKeys | None) -> AesKeys | None: ...

class PacketOpener:
    def __init__(
        self,
        pair: CryptoPair,
        fallback: Callable[[bytes, int, int], tuple[bytes, bytes, int]],
        crypto_error: type[Exception],
        invalid_tag: type[Exception],
    ) -> None: ...
    def __call__(
        self, packet: bytes, encrypted_offset: int, expected: int
    ) -> tuple[bytes, bytes, int]: ...
