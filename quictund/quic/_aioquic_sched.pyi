"""Types of the compiled sliced send pass (_aioquic_sched.pyx)."""

from typing import Any

def write_sliced(
    conn: Any, builder: Any, network_path: Any, now: float, aioquic_write: Any
) -> None: ...
