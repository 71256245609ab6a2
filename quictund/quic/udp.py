"""UDP socket set-up shared by both endpoints: large buffers, and one loud hint when capped."""

from __future__ import annotations

import logging
import socket

logger = logging.getLogger(__name__)
_warned = False


def tune_socket(sock: socket.socket, want_bytes: int) -> None:
    """Ask for ``want_bytes`` of receive and send buffer.

    Bursts of a fast sender overflow Linux's default 208 KiB receive buffer and every drop
    costs a QUIC loss episode.  Unprivileged processes are capped by ``net.core.rmem_max`` /
    ``wmem_max``; say once, with the exact command, when that bites.
    """
    global _warned
    capped = []
    for opt, force, sysctl in (
        (socket.SO_RCVBUF, 33, "net.core.rmem_max"),  # SO_RCVBUFFORCE
        (socket.SO_SNDBUF, 32, "net.core.wmem_max"),  # SO_SNDBUFFORCE
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, want_bytes)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, want_bytes)
        # Linux reports twice the granted size (bookkeeping overhead included).
        if sock.getsockopt(socket.SOL_SOCKET, opt) < want_bytes:
            capped.append(sysctl)
    if capped and not _warned:
        _warned = True
        cmd = " ".join(f"{name}={want_bytes}" for name in capped)
        logger.warning(
            "the kernel caps UDP socket buffers below %d bytes, which costs throughput; "
            "raise the limit with: sysctl -w %s",
            want_bytes,
            cmd,
        )
