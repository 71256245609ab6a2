"""Watch the host's TCP memory while a scenario runs.

Other programs on a shared machine can hold the host's TCP buffer memory above
``net.ipv4.tcp_mem``'s pressure threshold (one limit for the whole host, every namespace
included).  TCP then drops what it receives and every TCP leg of every path -- ``direct``, and
the app side of each tunnel -- stalls on retransmission timeouts: on this machine a direct
16 KiB echo took 0.6 s and bulk runs moved 0 Mbit/s.  Such figures say nothing about the
tunnels, so the run must say when it happened; sampling at the start and end misses it.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from types import TracebackType

PAGE = 4096


def tcp_pages() -> tuple[int, int] | None:
    """(pages of TCP buffer memory in use, pressure threshold in pages), or None."""
    try:
        pressure = int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[1])
        m = re.search(r"^TCP:.* mem (\d+)", Path("/proc/net/sockstat").read_text(), re.M)
    except (OSError, ValueError, IndexError):
        return None
    return (int(m.group(1)), pressure) if m else None


def describe() -> tuple[str, bool]:
    """The host's TCP memory against its pressure threshold, as text; under pressure?"""
    got = tcp_pages()
    if got is None:
        return "unknown", False
    used, pressure = got
    text = f"{used * PAGE >> 20} MiB of {pressure * PAGE >> 20} MiB (pressure threshold)"
    return text + (" -- UNDER PRESSURE" if used >= pressure else ""), used >= pressure


class TcpMemoryWatch:
    """``with TcpMemoryWatch() as w:`` samples every ``interval`` s in a thread; afterwards
    ``w.pressure_s`` is about how long TCP was under pressure and ``w.peak`` the most pages."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.pressure_s = 0.0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-memory-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            got = tcp_pages()
            if got is not None:
                self.peak = max(self.peak, got[0])
                if got[0] >= got[1]:
                    self.pressure_s += self.interval

    def __enter__(self) -> TcpMemoryWatch:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def warning(self) -> str | None:
        if not self.pressure_s:
            return None
        return (
            f"WARNING: the host's TCP memory was under pressure for about {self.pressure_s:.0f} s "
            f"(peak {self.peak * PAGE >> 20} MiB): TCP dropped packets, these figures are void"
        )
