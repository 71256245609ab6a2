"""UDP sockets of both endpoints: large buffers (with one loud hint when capped), and batched
datagram I/O (GSO send, GRO receive) straight on the event loop.

Rule: an error on a socket never stops that socket from being read or written.  The event loop
watches a private epoll instance that holds the socket, never the socket itself, because
uvloop (libuv) drops a watcher for good at the first ``POLLERR`` -- one ICMP port-unreachable
on a connected socket would silence it (docs/design.md, "Datagram I/O").
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

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


# ---- batched datagram I/O ------------------------------------------------------------------

UDP_SEGMENT = 103  # linux/udp.h: send several equal-sized datagrams in one sendmsg (GSO)
UDP_GRO = 104  # receive coalesced datagrams in one recvmsg, with their segment size
MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (128 since 6.x); stay portable
MAX_GSO_BYTES = 65000  # one IP datagram's payload
READ_BATCH = 64  # recvmsg calls per readable event, so one busy socket cannot starve others
# ... and no new read once this long went by handling them: 64 reads of up to 64 coalesced
# datagrams each were loop turns of up to 100 ms under the hostile bench (thousands of streams
# opening at once), during which no tunnel's socket was read and no timer ran; now a turn is
# at most this plus one read (<= MAX_SEGMENTS datagrams).  What is left stays in the kernel's
# queue, and the socket is still readable on the next turn.
READ_TURN_S = 0.002
QUEUE_LIMIT = 8 * 1024 * 1024  # bytes waiting for the socket to drain; beyond that, drop
# Errors the kernel parks on a socket when an ICMP message arrives for it (connected sockets
# only): the next send or receive returns them once.  They say nothing certain about the peer
# (anyone on the path can forge one), so they are reported to the owner, never fatal here.
ICMP_ERRORS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
     errno.EMSGSIZE, errno.EPROTO, errno.ENOPROTOOPT}
)  # fmt: skip

Datagram = tuple[bytes, tuple[Any, ...]]


def gso_runs(datagrams: list[bytes]) -> list[tuple[int, list[bytes]]]:
    """Split datagrams into GSO sends: runs of one segment size, the last one may be shorter.

    Pure, so the grouping rules (which the kernel enforces with EINVAL) are unit-tested.
    """
    runs: list[tuple[int, list[bytes]]] = []
    size, run, total = 0, list[bytes](), 0
    for data in datagrams:
        n = len(data)
        if run and (
            n > size
            or len(run[-1]) < size  # a shorter segment already ended this run
            or len(run) >= MAX_SEGMENTS
            or total + n > MAX_GSO_BYTES
        ):
            runs.append((size, run))
            run, total = [], 0
        if not run:
            size = n
        run.append(data)
        total += n
    if run:
        runs.append((size, run))
    return runs


class UdpSocket:
    """A non-blocking UDP socket driven straight from the event loop's selector.

    Why not ``loop.create_datagram_endpoint``: it makes one ``sendto`` syscall and one Python
    callback per datagram, 7-13 % of a QUIC endpoint's CPU (docs/performance.md).  Here a
    burst of same-sized QUIC packets leaves in one ``sendmsg`` with ``UDP_SEGMENT`` (GSO), and
    receiving uses ``UDP_GRO`` so one ``recvmsg`` returns many packets.  Kernels without them
    fall back to one datagram per syscall (detected once, logged at DEBUG).

    ``on_datagram(data, addr)`` is called for each received datagram.  Sends never raise:
    errors are logged and the datagram is dropped, as a network would (QUIC recovers).
    ``on_error(exc)`` hears the errors ICMP leaves on a connected socket (``ECONNREFUSED``
    …); the socket keeps working whatever the owner makes of them.

    The loop watches ``self._watch``, an epoll instance holding the socket, instead of the
    socket: an epoll fd only ever polls readable, so no loop sees ``POLLERR`` (which makes
    uvloop drop the watcher), and one watcher serves both directions -- ``EPOLLOUT`` is
    registered only while datagrams wait in the queue.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, tuple[Any, ...]], None],
        *,
        connected: bool = False,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._on_datagram = on_datagram
        self._on_error = on_error
        self._connected = connected
        self._loop = asyncio.get_running_loop()
        self._queue: deque[Datagram] = deque()
        self._queued_bytes = 0
        self._closed = False
        self.gso = _try(lambda: sock.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 0))
        self.gro = _try(lambda: sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1))
        self._cmsg_space = socket.CMSG_SPACE(4) if self.gro else 0
        self.dropped = 0
        self.errors = 0  # ICMP errors seen (send or receive); the socket went on regardless
        self._watch = select.epoll(1)
        self._watch.register(sock.fileno(), select.EPOLLIN)
        self._loop.add_reader(self._watch.fileno(), self._on_event)

    def path_payload(self) -> int | None:
        """The largest UDP payload the route of a connected socket carries unfragmented
        (the kernel's path MTU minus IP and UDP headers), or ``None`` if unknown."""
        v6 = self.sock.family == socket.AF_INET6
        try:
            mtu = self.sock.getsockopt(
                socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP, 24 if v6 else 14
            )  # IPV6_MTU / IP_MTU
        except OSError:
            return None
        return int(mtu) - (48 if v6 else 28)

    @property
    def sockname(self) -> tuple[Any, ...]:
        name: tuple[Any, ...] = self.sock.getsockname()
        return name

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._watch.fileno())
        self._watch.close()
        self._queue.clear()
        self.sock.close()

    # ---- sending -------------------------------------------------------------------------

    def sendto(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.send_many([(data, addr)])

    def send_many(self, datagrams: list[Datagram]) -> None:
        """Send in order; consecutive datagrams to one address share GSO sends."""
        if self._closed or not datagrams:
            return
        if self._queue:
            self._enqueue(datagrams)
            return
        i = 0
        while i < len(datagrams):
            addr = datagrams[i][1]
            j = i + 1
            while j < len(datagrams) and datagrams[j][1] == addr:
                j += 1
            sent = self._send_to(addr, [d for d, _ in datagrams[i:j]])
            if sent < j - i:
                self._enqueue(datagrams[i + sent :])
                return
            i = j

    def _send_to(self, addr: tuple[Any, ...], payloads: list[bytes]) -> int:
        """Send what the socket takes now; return how many datagrams went."""
        done = 0
        target = None if self._connected else addr
        runs = gso_runs(payloads) if self.gso else [(len(p), [p]) for p in payloads]
        for size, run in runs:
            try:
                self._send_run(target, size, run)
            except (BlockingIOError, InterruptedError):
                return done
            except OSError as exc:
                if exc.errno in ICMP_ERRORS and self._connected:
                    # A parked ICMP error failed this send and is now cleared: report it and
                    # send again, once (a second error is a real one).
                    self._icmp_error(exc)
                    try:
                        self._send_run(target, size, run)
                        done += len(run)
                        continue
                    except (BlockingIOError, InterruptedError):
                        return done
                    except OSError as again:
                        exc = again
                if len(run) > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                    logger.debug("UDP GSO refused (%s); sending one datagram per syscall", exc)
                    self.gso = False
                    return done + self._send_to(addr, [p for r in runs for p in r[1]][done:])
                logger.debug("UDP send to %s failed: %s", addr, exc)
                self.dropped += len(run)
            done += len(run)
        return done

    def _send_run(self, target: tuple[Any, ...] | None, size: int, run: list[bytes]) -> None:
        if len(run) == 1:
            if target is None:
                self.sock.send(run[0])
            else:
                self.sock.sendto(run[0], target)
            return
        cmsg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        if target is None:
            self.sock.sendmsg([b"".join(run)], cmsg)
        else:
            self.sock.sendmsg([b"".join(run)], cmsg, 0, target)

    def _enqueue(self, datagrams: list[Datagram]) -> None:
        if not self._queue:
            self._watch.modify(self.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        for data, addr in datagrams:
            if self._queued_bytes + len(data) > QUEUE_LIMIT:
                self.dropped += 1
                continue
            self._queue.append((data, addr))
            self._queued_bytes += len(data)

    def _on_writable(self) -> None:
        queue, self._queue = list(self._queue), deque()
        self._queued_bytes = 0
        self.send_many(queue)
        if not self._queue and not self._closed:
            self._watch.modify(self.sock.fileno(), select.EPOLLIN)

    # ---- receiving -----------------------------------------------------------------------

    def _on_event(self) -> None:
        """The socket is readable, writable or has an error.  Reading is tried without asking
        (a failed ``recvmsg`` costs what an ``epoll_wait`` would); the queue is sent only when
        the socket says it is writable, since a retry copies the whole queue."""
        writable = bool(self._queue) and any(
            ev & select.EPOLLOUT for _, ev in self._watch.poll(0)
        )
        self._on_readable()
        if writable and self._queue and not self._closed:
            self._on_writable()

    def _icmp_error(self, exc: OSError) -> None:
        self.errors += 1
        logger.debug("UDP socket %s: %s (socket kept open)", self.sockname, exc.strerror)
        if self._on_error is not None:
            # Next loop turn: the owner may close this socket, which it must not do in the
            # middle of our own send or receive loop.
            self._loop.call_soon(self._report_error, exc)

    def _report_error(self, exc: OSError) -> None:
        if self._closed or self._on_error is None:
            return
        try:
            self._on_error(exc)
        except Exception:
            logger.exception("UDP error handler failed")

    def _on_readable(self) -> None:
        until = time.perf_counter() + READ_TURN_S
        for _ in range(READ_BATCH):
            if self._closed or time.perf_counter() > until:
                return
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65535, self._cmsg_space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable on a connected socket
                if exc.errno in ICMP_ERRORS:
                    self._icmp_error(exc)
                else:
                    logger.debug("UDP receive error: %s", exc)
                continue
            segment = 0
            for level, kind, value in anc:
                if level == socket.SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(value[:4], sys.byteorder)
            peer = addr[:2]
            if segment and len(data) > segment:
                for off in range(0, len(data), segment):
                    self._on_datagram(data[off : off + segment], peer)
            else:
                self._on_datagram(data, peer)


def _try(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except OSError:
        return False
    return True


async def open_udp(
    on_datagram: Callable[[bytes, tuple[Any, ...]], None],
    *,
    local: tuple[str, int] | None = None,
    remote: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
    buffer: int = 4 * 1024 * 1024,
    reuse_port: bool = False,
    on_error: Callable[[OSError], None] | None = None,
) -> UdpSocket:
    """Bind (server) or connect (client) a UDP socket and drive it with ``UdpSocket``.

    ``reuse_port``: several workers bind the same address; the kernel hashes each client's
    address onto one of them, so a QUIC connection stays with one worker.

    Raises ``OSError`` like ``loop.create_datagram_endpoint`` would.
    """
    loop = asyncio.get_running_loop()
    host, port = remote or local or ("", 0)
    flags = 0 if remote else socket.AI_PASSIVE
    infos = await loop.getaddrinfo(host or None, port, family=family, type=socket.SOCK_DGRAM,
                                   flags=flags)  # fmt: skip
    if not infos:
        raise OSError(f"cannot resolve {host}")
    fam, kind, proto, _, addr = infos[0]
    sock = socket.socket(fam, kind, proto)
    try:
        tune_socket(sock, buffer)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if remote:
            sock.connect(addr)
        else:
            sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return UdpSocket(sock, on_datagram, connected=remote is not None, on_error=on_error)


def adopt_udp(
    sock: socket.socket,
    on_datagram: Callable[[bytes, tuple[Any, ...]], None],
    *,
    buffer: int = 4 * 1024 * 1024,
) -> UdpSocket:
    """Drive a UDP socket bound elsewhere (a worker's, bound by its supervisor:
    quic/steering.py) as ``open_udp`` drives its own."""
    tune_socket(sock, buffer)
    return UdpSocket(sock, on_datagram)
