"""Receive memory per connection is bounded whatever a peer sends (issue 13), on both engines.

Hostile peers are raw aioquic clients (tests/hostile_streams.py) against the server engine in
an in-memory pair with the real default windows: a STREAM byte far inside each stream's window
(a gap), bad tokens, never FIN or RESET_STREAM; and stalled tunnels that must not freeze an
honest one on the same connection.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from quictund.quic.engine import EngineSettings, StreamReclaimed, events
from quictund.wire import ErrorCode
from tests.engine_pair import ENGINES, KIB, Certs, Pair, make_certs, make_pair
from tests.hostile_streams import HostileClient, aioquic_buffered, gap_attack, send_at

pytestmark = pytest.mark.parametrize("eng", ENGINES)

MIB = 1024 * KIB
DEFAULTS = EngineSettings()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("recvmem-certs"))


def _hostile(certs: Certs, eng: str) -> Pair:
    return make_pair(
        certs, EngineSettings(engine=eng, max_streams=20000), client_class=HostileClient  # type: ignore[arg-type]
    )


def test_gap_and_bad_token_on_thousands_of_streams_pins_nothing(certs: Certs, eng: str) -> None:
    """Issue 13's attack: before, aioquic kept ~2 MiB per stream (4 GiB for 2000 streams)."""
    pair = _hostile(certs, eng)
    attacked = gap_attack(pair, 2000)
    server = pair.server
    assert not pair.client_got(events.ConnectionTerminated)
    # Every refused stream was freed, though the peer never reset one.
    assert server.stats()["streams"] <= 12
    if eng == "aioquic":
        assert len(attacked) == 2000  # credit comes back once the streams are gone...
        assert aioquic_buffered(server) <= 12 * DEFAULTS.stream_window  # ...not their memory
        assert server.receive_buffered == aioquic_buffered(server)
    else:
        # qh3 never returns credit for a gap: the attack stops after a few streams.
        assert len(attacked) * DEFAULTS.stream_window <= DEFAULTS.receive_budget


def test_gaps_on_live_streams_stay_within_the_budget(certs: Certs, eng: str) -> None:
    """The same gaps on streams nobody refuses: what the peer could reach is the budget."""
    pair = _hostile(certs, eng)
    client = pair.client
    offset = client._remote_max_stream_data_bidi_remote - 1
    sids = []
    for _ in range(3000):
        sids.append(sid := client.get_next_available_stream_id())
        send_at(client, sid, offset, b"x")
    for _ in range(300):
        pair.step()
    assert not pair.client_got(events.ConnectionTerminated)
    reached = sum(client._streams[s].sender.highest_offset for s in sids)
    assert 0 < reached <= DEFAULTS.receive_budget
    if eng == "aioquic":
        assert aioquic_buffered(pair.server) <= DEFAULTS.receive_budget


def test_released_stream_credits_only_bytes_that_arrived(certs: Certs, eng: str) -> None:
    """A refused stream's gap earns no connection credit while the stream can still receive."""
    pair = _hostile(certs, eng)
    client = pair.client
    offset = client._remote_max_stream_data_bidi_remote - 1
    sid = client.get_next_available_stream_id()
    send_at(client, sid, offset, b"x")
    for _ in range(20):
        pair.step()
    granted = client._remote_max_data  # MAX_DATA as the peer sees it
    pair.server.stop_stream(sid, 0x102)
    pair.server.release(sid)  # our sending half never finishes: the stream stays
    for _ in range(20):
        pair.step()
    assert client._remote_max_data < granted + offset // 2  # before: + the whole gap
    if eng == "aioquic":
        assert aioquic_buffered(pair.server) == 0  # its buffer went at once
        assert pair.server.receive_buffered == 0


# (stalled streams, bytes each, bytes each stalled tunnel reads before it stops): the tunnels
# that read first grow their windows (as an app whose socket buffers fill before it stalls).
STALLS = [(7, 6 * MIB, 4 * MIB), (50, 2 * MIB, 1 * MIB), (500, 512 * KIB, 256 * KIB)]
BULK = 8 * MIB


def _honest_rounds(pair: Pair) -> int:
    """Simulated milliseconds an honest tunnel needs for BULK on ``pair``."""
    honest = pair.client.open_stream()
    pair.client.send_stream_data(honest, b"h" * BULK)
    rounds = pair.rounds
    pair.run_until(lambda: pair.received[honest] == BULK, max_rounds=3000)
    return pair.rounds - rounds


