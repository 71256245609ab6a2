"""Types of the compiled common receive case (_aioquic_receive.pyx)."""

from typing import Any

def receive_short(conn: Any, data: bytes, addr: Any, now: float) -> bool: ...
