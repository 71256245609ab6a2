"""Types of the compiled common send case (_aioquic_send.pyx)."""

from typing import Any

def write_application(conn: Any, builder: Any, network_path: Any, now: float) -> bool: ...
