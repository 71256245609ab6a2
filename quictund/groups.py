"""Handing a socket file to a group: the group's id, and errors that say what to do.

Used for the API socket's ``[api] group`` and a UNIX listener's ``unix-socket-group``.  The
daemon can give a file to a group only if it is a member of it (no capabilities), and, inside
a user namespace (systemd ``PrivateUsers=yes``), only if the group is mapped there: the kernel
answers ``EINVAL`` ("Invalid argument"), which tells a person nothing.  Both cases get a line
that names the setting, the group and the fix.
"""

from __future__ import annotations

import errno
import grp
import os

from quictund.errors import ConfigError, os_reason


def gid_of(group: str, what: str) -> int:
    """The id of ``group`` (a name, or a number); ``ConfigError`` naming ``what`` if unknown."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ConfigError(
            f"{what}: group {group!r} does not exist (create it with `addgroup --system "
            f"{group}`, or name another group)"
        ) from None


def chown_error(exc: OSError, group: str, what: str) -> ConfigError:
    """A one-line error for a failed ``chown(path, -1, gid)``."""
    if exc.errno == errno.EINVAL:
        return ConfigError(
            f"{what}: group {group!r} is not visible to the daemon (systemd PrivateUsers=yes "
            f"maps only its own user and group): add `PrivateUsers=no` and "
            f"`SupplementaryGroups={group}` with `systemctl edit` for this unit"
        )
    if exc.errno == errno.EPERM:
        return ConfigError(
            f"{what}: the daemon is not a member of group {group!r}: add "
            f"`SupplementaryGroups={group}` with `systemctl edit` for this unit (or "
            f"`adduser quictun {group}`)"
        )
    return ConfigError(f"{what}: cannot give the socket to group {group!r}: {os_reason(exc)}")


def give_to_group(path: str, group: str, what: str) -> None:
    """``chown`` the file at ``path`` to ``group``, or raise a ``ConfigError`` saying why not."""
    gid = gid_of(group, what)
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        raise chown_error(exc, group, what) from None
