"""Address parsing: ``host:port`` and ``tcp:/unix:`` addresses round-trip (addresses.py)."""

from __future__ import annotations

from _common import instrument_imports, main

with instrument_imports():
    from quictund.policy.addresses import parse_host_port, parse_stream_address


def test_one(data: bytes) -> None:
    zero = bool(data[:1]) and data[0] & 1 == 1
    text = data[1:].decode("utf-8", "surrogateescape")
    try:
        hp = parse_host_port(text, allow_port_zero=zero)
    except ValueError as exc:
        assert str(exc)
    else:
        assert (0 if zero else 1) <= hp.port <= 65535
        assert parse_host_port(str(hp), allow_port_zero=zero) == hp
    try:
        addr = parse_stream_address(text, allow_port_zero=zero)
    except ValueError:
        return
    if addr.is_unix:
        assert addr.path and "\x00" not in addr.path
    assert parse_stream_address(str(addr), allow_port_zero=zero) == addr


if __name__ == "__main__":
    main(test_one)
