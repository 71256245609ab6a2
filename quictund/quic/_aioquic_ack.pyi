"""Types of the compiled ACK frame handler (_aioquic_ack.pyx)."""

from typing import Any

def handle_ack(conn: Any, context: Any, frame_type: int, buf: Any) -> bool: ...
