"""Steering a server's datagrams to its workers by connection id (quictund/quic/steering.py).

The program is checked in the kernel: a real ``SO_REUSEPORT`` group on loopback, real
datagrams from fresh source ports, and which socket each one reached.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Iterator

import pytest
from aioquic.quic.connection import QuicConnection
from hypothesis import given
from hypothesis import strategies as st

from quictund.quic.quic_lb import CidCodec
from quictund.quic.settings import EngineSettings
from quictund.quic.steering import SharedSockets, WorkerCids, bind_group, program, steer
from tests.engine_pair import Certs, make_certs, make_pair
from tests.test_quic_lb import _ids_seen_by_client


def _short(cid: bytes) -> bytes:
    return bytes([0x40]) + cid + os.urandom(40)


def _initial(dcid: bytes) -> bytes:
    scid = os.urandom(8)
    return bytes([0xC0]) + b"\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + bytes([8]) + scid


@contextlib.contextmanager
def _group(count: int, cid_length: int = 8) -> Iterator[list[socket.socket]]:
    socks = bind_group(socket.AF_INET, ("127.0.0.1", 0), count, cid_length)
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _reached(socks: list[socket.socket], datagram: bytes) -> int:
    """Send ``datagram`` to the group from a fresh port; the index of the socket it reached."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(datagram, socks[0].getsockname())
    ready, _, _ = select.select(socks, [], [], 5.0)
    assert len(ready) == 1, f"the datagram reached {len(ready)} sockets of the group"
    assert ready[0].recv(4096) == datagram
    return socks.index(ready[0])


@pytest.mark.parametrize("count", [2, 3, 4])
def test_the_kernel_steers_by_the_last_octet_of_the_connection_id(count: int) -> None:
    with _group(count) as socks:
        for octet in range(0, 256, 7):
            cid = os.urandom(7) + bytes([octet])
            assert _reached(socks, _short(cid)) == octet % count == steer(_short(cid), 8, count)
            dcid = os.urandom(7 + octet % 12) + bytes([octet])  # a client's: any length
            assert _reached(socks, _initial(dcid)) == octet % count


def test_another_id_length_is_read_where_the_id_ends() -> None:
    with _group(2, cid_length=12) as socks:
        for last in (0x10, 0x11):
            cid = os.urandom(11) + bytes([last])
            assert _reached(socks, _short(cid)) == last % 2


def test_a_runt_goes_to_the_first_worker() -> None:
    with _group(3) as socks:
        assert _reached(socks, b"\x41\x05") == 0 == steer(b"\x41\x05", 8, 3)


def test_a_group_binds_every_family_the_daemon_listens_on() -> None:
    socks = bind_group(socket.AF_INET6, ("::1", 0, 0, 0), 2, 8)
    try:
        assert socks[0].getsockname()[1] == socks[1].getsockname()[1]
    finally:
        for sock in socks:
            sock.close()


def test_bad_programs_are_refused() -> None:
    with pytest.raises(ValueError, match="1..20"):
        program(21, 2)
    with pytest.raises(ValueError, match="256"):
        program(8, 257)


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_worker_ids_name_their_worker(slot: tuple[int, int]) -> None:
    count, index = slot
    cids = WorkerCids(index, count)
    for _ in range(20):
        cid = cids.new()
        assert len(cid) == 8 and cids.owns(cid)
        assert steer(_short(cid), 8, count) == index


def test_worker_ids_keep_the_quic_lb_server_id() -> None:
    codec = CidCodec(3, b"\x0a\x01", 5)
    cids = WorkerCids(1, 3, inner=codec.new, cid_length=codec.cid_length)
    made = {cids.new() for _ in range(200)}
    assert all(codec.owns(cid) and cids.owns(cid) for cid in made)
    assert len({cid[-1] for cid in made}) > 20  # the octet stays random among worker 1's


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("steering-certs"))


def test_an_aioquic_worker_issues_only_its_own_ids(certs: Certs) -> None:
    cids = WorkerCids(2, 3)
    pair = make_pair(certs, EngineSettings(quic_lb=cids), client_class=QuicConnection)
    seen = _ids_seen_by_client(pair, 12)
    assert len(seen) >= 12  # the handshake's id and NEW_CONNECTION_ID ones
    assert all(cids.owns(cid) for cid in seen), sorted(c.hex() for c in seen)
    assert cids.owns(pair.server._local_initial_source_connection_id)


def test_shared_sockets_lend_each_socket_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        shared = SharedSockets(SharedSockets.parse([f"127.0.0.1:7500={sock.fileno()}"]), 0, 2)
        lent = shared.take("127.0.0.1:7500")
        assert lent is not None and lent.getsockname() == sock.getsockname()
        assert shared.take("127.0.0.1:7500") is None  # still lent
        assert shared.take("127.0.0.1:7501") is None  # not bound by the supervisor
        lent.close()  # a dup: the group keeps its member
        shared.give_back("127.0.0.1:7500")
        again = shared.take("127.0.0.1:7500")
        assert again is not None and again.getsockname() == sock.getsockname()
        again.close()


@pytest.mark.parametrize("spec", ["127.0.0.1:7500", "=5", "127.0.0.1:7500=x"])
def test_bad_socket_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="ADDRESS=FD"):
        SharedSockets.parse([spec])