@pytest.mark.parametrize(("stalled", "each", "read_first"), STALLS)
def test_stalled_tunnels_do_not_freeze_an_honest_one(
    certs: Certs, eng: str, stalled: int, each: int, read_first: int
) -> None:
    """Issue 13 section 2: before, 7 stalled readers froze every other tunnel."""
    if eng == "qh3":
        # its gate withholds the honest tunnel's first bytes too, so the last stalled tunnel
        # looks alone and is kept (docs/security.md, "Receive memory per connection")
        pytest.xfail("qh3 2.1 has no per-stream credit hook (docs/design.md, 'The qh3 engine')")
    settings = replace(DEFAULTS, engine=eng, max_streams=20000)  # type: ignore[arg-type]
    unloaded = make_pair(certs, settings)
    unloaded.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
    alone = _honest_rounds(unloaded)

    pair = make_pair(certs, settings)
    stuck = set()
    for _ in range(stalled):
        stuck.add(sid := pair.client.open_stream())
        pair.client.send_stream_data(sid, b"s" * each)

    def tunnels(p: Pair, sid: int, data: bytes) -> None:
        if sid not in stuck or p.consumed[sid] < read_first:
            p.consume(sid, len(data))

    pair.on_server_data = tunnels
    for _ in range(400):  # let the stalled tunnels fill whatever they were granted
        pair.step()
    assert pair.server.held_bytes >= stalled * 32 * KIB  # they did stall, holding data
    took = _honest_rounds(pair)
    assert took <= 2 * alone, f"{took} ms next to {stalled} stalled tunnels, {alone} ms alone"
    held = pair.server.held_bytes
    assert held + pair.server.receive_buffered <= DEFAULTS.receive_budget


def _stall_one_after_another(
    certs: Certs, settings: EngineSettings, stalled: int, each: int, read_first: int
) -> tuple[Pair, set[int], int]:
    """``stalled`` tunnels that each read ``read_first`` bytes alone (growing their windows
    while nobody else drains) and then stall, one after another, next to one that drains
    slowly throughout (a kilobyte every 20 ms).  Returns the pair, the stalled streams and
    the slow one."""
    pair = make_pair(certs, settings)
    stuck: set[int] = set()
    slow = pair.client.open_stream()
    pair.client.send_stream_data(slow, b"w" * (256 * KIB))

    def tunnels(p: Pair, sid: int, data: bytes) -> None:
        if sid != slow and (sid not in stuck or p.consumed[sid] < read_first):
            p.consume(sid, len(data))

    def drain_slowly(p: Pair) -> None:  # after every round, for as long as the pair runs
        if p.rounds % 20 == 0 and p.received[slow] > p.consumed[slow]:
            p.consume(slow, 1024)

    pair.on_server_data = tunnels
    pair.invariant = drain_slowly
    for _ in range(stalled):
        stuck.add(sid := pair.client.open_stream())
        pair.client.send_stream_data(sid, b"s" * each)
        for _ in range(60):
            pair.step()
    return pair, stuck, slow


def _reclaimed(pair: Pair) -> list[StreamReclaimed]:
    return [e for e in pair.server_events if isinstance(e, StreamReclaimed)]


