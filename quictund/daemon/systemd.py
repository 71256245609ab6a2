"""sd_notify(3) for the daemon: tell systemd where we are in our lifecycle.

Why each message exists (see ``packaging/systemd/quictun@.service``, ``Type=notify``):

- ``READY=1`` — with ``Type=notify`` systemd treats the unit as started (``systemctl start``
  returns, ``After=`` units start) only on this message, so the daemon sends it once every
  listener is bound, never earlier. After a reload it ends the reload (see below).
- ``RELOADING=1`` + ``MONOTONIC_USEC=<CLOCK_MONOTONIC µs>`` — sent in *one* datagram when a
  SIGHUP reload starts, followed by ``READY=1`` when it is done (also after a failed reload,
  with a ``STATUS=`` saying so). Debian 12 ships systemd 252, which has no
  ``Type=notify-reload``: there ``ExecReload=quictund reload`` delivers the signal and waits
  for the outcome (see ``reload_cli.py``), and ``RELOADING=1`` keeps the unit in "reloading"
  until ``READY=1``; unknown fields such as
  ``MONOTONIC_USEC`` are ignored. systemd >= 253 with ``Type=notify-reload`` requires
  ``MONOTONIC_USEC`` (a timestamp taken after the signal arrived) to match the message to
  its reload request, so sending both keeps one daemon correct on either version.
- ``STOPPING=1`` — first step of shutdown: the unit shows "deactivating" instead of looking
  like it crashed, and systemd arms ``TimeoutStopSec=`` so a stuck drain is killed.
- ``STATUS=<one line>`` — free text for ``systemctl status`` (tunnel count, last reload
  outcome). The protocol is newline-separated ``KEY=VALUE``, so newlines become spaces.
- ``WATCHDOG=1`` — when the unit sets ``WatchdogSec=``, systemd exports ``WATCHDOG_USEC`` and
  restarts us if no ping arrives in time. ``run_watchdog`` pings every ``WATCHDOG_USEC / 2``
  from the event loop itself, so a blocked loop stops the pings: that is the point. A
  ``WATCHDOG_PID`` naming another process means the variables were inherited (we are a
  child), and the watchdog is not ours to feed.

Rules:

1. Without ``$NOTIFY_SOCKET`` every method is a no-op: no socket is created, nothing fails.
2. Sending never raises. The first failure (socket gone, systemd restarted, bad address) is
   logged at WARNING on ``quictund.daemon.systemd``; later ones at DEBUG, so a dead socket cannot
   flood the journal from the watchdog.
3. Each message is one datagram, sent like libsystemd's ``sd_notify``: a fresh ``AF_UNIX``
   ``SOCK_DGRAM`` socket and ``sendto`` the path (or the abstract ``@name``), then close. The
   send is blocking, as in libsystemd; messages are tiny and PID 1 drains its queue.

The ``sdnotify`` package is deliberately not used (tested with 0.3.2): it reads only
``os.environ``, encodes Latin-1 (a non-Latin-1 ``STATUS`` raises and is silently dropped;
systemd expects UTF-8), leaks its socket (``ResourceWarning``, even without
``NOTIFY_SOCKET``), hides every error unless ``debug=True``, and keeps a connected socket that
does not notice its path was unlinked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; see the module docstring.

    ``environ`` is read once, here; it defaults to ``os.environ`` (tests pass a dict).
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._socket_name = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = _watchdog_usec(env)
        self._warned = False

    # public API

    @property
    def enabled(self) -> bool:
        """True when ``$NOTIFY_SOCKET`` is set (we run under systemd with ``Type=notify``)."""
        return self._socket_name is not None

    def ready(self, status: str | None = None) -> None:
        """Startup (or a reload) is complete: every listener is bound."""
        self._send("READY=1", status)

    def reloading(self) -> None:
        """A reload has started; ``READY=1`` must follow when it is done."""
        # clock_gettime_ns avoids float rounding; same value as clock_gettime(...) * 1e6
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self, status: str | None = None) -> None:
        """Shutdown has started (the first step of the shutdown sequence)."""
        self._send("STOPPING=1", status)

    def status(self, text: str) -> None:
        """Show ``text`` in ``systemctl status``; line breaks become spaces."""
        self._send(None, text)

    def watchdog_interval_s(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (``WATCHDOG_USEC / 2``), or None if disabled.

        Disabled when ``NOTIFY_SOCKET`` or ``WATCHDOG_USEC`` is unset, ``WATCHDOG_USEC`` is not
        a positive integer, or ``WATCHDOG_PID`` is set to a PID other than ours.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` forever, at once and then every interval; cancel to stop.

        Returns immediately when the watchdog is disabled, so the daemon can always start it.
        """
        interval_s = self.watchdog_interval_s()
        if interval_s is None:
            return
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    # private

    def _send(self, state: str | None, status: str | None = None) -> None:
        if self._socket_name is None:
            return
        lines = [] if state is None else [state]
        if status is not None:
            lines.append("STATUS=" + " ".join(status.splitlines()))
        message = "\n".join(lines)
        try:
            address = _address(self._socket_name)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), address)
        except (OSError, ValueError) as exc:
            if self._warned:
                logger.debug("sd_notify to %s failed again: %s", self._socket_name, exc)
            else:
                self._warned = True
                logger.warning(
                    "cannot notify systemd via NOTIFY_SOCKET=%s: %s (further failures are "
                    "logged at DEBUG)",
                    self._socket_name,
                    exc,
                )


def _address(name: str) -> str:
    """``@name`` is Linux's abstract namespace (a leading NUL); other names must be absolute."""
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    raise ValueError("unsupported address (expected an absolute path or @abstract name)")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``WATCHDOG_USEC`` if it is a positive integer meant for this process, else None."""
    raw_pid, raw_usec = env.get("WATCHDOG_PID"), env.get("WATCHDOG_USEC")
    if raw_usec is None:
        return None
    try:
        if raw_pid is not None and int(raw_pid) != os.getpid():
            return None  # inherited from our parent: its watchdog, not ours
        usec = int(raw_usec)
    except ValueError:
        usec = 0
    if usec <= 0:
        logger.warning(
            "ignoring watchdog: WATCHDOG_USEC=%r WATCHDOG_PID=%r are not valid", raw_usec, raw_pid
        )
        return None
    return usec
