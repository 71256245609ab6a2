"""``unix-socket-group``: a UNIX listener handed to a group at bind, or a one-line error."""

from __future__ import annotations

import asyncio
import errno
import grp
import os
from pathlib import Path

import pytest

from quictund.config.settings import ClientSettings
from quictund.errors import ConfigError
from quictund.policy.addresses import parse_stream_address
from quictund.tunnel.groups import chown_error
from quictund.tunnel.listeners import listen


def _other_group() -> grp.struct_group:
    """A group other than ours that we may give files to (root: any; else a member's)."""
    mine = os.getegid()
    usable = os.getgroups() if os.geteuid() else [g.gr_gid for g in grp.getgrall()]
    gid = next((g for g in usable if g != mine), None)
    if gid is None:
        pytest.fail("no second group to test with (run as root, or with a supplementary group)")
    return grp.getgrgid(gid)


async def test_listener_socket_goes_to_the_group(short_tmp: Path) -> None:
    group = _other_group()
    address = parse_stream_address(f"unix:{short_tmp}/app.sock")
    listener = await listen(address, asyncio.Protocol, unix_mode=0o660, unix_group=group.gr_name)
    try:
        st = os.stat(short_tmp / "app.sock")
        assert (st.st_gid, st.st_mode & 0o777) == (group.gr_gid, 0o660)
    finally:
        listener.close()
    assert not (short_tmp / "app.sock").exists()


async def test_unknown_group_is_one_clear_line_and_binds_nothing(short_tmp: Path) -> None:
    address = parse_stream_address(f"unix:{short_tmp}/app.sock")
    with pytest.raises(ConfigError) as info:
        await listen(address, asyncio.Protocol, unix_group="qt-no-such-group")
    assert str(info.value) == (
        f"listen-on unix:{short_tmp}/app.sock: unix-socket-group: group 'qt-no-such-group' "
        "does not exist (create it with `addgroup --system qt-no-such-group`, or name another "
        "group)"
    )
    assert not (short_tmp / "app.sock").exists()


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EINVAL, "PrivateUsers=no` and `SupplementaryGroups=app`"),
        (errno.EPERM, "not a member of group 'app': add `SupplementaryGroups=app`"),
    ],
)
def test_chown_failures_say_what_to_do(code: int, words: str) -> None:
    """EINVAL (a user namespace that does not map the group) was printed as "Errno 22"."""
    text = str(chown_error(OSError(code, os.strerror(code)), "app", "[api] group"))
    assert words in text and "Errno" not in text and "\n" not in text


def test_setting_is_validated() -> None:
    s = ClientSettings.model_validate({"server-endpoint": "h:1", "unix-socket-group": "app"})
    assert s.unix_socket_group == "app"
    with pytest.raises(ValueError):
        ClientSettings.model_validate({"server-endpoint": "h:1", "unix-socket-group": ""})


def test_check_catches_an_unknown_group_before_a_restart(tmp_path: Path) -> None:
    import subprocess
    import sys

    conf = tmp_path / "c.toml"
    conf.write_text(
        '[api]\ngroup = "qt-no-such-api"\n[[client]]\nname = "a"\nserver-endpoint = "h:1"\n'
        'token-source = "tcp:10.0.0.5:22"\nlisten-on = "unix:/run/qt-a.sock"\n'
        'unix-socket-group = "qt-no-such-app"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "quictund", "check", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    advice = "does not exist (create it with `addgroup --system {0}`, or name another group)"
    assert result.stderr.splitlines() == [
        "[api] group: group 'qt-no-such-api' " + advice.format("qt-no-such-api"),
        "c.toml: client[0].unix-socket-group: group 'qt-no-such-app' "
        + advice.format("qt-no-such-app"),
    ]