@pytest.mark.parametrize(("stalled", "each", "read_first"), STALLS[1:])
def test_tunnels_that_stall_one_after_another_do_not_freeze_an_honest_one(
    certs: Certs, eng: str, stalled: int, each: int, read_first: int
) -> None:
    """The same stalls, one tunnel after another: credit once granted cannot be taken back,
    so together they came to hold the whole receive pool and the honest tunnel was left its
    initial window (50: 256 ms against 19 alone) or, at 500, nothing.  Now, under that
    pressure, the tunnels stalled longest are reset and their memory reclaimed (never the
    honest one, nor the one that drains slowly).  On qh3 the pressure is its gate (a stalled
    tunnel over its window holds up the whole connection): it finishes, but later than 2x."""
    settings = replace(DEFAULTS, engine=eng, max_streams=20000)  # type: ignore[arg-type]
    unloaded = make_pair(certs, settings)
    unloaded.on_server_data = lambda p, sid, data: p.consume(sid, len(data))
    alone = _honest_rounds(unloaded)

    pair, stuck, slow = _stall_one_after_another(certs, settings, stalled, each, read_first)
    before = len(_reclaimed(pair))
    took = _honest_rounds(pair)  # before, on both engines: never (3000 ms)
    reclaimed = _reclaimed(pair)
    assert reclaimed, "nothing was reclaimed"
    assert {e.stream_id for e in reclaimed} <= stuck  # never the honest or the slow one
    assert all(e.stalled_s >= DEFAULTS.reclaim_stalled_after_s for e in reclaimed)
    assert all(e.error_code == ErrorCode.RECLAIMED for e in reclaimed)
    # the peer was told: both halves of each reclaimed stream were reset
    resets = {e.stream_id for e in pair.client_events if isinstance(e, events.StreamReset)}
    assert {e.stream_id for e in reclaimed[:before]} <= resets
    assert pair.server.held_bytes + getattr(pair.server, "receive_buffered", 0) <= (
        DEFAULTS.receive_budget
    )
    if eng == "qh3" and took > 2 * alone:
        pytest.xfail(
            f"{took} ms against {alone} alone: qh3 2.1 has no per-stream credit hook, so "
            "each stalled tunnel holds the connection up until it is reclaimed"
        )
    assert took <= 2 * alone, f"{took} ms next to {stalled} stalled tunnels, {alone} ms alone"


def test_without_pressure_no_stalled_tunnel_is_reclaimed(certs: Certs, eng: str) -> None:
    """Stalled tunnels that leave the others room are kept, however long they stall."""
    settings = replace(DEFAULTS, engine=eng, max_streams=20000)  # type: ignore[arg-type]
    # each parks 512 KiB: under qh3's per-stream gate (stream-window - its core's window)
    pair, _, _ = _stall_one_after_another(certs, settings, 5, 3 * MIB // 2, 1 * MIB)
    for _ in range(3000):  # 3 simulated seconds more
        pair.step()
    assert pair.server.held_bytes >= 5 * 256 * KIB  # they did stall, holding data
    _honest_rounds(pair)
    assert not _reclaimed(pair)


def test_reclaiming_can_be_turned_off(certs: Certs, eng: str) -> None:
    """reclaim-stalled-after = 0: nothing is reset, and the honest tunnel is starved again
    (the behaviour before reclaiming, which the WARNING at start-up describes)."""
    settings = replace(
        DEFAULTS,
        engine=eng,  # type: ignore[arg-type]
        max_streams=20000,
        reclaim_stalled_after_s=0.0,
    )
    pair, _, _ = _stall_one_after_another(certs, settings, 50, 2 * MIB, 1 * MIB)
    honest = pair.client.open_stream()
    pair.client.send_stream_data(honest, b"h" * BULK)
    for _ in range(100):
        pair.step()
    assert not _reclaimed(pair)
    assert pair.received[honest] < BULK


def test_a_tunnel_that_stalls_beside_busy_ones_is_kept(certs: Certs, eng: str) -> None:
    """Busy tunnels that drain fill the pool with credit, not with parked bytes: a tunnel
    paused beside them (a terminal on XOFF) holds little and is never reclaimed for them.
    (Before the parked-bytes condition, 64 busy tunnels opened 20 ms apart had it reset.)"""
    settings = replace(DEFAULTS, engine=eng, max_streams=20000)  # type: ignore[arg-type]
    pair = make_pair(certs, settings)
    paused = pair.client.open_stream()
    pair.client.send_stream_data(paused, b"p" * (64 * KIB))

    def tunnels(p: Pair, sid: int, data: bytes) -> None:
        if sid != paused:
            p.consume(sid, len(data))

    pair.on_server_data = tunnels
    busy = []
    for _ in range(64):  # each grows its window while fewer drain, then shares the pool
        busy.append(sid := pair.client.open_stream())
        pair.client.send_stream_data(sid, b"b" * (6 * MIB))
        for _ in range(20):
            pair.step()
    for _ in range(1500):
        pair.step()
    assert pair.received[paused] > 0 and pair.consumed[paused] == 0
    assert sum(pair.received[s] for s in busy) > 128 * MIB  # they were busy all along
    assert not _reclaimed(pair)
