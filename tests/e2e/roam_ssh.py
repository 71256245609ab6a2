"""A real interactive SSH session for the roaming test (issue 17 §1): sshd in the server's
namespace, ``ssh -tt`` in the client's, through a quictund tunnel.

The remote command puts its pty in raw mode and runs ``cat``, so each keystroke comes back as
exactly one byte, as soon as it crossed the tunnel both ways.  ``Typist`` sends a keystroke
every 50 ms and records the longest wait for its echo (the pause a person typing would see).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
KEYS = b"abcdefghijklmnopqrstuvwxyz"


def available() -> str | None:
    """Why the SSH session cannot run here, or None."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        return "needs openssh-server and openssh-client (apt install openssh-server openssh-client)"
    return None


def start_sshd(
    ns: str, tmp: Path, port: int, address: str = "127.0.0.1"
) -> subprocess.Popen[bytes]:
    """sshd on ``address``:``port`` in ``ns``, accepting only the key ``tmp/id`` made here."""
    for name in ("id", "host"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{tmp}/{name}"],
                       check=True)  # fmt: skip
    (tmp / "sshd.conf").write_text(
        f"Port {port}\nListenAddress {address}\nHostKey {tmp}/host\n"
        f"AuthorizedKeysFile {tmp}/id.pub\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nPidFile none\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f", f"{tmp}/sshd.conf"],
        stderr=subprocess.DEVNULL,
    )


class Typist:
    """Types into ``ssh -tt`` (run in namespace ``ns``, to ``host:port``) and times echoes."""

    def __init__(self, ns: str, tmp: Path, host: str, port: int) -> None:
        self.cmd = [
            "ip", "netns", "exec", ns, "ssh", "-tt", "-i", f"{tmp}/id", "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"root@{host}",
            "stty raw -echo; echo READY; exec cat",
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.sent = 0
        self.echoed = 0
        self.corrupt = 0
        self.max_wait_s = 0.0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            while b"READY" not in await self.proc.stdout.readline():
                pass

    async def type_until(self, done: asyncio.Event) -> dict[str, object]:
        """A keystroke every 50 ms until ``done``; then whether ssh is still alive."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        end = "ok"
        try:
            while not done.is_set():
                key = KEYS[self.sent % len(KEYS) : self.sent % len(KEYS) + 1]
                sent_at = time.monotonic()
                proc.stdin.write(key)
                await proc.stdin.drain()
                self.sent += 1
                got = await asyncio.wait_for(proc.stdout.readexactly(1), 60)
                took = time.monotonic() - sent_at
                self.echoed += 1
                self.corrupt += got != key
                self.max_wait_s = max(self.max_wait_s, took)
                await asyncio.sleep(max(0.0, 0.05 - took))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            end = repr(exc)
        if proc.returncode is not None:
            assert proc.stderr is not None
            end = f"ssh exited {proc.returncode}: {(await proc.stderr.read()).decode()[-200:]}"
        return {"keys": self.sent, "echoed": self.echoed, "corrupt": self.corrupt, "end": end,
                "max_pause_s": round(self.max_wait_s, 3)}  # fmt: skip

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await self.proc.wait()
