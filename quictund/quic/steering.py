"""Steering a server's datagrams to its workers by connection id, not by client address.

With ``workers = N`` every worker runs the server on one socket of an ``SO_REUSEPORT`` group.
By default the kernel picks the socket by hashing the client's address, so a client whose
address changes (NAT rebinding, roaming) lands on a worker that does not know its connection
and loses it.  Instead:

* every connection id a worker issues names the worker: its **last** octet is congruent to the
  worker's index modulo N (``WorkerCids``; the octet is otherwise random, and with QUIC-LB ids
  it is the nonce's, so the server id stays readable to a balancer);
* the group carries a classic BPF program (``SO_ATTACH_REUSEPORT_CBPF``, ``program``) that
  returns, for each datagram, that octet of its destination connection id modulo N: the index
  of the socket in the group.  A short header's id has this server's fixed length; a long
  header's says its own.  A client's first Initial carries an id the client made up, so the
  connection goes to whichever worker that id names, and the worker then issues ids that keep
  it there (Retry included);
* the supervisor binds the N sockets itself, in order, and keeps them open for its lifetime
  (``bind_group``): a socket's index is its place in the group, and a worker that dies and is
  restarted gets its predecessor's socket -- datagrams for its connections wait in that
  socket's buffer meanwhile, and the new worker answers them with stateless resets (same key:
  same address, same worker index), so their clients reconnect at once.

Pure apart from ``bind_group`` (sockets) and ``WorkerCids.new`` (``os.urandom``).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h (not in Python's socket module)
DEFAULT_CID_LENGTH = 8  # aioquic's and qh3's
MAX_WORKERS = 256  # one octet names the worker

# classic BPF opcodes (linux/filter.h)
_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = packet[k]
_LDB_IND = 0x50  # BPF_LD | BPF_B | BPF_IND: A = packet[X + k]
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K: pc += (A & k) ? jt : jf
_JA = 0x05  # BPF_JMP | BPF_JA: pc += k
_TAX = 0x07  # BPF_MISC | BPF_TAX: X = A
_MOD = 0x94  # BPF_ALU | BPF_MOD | BPF_K: A %= k
_RET_A = 0x16  # BPF_RET | BPF_A


def program(cid_length: int, count: int) -> list[tuple[int, int, int, int]]:
    """The steering program as (code, jt, jf, k) instructions.

    The program sees the UDP payload (the kernel pulls the UDP header off first).  A load
    past the end of a datagram ends the program with 0: such a runt goes to worker 0, which
    drops it.
    """
    if not 1 <= cid_length <= 20:
        raise ValueError(f"connection id length {cid_length} is not 1..20")
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"{count} workers: one octet names at most {MAX_WORKERS}")
    return [
        (_LDB_ABS, 0, 0, 0),  # 0: A = first octet
        (_JSET, 0, 4, 0x80),  # 1: long header? -> 2, else -> 6
        (_LDB_ABS, 0, 0, 5),  # 2: A = destination id length
        (_TAX, 0, 0, 0),  # 3: X = A
        (_LDB_IND, 0, 0, 5),  # 4: A = packet[6 + length - 1], the id's last octet
        (_JA, 0, 0, 1),  # 5: -> 7
        (_LDB_ABS, 0, 0, cid_length),  # 6: short header: packet[1 + cid_length - 1]
        (_MOD, 0, 0, count),  # 7: A %= N
        (_RET_A, 0, 0, 0),  # 8: the socket's index in the group
    ]


def steer(datagram: bytes, cid_length: int, count: int) -> int:
    """What ``program`` returns for ``datagram``, in Python (tests, and the docs' rule)."""
    try:
        if datagram[0] & 0x80:
            octet = datagram[5 + datagram[5]]
        else:
            octet = datagram[cid_length]
    except IndexError:
        return 0
    return octet % count


def attach(sock: socket.socket, instructions: list[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF program to the ``SO_REUSEPORT`` group of ``sock``."""
    code = b"".join(struct.pack("=HBBI", *ins) for ins in instructions)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(instructions), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def bind_group(
    family: int, address: tuple[Any, ...], count: int, cid_length: int
) -> list[socket.socket]:
    """``count`` UDP sockets bound to ``address`` in one ``SO_REUSEPORT`` group, in order
    (socket ``i`` is index ``i`` of the group), steered by ``program``.  Raises ``OSError``."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            if len(socks) == 1:
                address = sock.getsockname()  # port 0: the others join the one given
        attach(socks[0], program(cid_length, count))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


@dataclass(slots=True)
class WorkerCids:
    """Connection ids that name worker ``index`` of ``count``: ``inner`` ids (QUIC-LB's, or
    random ``cid_length`` octets) with the last octet replaced by a random one congruent to
    ``index`` modulo ``count``.  Duck-types ``quic_lb.CidCodec`` for the engine adapter."""

    index: int
    count: int
    inner: Callable[[], bytes] | None = None
    cid_length: int = DEFAULT_CID_LENGTH
    rand: Callable[[int], bytes] = field(default=os.urandom, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count <= MAX_WORKERS:
            raise ValueError(f"worker {self.index} of {self.count}")

    def new(self) -> bytes:
        cid = self.inner() if self.inner is not None else self.rand(self.cid_length)
        # a uniform octet among those that name this worker (256 // count of them)
        choices = 256 // self.count
        pick = int.from_bytes(self.rand(2), "big") % choices
        return cid[:-1] + bytes([self.index + pick * self.count])

    def owns(self, cid: bytes) -> bool:
        return len(cid) == self.cid_length and cid[-1] % self.count == self.index


class SharedSockets:
    """The server sockets a worker inherited from its supervisor, by listen address
    (``--udp-socket ADDRESS=FD``), and the connection ids that keep datagrams on it.

    A socket is lent to one endpoint at a time (a ``dup``, so that the endpoint closing it
    leaves the group as it was): a server kept across a reload keeps its socket; a renamed one
    whose predecessor still drains binds its own and is steered by address until restart.
    """

    def __init__(self, fds: dict[str, int], index: int, count: int) -> None:
        self.fds = fds
        self.index = index
        self.count = count
        self._lent: set[str] = set()

    @staticmethod
    def parse(specs: list[str]) -> dict[str, int]:
        """``["127.0.0.1:7500=5", ...]`` -> ``{"127.0.0.1:7500": 5}``."""
        fds: dict[str, int] = {}
        for spec in specs:
            key, sep, fd = spec.rpartition("=")
            if not sep or not key or not fd.isdigit():
                raise ValueError(f"--udp-socket {spec!r}: expected ADDRESS=FD")
            fds[key] = int(fd)
        return fds

    def take(self, key: str) -> socket.socket | None:
        fd = self.fds.get(key)
        if fd is None or key in self._lent:
            return None
        self._lent.add(key)
        return socket.socket(fileno=os.dup(fd))

    def give_back(self, key: str) -> None:
        self._lent.discard(key)

    def cids(self, inner: Callable[[], bytes] | None, cid_length: int) -> WorkerCids:
        return WorkerCids(self.index, self.count, inner=inner, cid_length=cid_length)
