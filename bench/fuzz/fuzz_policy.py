"""Policy rules and decisions (quictund/policy/policy.py).

Rules parse or raise ValueError; a decision never raises; loopback, link-local and unspecified
addresses are allowed only by a rule whose CIDR lies inside their block (or an open policy).
"""

from __future__ import annotations

import ipaddress

from _common import FuzzedDataProvider, instrument_imports, main

with instrument_imports():
    from quictund.policy.addresses import StreamAddress
    from quictund.policy.policy import Policy, parse_rule

_SENSITIVE = [
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "::1/128", "fe80::/10", "::/128")
]


def _address(fdp: FuzzedDataProvider) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        return ipaddress.IPv4Address(fdp.ConsumeIntInRange(0, 2**32 - 1))
    if kind == 1:
        return ipaddress.IPv6Address(fdp.ConsumeIntInRange(0, 2**128 - 1))
    if kind == 2:  # inside a sensitive block
        net = _SENSITIVE[fdp.ConsumeIntInRange(0, len(_SENSITIVE) - 1)]
        return net[fdp.ConsumeIntInRange(0, net.num_addresses - 1)]
    v4 = ipaddress.IPv4Address(fdp.ConsumeIntInRange(0, 2**32 - 1))
    return ipaddress.IPv6Address(f"::ffff:{v4}")


def _names(rule: object, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    net = getattr(rule, "net", None)
    if net is None:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    block = next(b for b in _SENSITIVE if b.version == addr.version and addr in b)
    return bool(net.version == block.version and net.subnet_of(block) and addr in net)


def test_one(data: bytes) -> None:
    # up to four rule lines, then one line of bytes choosing the destination
    *lines, tail = data.split(b"\n", 4)
    texts = [line.decode("utf-8", "replace") for line in lines]
    fdp = FuzzedDataProvider(tail)
    rules = []
    for text in texts:
        try:
            rule = parse_rule(text)
        except ValueError as exc:
            assert "\n" not in str(exc).replace(repr(text), "")
            continue
        assert rule.network in ("*", "tcp", "unix") and 0 <= rule.port_lo <= rule.port_hi
        rules.append(text)
    policy = Policy(rules)
    port = fdp.ConsumeIntInRange(1, 65535)
    addresses = [_address(fdp) for _ in range(fdp.ConsumeIntInRange(1, 3))]
    path = fdp.ConsumeBytes(60).decode("utf-8", "replace")
    policy.allows(StreamAddress("unix", path=path or "/"), [])
    dest = StreamAddress("tcp", "fuzz.invalid", port)
    if policy.allows(dest, addresses) and not policy.open:
        for addr in addresses:
            unmapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
            plain = unmapped or addr
            if any(plain.version == b.version and plain in b for b in _SENSITIVE):
                assert any(_names(r, addr) for r in policy.rules), (rules, addr)


if __name__ == "__main__":
    main(test_one)
