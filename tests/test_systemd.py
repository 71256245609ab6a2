"""quictund.daemon.systemd against real AF_UNIX datagram sockets playing systemd's notify socket."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from quictund.daemon.systemd import Notifier

LOGGER = "quictund.daemon.systemd"


@pytest.fixture
def notify_path(short_tmp: Path) -> Path:
    # short_tmp, not tmp_path: sun_path is limited to ~107 bytes
    return short_tmp / "notify.sock"


@pytest.fixture
def receiver(notify_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        sock.settimeout(2.0)
        yield sock


@pytest.fixture
def notifier(notify_path: Path, receiver: socket.socket) -> Notifier:
    return Notifier(environ={"NOTIFY_SOCKET": str(notify_path)})


def recv_only(sock: socket.socket) -> bytes:
    """The next datagram, asserting that no second one is queued behind it."""
    data = sock.recv(4096)
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            extra = sock.recv(4096)
            pytest.fail(f"unexpected extra datagram {extra!r}")
    finally:
        sock.settimeout(2.0)
    return data


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_enabled(notifier: Notifier) -> None:
    assert notifier.enabled


def test_ready(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.ready()
    assert recv_only(receiver) == b"READY=1"


def test_ready_with_status_in_same_datagram(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.ready(status="3 tunnels")
    assert recv_only(receiver) == b"READY=1\nSTATUS=3 tunnels"


def test_reloading_is_one_datagram_with_monotonic_usec(
    notifier: Notifier, receiver: socket.socket
) -> None:
    notifier.reloading()
    now_usec = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
    got = fields(recv_only(receiver))
    assert got.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert got["RELOADING"] == "1"
    assert got["MONOTONIC_USEC"].isdigit()
    assert abs(int(got["MONOTONIC_USEC"]) - now_usec) < 5_000_000


def test_stopping(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.stopping()
    assert recv_only(receiver) == b"STOPPING=1"
    notifier.stopping(status="draining 2 tunnels")
    assert recv_only(receiver) == b"STOPPING=1\nSTATUS=draining 2 tunnels"


def test_status_newlines_become_spaces(notifier: Notifier, receiver: socket.socket) -> None:
    notifier.status("reload failed:\nconfig.toml: bad\r\nkept old config")
    assert recv_only(receiver) == b"STATUS=reload failed: config.toml: bad kept old config"
    notifier.ready(status="a\nb")
    assert recv_only(receiver) == b"READY=1\nSTATUS=a b"


def test_status_is_utf8(notifier: Notifier, receiver: socket.socket) -> None:
    # sdnotify encodes Latin-1 and drops this message; systemd expects UTF-8
    notifier.status("tunnel → db:5432 café")
    assert recv_only(receiver) == "STATUS=tunnel → db:5432 café".encode()


def test_abstract_socket() -> None:
    name = f"quictund-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        notifier = Notifier(environ={"NOTIFY_SOCKET": "@" + name})
        notifier.ready(status="up")
        assert recv_only(sock) == b"READY=1\nSTATUS=up"


def test_without_notify_socket_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a socket was created without NOTIFY_SOCKET")

    notifier = Notifier(environ={"WATCHDOG_USEC": "2000000"})
    monkeypatch.setattr(socket, "socket", no_socket)
    assert not notifier.enabled
    notifier.ready(status="x")
    notifier.reloading()
    notifier.status("x")
    notifier.stopping(status="x")
    assert notifier.watchdog_interval_s() is None
    assert not caplog.records


async def test_run_watchdog_returns_at_once_when_disabled() -> None:
    async with asyncio.timeout(1):
        await Notifier(environ={}).run_watchdog()
        await Notifier(environ={"NOTIFY_SOCKET": "/nonexistent"}).run_watchdog()


def test_default_environ_is_os_environ(
    monkeypatch: pytest.MonkeyPatch, notify_path: Path, receiver: socket.socket
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier()
    notifier.ready()
    assert recv_only(receiver) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled


@pytest.mark.parametrize("gone", ["unlinked", "closed"])
def test_socket_gone_warns_once_and_never_raises(
    gone: str,
    notifier: Notifier,
    notify_path: Path,
    receiver: socket.socket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier.ready()
    assert recv_only(receiver) == b"READY=1"
    if gone == "unlinked":
        notify_path.unlink()  # ENOENT
    else:
        receiver.close()  # the path stays: ECONNREFUSED
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    notifier.status("x")
    notifier.reloading()
    notifier.ready()
    notifier.stopping()
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(notify_path) in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 3


def test_unsupported_address_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert notifier.enabled
    notifier.ready()
    notifier.stopping()
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]
    assert "unsupported address" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval_s() == expected


@pytest.mark.parametrize(
    "env",
    [
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "me"},
    ],
)
def test_invalid_watchdog_variables_disable_it_with_a_warning(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval_s() is None
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]


async def test_run_watchdog_pings(notify_path: Path, receiver: socket.socket) -> None:
    receiver.setblocking(False)
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"})
    assert notifier.watchdog_interval_s() == pytest.approx(0.1)
    loop = asyncio.get_running_loop()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(notifier.run_watchdog(), name="watchdog")
        async with asyncio.timeout(0.5):
            assert await loop.sock_recv(receiver, 4096) == b"WATCHDOG=1"
            assert await loop.sock_recv(receiver, 4096) == b"WATCHDOG=1"
        task.cancel()
    assert task.cancelled()
