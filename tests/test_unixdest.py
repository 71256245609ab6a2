"""``unix:`` destinations with real sockets and symlinks: the policy checks the resolved path,
and ``connect_unix`` refuses a path swapped for a symlink after that check (TOCTOU)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from quictund.policy.addresses import StreamAddress
from quictund.policy.policy import Policy
from quictund.tunnel.unixdest import connect_unix


def listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(4)
    sock.setblocking(False)
    return sock


@pytest.fixture
def tree(short_tmp: Path) -> Path:
    for d in ("allowed", "outside"):
        (short_tmp / d).mkdir()
    os.symlink(short_tmp / "outside" / "secret.sock", short_tmp / "allowed" / "link.sock")
    os.symlink(short_tmp / "outside", short_tmp / "allowed" / "dir")
    os.symlink(short_tmp / "allowed", short_tmp / "alias")  # like /var/run -> /run
    return short_tmp


def target(rules: list[str], path: Path) -> str | None:
    return Policy(rules).unix_target(StreamAddress("unix", path=str(path)))


def test_the_resolved_path_must_match_too(tree: Path) -> None:
    rules = [f"unix:{tree}/allowed/*"]
    assert target(rules, tree / "allowed" / "app.sock") == str(tree / "allowed" / "app.sock")
    assert target(rules, tree / "allowed" / "link.sock") is None
    assert target([f"unix:{tree}/allowed/*/*"], tree / "allowed" / "dir" / "secret.sock") is None
    # the target named by a rule of its own is reachable through the link
    both = [*rules, f"unix:{tree}/outside/secret.sock"]
    assert target(both, tree / "allowed" / "link.sock") == str(tree / "outside" / "secret.sock")


def test_a_rule_through_a_linked_directory_still_matches(tree: Path) -> None:
    rules = [f"unix:{tree}/alias/*"]
    assert target(rules, tree / "alias" / "app.sock") == str(tree / "allowed" / "app.sock")
    assert target(rules, tree / "alias" / "link.sock") is None


LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Awaitable[None]) -> None:
    """Both event loops: the daemon runs uvloop, whose UNIX connect is its own code."""

    async def main() -> None:
        await coro

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


@LOOPS
def test_connect_reaches_the_checked_socket(
    tree: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    run(loop_factory, _reaches(tree))


@LOOPS
def test_a_socket_swapped_for_a_symlink_after_the_check_is_refused(
    tree: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    run(loop_factory, _swapped(tree))


async def _reaches(tree: Path) -> None:
    server = listening(tree / "allowed" / "app.sock")
    loop = asyncio.get_running_loop()
    transport, _ = await connect_unix(loop, asyncio.Protocol, str(tree / "allowed" / "app.sock"))
    conn, _ = await loop.sock_accept(server)
    conn.close()
    transport.close()
    server.close()


async def _swapped(tree: Path) -> None:
    secret = listening(tree / "outside" / "secret.sock")
    inside = listening(tree / "allowed" / "app.sock")
    checked = target([f"unix:{tree}/allowed/*"], tree / "allowed" / "app.sock")
    assert checked is not None
    os.unlink(checked)  # the attacker swaps the checked socket for a link outside
    os.symlink(tree / "outside" / "secret.sock", checked)
    loop = asyncio.get_running_loop()
    with pytest.raises(OSError) as err:
        await connect_unix(loop, asyncio.Protocol, checked)
    assert err.value.errno == errno.ELOOP
    # ... or swaps a directory on the checked path for a link to one holding the same name
    decoy = listening(tree / "outside" / "app.sock")
    os.unlink(checked)
    os.rename(tree / "allowed", tree / "old")
    os.symlink(tree / "outside", tree / "allowed")
    with pytest.raises(OSError) as err:
        await connect_unix(loop, asyncio.Protocol, checked)
    assert err.value.errno == errno.ELOOP
    for sock in (secret, decoy):
        with pytest.raises(BlockingIOError):
            sock.accept()  # nothing ever reached a socket outside
        sock.close()
    inside.close()
