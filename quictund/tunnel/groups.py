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


# The packaged units run as this user and add this group (SupplementaryGroups=).
SERVICE_USER = "quictun"
UNIT_GROUPS = ("quictun-api",)


def membership_warning(group: str, what: str) -> str | None:
    """For ``quictund check``: a line if the daemon will not be allowed to use ``group``.

    Run as root, ``check`` judges for the packaged units' user (``quictun``, if it exists;
    root itself may give files to any group); otherwise for the user running it.  A
    ``SupplementaryGroups=`` drop-in is invisible from here, so this is a warning.
    """
    try:
        gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
    except KeyError:
        return None  # gid_of reports it
    if os.geteuid() != 0:
        if gid in (os.getegid(), *os.getgroups()):
            return None
        user = f"uid {os.geteuid()}"
    else:
        import pwd

        try:
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return None
        members = {m for g in grp.getgrall() if g.gr_gid == gid for m in g.gr_mem}
        if gid == entry.pw_gid or SERVICE_USER in members or group in UNIT_GROUPS:
            return None
        user = f"user {SERVICE_USER}"
    return (
        f"warning: {what}: {user} is not a member of group {group!r}: the daemon will refuse "
        f"to start unless a drop-in gives it `SupplementaryGroups={group}` (systemctl edit "
        f"quictun@NAME), or `adduser {SERVICE_USER} {group}`"
    )
