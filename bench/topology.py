"""Where a scenario's two sides live: on loopback, or in two network namespaces joined by one
veth pair with a 1500-byte MTU (``run.py --link veth``).

Loopback's 65,536-byte MTU lets an engine win by sending bigger datagrams rather than by doing
less work per packet; on a 1500-byte path every engine moves Ethernet-sized datagrams, as it
would between two real machines.  The veth pair adds no delay, loss or rate limit, and its
offloads stay at the kernel's defaults (tso, gso, ``tx-udp-segmentation`` on), like a real
NIC's: a UDP GSO train crosses it as one unit, as a NIC with segmentation offload would cut it
in hardware.  (bench/netem/link.py turns them off because it drops packets one by one.)

The *client side* (load generators, the tunnel's client endpoint) runs in ``client_ns``; the
*server side* (the tunnel's server endpoint and the real app: load.py serve, redis-server)
in ``server_ns``, the app bound to ``server_ip`` so that ``direct`` crosses the veth too.

Namespace names take ``QUICTUND_NETEM_PREFIX`` (as bench/netem/link.py does), so two benches
on one machine do not collide; they are deleted when the ``with`` block ends, whatever
happens.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "netem"))
from link import PREFIX, ns, sh

LINKS = ("loopback", "veth")
MTU = 1500
CLIENT_IP, SERVER_IP = "10.97.15.1", "10.97.15.2"


@dataclass(frozen=True)
class Topology:
    """``client_ns``/``server_ns`` None: this namespace.  ``server_ip``: where the server
    side binds what the client side reaches (the app, the tunnel's server endpoint)."""

    name: str
    title: str
    client_ns: str | None = None
    server_ns: str | None = None
    server_ip: str = "127.0.0.1"


LOOPBACK = Topology("loopback", "loopback (MTU 65,536)")


@contextlib.contextmanager
def veth() -> Iterator[Topology]:
    """Two fresh namespaces joined by one veth pair (MTU 1500), deleted afterwards."""
    topo = Topology(
        "veth", f"veth pair between two namespaces (MTU {MTU}, no delay)",
        f"{PREFIX}vc", f"{PREFIX}vs", SERVER_IP,
    )  # fmt: skip
    names = (topo.client_ns, topo.server_ns)
    _delete(names)  # a previous bench killed with SIGKILL may have left them
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            ns(name, "ip", "link", "set", "lo", "up")
        sh(
            "ip", "link", "add", "vc0", "netns", names[0], "mtu", str(MTU), "type", "veth",
            "peer", "name", "vs0", "netns", names[1], "mtu", str(MTU),
        )  # fmt: skip
        for name, dev, addr in ((names[0], "vc0", CLIENT_IP), (names[1], "vs0", SERVER_IP)):
            ns(name, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            ns(name, "ip", "link", "set", dev, "up")
        ns(names[0], "ping", "-c", "1", "-W", "2", SERVER_IP)
        yield topo
    finally:
        _delete(names)


def _delete(names: tuple[str | None, ...]) -> None:
    existing = sh("ip", "netns", "list", check=False).split()
    for name in names:
        if name in existing:
            sh("ip", "netns", "del", name, check=False)
