"""Who is at the other end of an accepted API connection: a UID whenever the kernel knows it.

1. UNIX socket: ``SO_PEERCRED``, the credentials the kernel recorded at ``connect()`` (they
   cannot be forged).
2. TCP from this host (a loopback peer address, or any address of ours): the UID that owns the
   client's socket, from the kernel's socket table (``NETLINK_SOCK_DIAG``, one exact lookup of
   the client's 4-tuple; no privileges needed).  So local users are told apart on the TCP API
   and the metrics listener too, instead of all sharing ``127.0.0.1``.
3. Anything else (another host, or a lookup that fails): the source IP address.

Every lookup is a few system calls on the event loop thread, done once per accepted
connection; it never raises (a failure falls back to rule 3, then to ``("unknown", "")``).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

Peer = tuple[str, int | str]  # ("uid", 1000), ("ip", "192.0.2.7") or ("unknown", "")

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQ = struct.Struct("=BBBBI")  # inet_diag_req_v2 head: family, protocol, ext, pad, states
_UID_AT = _NLMSG.size + 64  # inet_diag_msg: 4 bytes, sockid (48), expires, rqueue, wqueue, uid
_NO_COOKIE = struct.pack("=II", 0xFFFFFFFF, 0xFFFFFFFF)


def peer_of(sock: object) -> Peer:
    """The peer of an accepted socket (``transport.get_extra_info("socket")``: a
    ``TransportSocket`` on asyncio or a ``PseudoSocket`` on uvloop; both have getsockopt,
    getsockname and getpeername)."""
    family = getattr(sock, "family", None)
    try:
        if family == socket.AF_UNIX:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)  # type: ignore[attr-defined]
            return ("uid", _UCRED.unpack(raw)[1])
        if family in (socket.AF_INET, socket.AF_INET6):
            local = sock.getsockname()[:2]  # type: ignore[attr-defined]
            remote = sock.getpeername()[:2]  # type: ignore[attr-defined]
            uid = tcp_peer_uid(local, remote)
            return ("uid", uid) if uid is not None else ("ip", str(remote[0]))
    except (OSError, AttributeError, struct.error, ValueError):
        pass
    return ("unknown", "")


def tcp_peer_uid(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The UID owning the client socket of a TCP connection from this host (rule 2)."""
    ours, theirs = _unmapped(local[0]), _unmapped(remote[0])
    if not (theirs.is_loopback or theirs == ours) or ours.version != theirs.version:
        return None
    family = socket.AF_INET if theirs.version == 4 else socket.AF_INET6
    # The client's socket: its source is the remote end, its destination is us.
    sockid = (
        struct.pack("!HH", remote[1], local[1])
        + theirs.packed.ljust(16, b"\0")
        + ours.packed.ljust(16, b"\0")
        + struct.pack("=I", 0)
        + _NO_COOKIE
    )
    request = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = _NLMSG.pack(_NLMSG.size + len(request), SOCK_DIAG_BY_FAMILY, 1, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(0.1)  # the kernel answers at once; never hang the loop
        nl.send(header + request)
        answer = nl.recv(8192)
    if len(answer) < _UID_AT + 4 or _NLMSG.unpack_from(answer)[1] != SOCK_DIAG_BY_FAMILY:
        return None  # NLMSG_ERROR: no such socket (the client is already gone)
    return int(struct.unpack_from("=I", answer, _UID_AT)[0])


def _unmapped(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
